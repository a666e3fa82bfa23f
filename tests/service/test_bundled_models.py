"""The service on the default models shipped in `models/`, with media they were trained to recognise.

Every directory under `models/` that holds a manifest.json is served. `models/audio-digits` is required (its
absence fails the module); image-digits and video-motion are checked when present. Inputs are made here the
way bridle/data/demo_data.py makes its training sets (espeak-ng words, upscaled load_digits images, a moving
digit clip); the spoken words use espeak-ng's plain en-us voice, which is not among the training voices.
"""

from __future__ import annotations

import functools
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, run_server
from PIL import Image

from bridle.data import DIGIT_WORDS
from bridle.data.demo_data import (
    IMAGE_SIZE,
    SPRITE_SIZE,
    VIDEO_FPS,
    moving_digit,
    upscale,
    write_mp4,
)
from bridle.data.demo_data import digit_images as load_digit_images
from bridle.model.manifest import MANIFEST_FILE, Manifest, read_manifest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
REQUIRED = "audio-digits"
SPOKEN = ("seven", "three", "nine", "two")  # >= 3 of 4 must be heard right
IMAGE_CHECKS = 20  # the last 20 load_digits images
MIN_IMAGE_ACCURACY = 0.8
VIDEO_DIRECTIONS = ("left", "down")

Upload = tuple[str, tuple[str, bytes, str]]
digit_images = functools.cache(load_digit_images)  # (n, 8, 8) uint8 and labels (n,); read once


def bundled_dirs() -> list[Path]:
    """Model directories under models/ (hidden ones are exports still being written)."""
    return sorted(p.parent for p in MODELS.glob(f"*/{MANIFEST_FILE}") if not p.parent.name.startswith("."))


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    """Directory name -> manifest of every bundled model; fails when models/audio-digits is missing."""
    found = {d.name: read_manifest(d) for d in bundled_dirs()}
    assert REQUIRED in found, (
        f"{MODELS / REQUIRED} with a {MANIFEST_FILE} is missing: export the default model"
    )
    return found


@pytest.fixture(scope="module")
def server(manifests: dict[str, Manifest]) -> Iterator[Server]:
    yield from run_server([MODELS / name for name in manifests], max_batch_size=32, max_wait_ms=5)


def manifest_of(manifests: dict[str, Manifest], name: str) -> Manifest:
    if name not in manifests:
        pytest.skip(f"{MODELS / name} is not bundled yet")
    return manifests[name]


# ---- media ---------------------------------------------------------------------------------------------


def spoken(word: str, directory: Path) -> Upload:
    """`word` said by espeak-ng's plain en-us voice (not one of the voice+variant pairs it trained on)."""
    path = directory / f"{word}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), word], check=True, timeout=30)
    return ("file", (path.name, path.read_bytes(), "audio/wav"))


def digit_png(index: int) -> tuple[Upload, str]:
    """load_digits image `index` as the 32x32 RGB PNG training used, and its label word."""
    images, targets = digit_images()
    buf = io.BytesIO()
    Image.fromarray(upscale(images[index], IMAGE_SIZE)).save(buf, format="PNG")
    return ("file", (f"{index}.png", buf.getvalue(), "image/png")), DIGIT_WORDS[targets[index]]


def moving_clip(direction: str, directory: Path, index: int = -1) -> Upload:
    """A load_digits digit gliding in `direction` as an h264 mp4, like the video-motion set."""
    images, _ = digit_images()
    sprite = np.asarray(Image.fromarray(images[index]).resize((SPRITE_SIZE, SPRITE_SIZE), Image.BILINEAR))
    path = directory / f"{direction}.mp4"
    write_mp4(path, moving_digit(sprite, direction, (9, 9)), VIDEO_FPS)
    return ("file", (path.name, path.read_bytes(), "video/mp4"))


def sample(modality: str, directory: Path) -> Upload:
    if modality == "audio":
        return spoken(SPOKEN[0], directory)
    if modality == "image":
        return digit_png(-1)[0]
    return moving_clip(VIDEO_DIRECTIONS[0], directory)


def top1(server: Server, model: str, files: list[Upload]) -> list[str]:
    r = server.client.post("/classify", files=files, params={"model": model, "top_k": 1})
    assert r.status_code == 200, r.text
    return [res["labels"][0]["label"] for res in r.json()["results"]]


# ---- tests ---------------------------------------------------------------------------------------------


def test_every_bundled_model_is_served(server: Server, manifests: dict[str, Manifest]) -> None:
    """Each name once: of a model's float32 and int8 siblings the service loads one (BRIDLE_PRECISION)."""
    assert sorted(server.client.get("/ready").json()["models"]) == sorted(
        {m.name for m in manifests.values()}
    )


@pytest.mark.parametrize("name", ["audio-digits", "image-digits", "video-motion"])
def test_embed_and_tokenize_follow_the_manifest(
    server: Server, manifests: dict[str, Manifest], name: str, tmp_path: Path
) -> None:
    m = manifest_of(manifests, name)
    files = [sample(m.modality, tmp_path)]
    (emb,) = server.client.post("/embed", files=files, params={"model": m.name}).json()["results"]
    assert emb["model"] == m.name and emb["dim"] == m.embedding_dim == len(emb["embedding"])
    assert np.isfinite(emb["embedding"]).all() and np.linalg.norm(emb["embedding"]) > 0
    (tok,) = server.client.post("/tokenize", files=files, params={"model": m.name}).json()["results"]
    for window in tok["windows"]:
        codes = np.array(window["codes"])  # (N, L)
        assert codes.shape == (int(np.prod(m.patch_grid)), m.quantizer.levels)
        assert codes.min() >= 0 and codes.max() < m.quantizer.codebook_size


def test_spoken_digits_are_recognised(server: Server, manifests: dict[str, Manifest], tmp_path: Path) -> None:
    m = manifests[REQUIRED]
    assert set(SPOKEN) <= set(m.labels), m.labels
    heard = top1(server, m.name, [spoken(word, tmp_path) for word in SPOKEN])
    right = sum(h == w for h, w in zip(heard, SPOKEN, strict=True))
    assert right >= len(SPOKEN) - 1, dict(zip(SPOKEN, heard, strict=True))


def test_digit_images_are_recognised(server: Server, manifests: dict[str, Manifest]) -> None:
    m = manifest_of(manifests, "image-digits")
    uploads, truth = zip(*(digit_png(-i) for i in range(1, IMAGE_CHECKS + 1)), strict=True)
    assert set(truth) <= set(m.labels), m.labels
    seen = top1(server, m.name, list(uploads))
    accuracy = np.mean([s == t for s, t in zip(seen, truth, strict=True)])
    assert accuracy >= MIN_IMAGE_ACCURACY, list(zip(truth, seen, strict=True))


def test_moving_digit_directions_are_recognised(
    server: Server, manifests: dict[str, Manifest], tmp_path: Path
) -> None:
    m = manifest_of(manifests, "video-motion")
    assert set(VIDEO_DIRECTIONS) <= set(m.labels), m.labels
    seen = top1(server, m.name, [moving_clip(d, tmp_path) for d in VIDEO_DIRECTIONS])
    # 48 of 48 random clips (6 directions x 8 digits and starts) were right when this was written
    assert list(seen) == list(VIDEO_DIRECTIONS), seen
