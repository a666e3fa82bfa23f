"""`bridle-import beats --labels class_labels_indices.csv`: AudioSet's display names with the mids beside
them, kept by the servable checkpoint and the manifest; a CSV that does not fit is a CLI error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridle.data.beats_files import (
    LABELS,
    MID_DICT,
    MIDS,
    MODEL_CFG,
    NUM_FRAMES,
    make_model,
    save_upstream,
    write_class_labels,
)
from bridle.importers.beats import BeatsImportError, import_beats
from bridle.importers.cli import app
from bridle.model.checkpoint import load_servable
from bridle.model.manifest import Manifest, ManifestError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def audioset_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned checkpoint whose label_dict holds mids, as AudioSet heads' do."""
    root = tmp_path_factory.mktemp("audioset-head")
    return save_upstream(root / "BEATs_as.pt", make_model(), MODEL_CFG, label_dict=MID_DICT)


def _import(checkpoint: Path, out: Path, *extra: str):
    args = ["beats", "--checkpoint", str(checkpoint), "--out", str(out), "--num-frames", str(NUM_FRAMES)]
    return CliRunner().invoke(app, [*args, *extra])


def test_labels_become_names_with_their_ids(audioset_head: Path, tmp_path: Path) -> None:
    csv = write_class_labels(tmp_path / "class_labels_indices.csv")
    run = _import(audioset_head, tmp_path / "servable", "--labels", str(csv))
    assert run.exit_code == 0, run.output
    assert "named by class_labels_indices.csv" in run.output
    back = load_servable(tmp_path / "servable")
    assert back.labels == LABELS and back.label_ids == MIDS  # class-index order, whatever the row order
    assert json.loads((tmp_path / "servable" / "config.json").read_text())["label_ids"] == MIDS
    plain = import_beats(audioset_head, num_frames=NUM_FRAMES)  # without the file: the ids, as before
    assert plain.labels == MIDS and plain.label_ids is None


def _rows(**change: list[str]) -> list[list[str]]:
    rows = [[str(i), MIDS[i], LABELS[i]] for i in range(len(MIDS))]
    for index, row in change.items():
        rows[int(index.lstrip("_"))] = row
    return rows


BAD_CSV = {
    "header": ({"header": "index,mid,name"}, "header must be 'index,mid,display_name'"),
    "gap": ({"rows": _rows()[:3] + _rows()[4:]}, r"indices must run 0..6, a row each; missing \[3\]"),
    "lacks a mid": (
        {"rows": _rows()[:3] + [[str(i - 1), *_rows()[i][1:]] for i in range(4, 7)]},
        r"lacks 1 class id\(s\) of the label_dict .*'/m/03kmc9' \(first at head row 3\)",
    ),
    "twice": ({"rows": [*_rows(), ["3", "/m/03kmc9", "Siren"]]}, "index 3 appears twice"),
    "not a number": ({"rows": _rows(_2=["two", MIDS[2], LABELS[2]])}, "index 'two' is not a number"),
    "empty name": ({"rows": _rows(_2=["2", MIDS[2], ""])}, "must not be empty"),
    "repeated name": ({"rows": _rows(_2=["2", MIDS[2], "Dog"])}, "display_name must appear once.*Dog"),
    "repeated mid": ({"rows": _rows(_2=["2", MIDS[1], LABELS[2]])}, "mid must appear once.*04rlf"),
    "empty mid": ({"rows": _rows(_2=["2", "", LABELS[2]])}, "must not be empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_a_bad_csv_is_a_cli_error(case: str, audioset_head: Path, tmp_path: Path) -> None:
    layout, message = BAD_CSV[case]
    csv = write_class_labels(tmp_path / "labels.csv", **layout)
    run = _import(audioset_head, tmp_path / "servable", "--labels", str(csv))
    assert run.exit_code == 1
    assert run.output.startswith("error: ") and re.search(message, run.output), run.output
    assert not (tmp_path / "servable").exists()


# a head whose label_dict lists the classes in an order of its own, neither the CSV's nor sorted (as the
# released AudioSet checkpoints' do, microsoft/unilm#1012)
OWN_ORDER = [4, 0, 6, 2, 5, 1, 3]


def test_a_label_dict_in_its_own_order_gets_each_rows_name(tmp_path: Path) -> None:
    mids = [MIDS[i] for i in OWN_ORDER]
    assert mids != MIDS and mids != sorted(MIDS)
    head = save_upstream(tmp_path / "own.pt", make_model(), MODEL_CFG, label_dict=dict(enumerate(mids)))
    # the CSV in its own index order (MIDS'), its rows shuffled, plus a class this head does not have
    rows = [[str(i), MIDS[i], LABELS[i]] for i in (3, 0, 6, 1, 5, 2, 4)] + [["7", "/m/0extra", "Extra"]]
    csv = write_class_labels(tmp_path / "class_labels_indices.csv", rows=rows)
    run = _import(head, tmp_path / "servable", "--labels", str(csv))
    assert run.exit_code == 0, run.output
    back = load_servable(tmp_path / "servable")
    assert back.label_ids == mids
    assert back.labels == [LABELS[i] for i in OWN_ORDER]  # row r: the name of label_dict[r]
    assert dict(zip(back.label_ids, back.labels, strict=True)) == dict(zip(MIDS, LABELS, strict=True))


def test_labels_need_a_head_and_a_readable_file(audioset_head: Path, tmp_path: Path) -> None:
    run = _import(audioset_head, tmp_path / "s", "--labels", str(tmp_path / "none.csv"))
    assert run.exit_code == 1 and "cannot read the class labels" in run.output
    headless_cfg = {**MODEL_CFG, "finetuned_model": False}
    headless = save_upstream(tmp_path / "pre.pt", make_model(cfg=headless_cfg), headless_cfg)
    with pytest.raises(BeatsImportError, match="has none"):
        import_beats(headless, num_frames=NUM_FRAMES, labels_csv=write_class_labels(tmp_path / "l.csv"))


def test_manifests_with_and_without_label_ids() -> None:
    older = json.loads((REPO / "models" / "audio-digits" / "manifest.json").read_text())
    assert "label_ids" not in older
    manifest = Manifest.from_dict(older)  # an older manifest reads, and writes back without the field
    assert manifest.label_ids is None and manifest.to_dict() == older
    ids = [f"/m/{i}" for i in range(len(older["labels"]))]
    with_ids = Manifest.from_dict({**older, "label_ids": ids})
    assert with_ids.label_ids == ids and Manifest.from_dict(with_ids.to_dict()) == with_ids
    with pytest.raises(ManifestError, match="label_ids must be a non-empty string per label"):
        Manifest.from_dict({**older, "label_ids": ids[:-1]})
