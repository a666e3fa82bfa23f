"""Real media bytes for the service tests, written with PyAV and Pillow (no files on disk)."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

AUDIO = {"wav": ("wav", "pcm_s16le", 16_000), "flac": ("flac", "flac", 16_000),
         "mp3": ("mp3", "libmp3lame", 16_000), "ogg": ("ogg", "libopus", 48_000)}  # fmt: skip
VIDEO = {"mp4": ("mp4", "libx264", "aac"), "webm": ("webm", "libvpx-vp9", "libopus")}
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg",
                 "png": "image/png", "jpeg": "image/jpeg",
                 "mp4": "video/mp4", "webm": "video/webm"}  # fmt: skip


def _encode_audio(
    out: av.container.OutputContainer, stream: av.AudioStream, x: np.ndarray, rate: int
) -> None:
    """Encode mono `x` in [-1, 1] in frames of the codec's size, in its sample format, and flush."""
    fmt = stream.codec_context.format.name
    kind = fmt.rstrip("p")
    data = {"s16": (x * 32767).astype(np.int16), "s32": (x * 2**31 * 0.99).astype(np.int32), "flt": x}[kind]
    step = stream.codec_context.frame_size or 4096
    for start in range(0, len(data), step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data[None, start : start + step]), format=fmt, layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def audio_bytes(fmt: str, seconds: float, hz: float = 440.0) -> bytes:
    """A sine tone of `seconds` in `fmt` (wav, flac, mp3, ogg)."""
    container, codec, rate = AUDIO[fmt]
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        _encode_audio(out, out.add_stream(codec, rate=rate, layout="mono"), x, rate)
    return buf.getvalue()


def image_bytes(fmt: str, width: int = 40, height: int = 30) -> bytes:
    """A colour gradient as png or jpeg."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format=fmt.upper())
    return buf.getvalue()


def video_bytes(fmt: str, seconds: float, fps: int = 10, size: int = 32, with_video: bool = True) -> bytes:
    """Frames that brighten over time (mp4 h264, webm vp9); `with_video=False`: a silent audio track only."""
    container, vcodec, acodec = VIDEO[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        if with_video:
            stream = out.add_stream(vcodec, rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for i in range(round(seconds * fps)):
                frame = np.full((size, size, 3), (i * 20) % 255, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        else:
            silence = np.zeros(int(seconds * 48_000), np.float32)
            _encode_audio(out, out.add_stream(acodec, rate=48_000, layout="mono"), silence, 48_000)
    return buf.getvalue()
