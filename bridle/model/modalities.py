"""The modality registry: what differs between audio, images and video, one `ModalitySpec` each.

A spec says, for one modality:
- its input type (`ModelConfig.input`, bridle/model/inputs.py), which answers the shapes: channels,
  patch grid, the graphs' `signal`, the manifest's input fields;
- its media: file suffixes (data folders), content types and magic bytes (uploads), how a file is
  decoded for training (`decode_example`, `probe`) and how an upload becomes the graphs' windows
  (`to_windows`, under the front end's `Limits`);
- its model directory: the patch grid's axes and the manifest input fields a model must hold;
- the service: which uploads a model of it reads, how `/features` describes its tensor;
- training: whether an item is a window cut from a longer example (`item_window`), and by name the
  augmenter (resolved by bridle/training/augment.py) and the torch preprocessor (resolved by
  bridle/model/preprocessing.py), so this module imports no torch and no training code.

    spec_for("audio") -> ModalitySpec     UnknownModality for a name that is not registered
    modality_names() -> ("audio", "image", "video")
    register(spec)                        a new modality is one spec (and its input type and preprocessor)
    sniff_modality(data, content_type)    the modality of an upload

numpy, PyAV and Pillow only: the service imports this module without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bridle.model.decoding import (
    MediaError,
    Source,
    decode_audio,
    decode_image,
    decode_video,
    looks_like_plain_wav,
)
from bridle.model.errors import BridleError
from bridle.model.inputs import AudioInput, ImageInput, ModalityInput, VideoInput
from bridle.model.windowing import (
    WindowPolicy,
    audio_windows,
    first_clip,
    training_window,
    video_windows,
)

if TYPE_CHECKING:
    from bridle.model.manifest import InputSpec

Modality = str  # the name of a registered modality: "audio", "image", "video"


class UnknownModality(BridleError, ValueError):
    """A modality name that no spec is registered for."""


# ---- what a front end hands the specs -----------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The most media an upload may hold: decoding stops with MediaError "too_long" / "too_large"."""

    max_audio_seconds: float
    max_image_pixels: int
    max_video_seconds: float


@dataclass(frozen=True)
class Windows:
    """A decoded upload as the graphs' input: `signal` (W, ...) and each window's span in seconds."""

    signal: np.ndarray  # audio (W, samples) float32; image (1, 3, S, S) uint8; video (W, T, 3, S, S) uint8
    spans: list[tuple[float | None, float | None]]  # (start, end) seconds; (None, None) for an image
    duration: float | None  # seconds of media (audio, video)


# ---- the spec -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    input_type: type[ModalityInput]  # what `ModelConfig.input` holds for this modality

    # media files and uploads
    suffixes: frozenset[str]  # file suffixes of this modality in data folders (lower case, with the dot)
    content_types: tuple[str, ...]  # the major MIME types an upload names it by ("audio" of audio/wav)
    magic: Callable[[bytes], bool]  # whether a file's first bytes (up to 512) are of this modality
    decode_example: Callable[[Source, Any], np.ndarray]  # (file, input) -> the example training caches
    probe: Callable[[Source], object]  # decodes a file cheaply: MediaError when it cannot be used
    to_windows: Callable[[InputSpec, bytes, Limits, WindowPolicy], Windows]  # an upload -> the windows
    # (manifest input, upload) -> whether `to_windows` is sure to take microseconds (no FFmpeg)
    decodes_quickly: Callable[[InputSpec, bytes], bool] = lambda spec, data: False

    # the model directory
    grid_axes: tuple[str, ...] = ()  # the names of the patch grid's axes, as the manifest lists them
    required_input: tuple[str, ...] = ()  # manifest input fields a model of this modality must hold

    # the service
    reads: tuple[Modality, ...] = ()  # the uploads a model of this modality reads (its own first)
    features_layout: str = ""  # the axes and normalisation of the `features` tensor (POST /features)

    # training
    # input -> the samples of the window a training item is cut from a longer example (a short one
    # centred); None: the decoded example is the item
    item_window: Callable[[Any], int] | None = None
    augmenter: str | None = None  # "module:Class" of the augmenter (bridle/training/augment.py); None
    preprocessor: str = ""  # "module:Class": the torch module, decoded signal -> encoder input, cls(input)

    def training_item(self, example: np.ndarray, inp: Any, start: int = 0) -> np.ndarray:
        """The item training takes from a decoded example: the example, or its window from `start`."""
        if self.item_window is None:
            return example
        return training_window(example, self.item_window(inp), start)  # (window,) float32


_REGISTRY: dict[Modality, ModalitySpec] = {}


def register(spec: ModalitySpec) -> ModalitySpec:
    """Add `spec` to the registry; a name registered twice is an error (ValueError)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"modality {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: Modality) -> None:
    """Remove a registered modality (tests that register one of their own)."""
    _REGISTRY.pop(name, None)


def spec_for(name: str) -> ModalitySpec:
    """The spec of modality `name`; UnknownModality when none is registered."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownModality(f"unknown modality {name!r}; registered: {list(_REGISTRY)}")
    return spec


def modality_names() -> tuple[Modality, ...]:
    """The registered modalities, in registration order."""
    return tuple(_REGISTRY)


def modality_choices() -> str:
    """The registered modalities for a message: "audio, image or video"."""
    names = list(_REGISTRY)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def load_named(name: str) -> Any:
    """The object a spec names as "package.module:Attribute" (its preprocessor, its augmenter)."""
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ValueError(f"{name!r} must be 'package.module:Attribute'")
    return getattr(importlib.import_module(module), attribute)


# ---- sniffing an upload ---------------------------------------------------------------------------------


def sniff_modality(data: bytes, content_type: str | None) -> Modality:
    """The modality of an upload: from its content type's prefix, else from its magic bytes (the first
    spec, in registration order, whose `magic` accepts them).

    A generic content type (application/octet-stream, text/plain, none) falls through to the bytes.
    """
    if not data:
        raise MediaError("empty", "the media is empty (0 bytes)")
    if content_type:
        major = content_type.split(";", 1)[0].strip().lower().split("/", 1)[0]
        for spec in _REGISTRY.values():
            if major in spec.content_types:
                return spec.name
    head = bytes(data[:512])
    for spec in _REGISTRY.values():
        if spec.magic(head):
            return spec.name
    what = f" ({content_type})" if content_type else ""
    raise MediaError("unsupported", f"the media type{what} is not {modality_choices()} this service reads")


def _mpeg_audio_sync(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio / ADTS frame sync


def _mp4_audio_brand(head: bytes) -> bool:
    return head[8:12] in (b"M4A ", b"M4B ")


def _mp4(head: bytes) -> bool:
    """An ISO media file ('ftyp' box first) that does not start with another format's signature: a file
    that does is that format, whatever bytes 4..8 hold."""
    riff = head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"WEBP", b"AVI ")
    other = (
        riff or _image_magic(head) or head.startswith((b"fLaC", b"ID3", b"OggS")) or _mpeg_audio_sync(head)
    )
    return head[4:8] == b"ftyp" and not other


def _audio_magic(head: bytes) -> bool:
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head[:4] == b"fLaC"
        or head[:3] == b"ID3"
        or _mpeg_audio_sync(head)
        or (head[:4] == b"OggS" and b"\x80theora" not in head)
        or (_mp4(head) and _mp4_audio_brand(head))
    )


def _image_magic(head: bytes) -> bool:
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head[:8] == b"\x89PNG\r\n\x1a\n"
        or head[:2] == b"\xff\xd8"
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head[:2] == b"BM"
    )


def _video_magic(head: bytes) -> bool:
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or (head[:4] == b"OggS" and b"\x80theora" in head)
        or (_mp4(head) and not _mp4_audio_brand(head))
        or head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska / WebM
    )


# ---- uploads -> windows ---------------------------------------------------------------------------------
# `spec` is the manifest's input (read_manifest refuses manifests without the fields each one uses); an
# imported model's processor recorded there (`processing`, `frame_sampling`, `pad`) decides its geometry,
# frame choice and padding.


def _audio_to_windows(spec: InputSpec, data: bytes, limits: Limits, policy: WindowPolicy) -> Windows:
    rate = int(spec.sample_rate)  # type: ignore[arg-type]
    wave = decode_audio(data, rate, max_seconds=limits.max_audio_seconds)  # (samples,)
    window = int(spec.shape[1])
    windows, spans = audio_windows(wave, window, rate, policy, pad=spec.pad or "waveform")  # (W, samples)
    return Windows(windows, spans, len(wave) / rate)


def _image_to_windows(spec: InputSpec, data: bytes, limits: Limits, policy: WindowPolicy) -> Windows:
    size = int(spec.image_size or spec.shape[-1])
    image = decode_image(data, size, max_pixels=limits.max_image_pixels, processing=spec.processing)
    return Windows(image[None], [(None, None)], None)  # (1, 3, S, S)


def _video_to_windows(spec: InputSpec, data: bytes, limits: Limits, policy: WindowPolicy) -> Windows:
    video = decode_video(
        data,
        int(spec.image_size or spec.shape[-1]),
        max_seconds=limits.max_video_seconds,
        max_pixels=limits.max_image_pixels,
        processing=spec.processing,
    )
    clip_frames, clip_seconds = int(spec.shape[1]), float(spec.window_seconds)  # type: ignore[arg-type]
    rule = spec.frame_sampling or "nearest"
    clips, spans = video_windows(video, clip_frames, clip_seconds, policy, rule=rule)  # (W, T, 3, S, S)
    return Windows(clips, spans, video.duration)


def _plain_wav_at_rate(spec: InputSpec, data: bytes) -> bool:
    return looks_like_plain_wav(data, int(spec.sample_rate))  # type: ignore[arg-type]


# ---- the three modalities -------------------------------------------------------------------------------

AUDIO = register(
    ModalitySpec(
        name="audio",
        input_type=AudioInput,
        suffixes=frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".mp4"}),
        content_types=("audio",),
        magic=_audio_magic,
        decode_example=lambda src, inp: decode_audio(src, inp.sample_rate),  # (samples,) float32
        probe=lambda src: decode_audio(src, 16_000),
        to_windows=_audio_to_windows,
        decodes_quickly=_plain_wav_at_rate,
        grid_axes=("time", "mel"),
        required_input=("sample_rate", "window_seconds"),
        # audio and video files share containers: an audio model reads the sound of a video
        reads=("audio", "video"),
        features_layout="(windows, 1, frames, mel): the log-mel fbank, (log-mel - mean) / (2 std)",
        item_window=lambda inp: inp.window_samples,
        augmenter="bridle.training.audio_augment:AudioAugment",
        preprocessor="bridle.model.preprocessing:AudioPreprocessor",
    )
)

IMAGE = register(
    ModalitySpec(
        name="image",
        input_type=ImageInput,
        suffixes=frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}),
        content_types=("image",),
        magic=_image_magic,
        decode_example=lambda src, inp: decode_image(src, inp.image_size),  # (3, S, S) uint8
        probe=lambda src: decode_image(src, 32),
        to_windows=_image_to_windows,
        grid_axes=("height", "width"),
        required_input=(),
        reads=("image",),
        features_layout="(windows, 3, height, width): RGB, (pixel / 255 - mean) / std per channel",
        augmenter="bridle.training.image_augment:ImageAugment",
        preprocessor="bridle.model.preprocessing:ImagePreprocessor",
    )
)

VIDEO = register(
    ModalitySpec(
        name="video",
        input_type=VideoInput,
        suffixes=frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v"}),
        content_types=("video",),
        magic=_video_magic,
        # the first clip, T frames over its first `clip_seconds`: (T, 3, S, S) uint8
        decode_example=lambda src, inp: first_clip(
            decode_video(src, inp.image_size), inp.num_frames, inp.clip_seconds
        ),
        probe=lambda src: decode_video(src, 32),
        to_windows=_video_to_windows,
        grid_axes=("time", "height", "width"),
        required_input=("window_seconds",),
        # a video model given a file without pictures says so (422 no_frames) from its decoder
        reads=("video", "audio"),
        features_layout="(windows, 3, frames, height, width): RGB, (pixel / 255 - mean) / std per channel",
        preprocessor="bridle.model.preprocessing:VideoPreprocessor",
    )
)

__all__ = [
    "Limits",
    "Modality",
    "ModalitySpec",
    "UnknownModality",
    "Windows",
    "load_named",
    "modality_choices",
    "modality_names",
    "register",
    "sniff_modality",
    "spec_for",
    "unregister",
]
