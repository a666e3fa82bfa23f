"""Held-out data for the bundled models' accuracy gates, made the way `make demo-data` makes it.

image-digits: the real held-out split of the bundled image model (360 load_digits images); audio-digits:
the quick spoken-digit build (60 espeak-ng clips of 6 voices), read through its metadata.csv.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_held_out(root: Path) -> dict[str, Path]:
    """Model name -> the data source its gate reads (a class folder or a metadata.csv)."""
    from bridle.data.demo_data import build_all

    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=True)
    build_all(root, quick=False, only=["image-digits"])
    build_all(root, quick=True, only=["audio-digits"])
    return {
        "image-digits": root / "image-digits" / "test",
        "audio-digits": root / "audio-digits" / "metadata.csv",
    }
