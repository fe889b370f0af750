"""Shared fixtures: synthetic datasets generated once per test session (no binary fixtures in the repo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from droneseg.data.synthetic import write_synthetic

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semantic-drone-dev"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """12 small scenes in the Kaggle layout; read-only by convention (copy before breaking)."""
    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", n=12, size=(96, 64), seed=7)


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of ``synth_root`` a test may damage."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


@pytest.fixture
def dev_data() -> Path:
    """The real dev set; tests using it skip where it is absent (it may never be committed)."""
    if not (DEV_DATA / "original_images").is_dir():
        pytest.skip(f"real dev data not found at {DEV_DATA}")
    return DEV_DATA


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own array cache, so no test sees another's files."""
    monkeypatch.setenv("DRONESEG_CACHE", str(tmp_path / "cache"))
