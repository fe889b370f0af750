"""Run folders written by earlier releases keep working: evaluate, predict, export and resume.

``tests/compat/run-0.1.0`` was written by release 0.1.0 (``tests/compat/make_legacy_run.py``): the classic U-Net
was called ``unet`` then, ``model.json`` had format 3 and held its parts as plain dicts. Its data is written again
here (deterministic synthetic scenes) and the run is pointed at it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from droneseg.artifact import MODEL_FORMAT, read_info
from droneseg.cli import main

sys.path.insert(0, str(Path(__file__).parent / "compat"))
from make_legacy_run import synthetic_data  # noqa: E402

LEGACY = Path(__file__).parent / "compat" / "run-0.1.0"


@pytest.fixture
def legacy(tmp_path) -> tuple[Path, Path]:
    """(a copy of the 0.1.0 run folder pointed at its data, the data)."""
    data = synthetic_data(tmp_path / "data")
    run = Path(shutil.copytree(LEGACY, tmp_path / "run"))
    for name in ("config.yaml", "model.json"):
        path = run / name
        path.write_text(path.read_text(encoding="utf-8").replace("@DATA@", str(data.resolve())), encoding="utf-8")
    return run, data


def cli(capsys, *argv: object) -> str:
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert stop.value.code in (0, None), err
    return out


def test_the_legacy_fixture_is_what_0_1_0_wrote():
    raw = json.loads((LEGACY / "model.json").read_text())
    assert raw["format"] == 3 and raw["model"]["arch"] == "unet" and raw["version"] == "0.1.0"


@pytest.mark.slow
def test_a_0_1_0_run_evaluates_predicts_and_exports(legacy, tmp_path, capsys):
    run, data = legacy
    info = read_info(run)
    assert info.model.arch == "classic-unet" and info.scheme.name == "six"
    report = Path(cli(capsys, "evaluate", run, "--data", data, "--figures", "0").strip().splitlines()[-1])
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["context"]["trained_on_this_dataset"] and 0 <= metrics["miou"] <= 1
    assert metrics["context"]["images"] == len((run / "splits" / "val.txt").read_text().split())  # the run's split
    cli(capsys, "predict", run, data / "original_images", "--out", tmp_path / "pred")
    assert len(list((tmp_path / "pred").glob("*_color.png"))) == 12
    cli(capsys, "export", run)
    cli(capsys, "evaluate", run, "--data", data, "--figures", "0", "--backend", "onnx", "--out", tmp_path / "onnx")
    onnx_miou = json.loads((tmp_path / "onnx" / "metrics.json").read_text())["miou"]
    assert onnx_miou == pytest.approx(metrics["miou"], abs=1e-3)


@pytest.mark.slow
def test_a_0_1_0_run_resumes_and_extends(legacy, capsys):
    run, _ = legacy
    out = cli(capsys, "train", "--resume", run, "--max-epochs", "3")
    assert Path(out.strip().splitlines()[-1]) == run
    assert json.loads((run / "previous" / "1" / "model.json").read_text())["format"] == 3  # kept as it was
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == 3
    info = read_info(run)
    assert info.format == MODEL_FORMAT and info.model.arch == "classic-unet"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["arch"] == "classic-unet" and saved["train"]["max_epochs"] == 3


def test_a_new_config_that_says_unet_is_refused_with_a_hint(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "-c", "demo", "--data", str(tmp_path), "--set", "model.arch=unet"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "model.arch: " in err and "'classic-unet'" in err and "'Unet'" in err
    assert len(err.strip().splitlines()) == 1
