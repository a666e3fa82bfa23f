"""Media bytes -> the arrays the graphs take: audio (samples,) float32, images and video frames uint8.

Training (`bridle/training/data.py`) and the service (`bridle/service/media.py`) both decode through this
module, so a model sees at serving time exactly the pixels and samples it was trained on: the same resampler,
the same mono mixdown, the same resize and centre crop.

Every failure the caller should report is a `MediaError` with a stable `.code` (the service maps codes to
HTTP statuses in `bridle/service/errors.py`). Limits (`max_seconds`, `max_pixels`) are checked before or while
decoding, never after, so an oversized upload costs little work.

numpy, PyAV and Pillow only: the service imports this module without torch.
"""

from __future__ import annotations

import io
import os
import struct
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Literal

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bridle.model.errors import BridleError
from bridle.model.inputs import RESAMPLE_FILTERS, ImageProcessing

MediaCode = Literal["empty", "corrupt", "unsupported", "too_long", "too_large", "no_frames"]
Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


class MediaError(BridleError, ValueError):
    """Media that cannot be used, with a machine-readable `.code` and a message for a person."""

    def __init__(self, code: MediaCode, message: str):
        super().__init__(message)
        self.code: MediaCode = code


@dataclass
class DecodedVideo:
    """Every frame of a video, already square; `sample_frames` picks a fixed number of them."""

    frames: np.ndarray  # (F, 3, S, S) uint8
    times: np.ndarray  # (F,) float64 seconds from the first frame, increasing
    duration: float  # seconds covered by the frames (last time + one frame interval)


# ---- sources ----------------------------------------------------------------------------------------


def _as_readable(src: Source) -> str | BinaryIO:
    """A path string or a binary file object for PyAV / Pillow; empty input -> MediaError("empty").

    A missing path raises FileNotFoundError (an OSError) as usual: that is the caller's mistake,
    not bad media.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        if len(src) == 0:
            raise MediaError("empty", "the media is empty (0 bytes)")
        return io.BytesIO(bytes(src))
    if isinstance(src, str | os.PathLike):
        path = os.fspath(src)
        if os.stat(path).st_size == 0:
            raise MediaError("empty", f"the media file is empty (0 bytes): {path}")
        return path
    if src.seekable():  # a file object: peek at its size without reading it
        here = src.tell()
        end = src.seek(0, io.SEEK_END)
        src.seek(here)
        if end - here == 0:
            raise MediaError("empty", "the media is empty (0 bytes)")
    return src


def _reason(e: av.FFmpegError) -> str:
    """FFmpeg's own words for a failure, without the errno and the '<none>' file name PyAV adds."""
    return getattr(e, "strerror", None) or str(e)


# What decoders raise on damaged data besides FFmpegError: PyAV's ValueError / RuntimeError /
# UnicodeDecodeError, Pillow's OSError / SyntaxError / struct.error / EOFError, and index or arithmetic
# errors from header fields that make no sense.
BAD_DATA_ERRORS = (
    av.FFmpegError,
    ValueError,
    RuntimeError,
    OSError,
    SyntaxError,
    EOFError,
    IndexError,
    ArithmeticError,
    struct.error,
)


@contextmanager
def _bad_data_is_corrupt(what: str) -> Iterator[None]:
    """The decoding boundary: any decoder failure on the data becomes MediaError("corrupt", reason).

    A MediaError passes as it is, and so does a missing or unreadable path (the caller's mistake). Every
    FFmpeg error is about the data, even those that are also OSErrors (EPERM from a decoder, say).
    """
    try:
        yield
    except MediaError:
        raise
    except av.FFmpegError as e:
        raise MediaError("corrupt", f"the {what} could not be decoded: {_reason(e)}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except BAD_DATA_ERRORS as e:
        raise MediaError("corrupt", f"the {what} could not be decoded: {type(e).__name__}: {e}") from None


@contextmanager
def _open_container(src: Source) -> Iterator[av.container.InputContainer]:
    """Open `src` with PyAV; anything FFmpeg cannot parse is "corrupt".

    Metadata that is not valid UTF-8 (tags are free text) is read with replacement characters: it says
    nothing about whether the streams decode.
    """
    readable = _as_readable(src)
    with _bad_data_is_corrupt("media"):
        container = av.open(readable, "r", metadata_errors="replace")
    try:
        yield container
    finally:
        container.close()


def _declared_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """The duration the headers claim (stream first, then container), or None when they claim none."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


# ---- audio ------------------------------------------------------------------------------------------


def decode_audio(src: Source, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `sample_rate`, in [-1, 1]: (samples,).

    FFmpeg's resampler does the rate conversion and the channel mixdown. Its stereo -> mono matrix
    weighs each channel by 1/sqrt(2), so loud stereo can leave [-1, 1]: the result is clipped.
    Decoding stops as soon as more than `max_seconds` have been decoded ("too_long").
    """
    fast = _plain_wav(src, sample_rate, max_seconds)
    if fast is not None:
        return fast
    with _open_container(src) as container, _bad_data_is_corrupt("audio"):
        if not container.streams.audio:
            raise MediaError("unsupported", "the media has no audio stream")
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        resampler: av.AudioResampler | None = None
        setup: tuple[str, str, int] | None = None  # the frames' format, layout and rate it was made for
        decoded_seconds = 0.0
        for frame in container.decode(stream):
            decoded_seconds += frame.samples / frame.sample_rate
            if max_seconds is not None and decoded_seconds > max_seconds:
                raise MediaError("too_long", f"the audio is longer than the limit of {max_seconds:g} s")
            this = (frame.format.name, frame.layout.name, frame.sample_rate)
            if this != setup:  # a stream may change format part-way (concatenated mp3s): start anew
                if resampler is not None:
                    chunks.extend(_flush(resampler))
                resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=sample_rate), this
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(_flush(resampler))
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise MediaError("corrupt", "no audio samples could be decoded")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)  # (samples,)
    return np.clip(samples, -1.0, 1.0, out=samples)


def _flush(resampler: av.AudioResampler) -> list[np.ndarray]:
    """What the resampler still holds: (samples,) float32 arrays."""
    return [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]


def looks_like_plain_wav(data: bytes, sample_rate: int) -> bool:
    """Whether `data` opens like the canonical 16-bit mono PCM wav at `sample_rate` that `_plain_wav`
    reads without FFmpeg or resampling: RIFF, WAVE, then the `fmt ` chunk's fields at their usual
    offsets. A cheap look at 36 bytes to predict the cost of decoding, not a check of the file."""
    return (
        data[:4] == b"RIFF"
        and data[8:16] == b"WAVEfmt "
        and data[20:24] == b"\x01\x00\x01\x00"  # PCM, one channel
        and int.from_bytes(data[24:28], "little") == sample_rate
        and data[34:36] == b"\x10\x00"  # 16 bits a sample
    )


def _plain_wav(src: Source, sample_rate: int, max_seconds: float | None) -> np.ndarray | None:
    """A complete 16-bit mono PCM wav at `sample_rate`, read with the stdlib; None for anything else.

    The most common upload needs no resampling or mixdown, and FFmpeg's container probing costs more
    than the decode itself (a third of the service's CPU under load). The values are what FFmpeg's
    s16 -> flt conversion gives (x / 32768); every other wav goes the FFmpeg way.
    """
    if (
        not isinstance(src, bytes | bytearray | memoryview)
        or bytes(src[:4]) != b"RIFF"
        or src[8:12] != b"WAVE"
    ):
        return None
    try:
        with wave.open(io.BytesIO(src), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, sample_rate):
                return None
            frames = w.getnframes()
            if max_seconds is not None and frames / sample_rate > max_seconds:
                raise MediaError("too_long", f"the audio is longer than the limit of {max_seconds:g} s")
            data = w.readframes(frames)
    except (wave.Error, EOFError, RuntimeError):  # RuntimeError: a chunk size past the end of the data
        return None
    if frames == 0 or len(data) != 2 * frames:  # empty or truncated: FFmpeg's reading and errors apply
        return None
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)  # (samples,)


# ---- images -----------------------------------------------------------------------------------------


def _square(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> shorter side resized to `size` (bicubic), centre crop: (3, size, size) uint8.

    Images and video frames share this, so a model sees frames exactly as it sees images.
    """
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()  # (H, W, 3) -> (3, S, S)


def _rgb(image: Image.Image, composite: bool) -> Image.Image:
    """RGB; with `composite`, transparency over white as transformers' `convert_to_rgb` does, else
    alpha dropped (`convert("RGB")`, as its `load_image`)."""
    if composite and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def processed_size(width: int, height: int, processing: ImageProcessing) -> tuple[int, int]:
    """(width, height) after the processor's resize: transformers' get_resize_output_image_size."""
    if processing.resize == "squash":
        return int(processing.size[1]), int(processing.size[0])
    edge = int(processing.size[0])
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def process(image: Image.Image, processing: ImageProcessing) -> np.ndarray:
    """An RGB image resized and centre-cropped as the processor does: (3, H, W) uint8.

    transformers' PIL backend: `Image.resize` to `processed_size` with the processor's filter (no
    reducing gap), then a crop at ((h - ch) // 2, (w - cw) // 2), zero-padded where the image is smaller.
    """
    size = processed_size(*image.size, processing)
    if size != image.size:
        image = image.resize(size, Image.Resampling(RESAMPLE_FILTERS.index(processing.resample)))
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    if processing.crop is not None:
        ch, cw = int(processing.crop[0]), int(processing.crop[1])
        h, w = pixels.shape[:2]
        if h < ch or w < cw:
            padded = np.zeros((max(h, ch), max(w, cw), 3), dtype=np.uint8)
            top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[top : top + h, left : left + w] = pixels
            pixels, h, w = padded, padded.shape[0], padded.shape[1]
        top, left = (h - ch) // 2, (w - cw) // 2
        pixels = pixels[top : top + ch, left : left + cw]
    return pixels.transpose(2, 0, 1).copy()  # (3, H, W)


def decode_image(
    src: Source,
    image_size: int,
    max_pixels: int | None = None,
    processing: ImageProcessing | None = None,
) -> np.ndarray:
    """Decode an image, apply its EXIF orientation, make it RGB and square: (3, S, S) uint8.

    With `processing` (an imported model's processor) it is resized and cropped as that processor does
    (`process`), from the full-resolution pixels; without, shorter side to `image_size`, centre crop.
    `Image.open` reads only the header, so the pixel limit is checked before any pixel is decoded.
    Pillow's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) also reports "too_large".
    """
    readable = _as_readable(src)
    try:
        with Image.open(readable) as image:
            w, h = image.size
            if max_pixels is not None and w * h > max_pixels:
                raise MediaError(
                    "too_large", f"the image has {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                )
            if processing is not None:
                upright = ImageOps.exif_transpose(image)
                return process(_rgb(upright, processing.convert_rgb), processing)
            if image.format == "JPEG":  # let libjpeg decode at a reduced scale that is still >= size
                image.draft("RGB", (image_size, image_size))
            upright = ImageOps.exif_transpose(image)  # loads the pixels
            return _square(upright.convert("RGB"), image_size)
    except (MediaError, FileNotFoundError):
        raise
    except UnidentifiedImageError:
        raise MediaError("corrupt", "the data is not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise MediaError("too_large", f"the image is too large: {e}") from None
    except BAD_DATA_ERRORS as e:  # Pillow's ways of saying "bad data"
        raise MediaError("corrupt", f"the image could not be decoded: {type(e).__name__}: {e}") from None


# ---- video ------------------------------------------------------------------------------------------


def decode_video(
    src: Source,
    image_size: int,
    max_seconds: float | None = None,
    max_pixels: int | None = None,
    processing: ImageProcessing | None = None,
) -> DecodedVideo:
    """Decode every frame of the first video stream, each made RGB and square like an image (with
    `processing`, as that processor does each frame).

    Times count from the first frame. A duration over `max_seconds` is "too_long": checked against the
    headers before decoding when they state one, and against frame times while decoding. A frame of more
    than `max_pixels` is "too_large", checked on the stream's header and on every frame before its
    pixels are converted (damaged headers can claim any size).
    """
    with _open_container(src) as container, _bad_data_is_corrupt("video"):
        if not container.streams.video:
            raise MediaError("no_frames", "the media has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds:
            raise MediaError(
                "too_long", f"the video lasts {declared:.2f} s, over the limit of {max_seconds:g} s"
            )
        if stream.codec_context is not None:  # None: no decoder for it, which decoding reports
            _check_frame_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        frames: list[np.ndarray] = []
        times: list[float] = []
        for frame in container.decode(stream):
            _check_frame_size(frame.width, frame.height, max_pixels)
            if frame.time is not None:
                t = float(frame.time)
            else:  # no timestamps: count frames at the nominal rate
                t = times[-1] + 1.0 / rate if times and rate else float(len(times))
            if max_seconds is not None and times and t - times[0] > max_seconds:
                raise MediaError("too_long", f"the video is longer than the limit of {max_seconds:g} s")
            rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            picture = Image.fromarray(rgb)
            frames.append(
                _square(picture, image_size) if processing is None else process(picture, processing)
            )
            times.append(t)
    if not frames:
        raise MediaError("no_frames", "the video stream holds no decodable frames")
    order = np.argsort(np.asarray(times), kind="stable")  # presentation order, whatever the decoder did
    stamps = np.asarray(times, dtype=np.float64)[order]
    stamps -= stamps[0]  # (F,)
    step = 1.0 / rate if rate else (float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0)
    duration = float(stamps[-1] + step)  # damaged timestamps or frame rates can make this anything
    if not np.isfinite(duration):
        raise MediaError("corrupt", "the video's frame times are not finite numbers")
    if max_seconds is not None and duration > max_seconds:
        raise MediaError(
            "too_long", f"the video's frames span {duration:.2f} s, over the limit of {max_seconds:g} s"
        )
    return DecodedVideo(np.stack([frames[i] for i in order]), stamps, duration)


def _check_frame_size(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise MediaError(
            "too_large",
            f"the video's frames have {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}",
        )


FrameSampling = Literal["nearest", "floor"]
TIME_EPS = 1e-6  # seconds: frame times and targets computed two ways agree within this


def sample_frames(
    video: DecodedVideo,
    num_frames: int,
    start: float = 0.0,
    end: float | None = None,
    rule: FrameSampling = "nearest",
) -> np.ndarray:
    """`num_frames` frames for evenly spaced times in [start, end): (num_frames, 3, S, S).

    The times are start + i * (end - start) / num_frames, so a clip of exactly `num_frames` frames at a
    steady rate comes back whole and in order; a shorter clip repeats frames. "nearest" takes the frame
    nearest each time; "floor" the last frame at or before it: on a steady clip of n frames, frame
    i * n // num_frames, transformers' video processors' default sampling.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    end = video.duration if end is None else end
    span = max(end - start, 0.0)
    targets = start + np.arange(num_frames) * (span / num_frames)  # (num_frames,)
    times = video.times  # (F,) increasing
    if rule == "floor":
        at_or_before = np.searchsorted(times, targets + TIME_EPS, side="right") - 1
        return video.frames[np.clip(at_or_before, 0, len(times) - 1)]
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    nearest = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
    return video.frames[nearest]


__all__ = [
    "DecodedVideo",
    "MediaError",
    "decode_audio",
    "decode_image",
    "decode_video",
    "sample_frames",
]
