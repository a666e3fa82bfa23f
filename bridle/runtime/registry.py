"""The models a process runs and their batchers, and the reload that swaps them while serving.

`Registry` holds every live load (by instance id, bridle/runtime/models.py) and its batchers, and `current`:
the load each key serves. `stage()` reads the model directories again: a directory whose fingerprint is
unchanged keeps its load; a new or changed one is loaded, given batchers and warmed up beside the old
loads, which keep serving. Any failure (a manifest, a hash, ONNX Runtime, the warm-up) discards what the
stage made and raises `ModelLoadError` naming the directory: the old loads serve on. `commit()` makes
the staged set current (new requests go to it); the caller `discard()`s the loads it replaced once the
requests in flight on them have finished. The engine process (bridle/runtime/engine.py) and the one-process
service (bridle/service/infer.py) both reload through it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridle.runtime.batcher import Batcher
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import LoadedModel, model_directories
from bridle.runtime.versions import fingerprint

log = logging.getLogger("bridle.runtime")

Loader = Callable[[Path, str | None], LoadedModel]  # (directory, version) -> a load
StartBatchers = Callable[[dict[str, LoadedModel]], dict[tuple[str, str], Batcher]]  # by instance
WarmUp = Callable[[dict[tuple[str, str], Batcher], dict[str, LoadedModel]], Any]  # awaitable


@dataclass
class Staged:
    """A reload, loaded and warm, not serving yet."""

    current: dict[str, LoadedModel]  # key -> load, once committed
    added: list[LoadedModel] = field(default_factory=list)  # new loads (new or changed directories)
    removed: list[LoadedModel] = field(default_factory=list)  # loads serving now and not after

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def summary(self) -> dict[str, list[str]]:
        return {
            "loaded": sorted(m.key for m in self.added),
            "unloaded": sorted(m.key for m in self.removed if m.key not in self.current),
            "models": sorted(self.current),
        }


class Registry:
    def __init__(
        self,
        paths: list[Path],
        precision: Sequence[str],
        load: Loader,
        start_batchers: StartBatchers | None,
        warm_up: WarmUp | None,
        current: dict[str, LoadedModel],
    ) -> None:
        """`current`: the loads serving now (by key); `start_batchers` / `warm_up` make and warm a
        load's batchers (None: this process runs no batchers, a front end's manifests only)."""
        self.paths, self.precision, self.load = paths, list(precision), load
        self._start_batchers, self._warm_up = start_batchers, warm_up
        self.current = current
        self.models: dict[str, LoadedModel] = {m.instance: m for m in current.values()}
        self.batchers: dict[tuple[str, str], Batcher] = {}

    def start(self) -> None:
        """Batchers for the loads serving now (in the event loop)."""
        if self._start_batchers is not None:
            self.batchers.update(self._start_batchers(dict(self.models)))

    async def stage(self) -> Staged:
        """The model directories as they are now, loaded and warm beside the current loads."""
        added: list[LoadedModel] = []
        try:
            found = await asyncio.to_thread(model_directories, self.paths, self.precision)
            by_directory = {m.directory: m for m in self.current.values()}
            staged: dict[str, LoadedModel] = {}
            for directory, version in found:
                old = by_directory.get(directory)
                if old is not None and old.version == version and old.fingerprint == fingerprint(directory):
                    staged[old.key] = old
                    continue
                model = await asyncio.to_thread(self.load, directory, version)
                added.append(model)
                staged[model.key] = model
                log.info("reload: loaded %s from %s", model.key, directory)
            new = {m.instance: m for m in added}
            self.models.update(new)
            if self._start_batchers is not None and new:
                made = self._start_batchers(new)
                self.batchers.update(made)
                if self._warm_up is not None:
                    await self._warm_up(made, new)
        except Exception as e:
            await self.discard(added)
            if isinstance(e, ModelLoadError):
                raise
            if isinstance(e, OSError):  # a directory that went while it was read
                raise ModelLoadError(f"reading the model directories: {e}") from e
            raise ModelLoadError(f"warming up the new models: {type(e).__name__}: {e}") from e
        kept = {m.instance for m in staged.values()}
        removed = [m for m in self.current.values() if m.instance not in kept]
        return Staged(staged, added, removed)

    def commit(self, staged: Staged) -> None:
        """New requests go to the staged loads from now on."""
        self.current = staged.current

    async def discard(self, models: list[LoadedModel]) -> None:
        """Stop the batchers of loads no request will use any more, and forget them."""
        for model in models:
            self.models.pop(model.instance, None)
            for key in [k for k in self.batchers if k[0] == model.instance]:
                await self.batchers.pop(key).stop()
