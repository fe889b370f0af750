"""The command line as a new user meets it: help for every option, commands in workflow order, the same data options
on every command that reads a dataset, typed values that reach the config as they were given."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import typer.main
from helpers import TINY_TRAIN

from droneseg.cli import app, main
from droneseg.config import PRESETS, load_config, presets

COMMANDS = typer.main.get_command(app)
WORKFLOW = ["demo", "synth", "synth-ortho", "import", "tiles", "check-data", "augment", "train", "evaluate", "predict", "export"]


def test_commands_are_listed_in_workflow_order():
    assert list(COMMANDS.list_commands(None)) == WORKFLOW


@pytest.mark.parametrize("name", WORKFLOW)
def test_every_option_and_argument_has_a_line_of_help(name):
    command = COMMANDS.commands[name]
    assert command.help, name
    missing = [p.name for p in command.params if not (p.help or "").strip()]
    assert missing == [], f"droneseg {name}: no help for {missing}"


def test_help_shows_no_bool_metavar_and_train_lists_the_presets(capsys):
    for argv in (["--help"], ["train", "--help"], ["predict", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "<bool>" not in text, argv
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert all(f"- {name}:" in text for name in presets()) and "every class of your class table" in text


def test_every_shipped_preset_has_a_line_in_train_help():
    files = sorted(p.name[:-5] for p in resources.files("droneseg.configs").iterdir() if p.name.endswith(".yaml"))
    assert sorted(PRESETS) == files == presets()


@pytest.mark.parametrize("name", ["train", "evaluate", "check-data"])
def test_every_command_that_reads_a_dataset_takes_the_same_data_options(name):
    options = {o for p in COMMANDS.commands[name].params for o in p.opts}
    assert {"--data", "--images", "--masks", "--class-table"} <= options


def test_typed_values_reach_the_config_as_given():
    """A value given as an option is set, not re-read as YAML text: a folder named with '#' or ': ' keeps its name."""
    cfg = load_config("demo", [], {"data.root": "/d/survey #1: north", "data.gsd": 0.02, "train.devices": 2})
    assert (cfg.data.root, cfg.data.gsd, cfg.train.devices) == ("/d/survey #1: north", 0.02, 2)
    text = load_config("demo", ["data.root=/d/survey #1"]).data.root
    assert text == "/d/survey"  # what --set does to such a name (YAML text): why options are not sent through it


@pytest.mark.parametrize(("argv", "message"), [
    (["--images", "x"], "--images and --masks go together"),
    (["--data", "d", "--images", "i", "--masks", "m"], "not both"),
    ([], "no dataset: pass --data DIR"),
])
def test_wrong_data_options_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "run", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_and_evaluate_read_two_loose_folders(synth_root, tmp_path, capsys):
    """`--images DIR --masks DIR` works for train and evaluate as for check-data, in folders whose names YAML would
    cut short; the run's config records them."""
    images, masks = tmp_path / "survey #1" / "photos", tmp_path / "survey #1" / "labels"
    shutil.copytree(synth_root / "original_images", images)
    shutil.copytree(synth_root / "label_images_semantic", masks)
    shutil.copy(synth_root / "class_dict_seg.csv", masks / "class_dict_seg.csv")
    with pytest.raises(SystemExit) as stop:
        main(["train", "-c", "demo", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "runs"),
              "--max-epochs", "1", *TINY_TRAIN])
    out, err = capsys.readouterr()
    assert stop.value.code == 0, err
    run = Path(out.strip().splitlines()[-1])
    # what happened, said at the end: epochs, optimiser steps, why it stopped, the score
    assert "trained 1 epoch (2 optimiser steps) in " in err and "stopped by max_epochs; val mIoU " in err
    saved = (run / "config.yaml").read_text()
    assert str(images.resolve()) in saved and str(masks.resolve()) in saved
    summary = json.loads((run / "train_summary.json").read_text())
    assert 0 <= summary["val_miou_native"] <= 1  # the final evaluation read the same two folders
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(run), "--images", str(images), "--masks", str(masks), "--figures", "0"])
    out, err = capsys.readouterr()
    assert stop.value.code == 0, err
    metrics = json.loads((Path(out.strip().splitlines()[-1]).parent / "metrics.json").read_text())
    assert metrics["context"]["trained_on_this_dataset"]  # the run's own seeded val split was scored
