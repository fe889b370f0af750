"""Shared fixtures: synthetic datasets generated once per test session (no binary fixtures in the repo)."""

from __future__ import annotations

import contextlib
import io
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


@pytest.fixture(scope="session")
def survey_run(tmp_path_factory) -> Path:
    """The demo recipe trained 6 epochs on a synthetic survey (``site.tif``: 1600x1200 px at 10 cm, 400-px blocks)
    -> its run folder (beside it ``site.tif``). A model that has learnt something (val mIoU 0.47, chance 0.20),
    trained once for the tests that need one (about 70 s on 2 cores: use it from ``slow`` tests only)."""
    pytest.importorskip("rasterio", reason="the geo extra is not installed (make test installs it)")
    from droneseg import cli
    from droneseg.geo.scene import write_synthetic_ortho, write_synthetic_survey

    root = tmp_path_factory.mktemp("survey-run")
    write_synthetic_ortho(root / "site.tif", (1600, 1200), gsd=0.1, seed=8)
    survey = write_synthetic_survey(root / "site.tif", block_px=400)["survey"]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        mp.setenv("DRONESEG_CACHE", str(root / "cache"))  # session fixtures run before each test's own cache
        cli.main([str(a) for a in ("train", "-c", "demo", "--data", survey, "--out", root / "runs", "--max-epochs",
                                   "6", "--set", "inference.tile=128", "--set", "data.workers=0", "--set",
                                   "train.sample_every=0")])
    assert not stop.value.code, "training on the synthetic survey failed"
    return Path(out.getvalue().strip().splitlines()[-1])


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
