"""The typed input of each modality: what `ModelConfig.input` holds, and the shapes that follow from it.

Each input type (`AudioInput`, `ImageInput`, `VideoInput`) is named by its modality's spec in
bridle/model/modalities.py, and answers the questions `ModelConfig`, the export and the checkpoint ask of
any input (`ModalityInput`): channels, the patch grid, the graphs' `signal`, the manifest's input fields.
So a new modality brings its input type here (or beside its spec) and nothing else branches on it.

Imports no torch: the service reads configs too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# PIL's resampling filters by their codes (0..5), the numbers a preprocessor_config.json's `resample` holds
RESAMPLE_FILTERS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


@dataclass(frozen=True)
class ImageProcessing:
    """An imported model's image processor, as its `preprocessor_config.json` says (bridle/importers/hf.py),
    for the decoding of images and video frames (bridle/model/decoding.py). Without it (None) an image is the
    project's own: shorter side resized to the input size (bicubic), centre crop.

    `resize` "squash" resizes to `size` (height, width) whatever the aspect ratio; "shortest_edge" resizes
    the shorter side to `size[0]` and the longer to int(size[0] * long / short), as transformers does.
    `crop` (height, width) is then a centre crop, or None. `convert_rgb`: transparency is composited onto
    white (transformers' `convert_to_rgb`); otherwise alpha is dropped (`PIL.Image.convert("RGB")`, as
    transformers' `load_image`). `rescale_factor`, `mean` and `std` are the processor's own (None: not
    applied); the exported graph applies them, folded into `ImageInput.mean` / `std`. `source` says where
    the values came from (the file, or the family default the import chose)."""

    resize: Literal["squash", "shortest_edge"]
    size: tuple[int, ...]
    resample: str = "bicubic"
    crop: tuple[int, int] | None = None
    convert_rgb: bool = False
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "shortest_edge"):
            raise ValueError(
                f"ImageProcessing resize must be 'squash' or 'shortest_edge', got {self.resize!r}"
            )
        if len(self.size) != (2 if self.resize == "squash" else 1) or min(self.size) < 1:
            raise ValueError(f"ImageProcessing size {self.size} does not fit resize {self.resize!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"ImageProcessing resample {self.resample!r} must be one of {RESAMPLE_FILTERS}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"ImageProcessing crop {self.crop} must be (height, width)")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every processed image, or None when it follows the image's aspect ratio."""
        if self.crop is not None:
            return (int(self.crop[0]), int(self.crop[1]))
        return (int(self.size[0]), int(self.size[1])) if self.resize == "squash" else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessing:
        return build_frozen(cls, d)


class ModalityInput:
    """What every modality's input type answers (the input types below are frozen dataclasses on it).

    channels: channels of the encoder's input; signal_dtype: the element type of the graphs' `signal`.
    """

    channels: ClassVar[int]
    signal_dtype: ClassVar[str]  # "float32" or "uint8"

    def patched_sizes(self) -> tuple[int, ...]:
        """The input sizes the patch size must divide (a model without an imported encoder)."""
        raise NotImplementedError

    def patch_grid(self, patch: int, tubelet: int) -> tuple[int, ...]:
        """The patch grid of a model cutting p x p patches (video: tubelets of `tubelet` frames)."""
        raise NotImplementedError

    def frames_per_patch(self, tubelet: int) -> int:
        """Frames in one patch: 1, or a video's tubelet."""
        return 1

    def check(self, tubelet: int) -> None:
        """ValueError for settings that do not fit together (beyond the patch size)."""

    def model_input_shape(self) -> tuple[int, ...]:
        """One example as the encoder takes it, after the preprocessor (batch axis left out)."""
        raise NotImplementedError

    def signal_shape(self) -> tuple[int, ...]:
        """One example of the graphs' input `signal`, the decoded window (batch axis left out)."""
        raise NotImplementedError

    def manifest_fields(self) -> dict[str, Any]:
        """The fields of a manifest's `input` (bridle/model/manifest.py InputSpec) this input sets."""
        raise NotImplementedError


@dataclass(frozen=True)
class AudioInput(ModalityInput):
    """16 kHz mono waveform -> Kaldi log-mel fbank -> (x - mean) / (2 std) -> fixed frame count."""

    sample_rate: int = 16_000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    preemphasis: float = 0.97
    num_frames: int = 1024  # frames per window: 1024 = 10.24 s
    # Normalisation statistics of the fbank values of a waveform in [-1, 1] (AudioSet figures, as in
    # AST); training recipes measure and store their own data set's.
    mean: float = -4.27
    std: float = 4.57
    # The smallest mel energy before the log, in 16-bit units (the waveform scaled by 2**15). Kaldi's
    # float32 eps (the default, what AST and BEATs were trained with) puts digital silence at -15.9, far
    # below any recording's own noise floor (16-bit quantisation noise alone gives log-mel ~1.8); 1.0
    # (log 0) keeps it just below that (bridle/model/fbank.py).
    energy_floor: float = 1.1920928955078125e-07
    # The waveform in [-1, 1] is multiplied by this before the fbank: 2**15 (16-bit range) as BEATs and
    # torchaudio.load(normalize=False) users do; 1.0 for Hugging Face's AST feature extractor.
    waveform_scale: float = 2.0**15
    # how a clip shorter than a window is filled: "waveform" with silence; "fbank" with zero fbank frames
    # (before the normalisation), as Hugging Face's ASTFeatureExtractor pads (the graph is told which
    # samples are padding by their being NaN: bridle/model/preprocessing.py)
    pad: Literal["waveform", "fbank"] = "waveform"

    @property
    def window_samples(self) -> int:
        """Samples in a window of `num_frames` frames (the encoder's fixed input length)."""
        length = round(self.sample_rate * self.frame_length_ms / 1000)
        shift = round(self.sample_rate * self.frame_shift_ms / 1000)
        return (self.num_frames - 1) * shift + length

    channels: ClassVar[int] = 1
    signal_dtype: ClassVar[str] = "float32"

    def patched_sizes(self) -> tuple[int, ...]:
        return (self.num_frames, self.num_mel_bins)

    def patch_grid(self, patch: int, tubelet: int) -> tuple[int, ...]:
        return (self.num_frames // patch, self.num_mel_bins // patch)  # (time, mel)

    def model_input_shape(self) -> tuple[int, ...]:
        return (1, self.num_frames, self.num_mel_bins)  # (1, frames, mel)

    def signal_shape(self) -> tuple[int, ...]:
        return (self.window_samples,)  # (samples,)

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "num_frames": self.num_frames,
            "window_seconds": self.window_samples / self.sample_rate,
            "pad": None if self.pad == "waveform" else self.pad,
        }


@dataclass(frozen=True)
class ImageInput(ModalityInput):
    """RGB image resized (shorter side) and centre-cropped to `image_size`, then mean/std."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    processing: ImageProcessing | None = None  # an imported processor's geometry; None: the above

    channels: ClassVar[int] = 3
    signal_dtype: ClassVar[str] = "uint8"

    def patched_sizes(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size)

    def patch_grid(self, patch: int, tubelet: int) -> tuple[int, ...]:
        return (self.image_size // patch, self.image_size // patch)  # (h, w)

    def model_input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)  # (3, S, S)

    def signal_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)  # (3, S, S)

    def manifest_fields(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "processing": self.processing}


@dataclass(frozen=True)
class VideoInput(ModalityInput):
    """`num_frames` frames sampled uniformly over each `clip_seconds` of video, each an `ImageInput`-style
    RGB frame; longer videos are cut into consecutive clips (bridle/model/windowing.py)."""

    num_frames: int = 16
    clip_seconds: float = 2.0
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    processing: ImageProcessing | None = None  # each frame as an imported processor does; None: as images
    # which frames a clip's T come from: "nearest" the frame nearest each of T evenly spaced times;
    # "floor" the last frame at or before it, i.e. frame i * n // T of the clip's n (transformers' video
    # processors' default_sample_indices_fn)
    frame_sampling: Literal["nearest", "floor"] = "nearest"

    channels: ClassVar[int] = 3
    signal_dtype: ClassVar[str] = "uint8"

    def patched_sizes(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size)

    def patch_grid(self, patch: int, tubelet: int) -> tuple[int, ...]:
        return (self.num_frames // tubelet, self.image_size // patch, self.image_size // patch)  # (t, h, w)

    def frames_per_patch(self, tubelet: int) -> int:
        return tubelet

    def check(self, tubelet: int) -> None:
        if not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {self.clip_seconds}")
        if self.num_frames % tubelet:
            raise ValueError(f"num_frames {self.num_frames} must be a multiple of tubelet {tubelet}")

    def model_input_shape(self) -> tuple[int, ...]:
        return (3, self.num_frames, self.image_size, self.image_size)  # (3, T, S, S)

    def signal_shape(self) -> tuple[int, ...]:
        return (self.num_frames, 3, self.image_size, self.image_size)  # (T, 3, S, S)

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "clip_frames": self.num_frames,
            "window_seconds": float(self.clip_seconds),
            "processing": self.processing,
            "frame_sampling": None if self.frame_sampling == "nearest" else self.frame_sampling,
        }


def build_frozen(cls: type, d: dict[str, Any], retired: set[str] | frozenset[str] = frozenset()) -> Any:
    """Build a frozen dataclass from a dict, turning lists back into tuples; `retired` fields (held by
    files written by earlier versions, never changing a result) are dropped, unknown ones refused."""
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k not in retired}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
