"""End-to-end training through the real CLI on tiny synthetic data: run folder, resume, time budget."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml
from helpers import TINY_TRAIN
from typer.testing import CliRunner

from droneseg.cli import app, main

# end-to-end runs: a hung one fails after 300 s with its traceback (pyproject: 120 s)
pytestmark = pytest.mark.timeout(300)

RUN = CliRunner()
TINY = [*TINY_TRAIN, "--set", "train.sample_every=1", "--set", "train.samples=2"]  # with sample figures


def _train(data: Path, out: Path, *extra: str) -> Path:
    result = RUN.invoke(app, ["train", "-c", "demo", "--data", str(data), "--out", str(out), *TINY, *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def _rows(run: Path) -> list[dict]:
    with (run / "logs" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_writes_the_whole_run_folder_and_one_truth(synth_root, tmp_path):
    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "2", "--gsd", "0.06")
    assert json.loads((run / "model.json").read_text())["gsd"] == pytest.approx(0.06)  # native working size
    for rel in ("config.yaml", "splits/train.txt", "splits/val.txt", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                "model.safetensors", "model.json", "logs/metrics.csv", "training_curves.png", "train_summary.json",
                "samples/epoch_001.png", "eval/val/metrics.json", "eval/val/report.html"):
        assert (run / rel).is_file(), rel
    assert [int(r["epoch"]) for r in _rows(run)] == [0, 1]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["stopped_by"] == "max_epochs" and summary["images_per_s"] > 0
    # the report and metrics.txt say what training did
    said = f"rained 2 epochs ({summary['schedule']['done_steps']} optimiser steps) in "
    report = (run / "eval" / "val" / "report.html").read_text()
    assert said in report and "stopped by max_epochs" in report
    assert f"Training: t{said}" in (run / "eval" / "val" / "metrics.txt").read_text()
    # the split is by image id and disjoint
    train_ids = set((run / "splits" / "train.txt").read_text().split())
    val_ids = set((run / "splits" / "val.txt").read_text().split())
    assert train_ids and val_ids and not train_ids & val_ids
    # the resolved config repeats the run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["channels"] == [8, 16] and cfg["data"]["root"] == str(synth_root.resolve())
    # one truth: evaluate gives the number training wrote at its end
    result = RUN.invoke(app, ["evaluate", str(run), "--data", str(synth_root), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["miou"] == summary["val_miou_native"]
    assert summary["val_per_image_miou"] == again["per_image"]["per_image_miou"], "per-image mIoU beside the pooled"
    assert again["context"]["training"].startswith("trained 2 epochs") and "stopped by max_epochs" in again["context"]["training"]
    # the model card says what the run's own files say: classes, scale, per-class IoU of its final evaluation
    card = json.loads((run / "model_card.json").read_text())
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert card["metrics"]["miou"] == metrics["miou"] == summary["val_miou_native"]
    assert [(c["name"], c["iou"]) for c in card["metrics"]["per_class"]] == [
        (c["name"], c["iou"]) for c in metrics["per_class"]]
    assert card["scale"]["gsd_m"] == pytest.approx(0.06) and card["training"]["epochs"] == 2
    assert card["data"]["licence"].startswith("synthetic scenes drawn by `droneseg synth`")  # SDD's table, no photo
    text = (run / "MODEL_CARD.md").read_text()
    assert f"**{metrics['miou']:.3f}**" in text and "no dataset's licence applies" in text
    # a second run never reuses the folder
    assert _train(synth_root, tmp_path / "runs", "--max-epochs", "1") != run


@pytest.mark.slow
def test_max_time_stops_cleanly_with_every_file(synth_root, tmp_path):
    t0 = time.monotonic()
    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "10000", "--max-time", "6s",
                 "--set", "train.final_eval=false")
    assert time.monotonic() - t0 < 90
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"] == "max_time" and summary["epochs"] < 10000
    for rel in ("model.safetensors", "model.json", "checkpoints/last.ckpt", "training_curves.png"):
        assert (run / rel).is_file(), rel


def test_resume_refuses_other_options(synth_root, tmp_path):
    result = RUN.invoke(app, ["train", "--resume", str(tmp_path), "--set", "train.lr=0.1"])
    assert result.exit_code != 0 and "takes only --max-epochs and --max-time" in str(result.exception)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=fast", "train.lr: Input should be a valid number"),
        ("train.learning_rate=0.1", "train.learning_rate: Extra inputs are not permitted"),
        ("model.arch=Unett", "unknown architecture 'Unett'"),
        ("loss.terms={bce: 1}", "unknown loss 'bce'"),
    ],
)
def test_bad_config_names_the_key(synth_root, tmp_path, capsys, override, message):
    """The console entry point in this process (the config is refused before Lightning is imported)."""
    with pytest.raises(SystemExit) as stop:
        main(["train", "-c", "demo", "--data", str(synth_root), "--out", str(tmp_path), "--set", override])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("droneseg: error: preset demo: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("demo-*"))  # nothing created for a bad config


@pytest.mark.slow
def test_a_finished_run_is_not_resumed(synth_root, tmp_path):
    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "1", "--set", "train.final_eval=false")
    result = RUN.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code != 0 and "this run finished (stopped by max_epochs)" in str(result.exception)
    assert "--max-epochs N or --max-time T" in str(result.exception)  # and says how to extend it


@pytest.mark.slow
def test_the_budget_covers_the_command_and_the_schedule_ends_when_it_does(synth_root, tmp_path):
    """The budget, not the epoch count, stops the run; by then the cosine schedule has decayed to its end."""
    t0 = time.monotonic()
    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "10000", "--max-time", "25s",
                 "--set", "train.schedule=cosine", "--set", "train.lr=0.01", "--set", "train.sample_every=0",
                 "--set", "data.samples_per_epoch=8")
    wall = time.monotonic() - t0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"] == "max_time" and "val_miou_native" in summary  # final evaluation included
    assert summary["command_s"] <= 25 and wall <= 25 + 5  # returns within the budget (+ CliRunner's overhead)
    plan = summary["schedule"]
    assert plan["done_steps"] >= 20 and abs(plan["done_steps"] - plan["planned_steps"]) <= 0.15 * plan["planned_steps"]
    assert plan["final_lr"] <= 0.01 * 0.1  # near the schedule's end (1% of the peak), far below the peak
    lrs = [float(r["lr"]) for r in _rows(run)]
    assert max(lrs) > 5 * lrs[-1]  # it rose and decayed within the budget


@pytest.mark.slow
def test_when_max_epochs_ends_first_the_schedule_spans_its_steps_and_runs_repeat(synth_root, tmp_path):
    """A generous budget must not stretch the schedule over steps that never run (it would never anneal), nor
    make it depend on the wall clock, nor change training by measuring its costs up front: a run with the budget
    and one without give the same losses bit for bit."""
    args = ("--max-epochs", "3", "--set", "train.final_eval=false", "--set", "train.sample_every=0",
            "--set", "train.schedule=cosine")
    runs = [_train(synth_root, tmp_path / "runs0", *args, "--max-time", "10m"), _train(synth_root, tmp_path / "runs1", *args)]
    summary = json.loads((runs[0] / "train_summary.json").read_text())
    plan = summary["schedule"]
    assert plan["planned_steps"] == plan["done_steps"] == 3 * 2  # 4 samples per epoch, batches of 2
    assert plan["final_lr"] == pytest.approx(0.003 * 0.01, rel=0.05)  # demo's peak lr, cosine down to 1%
    assert summary["budget"]["measured_before"]["step_s"] > 0  # the costs were measured…
    assert [r["train_loss"] for r in _rows(runs[0])] == [r["train_loss"] for r in _rows(runs[1])]  # …changing nothing


def test_a_budget_too_short_for_one_validation_and_the_evaluation_is_refused_up_front(synth_root, tmp_path, capsys):
    """`--max-time 2s`: refused before any file is made, in one line saying what was measured and what it would
    take (before: the budget overran by half and the run trained two steps)."""
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "-c", "demo", "--data", str(synth_root), "--out", str(out), *TINY, "--max-time", "2s"])
    code = exit_.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "--max-time 2s (train.max_time): too short to train, validate once and evaluate" in err
    assert "10 optimiser steps" in err and "one validation of 2 images" in err and "the final evaluation" in err
    assert "give at least --max-time 1m" in err
    assert not out.exists() or not any(out.iterdir()), "no run folder"


@pytest.mark.parametrize(
    ("schedule", "points"),
    [
        ("cosine", {0.0: 0.1, 0.05: 1.0, 0.525: 0.505, 1.0: 0.01}),
        ("onecycle", {0.0: 1 / 25, 0.3: 1.0, 0.65: (1 + 4e-6) / 2, 1.0: 4e-6}),
        ("none", {0.0: 1.0, 1.0: 1.0}),
    ],
)
def test_schedules_as_a_function_of_progress(schedule, points):
    from droneseg.engine.budget import lr_factor

    warmup = 0.3 if schedule == "onecycle" else 0.05
    for progress, expected in points.items():
        assert lr_factor(progress, schedule, warmup) == pytest.approx(expected, rel=1e-6), progress


@pytest.mark.slow
def test_luma_and_class_weighted_runs_validate_through_the_tiler(synth_root, tmp_path):
    """Luma is validated on the labels split at each map's own median, as evaluate scores it."""
    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "1", "--set", "data.scheme=luma",
                 "--set", "inference.luma_threshold=median", "--set", "loss.class_weights=sqrt",
                 "--set", "train.sample_every=0")
    row = _rows(run)[-1]
    summary = json.loads((run / "train_summary.json").read_text())
    assert 0 <= float(row["val_miou"]) <= 1 and float(row["val_loss"]) > 0
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["luma_threshold"] == "median" and summary["class_weights"] is not None
    # the median split marks half of each image bright, in validation as in evaluation
    predicted = [c["predicted"] for c in metrics["per_class"]]
    assert predicted[1] / sum(predicted) == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_ema_validates_and_saves_the_averaged_weights(synth_root, tmp_path):
    """With ``train.ema`` the checkpoints hold the average as their weights (the raw ones beside), and the saved
    model is the best checkpoint's average; on a CPU the net trains in channels-last layout."""
    import torch
    from safetensors.torch import load_file

    run = _train(synth_root, tmp_path / "runs", "--max-epochs", "2", "--set", "train.ema=0.5",
                 "--set", "train.sample_every=0", "--set", "train.final_eval=false")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["ema"] == 0.5 and summary["channels_last"] is True
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    average, raw = ckpt["state_dict"], ckpt["current_model_state"]
    name = next(k for k in average if k.startswith("net.") and k.endswith("weight") and average[k].dim() == 4)
    assert not torch.equal(average[name], raw[name])
    saved = load_file(run / "model.safetensors")
    assert torch.equal(saved[name.removeprefix("net.")], average[name])


@pytest.mark.slow
def test_a_resumed_run_keeps_its_own_splits_and_its_config_holds_absolute_paths(synth_copy, tmp_path, monkeypatch):
    """config.yaml repeats the run from any folder (paths resolved); a resume (here: extending) trains and
    validates on the run's splits/ although the dataset's split files changed in between."""
    monkeypatch.chdir(tmp_path)
    run = _train(synth_copy, Path("runs"), "--max-epochs", "1", "--set", "train.final_eval=false",
                 "--set", "data.cache_dir=mycache")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["cache_dir"] == str(tmp_path / "mycache") and cfg["data"]["root"] == str(synth_copy)
    own = {name: (run / "splits" / f"{name}.txt").read_text() for name in ("train", "val")}
    val = (synth_copy / "splits" / "val.txt").read_text().split()
    (synth_copy / "splits" / "val.txt").write_text("\n".join(val[1:]) + "\n")  # the dataset moves a val photo
    (synth_copy / "splits" / "train.txt").write_text((synth_copy / "splits" / "train.txt").read_text() + val[0] + "\n")
    result = RUN.invoke(app, ["train", "--resume", str(run), "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[1]["val_images"] == rows[0]["val_images"] == str(len(val))  # the run's val split, not the new one
    assert {name: (run / "splits" / f"{name}.txt").read_text() for name in ("train", "val")} == own
