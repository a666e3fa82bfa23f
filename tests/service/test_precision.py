"""The service on an int8 sibling of the bundled image model (made and gated here): settings choose the
variant when both are present, `/models` shows the precision, and the answers match float32's."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, run_server
from PIL import Image
from pydantic import ValidationError

from bridle.data.demo_data import IMAGE_SIZE, digit_images, upscale
from bridle.export.quantize import write_variant
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import choose_variants
from bridle.service.settings import Settings
from tests.held_out import build_held_out

MODELS = Path(__file__).resolve().parents[2] / "models"
CHECKED = 20  # the last 20 load_digits images


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    data = build_held_out(root / "data")["image-digits"]
    int8 = write_variant(MODELS / "image-digits", "int8", data, out_dir=root / "image-digits-int8")
    return {"fp32": MODELS / "image-digits", "int8": int8.model_dir}


@pytest.fixture(scope="module")
def int8_server(variants: dict[str, Path]) -> Iterator[Server]:
    yield from run_server([variants["fp32"], variants["int8"]], precision=["int8", "fp32"])


@pytest.fixture(scope="module")
def default_server(variants: dict[str, Path]) -> Iterator[Server]:
    yield from run_server([variants["fp32"], variants["int8"]])


def pngs() -> list[tuple[str, tuple[str, bytes, str]]]:
    images, _ = digit_images()
    files = []
    for i in range(len(images) - CHECKED, len(images)):
        buf = io.BytesIO()
        Image.fromarray(upscale(images[i], IMAGE_SIZE)).save(buf, format="PNG")
        files.append(("file", (f"{i}.png", buf.getvalue(), "image/png")))
    return files


def served(server: Server) -> dict:
    (model,) = server.client.get("/models").json()["models"]
    return model


def test_settings_choose_the_variant_and_models_shows_its_precision(
    int8_server: Server, default_server: Server, variants: dict[str, Path]
) -> None:
    int8, fp32 = served(int8_server), served(default_server)
    assert (int8["precision"], Path(int8["directory"])) == ("int8", variants["int8"])
    assert int8["manifest"]["precision"] == "int8" and int8["manifest"]["gate"]["passed"]
    assert (fp32["precision"], Path(fp32["directory"])) == ("fp32", variants["fp32"])  # the default
    assert int8["name"] == fp32["name"] == "image-digits"


def test_int8_answers_like_float32(int8_server: Server, default_server: Server) -> None:
    answers = {}
    for key, server in {"int8": int8_server, "fp32": default_server}.items():
        labels = server.client.post("/classify", files=pngs(), params={"top_k": 1})
        embeddings = server.client.post("/embed", files=pngs(), params={"normalize": True})
        assert labels.status_code == 200 and embeddings.status_code == 200, (labels.text, embeddings.text)
        answers[key] = (
            [r["labels"][0]["label"] for r in labels.json()["results"]],
            np.array([r["embedding"] for r in embeddings.json()["results"]]),  # (CHECKED, D) unit rows
        )
    (int8_labels, int8_emb), (fp32_labels, fp32_emb) = answers["int8"], answers["fp32"]
    assert sum(a == b for a, b in zip(int8_labels, fp32_labels, strict=True)) >= CHECKED - 1
    assert (int8_emb * fp32_emb).sum(-1).min() >= 0.99  # cosine per image
    assert not np.array_equal(int8_emb, fp32_emb)  # two different graphs answered


def test_variant_choice_is_explicit(variants: dict[str, Path]) -> None:
    both = [variants["fp32"], variants["int8"]]
    assert choose_variants(both, ["fp32"]) == [variants["fp32"]]
    assert choose_variants(both, ["fp16", "int8"]) == [variants["int8"]]
    assert choose_variants([variants["int8"]], ["fp32"]) == [variants["int8"]]  # the only one there
    with pytest.raises(ModelLoadError, match=r"has \['fp32', 'int8'\] variants and BRIDLE_PRECISION"):
        choose_variants(both, ["fp16"])
    with pytest.raises(ModelLoadError, match="two model directories are named 'image-digits', both int8"):
        choose_variants([variants["int8"], variants["int8"]], ["int8"])


def test_precision_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDLE_PRECISION", raising=False)
    assert Settings().precision == ["fp32"]
    monkeypatch.setenv("BRIDLE_PRECISION", "int8, fp32")
    assert Settings().precision == ["int8", "fp32"]
    monkeypatch.setenv("BRIDLE_PRECISION", "int4")
    with pytest.raises(ValidationError, match="precision must list some of"):
        Settings()
