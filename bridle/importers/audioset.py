"""AudioSet's class list, `class_labels_indices.csv` (published with AudioSet, CC BY 4.0): the display
name and ontology id (mid) of each class of a 527-way AudioSet head, by class index.

    index,mid,display_name
    0,/m/09x0r,"Speech"
    1,/m/05zppz,"Male speech, man speaking"

Standard library only. `read_class_labels` checks the file completely (its header, one row per index
0..N-1, non-empty distinct ids and names) and raises `ClassLabelsError` naming what is wrong.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HEADER = ["index", "mid", "display_name"]


class ClassLabelsError(ValueError):
    """A class-labels CSV that is missing, malformed or does not fit the head it is meant for."""


@dataclass(frozen=True)
class ClassLabels:
    """The classes in index order: `names[i]` is class i's display name, `ids[i]` its mid."""

    names: list[str]
    ids: list[str]


def read_class_labels(path: str | os.PathLike[str]) -> ClassLabels:
    """The classes of an `index,mid,display_name` CSV, in index order."""
    file = Path(path)
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ClassLabelsError(f"cannot read the class labels {str(file)!r}: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise ClassLabelsError(f"{file.name}: the header must be {','.join(HEADER)!r}, found {found!r}")
    by_index: dict[int, tuple[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line (the file's last)
        if len(row) != 3:
            raise ClassLabelsError(f"{file.name} line {line}: 3 columns expected, found {len(row)}: {row}")
        index, mid, name = (c.strip() for c in row)
        if not index.isdigit():
            raise ClassLabelsError(f"{file.name} line {line}: the index {index!r} is not a number")
        if not mid or not name:
            raise ClassLabelsError(f"{file.name} line {line}: the mid and display_name must not be empty")
        if int(index) in by_index:
            raise ClassLabelsError(f"{file.name} line {line}: index {index} appears twice")
        by_index[int(index)] = (mid, name)
    if not by_index:
        raise ClassLabelsError(f"{file.name} lists no classes")
    last = max(by_index)
    missing = sorted(set(range(last + 1)) - set(by_index))
    if missing:
        raise ClassLabelsError(
            f"{file.name}: the indices must run 0..{last}, a row each; missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}"
        )
    ids = [by_index[i][0] for i in range(len(by_index))]
    names = [by_index[i][1] for i in range(len(by_index))]
    for what, values in (("mid", ids), ("display_name", names)):
        repeated = sorted(v for v, n in Counter(values).items() if n > 1)
        if repeated:
            raise ClassLabelsError(f"{file.name}: each {what} must appear once; repeated: {repeated[:5]}")
    return ClassLabels(names, ids)
