"""Every shipped preset validates, names its own scheme, and builds its network."""

from __future__ import annotations

import pytest

from droneseg.config import load_config, presets
from droneseg.models import build_model
from droneseg.schemes import get_scheme


def test_the_presets_shipped():
    assert {"demo", "full", "full-long", "full-gpu", "finetune", "six", "paved", "luma"} <= set(presets())


@pytest.mark.parametrize("name", presets())
def test_preset_validates_and_builds(name):
    cfg = load_config(name)
    assert cfg.name == name
    net = build_model(cfg.model.model_copy(update={"weights": None}), get_scheme(cfg.data.scheme).num_classes)
    assert net.num_classes == get_scheme(cfg.data.scheme).num_classes


def test_full_long_is_the_full_recipe_with_a_two_hour_budget():
    """`full-long` must follow `full` when the recipe changes: only the budget and what spans it differ."""
    full, long = load_config("full").model_dump(), load_config("full-long").model_dump()
    assert long["train"]["max_time"] == "2h" and long["data"]["samples_per_epoch"] == 1000
    differ = {(section, key) for section in full if isinstance(full[section], dict)
              for key in full[section] if full[section][key] != long[section][key]}
    assert differ == {("data", "samples_per_epoch"), ("train", "max_time"), ("train", "max_epochs"),
                      ("train", "patience")}
