"""FSDD: the file-name layout, 8 kHz files read at the model's rate, the demo set (local copy or fetched),
and leave-one-speaker-out manifests that never hold the held-out speaker."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bridle.data.demo_data import build_all, write_wav
from experiments.eval_audio import CALIBRATION_TAKES, write_split
from bridle.data.fsdd import FSDD_SPEAKERS, FsddClip, build_fsdd_set, fsdd_clips, load_clip, parse_clip

RATE = 8_000


def tone(hz: float, seconds: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def fake_fsdd(root: Path, takes: int = 50, speakers: tuple[str, ...] = FSDD_SPEAKERS) -> Path:
    """Files named like FSDD's, 8 kHz tones (the digit sets the pitch)."""
    for speaker in speakers:
        for digit in range(10):
            for k in range(takes):
                write_wav(root / f"{digit}_{speaker}_{k}.wav", tone(300 + 100 * digit, 0.05), RATE)
    return root


def test_names_are_parsed_and_others_ignored(tmp_path: Path) -> None:
    assert parse_clip(Path("x/7_jackson_12.wav")) == FsddClip(Path("x/7_jackson_12.wav"), 7, "jackson", 12)
    assert parse_clip(Path("notes.wav")) is None and parse_clip(Path("7_jackson_12.mp3")) is None
    write_wav(tmp_path / "b" / "3_theo_1.wav", tone(440), RATE)
    write_wav(tmp_path / "a" / "3_george_2.wav", tone(440), RATE)
    write_wav(tmp_path / "readme.wav", tone(440), RATE)
    clips = fsdd_clips(tmp_path)
    assert [(c.speaker, c.digit, c.index) for c in clips] == [("george", 3, 2), ("theo", 3, 1)]
    assert [c.speaker for c in fsdd_clips(tmp_path, FSDD_SPEAKERS)] == ["george"]
    with pytest.raises(FileNotFoundError):
        fsdd_clips(tmp_path / "nowhere")


@pytest.mark.parametrize("model_rate", [8_000, 16_000])
def test_8khz_files_are_read_at_the_models_rate(tmp_path: Path, model_rate: int) -> None:
    write_wav(tmp_path / "4_george_0.wav", tone(1000.0, 0.5), RATE)
    (clip,) = fsdd_clips(tmp_path)
    wave = load_clip(clip, model_rate)
    assert wave.dtype == np.float32 and abs(len(wave) - 0.5 * model_rate) <= 2
    peak = np.argmax(np.abs(np.fft.rfft(wave))) * model_rate / len(wave)
    assert abs(peak - 1000.0) < 5  # the same tone, now at the model's rate
    assert 0.45 < np.abs(wave).max() < 0.55


def _metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_set_from_a_local_copy_carries_the_licence(tmp_path: Path) -> None:
    source = fake_fsdd(tmp_path / "src", takes=50, speakers=(*FSDD_SPEAKERS, "theo"))
    assert build_all(tmp_path / "data", only=["fsdd"], fsdd=str(source)) == ["fsdd"]
    root = tmp_path / "data" / "fsdd"
    rows = _metadata(root)
    assert len(rows) == 2000 and {r["speaker"] for r in rows} == set(FSDD_SPEAKERS)  # theo is left out
    assert all(r["split"] == r["speaker"] and (root / r["path"]).is_file() for r in rows)
    assert rows[0]["path"] == "george/zero/0_george_0.wav" and rows[0]["label"] == "zero"
    licence = (root / "LICENSE.md").read_text()
    assert "CC BY-SA 4.0" in licence and "Free Spoken Digit Dataset" in licence
    assert build_all(tmp_path / "data", only=["fsdd"], fsdd=str(source)) == []  # complete: skipped


def test_demo_set_fetched_from_an_archive_url(tmp_path: Path) -> None:
    source = fake_fsdd(tmp_path / "src")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in source.iterdir():
            archive.write(path, f"free-spoken-digit-dataset-master/recordings/{path.name}")
    (tmp_path / "fsdd.zip").write_bytes(buffer.getvalue())
    build_all(tmp_path / "data", only=["fsdd"], fsdd=(tmp_path / "fsdd.zip").as_uri())
    assert len(_metadata(tmp_path / "data" / "fsdd")) == 2000
    assert not (tmp_path / "data" / "fsdd" / ".download").exists()


def test_incomplete_copy_is_refused(tmp_path: Path) -> None:
    source = fake_fsdd(tmp_path / "src", takes=3)
    with pytest.raises(ValueError, match="expected 500 clips"):
        build_fsdd_set(tmp_path / "out", source)


def test_fold_manifests_never_hold_the_held_out_speaker(tmp_path: Path) -> None:
    build_all(tmp_path / "data", only=["fsdd"], fsdd=str(fake_fsdd(tmp_path / "src")))
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    (synthetic / "metadata.csv").write_text(
        "path,split,label,voice\ntrain/one/a.wav,train,one,v1\ntest/one/b.wav,test,one,v2\n"
    )
    split = write_split(
        tmp_path / "fold", ("george", "nicolas", "yweweler"), synthetic, tmp_path / "data" / "fsdd"
    )
    train, calibration = _metadata_file(split.train), _metadata_file(split.calibration)
    assert "jackson" not in {r["speaker"] for r in train + calibration}
    assert sum(r["speaker"] == "v1" for r in train) == 1 and not any(r["speaker"] == "v2" for r in train)
    takes = lambda rows: {int(Path(r["path"]).stem.split("_")[2]) for r in rows}  # noqa: E731
    assert takes(calibration) == set(range(CALIBRATION_TAKES))
    assert min(takes([r for r in train if r["speaker"] != "v1"])) == CALIBRATION_TAKES


def _metadata_file(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
