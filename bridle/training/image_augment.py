"""Image augmentation for how people photograph and scan: framing, the print, the camera and the file.

`ImageAugment(settings, cfg)(image, rng) -> image` takes one decoded image, (3, S, S) uint8 as the
training set holds it (after `decode_image`'s resize and centre crop, i.e. as the model sees it), and
returns another of the same shape and type. It is applied by the training set (bridle/training/augment.py);
evaluation sets never get it. Pillow and numpy, one example at a time, well under a millisecond at 32 px.

The chain, each step applied with its own probability `<step>_p` (0 = off), in the order a picture is made:
    affine    scale, position and rotation in one resampling (the digit framed smaller or larger, off
              centre, tilted); the uncovered border is filled with the image's own border colour
    polarity  light on dark <-> dark on light (255 - x)
    contrast  faded or strong print: pixels pulled to or pushed from the mean, plus a brightness shift
    blur      out of focus or a soft scan: a Gaussian blur of a radius in pixels of the S-px image
    noise     sensor noise: Gaussian, per pixel and channel
    jpeg      JPEG compression at a random quality
and then the natural-image chain of CIFAR-style training (its draws come after, so the steps above draw
the same with or without it):
    crop      reflect-pad by `crop_padding` px, crop back to S x S at a random place
    flip      mirror left-right
    jitter    brightness, contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter]
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from bridle.model.config import ImageInput, ModelConfig
from bridle.training.augment_settings import AugmentSettings

Range = tuple[float, float]


@dataclass(frozen=True)
class ImageAugmentSettings(AugmentSettings):
    """Probabilities and ranges of each step (a recipe's `data.augment` for image data)."""

    affine_p: float = 0.0
    scale: Range = (0.7, 1.15)  # size factor of the content
    shift: float = 0.12  # most translation, as a share of the side, each axis
    rotate_degrees: float = 12.0  # most rotation either way
    polarity_p: float = 0.0
    contrast_p: float = 0.0
    contrast: Range = (0.4, 1.2)  # factor on the deviation from the mean
    brightness: Range = (-40.0, 40.0)  # added grey levels
    blur_p: float = 0.0
    blur_radius: Range = (0.3, 1.2)  # px
    noise_p: float = 0.0
    noise_std: Range = (2.0, 12.0)  # grey levels
    jpeg_p: float = 0.0
    jpeg_quality: Range = (30.0, 95.0)
    # the usual natural-image chain (CIFAR-style), drawn after the steps above
    crop_p: float = 0.0
    crop_padding: int = 4  # px of reflected border added before a random crop back to S x S
    flip_p: float = 0.0  # left-right mirror
    jitter_p: float = 0.0
    jitter: float = 0.4  # brightness, contrast and saturation factors in [1 - jitter, 1 + jitter]

    kind = "image"

    def check(self) -> None:
        super().check()
        if self.scale[0] <= 0 or self.blur_radius[0] < 0 or self.noise_std[0] < 0:
            raise ValueError("scale must be positive, blur_radius and noise_std >= 0")
        if not 0 <= self.shift <= 0.5 or not 0 <= self.rotate_degrees <= 180:
            raise ValueError("shift must lie in [0, 0.5] and rotate_degrees in [0, 180]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {list(self.jpeg_quality)}")
        if not 0 <= self.crop_padding <= 16 or not 0 <= self.jitter < 1:
            raise ValueError("crop_padding must lie in [0, 16] px and jitter in [0, 1)")


class ImageAugment:
    """The augmentation chain above for one model's input (its image size)."""

    Settings = ImageAugmentSettings

    def __init__(self, settings: ImageAugmentSettings, cfg: ModelConfig) -> None:
        if not isinstance(cfg.input, ImageInput):
            raise ValueError(f"image augmentation needs an image model, got {cfg.modality!r}")
        self.settings = settings
        self.size = cfg.input.image_size

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        if image.shape != (3, self.size, self.size) or image.dtype != np.uint8:
            raise ValueError(f"expected a (3, {self.size}, {self.size}) uint8 image, got {image.shape}")
        # One draw per step whether or not it applies, so a step's settings do not shift the others' draws.
        apply = rng.random(6) < [s.affine_p, s.polarity_p, s.contrast_p, s.blur_p, s.noise_p, s.jpeg_p]
        picture = Image.fromarray(image.transpose(1, 2, 0))  # (S, S, 3)
        if apply[0]:
            picture = affine(
                picture,
                scale=rng.uniform(*s.scale),
                shift=tuple(rng.uniform(-s.shift, s.shift, size=2) * self.size),
                degrees=rng.uniform(-s.rotate_degrees, s.rotate_degrees),
            )
        x = np.asarray(picture, np.float32)  # (S, S, 3)
        if apply[1]:
            x = 255.0 - x
        if apply[2]:
            x = x.mean() + rng.uniform(*s.contrast) * (x - x.mean()) + rng.uniform(*s.brightness)
        if apply[3]:
            x = blur(x, rng.uniform(*s.blur_radius))
        if apply[4]:
            x = x + rng.normal(0.0, rng.uniform(*s.noise_std), size=x.shape)
        out = np.clip(x, 0, 255).round().astype(np.uint8)
        if apply[5]:
            out = jpeg(out, round(rng.uniform(*s.jpeg_quality)))
        natural = rng.random(3) < [s.crop_p, s.flip_p, s.jitter_p]
        if natural[0]:
            out = padded_crop(out, s.crop_padding, rng)
        if natural[1]:
            out = out[:, ::-1]
        if natural[2]:
            out = colour_jitter(out, rng.uniform(1 - s.jitter, 1 + s.jitter, size=3))
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (3, S, S)


# ---- the steps ---------------------------------------------------------------------------------------------


def border_colour(picture: Image.Image) -> tuple[int, ...]:
    """The median colour of the outermost pixels: the background a digit is drawn on."""
    x = np.asarray(picture)  # (H, W, 3)
    edge = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])  # (2H + 2W, 3)
    return tuple(int(v) for v in np.median(edge, axis=0))


def affine(picture: Image.Image, scale: float, shift: tuple[float, float], degrees: float) -> Image.Image:
    """The content scaled by `scale` and rotated by `degrees` about the centre, then moved by `shift`
    (dx, dy) px; the uncovered area takes the border colour."""
    w, h = picture.size
    cx, cy = w / 2, h / 2
    theta = math.radians(degrees)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    # PIL maps each output pixel back to its source: in = (scale x rotation)^-1 (out - c - t) + c
    ox, oy = cx + shift[0], cy + shift[1]
    coeffs = (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy)
    return picture.transform(
        (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=border_colour(picture)
    )


def blur(x: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of an (H, W, 3) float image, radius in px."""
    picture = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    return np.asarray(picture.filter(ImageFilter.GaussianBlur(radius)), np.float32)


def padded_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 with `padding` px of reflected border, then cropped back to H x W at random."""
    h, w = x.shape[:2]
    padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
    top, left = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    return padded[top : top + h, left : left + w]


def colour_jitter(x: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with brightness, contrast and saturation scaled by `factors` (1 = unchanged)."""
    y = x.astype(np.float32) * factors[0]
    grey = y @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    y = grey.mean() + factors[1] * (y - grey.mean())
    grey = y @ np.array([0.299, 0.587, 0.114], np.float32)
    y = grey[..., None] + factors[2] * (y - grey[..., None])
    return np.clip(y, 0, 255).round().astype(np.uint8)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through a JPEG encode and decode at `quality`."""
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), np.uint8)
