"""Atomic writes: a file or a whole directory appears complete or not at all (torch-free).

Both are written beside their target (a temporary file or directory in the same folder), fsynced and
renamed into place, so a kill at any moment leaves either the old version or the new one. Checkpoints,
training state, model directories and manifests all go through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def write_directory_atomically(directory: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Fill a temporary directory beside `directory` with `write(tmp)`, fsync it, rename it into place.

    If `write` raises, the temporary directory is removed and `directory` is left as it was.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_sibling(target) as tmp:
        write(tmp)
        for file in tmp.iterdir():
            if file.is_file():
                _fsync_file(file)
        _fsync_dir(tmp)
        _replace_directory(tmp, target)
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextmanager
def _temporary_sibling(target: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(DIR_MODE)  # mkdtemp makes it private; the result is read by other users (a service, Docker)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place


def _replace_directory(src: Path, target: Path) -> None:
    """Rename `src` to `target`; an existing `target` is moved aside first and deleted afterwards."""
    if not target.exists():
        os.replace(src, target)
        return
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(src, target)
    except BaseException:
        os.replace(old / target.name, target)  # put the previous version back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
