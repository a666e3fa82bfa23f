"""The files of a job: a folder (every file below it) or a manifest (.csv / .jsonl / .parquet with a
`path` column), local or at any fsspec URL; and their split into shards.

Manifest paths may be absolute, URLs, or relative to the manifest's folder. The order is the folder's
sorted listing or the manifest's row order, so a re-run of the same input makes the same shards.
"""

from __future__ import annotations

import hashlib
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
PATH_COLUMN = "path"


class InputError(ValueError):
    """The job's input cannot be listed: missing, not a folder or manifest, or a bad manifest."""


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """How a listed file is named in the output: a plain path when local, else its full URL."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem and path for `url`; InputError when fsspec cannot open that kind of URL."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # "Install s3fs to access S3", "Protocol not known: foo"
        raise InputError(f"cannot open {url!r}: {e}") from e


def list_files(spec: str) -> list[str]:
    """Every file of the input `spec` (folder or manifest), in a stable order; InputError when none."""
    fs, root = filesystem(spec)
    if not fs.exists(root):
        raise InputError(f"the input {spec!r} does not exist")
    if fs.isdir(root):
        root = root.rstrip("/")
        found = [p for p in fs.find(root) if not _hidden(posixpath.relpath(p, root))]
        files = [_url(fs, p) for p in sorted(found)]
        if not files:
            raise InputError(f"the folder {spec!r} holds no files")
        return files
    if not root.lower().endswith(MANIFEST_SUFFIXES):
        raise InputError(
            f"the input {spec!r} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
        )
    return _read_manifest(fs, root, spec)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _read_manifest(fs: fsspec.AbstractFileSystem, path: str, spec: str) -> list[str]:
    try:
        with fs.open(path, "rb") as f:
            if path.lower().endswith(".csv"):
                table = pa.csv.read_csv(f)
            elif path.lower().endswith(".jsonl"):
                table = pa.json.read_json(f)
            else:
                table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read the manifest {spec!r}: {e}") from e
    if PATH_COLUMN not in table.column_names:
        raise InputError(
            f"the manifest {spec!r} has no {PATH_COLUMN!r} column (columns: {table.column_names})"
        )
    folder = posixpath.dirname(path)
    files: list[str] = []
    seen: dict[str, int] = {}
    for row, entry in enumerate(table.column(PATH_COLUMN).to_pylist(), start=1):
        if not isinstance(entry, str) or not entry.strip():
            raise InputError(f"the manifest {spec!r}: row {row} has no path")
        url = entry if "://" in entry else _url(fs, posixpath.normpath(posixpath.join(folder, entry)))
        if url in seen:
            raise InputError(f"the manifest {spec!r} lists {entry!r} twice (rows {seen[url]} and {row})")
        seen[url] = row
        files.append(url)
    if not files:
        raise InputError(f"the manifest {spec!r} lists no files")
    return files


def shard(files: list[str], size: int) -> list[list[str]]:
    """Consecutive groups of `size` files; shard i always holds the same files for the same input."""
    return [files[i : i + size] for i in range(0, len(files), size)]


def digest(files: list[str]) -> str:
    """A fingerprint of the file list, so a re-run can tell that its output belongs to the same input."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()
