"""One shard of files -> Parquet: read, sniff, decode and window each file exactly as the service does,
run the windows through the model's encoder and tokenizer in batches, write the tables (windows, and
each file's clip result as the service pools it), mark it done.

`ShardWorker` is the Ray Data actor: it builds its ONNX Runtime sessions once, from the model files
the driver read (so a cluster's workers need no copy of the model directories), and processes one shard
per call. Nothing here imports Ray: the job hands this class to `map_batches`.
"""

from __future__ import annotations

import io
import mimetypes
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bridle.batch.store import OutputStore
from bridle.batch.tables import WindowMeta, clips_table, errors_table, windows_table
from bridle.model.config import Precision
from bridle.model.decoding import MediaError
from bridle.model.manifest import MANIFEST_FILE, read_manifest
from bridle.model.modalities import Modality, sniff_modality
from bridle.model.windowing import DEFAULT_POLICY, Aggregate, WindowPolicy
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import LoadedModel, choose_variants, find_model_dirs, load_model
from bridle.runtime.sessions import CpuThreads, ProviderChooser
from bridle.runtime.versions import default_model
from bridle.runtime.windows import Limits, Windows, to_windows

ModelFiles = dict[str, dict[str, bytes]]  # model name -> {file name: bytes}


def read_model_files(paths: list[str], precision: tuple[Precision, ...]) -> ModelFiles:
    """The manifest and graphs of every model directory under `paths` (hash-checked), by model name;
    of a model's precision variants, the one the service would load with the same `precision`."""
    models: ModelFiles = {}
    for directory in choose_variants(find_model_dirs([Path(p) for p in paths]), precision):
        manifest = read_manifest(directory, check_hashes=True)
        names = [MANIFEST_FILE, *(spec.path for spec in manifest.files.values())]
        models[manifest.name] = {n: (directory / n).read_bytes() for n in names}
    return models


@dataclass
class _ModelRows:
    """The windows one model has been given in a shard: run in batches of `batch_size` as they come."""

    model: LoadedModel
    batch_size: int
    meta: list[WindowMeta] = field(default_factory=list)
    outputs: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"embedding": [], "codes": [], "logits": []}
    )
    _waiting: list[np.ndarray] = field(default_factory=list)  # signals not yet run, each (k, ...)

    def add(self, path: str, windows: Windows) -> None:
        for i, (start, end) in enumerate(windows.spans):
            self.meta.append(WindowMeta(path, i, start, end, windows.duration))
        self._waiting.append(windows.signal)
        if sum(len(s) for s in self._waiting) >= self.batch_size:
            self._run(whole_batches_only=True)

    def finish(self) -> None:
        if self._waiting:
            self._run(whole_batches_only=False)

    def _run(self, whole_batches_only: bool) -> None:
        signal = np.concatenate(self._waiting)  # (R, ...)
        stop = len(signal) // self.batch_size * self.batch_size if whole_batches_only else len(signal)
        for i in range(0, stop, self.batch_size):
            chunk = signal[i : i + self.batch_size]  # (B, ...)
            encoded = self.model.run("encoder", chunk)
            self.outputs["embedding"].append(encoded["embedding"])  # (B, D)
            self.outputs["codes"].append(self.model.run("tokenizer", chunk)["codes"])  # (B, N, L)
            if self.model.manifest.has_classifier:
                self.outputs["logits"].append(encoded["logits"])  # (B, C)
        self._waiting = [signal[stop:]] if stop < len(signal) else []

    def tables(self, top_k: int, aggregate: Aggregate | None) -> tuple[pa.Table, pa.Table]:
        """(the windows table, the clips table)."""
        self.finish()
        logits = np.concatenate(self.outputs["logits"]) if self.outputs["logits"] else None
        embedding = np.concatenate(self.outputs["embedding"])  # (R, D)
        manifest = self.model.manifest
        windows = windows_table(
            manifest, self.meta, embedding, np.concatenate(self.outputs["codes"]), logits, top_k
        )
        return windows, clips_table(manifest, self.meta, embedding, logits, top_k, aggregate)


class ShardProcessor:
    """Turns shards into output files with loaded models; plain Python, so tests can drive it directly."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        output: str,
        limits: Limits,
        batch_size: int,
        top_k: int,
        windowing: WindowPolicy = DEFAULT_POLICY,
        aggregate: Aggregate | None = None,  # the clip scores' pooling; None: the head's default
    ) -> None:
        self.models = models
        self.store = OutputStore(output)
        self.limits = limits
        self.batch_size = batch_size
        self.top_k = top_k
        self.windowing = windowing
        self.aggregate = aggregate

    def model_for(self, modality: Modality) -> LoadedModel:
        """The first model of the file's modality, as the service picks one for an upload."""
        model = default_model(self.models, modality)
        if model is None:
            raise LookupError(f"no model takes {modality}; models: {sorted(self.models)}")
        return model

    def process(self, shard: int, paths: list[str]) -> dict:
        """Write shard `shard` (its windows per model, its errors, then its done marker); its summary."""
        began, cpu_began = time.monotonic(), time.process_time()
        self.store.clear_shard(shard)
        rows: dict[str, _ModelRows] = {}
        errors: list[tuple[str, str, str]] = []
        for path in paths:
            try:
                with fsspec.open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                errors.append((path, "unreadable", f"{type(e).__name__}: {e}"))
                continue
            try:
                model = self.model_for(sniff_modality(data, mimetypes.guess_type(path)[0]))
                windows = to_windows(model.manifest, data, self.limits, self.windowing)
            except MediaError as e:
                errors.append((path, e.code, str(e)))
                continue
            except LookupError as e:
                errors.append((path, "no_model", str(e)))
                continue
            if model.name not in rows:
                rows[model.name] = _ModelRows(model, self.batch_size)
            rows[model.name].add(path, windows)
        windows_by_model = {}
        for name, model_rows in rows.items():
            table, clips = model_rows.tables(self.top_k, self.aggregate)
            self.store.write(self.store.windows_path(name, shard), _parquet(table))
            self.store.write(self.store.clips_path(name, shard), _parquet(clips))
            windows_by_model[name] = table.num_rows
        if errors:
            self.store.write(self.store.errors_path(shard), _parquet(errors_table(errors)))
        summary = {
            "shard": shard,
            "files": len(paths),
            "windows": sum(windows_by_model.values()),
            "errors": len(errors),
            "windows_by_model": windows_by_model,
            "seconds": time.monotonic() - began,
            "cpu_seconds": time.process_time() - cpu_began,  # this process, every thread (ORT's too)
            "pid": os.getpid(),  # the worker process, and its CPU seconds since it started
            "process_cpu_seconds": time.process_time(),
        }
        self.store.mark_done(shard, summary)
        return summary


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class ShardWorker:
    """The Ray Data actor: ONNX Runtime sessions built once, then one shard per call."""

    def __init__(
        self,
        model_files: ModelFiles,
        providers: list[str],
        threads: int,
        output: str,
        limits: Limits,
        batch_size: int,
        top_k: int,
        windowing: WindowPolicy = DEFAULT_POLICY,
        aggregate: Aggregate | None = None,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bridle-batch-models-")
        chooser = ProviderChooser(override=providers)
        models = {}
        for name, files in model_files.items():
            directory = Path(self._dir.name) / name
            directory.mkdir()
            for file, data in files.items():
                (directory / file).write_bytes(data)
            models[name] = load_model(directory, chooser, CpuThreads(intra_op=threads))
            if models[name].providers[0] != providers[0]:
                raise ModelLoadError(
                    f"{name}: asked for {providers[0]}, ONNX Runtime gave {models[name].providers}"
                )
        self.processor = ShardProcessor(models, output, limits, batch_size, top_k, windowing, aggregate)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of shards (one, as the job asks) -> their summaries."""
        summaries = [
            self.processor.process(int(shard), list(paths))
            for shard, paths in zip(batch["shard"], batch["paths"], strict=True)
        ]
        return {
            "shard": np.array([s["shard"] for s in summaries]),
            "files": np.array([s["files"] for s in summaries]),
            "windows": np.array([s["windows"] for s in summaries]),
            "errors": np.array([s["errors"] for s in summaries]),
        }
