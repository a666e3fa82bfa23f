"""Printed digits: the font split by whole families, the renders, and the demo set's printed splits."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridle.model.decoding import decode_image
from bridle.data.printed_digits import (
    FONT_FAMILIES,
    FONT_PACKAGES,
    POLARITIES,
    QUICK_PRINTED,
    TEST_FAMILIES,
    TRAINING_SET,
    VAL_FAMILIES,
    FontError,
    check_fonts,
    draw_style,
    font_faces,
    render_digit,
)


@pytest.fixture(scope="module")
def faces():
    found = font_faces()
    check_fonts(found)  # CI installs the fonts (scripts/system-deps.sh) before the tests
    return found


def rows(demo_root: Path) -> list[dict[str, str]]:
    with open(demo_root / "image-digits" / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_held_out_families_are_fixed_known_and_disjoint():
    assert set(TEST_FAMILIES) <= set(FONT_FAMILIES) and set(VAL_FAMILIES) <= set(FONT_FAMILIES)
    assert not set(TEST_FAMILIES) & set(VAL_FAMILIES)
    names = [family for families in FONT_FAMILIES.values() for family in families]
    assert len(names) == len(set(names))  # a font family belongs to one design family


def test_every_face_of_a_design_family_lands_in_one_split(faces):
    splits: dict[str, set[str]] = {}
    for face in faces:
        splits.setdefault(face.design, set()).add(face.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {f.split for f in faces} == {"printed-train", "val", "printed-test"}


def test_missing_fonts_are_a_clear_error():
    with pytest.raises(FontError, match="system-deps"):
        check_fonts([])


@pytest.mark.parametrize("polarity", POLARITIES)
def test_a_render_has_its_canvas_polarity_and_the_whole_digit_in_the_centre_square(faces, polarity):
    rng = np.random.default_rng(0)
    for k in range(20):
        style = draw_style(rng, polarity)
        image = render_digit(faces[(7 * k) % len(faces)], k % 10, style)
        w, h = style.canvas
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        grey = image.astype(float).mean(axis=2)
        paper, ink = np.mean(style.paper), np.mean(style.ink)
        assert (paper > ink) == (polarity == "dark-on-light")
        inked = np.abs(grey - paper) > 0.5 * abs(ink - paper)  # (h, w)
        assert inked.any()
        # the service crops the centre square of the shorter side: no ink may lie outside it
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        assert not inked[:, :left].any() and not inked[:, left + side :].any()
        assert not inked[:top].any() and not inked[top + side :].any()


def test_a_large_render_decodes_like_a_training_example(faces):
    style = draw_style(np.random.default_rng(3), "dark-on-light")
    image = render_digit(faces[0], 8, style)
    decoded = decode_image(_png(image), 32)
    assert decoded.shape == (3, 32, 32)
    grey = decoded.astype(float).mean(axis=0)
    assert grey.max() - grey.min() > 60  # the digit survives the resize to 32 px


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_demo_set_has_printed_splits_by_font_family_and_a_training_manifest(demo_root: Path):
    table = rows(demo_root)
    by_split: dict[str, set[str]] = {}
    for r in table:
        if r["source"] == "printed":
            by_split.setdefault(r["split"], set()).add(r["design"])
    assert set(by_split) == {"printed-train", "val", "printed-test"}
    assert by_split["printed-test"] <= set(TEST_FAMILIES)
    assert by_split["val"] <= set(VAL_FAMILIES)
    assert not by_split["printed-train"] & (set(TEST_FAMILIES) | set(VAL_FAMILIES))
    test_polarities = {r["polarity"] for r in table if r["split"] == "printed-test"}
    assert test_polarities == set(POLARITIES)
    # val holds held-out handwritten digits too (the calibration data), and never the test split's
    assert {r["source"] for r in table if r["split"] == "val"} == {"sklearn", "printed"}
    with open(demo_root / "image-digits" / TRAINING_SET, newline="") as f:
        training = list(csv.DictReader(f))
    assert {r["split"] for r in training} == {"train", "printed-train"}
    repeats = QUICK_PRINTED.handwritten_repeats
    assert len(training) == sum({"train": repeats, "printed-train": 1}.get(r["split"], 0) for r in table)
    listed = Counter(r["path"] for r in training)
    assert {listed[r["path"]] for r in training if r["source"] == "sklearn"} == {repeats}
    assert {listed[r["path"]] for r in training if r["source"] == "printed"} == {1}
    assert all((demo_root / "image-digits" / r["path"]).is_file() for r in training)


def test_the_printed_digits_are_deterministic(tmp_path: Path, demo_root: Path):
    from bridle.data.demo_data import build_all

    build_all(tmp_path, quick=True, seed=0, only=["image-digits"])
    again = rows(tmp_path)
    assert again == rows(demo_root)
    first = next(r for r in again if r["split"] == "printed-test")["path"]
    a = (tmp_path / "image-digits" / first).read_bytes()
    assert a == (demo_root / "image-digits" / first).read_bytes()


def test_system_deps_installs_every_font_package():
    script = (Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh").read_text()
    assert all(package in script for package in FONT_PACKAGES)
