"""Every bundled model has a model card (models/<name>/README.md) that names its data and the data's
licence, says how to rebuild it, and survives a rebuild (the export replaces the model folder)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.parent for p in (REPO / "models").glob("*/manifest.json"))
SECTIONS = ("## Intended use", "## Data", "## Rebuild", "## Evaluation", "## Limitations")
LICENCES = re.compile(
    r"CC BY(-SA|-NC)? \d\.\d|BSD-3-Clause|GPL-3|Apache License 2\.0|SIL Open Font License"
    r"|without a formal licence"  # CIFAR-10
)


def section(card: str, heading: str) -> str:
    """The text under `heading` up to the next second-level heading."""
    start = card.index(heading) + len(heading)
    end = card.find("\n## ", start)
    return card[start : end if end >= 0 else None]


def test_the_three_bundled_models_are_found():
    assert {p.name for p in MODELS} >= {"audio-digits", "image-digits", "video-motion"}


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_every_bundled_model_has_a_card_with_data_licence_and_rebuild_command(model: Path):
    card_path = model / "README.md"
    assert card_path.is_file(), f"{model.name} has no model card (models/{model.name}/README.md)"
    card = card_path.read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert heading in card, f"the {model.name} card lacks the section {heading!r}"
    data = section(card, "## Data")
    assert LICENCES.search(data), f"the {model.name} card's Data section names no licence"
    if "FSDD" in card or "Free Spoken Digit" in card:  # its licence asks for credit wherever it is described
        assert "CC BY-SA 4.0" in data and "Free Spoken Digit Dataset" in data
    built_with = model.name.removesuffix("-int8")  # an int8 sibling is written by its float32 model's build
    assert f"scripts/build-models.sh {built_with}" in section(card, "## Rebuild")
    if "CC BY-NC" in data:  # a non-commercial licence is passed on to the model, and the card says so
        assert "non-commercial" in card.lower()
    assert "%" in section(card, "## Evaluation")  # figures, not a promise of figures


def test_a_rebuild_keeps_the_model_card(tmp_path: Path):
    """build-models.sh with stand-ins for training and export: the export wipes the folder, the card stays."""
    bin_dir, models = tmp_path / "bin", tmp_path / "models"
    bin_dir.mkdir()
    (bin_dir / "bridle-train").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "bridle-export").write_text(
        "#!/bin/sh\n# export SRC OUT --name N --force: replace OUT, as the real export does\n"
        'rm -rf "$3" && mkdir -p "$3" && echo "{}" > "$3/manifest.json"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (models / "video-motion").mkdir(parents=True)
    (models / "video-motion" / "README.md").write_text("# video-motion card\n")
    (models / "video-motion" / "old.onnx").write_text("old")
    env = {**os.environ, "BIN": str(bin_dir), "MODELS": str(models)}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-models.sh"), "video-motion"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (models / "video-motion" / "manifest.json").is_file()
    assert not (models / "video-motion" / "old.onnx").exists()  # the export did replace the folder
    assert (models / "video-motion" / "README.md").read_text() == "# video-motion card\n"
