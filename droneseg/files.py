"""Writing files atomically, and the output-folder lock: the one writer every module uses.

Contract
--------
* Every writer goes through a temporary file in the target folder and ``os.replace``, so a crash never leaves a
  half-written file under the final name; the file and the folder entry are flushed to disk. An ``OSError``
  without a file name (a full disk) is raised again naming the file the user will look for.
* :func:`folder_lock` refuses a second command writing into the same folder at once.

>>> import tempfile; d = Path(tempfile.mkdtemp()); atomic_write_text(d / "a.txt", "x"); (d / "a.txt").read_text()
'x'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from PIL import Image

from droneseg.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary sibling of ``path`` (same folder, so same filesystem) for a writer that needs a file name
    (GDAL, pyogrio); on success it is flushed to disk and replaces ``path`` in one step, and the folder entry is
    flushed too. Until then ``path`` keeps its old content; on an error (or a kill) the temporary file is all that
    is lost. ``suffix``: the temporary name's ending, for writers that pick a format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the writer closed it; its bytes may still be in the page cache only
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # name the file the user will look for (a full disk says only "No space left")
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """``open`` on a temporary sibling of ``path`` that replaces it once written (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), mode) as fh:
        yield fh


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.droneseg.lock`` file, ``flock``: released by the kernel when the
    process ends, however it ends) while two commands writing the same files there could interleave; a second
    holder is refused at once with a DataError naming the folder and the process holding it. The lock file is
    removed when the holder is done (a killed holder's stays, empty of meaning: the next one takes it over)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; writes stay atomic file by file
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".droneseg.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(f"{folder}: {holder} is writing here; wait for it to finish or choose another folder") from None
        # the lock is on the file we opened: if its holder removed it meanwhile, the path is another file (or none)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        try:
            path.unlink()  # while still locked: a process that opened it now retries on a fresh file
        except FileNotFoundError:
            pass
        os.close(fd)  # closing releases the lock


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save(path: Path, save: Callable[[IO], None]) -> None:
    """Write through ``save(fileobj)``: np.save, PIL's Image.save(fh, format=…), torch.save…"""
    with atomic_open(path, "wb") as fh:
        save(fh)


def save_png(path: Path, array: np.ndarray) -> None:
    atomic_save(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"))


def read_yaml_model(path: Path, model: type, what: str):
    """The YAML file ``path`` validated as the pydantic ``model`` -> an instance. Raises DataError in one line naming
    the file and the problem: unreadable (``cannot read <what>``), not YAML, or the first invalid key."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<top>"
        raise DataError(f"{path}: {key}: {err['msg']}") from None


def file_identity(path: Path | None) -> list:
    """What ties a derived file (a cache entry) to its source: [absolute path, size in bytes, mtime in ns]; [None]
    for no file. A changed, replaced or moved source changes it."""
    if path is None:
        return [None]
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]
