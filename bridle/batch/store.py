"""The output dataset of a job, local or at any fsspec URL:

    job.json                          what the job is: its input's fingerprint, shard size and models
    windows/<model>/part-00003.parquet  one row per window of shard 3's files that <model> read
    clips/<model>/part-00003.parquet    one row per file of them: its clip embedding and labels
    errors/part-00003.parquet         shard 3's files that could not be used, with the reason
    done/part-00003.json              shard 3 is complete (written last)

Every file appears whole or not at all: locally through a temporary sibling and a rename
(bridle/model/atomic.py); elsewhere written under a temporary name and moved into place. A shard without
its done marker is redone from scratch and overwrites its own files, so a killed job loses only the
shards in flight and a re-run duplicates nothing.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from bridle.batch.inputs import filesystem
from bridle.model.atomic import atomic_write_bytes

JOB_FILE = "job.json"
WINDOWS = "windows"
CLIPS = "clips"
ERRORS = "errors"
DONE = "done"


class JobMismatch(ValueError):
    """The output folder holds the results of another job (other input, models or shard size)."""


def part_name(shard: int) -> str:
    return f"part-{shard:05d}"


class OutputStore:
    """Reads and writes one job's output folder; cheap to build, so each actor makes its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = filesystem(url)
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def windows_path(self, model: str, shard: int) -> str:
        return self.path(WINDOWS, model, f"{part_name(shard)}.parquet")

    def clips_path(self, model: str, shard: int) -> str:
        return self.path(CLIPS, model, f"{part_name(shard)}.parquet")

    def errors_path(self, shard: int) -> str:
        return self.path(ERRORS, f"{part_name(shard)}.parquet")

    def write(self, path: str, data: bytes) -> None:
        """Write `data` to `path` so that it appears complete or not at all."""
        if isinstance(self.fs, LocalFileSystem):
            atomic_write_bytes(path, data)
            return
        parent, name = posixpath.split(path)
        tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def clear_shard(self, shard: int) -> None:
        """Remove what an unfinished earlier attempt at `shard` wrote, so its redo starts clean."""
        name = f"{part_name(shard)}.parquet"
        tables = [*self.fs.glob(self.path(WINDOWS, "*", name)), *self.fs.glob(self.path(CLIPS, "*", name))]
        for path in [*tables, self.errors_path(shard)]:
            if self.fs.exists(path):
                self.fs.rm_file(path)

    # ---- the job record ----------------------------------------------------------------------
    def claim(self, record: dict[str, Any]) -> None:
        """Write `record` as job.json, or check that the one there is the same job."""
        path = self.path(JOB_FILE)
        if not self.fs.exists(path):
            self.write(path, json.dumps(record, indent=2).encode())
            return
        existing = json.loads(self.fs.cat_file(path))
        differ = sorted(k for k in record.keys() | existing.keys() if record.get(k) != existing.get(k))
        if differ:
            raise JobMismatch(
                f"{self.url} holds the output of another job (it differs in {', '.join(differ)}): "
                "write to a new output folder, or delete this one to start over"
            )

    # ---- completion markers ------------------------------------------------------------------
    def done_shards(self) -> set[int]:
        folder = self.path(DONE)
        if not self.fs.exists(folder):
            return set()
        names = (posixpath.basename(p) for p in self.fs.ls(folder, detail=False))
        return {
            int(n[len("part-") : -len(".json")])
            for n in names
            if n.startswith("part-") and n.endswith(".json")
        }

    def mark_done(self, shard: int, summary: dict[str, Any]) -> None:
        self.write(self.path(DONE, f"{part_name(shard)}.json"), json.dumps(summary).encode())

    def summaries(self) -> list[dict[str, Any]]:
        """The done markers' summaries, by shard."""
        return [
            json.loads(self.fs.cat_file(self.path(DONE, f"{part_name(s)}.json")))
            for s in sorted(self.done_shards())
        ]
