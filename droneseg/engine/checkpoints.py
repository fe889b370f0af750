"""Checkpoints written by our atomic writer: a temporary file in the checkpoint's own folder, fsync, ``os.replace``,
fsync of the folder (:func:`droneseg.io.atomic_save`).

Lightning's default writes through an fsspec transaction into ``$TMPDIR`` and then moves the file without fsync:
across filesystems (a tmpfs ``/tmp``, runs on NFS or Lustre) the move is a copy, and a kill during it leaves a
truncated ``last.ckpt``; it also puts a second copy of every checkpoint in ``/tmp``. Here the previous checkpoint
stays whole and loadable until the new one is complete, and nothing is written outside the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from droneseg.io import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with an atomic, durable save (loading is Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{self.__class__.__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(Path(path), lambda fh: torch.save(checkpoint, fh))
