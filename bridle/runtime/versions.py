"""Model versions: `models/NAME/VERSION/` directories beside the flat `models/NAME/`, and which one a
request's `model` names.

A served model is known by its key: `NAME` for a flat model directory (`models/NAME/manifest.json`, as
ever), `NAME@VERSION` for a version (`models/NAME/VERSION/manifest.json`). `model=NAME` takes the newest
version (versions compare as natural sort keys: 2 < 10, 1.9 < 1.10), `model=NAME@VERSION` a given one;
a name served flat is that directory. An upload that names no model goes to the first model of its
modality (`default_model`: the service's and the batch job's choice). A directory's fingerprint (its
manifest's bytes and its files' sizes and modification times) tells a reload which versions changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from bridle.model.manifest import Manifest

VERSION_SEPARATOR = "@"
_PARTS = re.compile(r"(\d+)")


def model_key(name: str, version: str | None) -> str:
    return name if version is None else f"{name}{VERSION_SEPARATOR}{version}"


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """A natural sort key: digit runs compare as numbers, the rest as text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PARTS.split(version) if p)


def fingerprint(directory: Path) -> str:
    """Changes when the manifest's bytes or any file of the directory (size, mtime) change."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if path.name == "manifest.json":
            digest.update(path.read_bytes())
    return digest.hexdigest()


class Versioned(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str | None: ...


class Served(Versioned, Protocol):
    @property
    def manifest(self) -> Manifest: ...


M = TypeVar("M", bound=Versioned)
S = TypeVar("S", bound=Served)


def newest(models: Mapping[str, M]) -> dict[str, M]:
    """Per model name, what `model=NAME` takes: its flat directory, else its newest version."""
    chosen: dict[str, M] = {}
    for model in models.values():
        held = chosen.get(model.name)
        if held is None or (
            held.version is not None
            and (model.version is None or version_order(model.version) > version_order(held.version))
        ):
            chosen[model.name] = model
    return chosen


def resolve(models: Mapping[str, M], requested: str) -> M | None:
    """The model `requested` names (a key, or a name: its newest), None when nothing matches."""
    if requested in models:
        return models[requested]
    if VERSION_SEPARATOR in requested:
        return None
    return newest(models).get(requested)


def default_model(models: Mapping[str, S], modality: str) -> S | None:
    """The model an upload of `modality` goes to when it names none: of what each name takes (`newest`),
    the first of that modality; None when no model takes it."""
    return next((m for m in newest(models).values() if m.manifest.modality == modality), None)
