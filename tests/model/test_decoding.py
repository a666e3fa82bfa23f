"""bridle.model.decoding on real files of every format: length, rate, mixdown, orientation, limits, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridle.data.media_files import (
    AUDIO_FORMATS,
    VIDEO_FORMATS,
    encode_audio,
    frame_value,
    make_audio,
    make_image,
    make_video,
    signal,
)
from bridle.model.decoding import (
    DecodedVideo,
    MediaError,
    decode_audio,
    decode_image,
    decode_video,
    sample_frames,
)
from bridle.model.modalities import sniff_modality


def code_of(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)
    assert str(info.value), "a MediaError needs a message for a person"
    return info.value.code


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    return {fmt: make_video(fmt, seconds=2.0, fps=10, size=(48, 32)) for fmt in VIDEO_FORMATS}


# ---- audio ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(AUDIO_FORMATS))
def test_every_audio_format_decodes_to_its_length_and_rate(fmt: str) -> None:
    # 3 s: AAC pads to whole 1024-sample frames, which is < 1 % of 3 s but 2.4 % of 1 s
    wave = decode_audio(make_audio(fmt, 3.0, sample_rate=16_000), 16_000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == pytest.approx(48_000, rel=0.01)
    assert np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)  # the 0.5 sine survives
    assert peak_hz(wave, 16_000) == pytest.approx(440, abs=2)


def test_stereo_is_mixed_to_mono() -> None:
    left, right = signal(1.0, 16_000, hz=440), signal(1.0, 16_000, hz=1000)
    wave = decode_audio(encode_audio(np.stack([left, right]), "wav", 16_000), 16_000)
    assert wave.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(wave))  # 1 Hz bins
    assert spectrum[440] > 0.3 * spectrum.max() and spectrum[1000] > 0.3 * spectrum.max()
    assert spectrum[440] == pytest.approx(spectrum[1000], rel=0.1)  # both channels weigh the same


def test_loud_stereo_stays_within_one() -> None:
    full = np.ones((2, 8000), np.float32) * 0.99
    wave = decode_audio(encode_audio(full, "wav", 16_000), 16_000)
    assert np.abs(wave).max() <= 1.0 and wave.mean() > 0.9


def test_resampling_keeps_the_pitch() -> None:
    wave = decode_audio(make_audio("wav", 1.0, sample_rate=44_100, hz=440), 16_000)
    assert len(wave) == pytest.approx(16_000, rel=0.01)
    assert peak_hz(wave, 16_000) == pytest.approx(440, abs=1)
    up = decode_audio(make_audio("flac", 1.0, sample_rate=8_000, hz=440), 16_000)
    assert len(up) == pytest.approx(16_000, rel=0.01) and peak_hz(up, 16_000) == pytest.approx(440, abs=1)


def test_other_signal_kinds_decode() -> None:
    for kind in ("noise", "speechlike"):
        wave = decode_audio(make_audio("wav", 0.5, kind=kind), 16_000)
        assert len(wave) == 8000 and 0.01 < wave.std() < 0.5


class CountingReader(io.RawIOBase):
    """A file object that counts the bytes handed out, to see how much of a file was decoded."""

    def __init__(self, data: bytes):
        self.inner, self.read_bytes = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, buf) -> int:
        chunk = self.inner.read(len(buf))
        buf[: len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


def test_too_long_audio_stops_decoding_early() -> None:
    data = make_audio("wav", 60.0)  # 1.9 MB; probing and buffering read a fixed ~200 kB
    reader = CountingReader(data)
    assert code_of(decode_audio, reader, 16_000, max_seconds=1.0) == "too_long"
    assert reader.read_bytes < len(data) / 4
    assert len(decode_audio(data, 16_000, max_seconds=61.0)) == 960_000


@pytest.mark.parametrize("kind", ["speechlike", "noise"])
def test_plain_wav_fast_path_equals_ffmpeg(kind: str) -> None:
    """A 16 kHz mono 16-bit wav in memory skips FFmpeg; a file object of the same bytes goes through it."""
    data = make_audio("wav", 1.5, kind=kind)
    fast, ffmpeg = decode_audio(data, 16_000), decode_audio(io.BytesIO(data), 16_000)
    assert fast.dtype == ffmpeg.dtype == np.float32
    np.testing.assert_array_equal(fast, ffmpeg)
    assert code_of(decode_audio, data, 16_000, max_seconds=1.0) == "too_long"
    truncated = data[: len(data) - 1000]  # the header promises more samples than there are
    np.testing.assert_array_equal(
        decode_audio(truncated, 16_000), decode_audio(io.BytesIO(truncated), 16_000)
    )


def test_audio_errors() -> None:
    wav = make_audio("wav", 1.0)
    assert code_of(decode_audio, b"", 16_000) == "empty"
    assert code_of(decode_audio, wav[:20], 16_000) == "corrupt"  # cut inside the header
    garbage = b"not audio" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    assert code_of(decode_audio, garbage, 16_000) == "corrupt"
    assert code_of(decode_audio, make_video("mp4", 0.5), 16_000) == "unsupported"  # no audio stream


@pytest.mark.parametrize("kind", ["bytes", "path", "str", "file"])
def test_every_kind_of_source(kind: str, tmp_path: Path) -> None:
    wav, png = make_audio(tmp_path / "a.wav", 0.5), make_image("png", (20, 20))
    (tmp_path / "b.png").write_bytes(png)

    def source(name: str, data: bytes):
        return {
            "bytes": data,
            "path": tmp_path / name,
            "str": str(tmp_path / name),
            "file": io.BytesIO(data),
        }[kind]

    assert len(decode_audio(source("a.wav", wav), 16_000)) == 8000
    assert decode_image(source("b.png", png), 8).shape == (3, 8, 8)
    (tmp_path / "empty.wav").write_bytes(b"")
    assert code_of(decode_audio, source("empty.wav", b""), 16_000) == "empty"


# ---- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    # 20x10 with a red top half. Orientation 6 = turn 90° clockwise to display: red becomes the right half
    # of a 10x20 picture, and the centre crop keeps all its columns.
    plain = decode_image(make_image(fmt, (20, 10)), 10).astype(int)
    turned = decode_image(make_image(fmt, (20, 10), exif_orientation=6), 10).astype(int)

    def red(img: np.ndarray) -> np.ndarray:  # (3, S, S) -> (S, S) bool
        return (img[0] > 200) & (img[1] < 60) & (img[2] < 60)

    assert red(plain)[:4].all() and not red(plain)[6:].any()  # top rows red
    assert red(turned)[:, 6:].all() and not red(turned)[:, :4].any()  # right columns red


def test_shorter_side_resized_then_centre_cropped() -> None:
    thirds = np.zeros((20, 60, 3), np.uint8)
    thirds[:, :20, 0] = thirds[:, 20:40, 1] = thirds[:, 40:, 2] = 255  # red | green | blue
    buf = io.BytesIO()
    Image.fromarray(thirds).save(buf, format="PNG")
    crop = decode_image(buf.getvalue(), 20)
    assert crop.shape == (3, 20, 20) and crop.dtype == np.uint8
    assert (crop[1] == 255).all() and (crop[0] == 0).all() and (crop[2] == 0).all()  # only the green middle
    big = decode_image(make_image("png", (8, 4)), 16)  # upscaled: 8x4 -> 32x16 -> crop 16x16
    assert big.shape == (3, 16, 16)
    half = decode_image(buf.getvalue(), 10)  # downscaled: 60x20 -> 30x10 -> crop columns 10..20
    assert half[1].mean() > 240 and half[0].mean() < 15 and half[2].mean() < 15


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    fmt = "jpeg" if mode == "CMYK" else "png"
    image = decode_image(make_image(fmt, (16, 16), mode=mode), 8)
    assert image.shape == (3, 8, 8) and image.dtype == np.uint8 and image.max() > 100


def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    png = make_image("png", (400, 300))
    assert code_of(decode_image, png, 16, max_pixels=100_000) == "too_large"
    assert decode_image(png, 16, max_pixels=120_000).shape == (3, 16, 16)
    # the header alone decides: a truncated file over the limit is too large, not corrupt
    assert code_of(decode_image, png[:100], 16, max_pixels=100_000) == "too_large"
    assert code_of(decode_image, png[:100], 16) == "corrupt"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's bomb guard: error over 2x this
    assert code_of(decode_image, png, 16) == "too_large"


def test_image_errors() -> None:
    assert code_of(decode_image, b"", 16) == "empty"
    for fmt in ("png", "jpeg"):
        data = make_image(fmt, (200, 200))
        assert code_of(decode_image, data[: len(data) // 3], 16) == "corrupt", fmt
    assert code_of(decode_image, b"\x89PNG\r\n\x1a\n" + b"junk" * 50, 16) == "corrupt"
    assert code_of(decode_image, b"plain text, not an image" * 10, 16) == "corrupt"


# ---- video ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_video_frames_times_and_duration(fmt: str, videos: dict[str, bytes]) -> None:
    video = decode_video(videos[fmt], 16)
    assert video.frames.shape == (20, 3, 16, 16) and video.frames.dtype == np.uint8
    np.testing.assert_allclose(video.times, np.arange(20) / 10, atol=1e-6)
    assert video.duration == pytest.approx(2.0, abs=1e-6)
    levels = video.frames.reshape(20, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [frame_value(i) for i in range(20)], atol=4)


def test_sample_frames_picks_the_nearest_frames(videos: dict[str, bytes]) -> None:
    video = decode_video(videos["mp4"], 16)
    np.testing.assert_array_equal(sample_frames(video, 20), video.frames)  # one frame per slot: all of them
    np.testing.assert_array_equal(sample_frames(video, 4), video.frames[[0, 5, 10, 15]])
    window = sample_frames(video, 5, start=1.0, end=2.0)
    np.testing.assert_array_equal(window, video.frames[[10, 12, 14, 16, 18]])
    assert sample_frames(video, 3, start=5.0, end=6.0).shape == (3, 3, 16, 16)  # past the end: last frame
    np.testing.assert_array_equal(sample_frames(video, 3, start=5.0, end=6.0)[0], video.frames[-1])


def test_short_clips_repeat_frames() -> None:
    frames = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 4), np.uint8)
    video = DecodedVideo(frames, np.array([0.0, 0.1, 0.2]), 0.3)
    picked = sample_frames(video, 8)[:, 0, 0, 0]  # (8,) frame ids
    assert picked.shape == (8,) and set(picked.tolist()) == {0, 1, 2}
    assert (np.diff(picked.astype(int)) >= 0).all()


def test_video_limits_and_errors(videos: dict[str, bytes]) -> None:
    for fmt, data in videos.items():
        assert code_of(decode_video, data, 16, max_seconds=1.0) == "too_long", fmt
        assert len(decode_video(data, 16, max_seconds=3.0).frames) == 20
    assert code_of(decode_video, make_audio("m4a", 0.5), 16) == "no_frames"  # audio only
    assert code_of(decode_video, b"", 16) == "empty"
    mp4, webm = videos["mp4"], videos["webm"]
    assert code_of(decode_video, mp4[: len(mp4) // 3], 16) == "corrupt"  # cut before the index
    assert code_of(decode_video, webm[: len(webm) // 4], 16) == "corrupt"
    assert code_of(decode_video, b"garbage " * 500, 16) == "corrupt"


# ---- sniffing ---------------------------------------------------------------------------------------


def test_sniff_every_format_by_its_bytes(videos: dict[str, bytes]) -> None:
    for fmt in AUDIO_FORMATS:
        assert sniff_modality(make_audio(fmt, 0.2), None) == "audio", fmt
    for fmt in ("png", "jpeg", "gif", "bmp", "webp"):
        assert sniff_modality(make_image(fmt, (8, 8)), None) == "image", fmt
    for fmt, data in videos.items():
        assert sniff_modality(data, "application/octet-stream") == "video", fmt
    assert sniff_modality(b"\xff\xfb\x90\x00" + bytes(100), None) == "audio"  # mp3 without an ID3 tag


def test_sniff_trusts_the_content_type_first() -> None:
    png = make_image("png", (8, 8))
    assert sniff_modality(png, "audio/wav") == "audio"
    assert sniff_modality(b"anything", "Video/MP4; codecs=avc1") == "video"
    assert sniff_modality(png, "text/plain") == "image"  # generic type: the bytes decide
    assert code_of(sniff_modality, b"just some text", "text/plain") == "unsupported"
    assert code_of(sniff_modality, b"just some text", None) == "unsupported"
    assert code_of(sniff_modality, b"", "audio/wav") == "empty"
