"""Checkpoints written by our atomic writer: a temporary file in the checkpoint's own folder, fsync, ``os.replace``,
fsync of the folder (:func:`droneseg.images.atomic_save`).

Lightning's default writes through an fsspec transaction into ``$TMPDIR`` and then moves the file without fsync:
across filesystems (a tmpfs ``/tmp``, runs on NFS or Lustre) the move is a copy, and a kill during it leaves a
truncated ``last.ckpt``; it also puts a second copy of every checkpoint in ``/tmp``. Here the previous checkpoint
stays whole and loadable until the new one is complete, and nothing is written outside the run folder. The
checkpoint is serialised in memory first, so a full disk surfaces as an ``OSError`` naming the file (torch's own
writer would report it as a bare ``RuntimeError``).

Loading never runs code: ``torch.load(weights_only=True)`` whatever the environment says
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only affects calls that leave ``weights_only`` unset); a file that needs
unpickling of arbitrary objects is refused with a :class:`~droneseg.errors.DataError` naming it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from droneseg.errors import DataError
from droneseg.files import atomic_save


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, loaded with ``weights_only=True`` (tensors, containers and plain values).

    ``mmap``: map the file instead of reading it (to look at a few entries of a big checkpoint).
    Raises :class:`DataError` naming ``path`` when it is not such a file (a pickle of other objects is refused
    before any of its code runs; a truncated or foreign file is named as such)."""
    mmap = mmap and zipfile.is_zipfile(path)  # torch maps only its zip format; anything else is read (and judged)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: refused: not a checkpoint that loads without running code ({first[:160]})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable checkpoint (truncated or another format: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with an atomic, durable save (loading is Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{self.__class__.__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a save killed mid-write left it (rank 0 saves alone)
            stale.unlink(missing_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_save(path, lambda fh: fh.write(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Always ``weights_only=True``: see :func:`load_checkpoint_file`."""
        if not Path(path).is_file():
            raise DataError(f"{path}: no such checkpoint")
        return load_checkpoint_file(path, map_location)
