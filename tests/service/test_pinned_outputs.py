"""The bundled models' outputs for the README's example inputs, pinned through the real HTTP service.

Any refactor of decoding, windowing, the runtime or the routes must leave these unchanged: embeddings
(clip and per window) within `FLOAT_TOLERANCE`, codes and top labels exactly. The inputs are the
README's spoken "seven" (`espeak-ng -v en-us -w seven.wav seven`), a PNG and an mp4 from
bridle/data/media_files.py. The values live in `pinned_outputs.json`, recorded from the code of the time with
`BRIDLE_RECORD_PINNED=1 .venv/bin/pytest tests/service/test_pinned_outputs.py` (which writes the file and
fails, so a recording run can never pass as a check).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, run_server

from bridle.data.media_files import make_image, make_video

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
PINNED = Path(__file__).with_name("pinned_outputs.json")
FLOAT_TOLERANCE = 1e-4
TOP_K = 3


def _inputs(directory: Path) -> dict[str, tuple[str, str, bytes, str]]:
    """Case name -> (model, filename, bytes, content type)."""
    seven = directory / "seven.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(seven), "seven"], check=True, timeout=30)
    return {
        "seven.wav": ("audio-digits", "seven.wav", seven.read_bytes(), "audio/wav"),
        "gradient.png": ("image-digits", "gradient.png", make_image("png", (40, 30)), "image/png"),
        "grey.mp4": ("video-motion", "grey.mp4", make_video("mp4", 2.5), "video/mp4"),
    }


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from run_server([MODELS / name for name in ("audio-digits", "image-digits", "video-motion")])


def _outputs(server: Server, model: str, upload: tuple[str, bytes, str]) -> dict:
    """What the three routes say about one upload, reduced to the values worth pinning."""
    params = {"model": model}
    answers = {}
    for route, extra in (("/embed", {}), ("/tokenize", {}), ("/classify", {"top_k": TOP_K})):
        r = server.client.post(route, params=params | extra, files={"file": upload})
        assert r.status_code == 200, r.text
        (answers[route],) = r.json()["results"]
    emb, tok, cls = answers["/embed"], answers["/tokenize"], answers["/classify"]
    return {
        "duration": emb["duration"],
        "embedding": emb["embedding"],
        "window_embeddings": [w["embedding"] for w in emb["windows"]],
        "spans": [[w["start"], w["end"]] for w in emb["windows"]],
        "codes": [w["codes"] for w in tok["windows"]],
        "labels": [x["label"] for x in cls["labels"]],
        "scores": [x["score"] for x in cls["labels"]],
        "window_labels": [[x["label"] for x in w["labels"]] for w in cls["windows"]],
    }


def test_bundled_models_give_the_pinned_outputs(server: Server, tmp_path: Path) -> None:
    seen = {
        case: _outputs(server, model, (name, data, ctype))
        for case, (model, name, data, ctype) in _inputs(tmp_path).items()
    }
    if os.environ.get("BRIDLE_RECORD_PINNED") == "1":
        PINNED.write_text(json.dumps(seen, indent=1) + "\n")
        pytest.fail(f"recorded {PINNED.name}; run again without BRIDLE_RECORD_PINNED to check")
    pinned = json.loads(PINNED.read_text())
    assert sorted(seen) == sorted(pinned)
    for case, want in pinned.items():
        got = seen[case]
        for key in ("codes", "labels", "window_labels"):
            assert got[key] == want[key], f"{case}: {key} changed"
        for key in ("duration", "embedding", "window_embeddings", "spans", "scores"):
            np.testing.assert_allclose(
                np.asarray(got[key], dtype=np.float64),
                np.asarray(want[key], dtype=np.float64),
                rtol=0,
                atol=FLOAT_TOLERANCE,
                err_msg=f"{case}: {key} changed",
            )
