"""Demo data sets made on this machine, no download: spoken digits, digit images, moving-digit videos.

    python -m bridle.data.demo_data --out data [--quick] [--seed 0] [--only audio-digits]

Each set is a folder `<out>/<name>/` with `<split>/<class>/<file>` media and a `metadata.csv` (path relative
to the set folder, split, label and per-set columns). A set is complete when its marker file `.complete`
exists (written last, holding the build parameters); complete sets with the same parameters are skipped,
anything else in the folder is rebuilt from scratch. Every set is deterministic given the seed.

- audio-digits: "zero".."nine" spoken by Debian's `espeak-ng` over English voices x voice variants, random
  speed and pitch, 16 kHz mono wav. Split by voice: held-out voices form `test/`.
- image-digits: scikit-learn's bundled `load_digits` (1797 8x8 images) upscaled to RGB PNG, stratified split
  (a tenth of its train split moved to `val`), plus digits printed in the system's fonts with whole font
  families held out (bridle/data/printed_digits.py): splits train, val, test, printed-train, printed-test;
  `training-set.csv` lists train + printed-train.
- video-motion: a load_digits digit moving in one of six directions over a dark canvas, h264 mp4.
- fsdd (only with `--fsdd`): real recordings of the digits, 4 speakers of the Free Spoken Digit Dataset
  (CC BY-SA 4.0, bridle/data/fsdd.py), copied from a local copy or fetched from its public source, as
  `<speaker>/<word>/<file>` (8 kHz wav) with `split` = speaker in metadata.csv.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import typer
from PIL import Image
from tqdm import tqdm

from bridle.data import DIGIT_WORDS
from bridle.data.fsdd import CLIPS_PER_SPEAKER, FSDD_SPEAKERS, FSDD_ZIP_URL, build_fsdd_set, fetch_fsdd
from bridle.data.printed_digits import FULL_PRINTED, QUICK_PRINTED, add_printed_digits

MARKER = ".complete"
METADATA = "metadata.csv"

# ---- audio-digits ---------------------------------------------------------------------------------------

SAMPLE_RATE = 16_000
# espeak-ng's own (gmw) English voices; the mbrola ones need extra packages.
ESPEAK_BASES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
)
# Voice variants (`espeak-ng --voices=variant`): 14 per base gives 98 voices.
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m5",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "klatt",
    "klatt3",
    "Andy",
    "Annie",
    "edward",
)
SPEED_RANGE = (120, 210)  # words per minute (espeak -s)
PITCH_RANGE = (25, 75)  # 0..99 (espeak -p)


@dataclass(frozen=True)
class AudioPlan:
    """How many clips: every voice says every digit `clips_per_digit` times; `test_voices` are held out."""

    voices: int
    clips_per_digit: int
    test_voices: int
    workers: int = 2


FULL_AUDIO = AudioPlan(voices=98, clips_per_digit=5, test_voices=16)  # 4100 train + 800 test clips
QUICK_AUDIO = AudioPlan(voices=6, clips_per_digit=1, test_voices=2, workers=1)


@dataclass(frozen=True)
class SpokenDigit:
    path: str
    split: str
    digit: str
    voice: str
    speed: int
    pitch: int


def all_voices() -> list[str]:
    return [f"{base}+{variant}" for base in ESPEAK_BASES for variant in ESPEAK_VARIANTS]


def plan_spoken_digits(plan: AudioPlan, seed: int) -> list[SpokenDigit]:
    """Every clip to synthesise, with its voice-disjoint split, in a deterministic order."""
    rng = np.random.default_rng(seed)
    voices = all_voices()
    if not 0 < plan.test_voices < plan.voices <= len(voices):
        raise ValueError(f"need 0 < test_voices < voices <= {len(voices)}, got {plan}")
    chosen = [voices[i] for i in rng.permutation(len(voices))[: plan.voices]]
    test = set(chosen[: plan.test_voices])
    clips = []
    for voice in sorted(chosen):
        split = "test" if voice in test else "train"
        for digit in DIGIT_WORDS:
            for k in range(plan.clips_per_digit):
                speed = int(rng.integers(*SPEED_RANGE, endpoint=True))
                pitch = int(rng.integers(*PITCH_RANGE, endpoint=True))
                name = f"{voice.replace('+', '_')}_{k}_s{speed}_p{pitch}.wav"
                clips.append(SpokenDigit(f"{split}/{digit}/{name}", split, digit, voice, speed, pitch))
    return clips


def synthesise(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech of `word` as 16 kHz mono int16 samples (samples,)."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    try:
        wav_bytes = subprocess.run(cmd, check=True, capture_output=True, timeout=30).stdout
    except FileNotFoundError as e:
        raise RuntimeError("espeak-ng is not installed: run `bash scripts/system-deps.sh`") from e
    return resample_wav(wav_bytes, SAMPLE_RATE)


def resample_wav(wav_bytes: bytes, rate: int) -> np.ndarray:
    """Decode wav bytes and resample to `rate` Hz mono int16 with PyAV (espeak-ng speaks at 22.05 kHz)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks = []
    with av.open(io.BytesIO(wav_bytes)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise RuntimeError("espeak-ng produced no audio")
    return np.concatenate(chunks).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def _write_spoken_digit(job: tuple[Path, SpokenDigit]) -> None:
    root, clip = job
    write_wav(root / clip.path, synthesise(clip.digit, clip.voice, clip.speed, clip.pitch), SAMPLE_RATE)


def build_audio_digits(root: Path, plan: AudioPlan, seed: int) -> list[dict[str, Any]]:
    clips = plan_spoken_digits(plan, seed)
    jobs = [(root, c) for c in clips]
    with tqdm(total=len(jobs), desc="audio-digits", unit="clip") as bar:
        if plan.workers > 1:
            with ProcessPoolExecutor(plan.workers) as pool:
                for _ in pool.map(_write_spoken_digit, jobs, chunksize=16):
                    bar.update()
        else:
            for job in jobs:
                _write_spoken_digit(job)
                bar.update()
    return [{**asdict(c), "label": c.digit} for c in clips]


# ---- image-digits ---------------------------------------------------------------------------------------

IMAGE_SIZE = 32
TEST_FRACTION = 0.2


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 (n, 8, 8) in 0..255 and their labels (n,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, digits.target.astype(int)


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w) uint8 grey -> (size, size, 3) uint8 RGB, bilinear."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR).convert("RGB"))


def build_image_digits(root: Path, limit: int | None, seed: int) -> list[dict[str, Any]]:
    from sklearn.model_selection import train_test_split

    images, targets = digit_images()
    index = np.arange(len(targets))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, stratify=targets, random_state=seed
    )
    split_of = {int(i): "train" for i in train_idx} | {int(i): "test" for i in test_idx}
    chosen = _stratified_head(targets, limit, seed) if limit else index
    rows = []
    for i in tqdm(chosen, desc="image-digits", unit="image"):
        split, digit = split_of[int(i)], DIGIT_WORDS[targets[i]]
        rel = f"{split}/{digit}/{int(i):04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(upscale(images[i], IMAGE_SIZE)).save(root / rel)
        rows.append({"path": rel, "split": split, "digit": digit, "index": int(i), "label": digit})
    return rows


def _stratified_head(targets: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` indices spread over the classes (for the quick build)."""
    order = np.random.default_rng(seed).permutation(len(targets))
    per_class = max(1, limit // len(np.unique(targets)))
    picked = [i for c in np.unique(targets) for i in order[targets[order] == c][:per_class]]
    return np.sort(np.asarray(picked))


# ---- video-motion ---------------------------------------------------------------------------------------

DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) per unit of travel; y grows downwards
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
}
VIDEO_FRAMES = 16
VIDEO_FPS = 8
VIDEO_SIZE = 32
SPRITE_SIZE = 14


@dataclass(frozen=True)
class VideoPlan:
    clips_per_direction: int
    test_per_direction: int


FULL_VIDEO = VideoPlan(clips_per_direction=60, test_per_direction=12)  # 360 clips
QUICK_VIDEO = VideoPlan(clips_per_direction=2, test_per_direction=1)


def moving_digit(sprite: np.ndarray, direction: str, start: tuple[int, int]) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 of `sprite` (s, s) gliding in `direction` across the canvas."""
    dx, dy = DIRECTIONS[direction]
    s, travel = sprite.shape[0], VIDEO_SIZE - sprite.shape[0]
    frames = np.zeros((VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 3), np.uint8)
    for t in range(VIDEO_FRAMES):
        step = round(t * travel / (VIDEO_FRAMES - 1))  # the sprite crosses the whole canvas
        x = start[0] if dx == 0 else (step if dx > 0 else travel - step)
        y = start[1] if dy == 0 else (step if dy > 0 else travel - step)
        frames[t, y : y + s, x : x + s] = sprite[..., None]
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Frames (T, H, W, 3) uint8 -> h264 mp4 (yuv420p)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def build_video_motion(root: Path, plan: VideoPlan, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    images, targets = digit_images()
    jobs = []
    for direction in DIRECTIONS:
        for k in range(plan.clips_per_direction):
            split = "test" if k < plan.test_per_direction else "train"
            i = int(rng.integers(len(targets)))
            start = tuple(int(v) for v in rng.integers(0, VIDEO_SIZE - SPRITE_SIZE, size=2, endpoint=True))
            jobs.append((split, direction, k, i, start))
    rows = []
    for split, direction, k, i, start in tqdm(jobs, desc="video-motion", unit="clip"):
        rel = f"{split}/{direction}/{direction}_{k:03d}.mp4"
        sprite = np.asarray(Image.fromarray(images[i]).resize((SPRITE_SIZE, SPRITE_SIZE), Image.BILINEAR))
        write_mp4(root / rel, moving_digit(sprite, direction, start), VIDEO_FPS)
        rows.append(
            {
                "path": rel,
                "split": split,
                "direction": direction,
                "digit": DIGIT_WORDS[targets[i]],
                "label": direction,
            }
        )
    return rows


# ---- building a set -------------------------------------------------------------------------------------


def write_metadata(root: Path, rows: list[dict[str, Any]]) -> None:
    with open(root / METADATA, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_set(root: Path, params: dict[str, Any], build: Callable[[Path], list[dict[str, Any]]]) -> bool:
    """Build one set into `root` unless it is already complete with `params`; True when built."""
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return False
    if root.exists():
        shutil.rmtree(root)  # partial or built with other parameters
    root.mkdir(parents=True)
    write_metadata(root, build(root))
    marker.write_text(json.dumps(params))
    return True


def builders(quick: bool, seed: int) -> Iterator[tuple[str, dict[str, Any], Callable[[Path], list]]]:
    audio = QUICK_AUDIO if quick else FULL_AUDIO
    video = QUICK_VIDEO if quick else FULL_VIDEO
    image_limit = 30 if quick else None
    printed = QUICK_PRINTED if quick else FULL_PRINTED
    yield "audio-digits", {"seed": seed, **asdict(audio)}, lambda r: build_audio_digits(r, audio, seed)
    yield (
        "image-digits",
        {"seed": seed, "limit": image_limit, "printed": asdict(printed)},
        lambda r: add_printed_digits(r, build_image_digits(r, image_limit, seed), printed, seed),
    )
    yield "video-motion", {"seed": seed, **asdict(video)}, lambda r: build_video_motion(r, video, seed)


SET_NAMES = ("audio-digits", "image-digits", "video-motion")
FSDD_SET = "fsdd"


def build_all(
    out: Path, quick: bool = False, seed: int = 0, only: list[str] | None = None, fsdd: str | None = None
) -> list[str]:
    """Build the demo sets under `out`; returns the names actually (re)built. `fsdd`: a local FSDD
    folder, or a URL of FSDD's archive, for the real-speech set (None: not built)."""
    unknown = set(only or []) - {*SET_NAMES, FSDD_SET}
    if unknown:
        raise ValueError(f"unknown demo sets {sorted(unknown)}; choose from {(*SET_NAMES, FSDD_SET)}")
    built = []
    for name, params, build in builders(quick, seed):
        if only and name not in only:
            continue
        if build_set(out / name, params, build):
            built.append(name)
    if fsdd is not None and (not only or FSDD_SET in only):
        params = {"speakers": list(FSDD_SPEAKERS), "clips": CLIPS_PER_SPEAKER * len(FSDD_SPEAKERS)}
        if build_set(out / FSDD_SET, params, lambda root: _build_fsdd(root, fsdd)):
            built.append(FSDD_SET)
    return built


def _build_fsdd(root: Path, fsdd: str) -> list[dict[str, Any]]:
    rows = build_fsdd_set(root, fsdd_source(fsdd, root))
    shutil.rmtree(root / ".download", ignore_errors=True)
    return rows


def fsdd_source(fsdd: str, root: Path) -> Path:
    """The folder holding FSDD's recordings: `fsdd` itself when it is a folder, else fetched from the URL
    `fsdd` (https://... or file://...) into `root/.download` (removed once the set is built)."""
    if Path(fsdd).is_dir():
        return Path(fsdd)
    if "://" not in fsdd:
        raise FileNotFoundError(
            f"no FSDD folder at {fsdd} (give a folder or the archive's URL, e.g. {FSDD_ZIP_URL})"
        )
    typer.echo(f"fsdd: fetching {fsdd}", err=True)
    return fetch_fsdd(root / ".download", fsdd)


def main(
    out: Path = typer.Option(Path("data"), help="folder to write the sets into"),
    quick: bool = typer.Option(False, help="small versions, for tests"),
    seed: int = typer.Option(0),
    only: list[str] = typer.Option(None, help=f"build only these sets: {', '.join(SET_NAMES)}, {FSDD_SET}"),
    fsdd: str = typer.Option(
        None, help=f"real speech: a local FSDD folder, or 'fetch' for its public source ({FSDD_ZIP_URL})"
    ),
) -> None:
    if fsdd is not None and not Path(fsdd).is_dir() and "://" not in fsdd:
        if fsdd != "fetch":
            typer.echo(f"fsdd: no folder {fsdd}; fetching FSDD from its public source", err=True)
        fsdd = FSDD_ZIP_URL
    built = build_all(out, quick=quick, seed=seed, only=only or None, fsdd=fsdd)
    typer.echo(f"built: {', '.join(built) or 'nothing (all complete)'} in {out}")


if __name__ == "__main__":
    typer.run(main)
