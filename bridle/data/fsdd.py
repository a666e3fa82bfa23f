"""The Free Spoken Digit Dataset (FSDD): real recordings of the digits 0-9, 8 kHz mono wav.

    FsddClip(path, digit, speaker, index)      one file `{digit}_{speaker}_{index}.wav`
    fsdd_clips(root) -> list[FsddClip]         every such file under `root` (recursive), sorted
    load_clip(clip, sample_rate) -> (samples,) float32 in [-1, 1] at the model's rate (FFmpeg resamples)

Source: the Free Spoken Digit Dataset by Zohar Jackson and contributors,
github.com/Jakobovski/free-spoken-digit-dataset (DOI 10.5281/zenodo.1342401), licensed under Creative
Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0). Anything that ships these recordings or
says what a model was trained on credits FSDD and names the licence (`FSDD_CREDIT`).

FSDD has six speakers; the project uses four of them (`FSDD_SPEAKERS`, the ones in ../shared/data/fsdd):
the other two are kept for an independent evaluation, so a fetched copy is filtered to the same four.
FSDD's own convention: indices 0-4 are its test split, 5-49 its training split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bridle.data import DIGIT_WORDS
from bridle.model.decoding import decode_audio

FSDD_SPEAKERS = ("george", "jackson", "nicolas", "yweweler")
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset"
FSDD_CREDIT = (
    "Free Spoken Digit Dataset (FSDD) by Zohar Jackson and contributors, "
    "https://github.com/Jakobovski/free-spoken-digit-dataset (DOI 10.5281/zenodo.1342401), "
    "licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)"
)
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class FsddClip:
    """One FSDD recording: the file, the digit said (0-9), who said it and the take number."""

    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def word(self) -> str:
        """The digit as the demo sets' label ("zero" .. "nine")."""
        return DIGIT_WORDS[self.digit]


def parse_clip(path: Path) -> FsddClip | None:
    """The clip a file name `{digit}_{speaker}_{index}.wav` describes, or None for any other name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        return None
    return FsddClip(Path(path), int(match[1]), match[2], int(match[3]))


def fsdd_clips(root: Path | str, speakers: tuple[str, ...] | None = None) -> list[FsddClip]:
    """Every FSDD clip under `root` (recursive), optionally only `speakers`, sorted by
    (speaker, digit, index). Raises FileNotFoundError when `root` is missing or holds no clip."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no FSDD folder at {root}")
    clips = [c for p in root.rglob("*.wav") if (c := parse_clip(p)) is not None]
    if speakers is not None:
        clips = [c for c in clips if c.speaker in speakers]
    if not clips:
        raise FileNotFoundError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) under {root}")
    return sorted(clips, key=lambda c: (c.speaker, c.digit, c.index))


def load_clip(clip: FsddClip, sample_rate: int) -> np.ndarray:
    """The recording as (samples,) float32 in [-1, 1] at `sample_rate` (8 kHz files are resampled)."""
    return decode_audio(clip.path, sample_rate)


# ---- the demo set: a local copy or the public source -> data/fsdd ---------------------------------------

FSDD_ZIP_URL = f"{FSDD_URL}/archive/refs/heads/master.zip"
CLIPS_PER_SPEAKER = 500  # 10 digits x 50 takes


def fetch_fsdd(dest: Path, url: str = FSDD_ZIP_URL) -> Path:
    """Download FSDD's repository archive from `url` and unpack its recordings of `FSDD_SPEAKERS` into
    `dest`; returns `dest`. Raises RuntimeError when the download fails or the archive lacks clips."""
    import io
    import urllib.request
    import zipfile

    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except (OSError, zipfile.BadZipFile) as e:
        raise RuntimeError(f"could not fetch FSDD from {url}: {e}") from e
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in archive.namelist():
        clip = parse_clip(Path(name))
        if clip is not None and "/recordings/" in f"/{name}" and clip.speaker in FSDD_SPEAKERS:
            (dest / clip.path.name).write_bytes(archive.read(name))
            count += 1
    if count == 0:
        raise RuntimeError(f"{url} holds no FSDD recordings of {FSDD_SPEAKERS}")
    return dest


def build_fsdd_set(root: Path, source: Path) -> list[dict[str, str | int]]:
    """Copy the FSDD clips of `FSDD_SPEAKERS` under `source` into `root/<speaker>/<word>/<file>` (the
    original 8 kHz files, byte for byte) and return their metadata rows; `split` is the speaker, so a
    manifest's `split` selects one speaker (leave-one-speaker-out)."""
    clips = fsdd_clips(source, FSDD_SPEAKERS)
    counts = {s: sum(c.speaker == s for c in clips) for s in FSDD_SPEAKERS}
    if any(n != CLIPS_PER_SPEAKER for n in counts.values()):
        raise ValueError(
            f"expected {CLIPS_PER_SPEAKER} clips of each of {FSDD_SPEAKERS} in {source}: {counts}"
        )
    rows: list[dict[str, str | int]] = []
    for clip in clips:
        rel = f"{clip.speaker}/{clip.word}/{clip.path.name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(clip.path.read_bytes())
        rows.append(
            {
                "path": rel,
                "split": clip.speaker,
                "label": clip.word,
                "digit": clip.digit,
                "speaker": clip.speaker,
                "index": clip.index,
            }
        )
    (root / "LICENSE.md").write_text(
        f"These recordings are from the {FSDD_CREDIT}.\n"
        "Only the speakers george, jackson, nicolas and yweweler are included.\n"
    )
    return rows
