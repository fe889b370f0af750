"""Fine-tuning: ``train --init RUN`` reuses a trained model (whole, or all but a new head), ``train.freeze``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_TRAIN, save_tiny_model
from safetensors.torch import load_file
from typer.testing import CliRunner

from droneseg.cli import app, main
from droneseg.engine.init import Parent, head_prefix, load_parent
from droneseg.models import ModelConfig, build_model
from droneseg.schemes import get_scheme

pytestmark = pytest.mark.timeout(300)
RUN = CliRunner()


def _child(scheme: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(channels=[8, 16]), get_scheme(scheme).num_classes)


def test_the_same_classes_load_the_whole_network(tmp_path):
    parent = Parent.open(save_tiny_model(tmp_path / "parent", scheme="six"))
    child = _child("six")
    report = load_parent(child, get_scheme("six"), parent)
    assert report.reused == "the whole network" and report.head_new == []
    saved = load_file(parent.folder / "model.safetensors")
    assert all(torch.equal(child.state_dict()[k], v) for k, v in saved.items())
    assert report.weights_sha256 == hashlib.sha256((parent.folder / "model.safetensors").read_bytes()).hexdigest()


def test_another_scheme_gets_a_new_head_that_keeps_the_rows_of_classes_named_alike(tmp_path):
    """six = (paved-area, dirt, grass, roof, water, other) -> paved = (other, paved-area): both rows come from the
    parent, swapped into the child's order; luma's (dark, bright) name none of them: its head stays as built."""
    parent = Parent.open(save_tiny_model(tmp_path / "parent", scheme="six"))
    saved = load_file(parent.folder / "model.safetensors")
    child = _child("paved")
    report = load_parent(child, get_scheme("paved"), parent)
    assert report.reused == "encoder and decoder"
    assert report.head_kept == ["other", "paved-area"] and report.head_new == []
    head = head_prefix(child)
    state = child.state_dict()
    for key, value in saved.items():
        if key.startswith(head):
            assert torch.equal(state[key][0], value[5]) and torch.equal(state[key][1], value[0])
        else:
            assert torch.equal(state[key], value)
    fresh = _child("luma", seed=3)
    built = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = load_parent(fresh, get_scheme("luma"), parent)
    assert report.head_kept == [] and report.head_new == ["dark", "bright"]
    assert all(torch.equal(fresh.state_dict()[k], built[k]) for k in built if k.startswith(head))
    assert "none kept" in report.line()


def _train(data: Path, out: Path, *extra: str) -> tuple[Path, str]:
    result = RUN.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY_TRAIN,
                              "--set", "train.final_eval=false", *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow
def test_a_child_run_records_its_parent_and_a_frozen_encoder_stays_the_parents(synth_root, tmp_path):
    """The finetune preset from a demo run in another scheme: the parent's classic U-Net (not the preset's FPN),
    its encoder unchanged through training with freeze_share 1 (weights and BatchNorm statistics), the decoder
    trained; the parent named in config.yaml and model.json with the SHA-256 of its weights."""
    parent, _ = _train(synth_root, tmp_path / "runs", "-c", "demo", "--max-epochs", "1")
    child, err = _train(synth_root, tmp_path / "runs", "-c", "finetune", "--init", str(parent), "--max-epochs", "1",
                        "--set", "data.scheme=paved", "--set", "train.freeze_share=1.0")
    assert f"starting from {parent.name}: encoder and decoder; a new head for 2 classes" in err
    digest = hashlib.sha256((parent / "model.safetensors").read_bytes()).hexdigest()
    cfg = yaml.safe_load((child / "config.yaml").read_text())
    assert cfg["train"]["init"] == str(parent) and cfg["model"]["arch"] == "classic-unet"
    assert cfg["environment"]["init"]["weights_sha256"] == digest
    info = json.loads((child / "model.json").read_text())
    assert info["extra"]["init"]["run"] == parent.name and info["extra"]["init"]["weights_sha256"] == digest
    assert info["model"]["arch"] == "classic-unet" and info["model"]["weights"] is None
    before, after = load_file(parent / "model.safetensors"), load_file(child / "model.safetensors")
    encoder = [k for k in before if k.startswith("encoder.")]
    # the weight average (EMA 0.99) recomputes an unchanged weight as 0.99 w + 0.01 w: equal to float rounding
    moved = {k: (before[k].double() - after[k].double()).abs().max().item() for k in before
             if k.startswith(("encoder.", "decoder."))}
    assert encoder and max(moved[k] for k in encoder) < 1e-6
    assert max(moved[k] for k in moved if k.startswith("decoder.")) > 1e-4


def test_init_from_a_folder_without_a_model_is_one_line(synth_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "-c", "finetune", "--data", str(synth_root), "--out", str(tmp_path / "runs"),
              "--init", str(tmp_path)])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == f"droneseg: error: --init {tmp_path} (train.init): no model.json (train a model first, or point " \
                   "at a run folder)"
    assert not (tmp_path / "runs").exists()
