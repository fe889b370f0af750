"""Checkpoints are written atomically in their own folder: a failed or killed save leaves the previous one whole."""

from __future__ import annotations

import pytest
import torch

from droneseg.engine.checkpoints import AtomicCheckpointIO


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    spare = tmp_path / "tmpdir"
    spare.mkdir()
    monkeypatch.setenv("TMPDIR", str(spare))
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    # the new save fails after part of it was written (a big tensor first, then the failure)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(100_000), "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    assert not any(spare.iterdir())  # nothing went through $TMPDIR
    io.save_checkpoint({"global_step": 3}, path)
    assert io.load_checkpoint(path)["global_step"] == 3
