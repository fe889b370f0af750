"""Every shipped preset validates, names its own scheme, and builds its network."""

from __future__ import annotations

import pytest

from droneseg.config import load_config, presets
from droneseg.models import build_model
from droneseg.schemes import get_scheme


def test_the_presets_shipped():
    assert {"demo", "full", "full-gpu", "six", "paved", "luma"} <= set(presets())


@pytest.mark.parametrize("name", presets())
def test_preset_validates_and_builds(name):
    cfg = load_config(name)
    assert cfg.name == name
    net = build_model(cfg.model.model_copy(update={"weights": None}), get_scheme(cfg.data.scheme).num_classes)
    assert net.num_classes == get_scheme(cfg.data.scheme).num_classes
