"""Real media bytes for tests and benchmarks (the fuzzer and the soak test start from them), encoded with
PyAV and Pillow: audio, images and videos of known content."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

# format -> (container format, audio codec). ipod = mp4 with the "M4A " brand; ogg carries Opus (this
# PyAV build has no libvorbis, and its native vorbis encoder is experimental).
AUDIO_FORMATS = {
    "wav": ("wav", "pcm_s16le"),
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "ogg": ("ogg", "libopus"),
    "m4a": ("ipod", "aac"),
}
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
VIDEO_FORMATS = ("mp4", "webm")
CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
}


def _format_and_path(path_or_format: str | Path) -> tuple[str, Path | None]:
    """ "wav" -> ("wav", None); "x/a.wav" or Path("x/a.wav") -> ("wav", that path)."""
    if isinstance(path_or_format, Path) or "." in str(path_or_format):
        path = Path(path_or_format)
        return path.suffix.lstrip(".").lower(), path
    return str(path_or_format).lower(), None


def signal(
    seconds: float, sample_rate: int, kind: str = "tone", hz: float = 440.0, seed: int = 0
) -> np.ndarray:
    """A mono test signal in [-1, 1]: (samples,) float32.

    tone: a 0.5-amplitude sine at `hz`; noise: white noise (std 0.1); speechlike: a gliding 110-220 Hz
    harmonic series under a 4 Hz syllable envelope, a crude stand-in for a voice.
    """
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    if kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * hz * t)
    elif kind == "noise":
        x = np.clip(0.1 * np.random.default_rng(seed).standard_normal(t.size), -1, 1)
    elif kind == "speechlike":
        f0 = 110 + 110 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))  # (samples,) Hz
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        harmonics = sum(np.sin(k * phase) / k for k in range(1, 11) if k * f0.max() < sample_rate / 2)
        x = 0.3 * harmonics * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)) / 2
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return x.astype(np.float32)


def encode_audio(samples: np.ndarray, fmt: str, sample_rate: int) -> bytes:
    """(channels, samples) or (samples,) float32 in [-1, 1] -> the bytes of an audio file in `fmt`.

    PyAV converts the planar float frames to the codec's sample format and frame size itself.
    """
    container, codec = AUDIO_FORMATS[fmt]
    if codec == "libopus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus encodes only at {OPUS_RATES} Hz, not {sample_rate}")
    planar = np.atleast_2d(samples).astype(np.float32)  # (C, samples)
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        step = 4096
        for start in range(0, planar.shape[1], step):
            chunk = np.ascontiguousarray(planar[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def make_audio(
    path_or_format: str | Path,
    seconds: float,
    sample_rate: int = 16_000,
    kind: str = "tone",
    hz: float = 440.0,
    channels: int = 1,
) -> bytes:
    """A mono (or channel-copied) test signal as wav / flac / mp3 / ogg (Opus) / m4a (AAC) bytes.

    Given a path ("x/a.flac"), the format comes from its suffix and the file is written there too.
    """
    fmt, path = _format_and_path(path_or_format)
    x = signal(seconds, sample_rate, kind, hz)  # (samples,)
    data = encode_audio(np.repeat(x[None], channels, axis=0), fmt, sample_rate)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def image_pixels(size: tuple[int, int]) -> np.ndarray:
    """A gradient whose top half is pure red, so a test can tell which side is up: (H, W, 3) uint8."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([np.zeros_like(x), 40 + x * 160 // max(w - 1, 1), 40 + y * 160 // max(h - 1, 1)], -1)
    rgb[: h // 2] = (255, 0, 0)
    return rgb.astype(np.uint8)


def make_image(
    fmt: str = "png", size: tuple[int, int] = (40, 30), exif_orientation: int | None = None, mode: str = "RGB"
) -> bytes:
    """`image_pixels(size)` in any format Pillow writes (png, jpeg, gif, bmp, webp), in `mode`.

    `exif_orientation` (1-8) stores an EXIF Orientation tag; the pixels themselves stay as drawn.
    """
    image = Image.fromarray(image_pixels(size)).convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if fmt.lower() in ("jpeg", "jpg"):
        kwargs["quality"] = 95
    buf = io.BytesIO()
    image.save(buf, format={"jpg": "JPEG"}.get(fmt.lower(), fmt.upper()), **kwargs)
    return buf.getvalue()


def video_codec(fmt: str) -> str:
    """The encoder for `fmt` in this PyAV build: libx264 (else mpeg4) for mp4, libvpx for webm."""
    choices = {"mp4": ("libx264", "mpeg4"), "webm": ("libvpx", "libvpx-vp9")}[fmt]
    for codec in choices:
        if codec in av.codecs_available:
            return codec
    raise RuntimeError(f"no {fmt} video encoder in this PyAV build (tried {choices})")


def frame_value(index: int) -> int:
    """The grey level of frame `index` in `make_video`: frames brighten by 9 levels per frame."""
    return (20 + 9 * index) % 256


def make_video(
    fmt: str = "mp4", seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (32, 32)
) -> bytes:
    """Flat grey frames, frame i at `frame_value(i)`, as mp4 (h264) or webm (VP8); size = (w, h), even."""
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(video_codec(fmt), rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(round(seconds * fps)):
            rgb = np.full((h, w, 3), frame_value(i), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()
