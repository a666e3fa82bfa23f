"""The decoding an imported model's processor asks for (bridle/model/decoding.py, windowing.py): the
resize size as transformers computes it, its crop, transparency, frame sampling i * n // T and the NaN
padding of AST's short clips; and that without a processor nothing changes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bridle.data.media_files import make_image
from bridle.model.config import ImageProcessing
from bridle.model.decoding import DecodedVideo, decode_image, process, processed_size, sample_frames
from bridle.model.windowing import audio_windows

DEIT = ImageProcessing("squash", (36, 36), "bicubic", crop=(32, 32))
DINO = ImageProcessing("shortest_edge", (36,), "bicubic", crop=(32, 32), convert_rgb=True)


def test_the_resize_size_is_transformers() -> None:
    # get_resize_output_image_size: the longer side int(edge * long / short), truncated, not rounded
    assert processed_size(500, 375, DINO) == (48, 36)  # 36 * 500 / 375 = 48.0
    assert processed_size(333, 500, DINO) == (36, 54)  # 54.05 -> 54
    assert processed_size(61, 97, DINO) == (36, 57)  # 57.2 -> 57
    assert processed_size(97, 61, DINO) == (57, 36)
    assert processed_size(500, 375, DEIT) == (36, 36)


def test_the_crop_is_centred_as_transformers_crops() -> None:
    pixels = np.arange(48 * 36 * 3, dtype=np.uint32).reshape(36, 48, 3) % 251
    image = Image.fromarray(pixels.astype(np.uint8))
    out = process(image, ImageProcessing("shortest_edge", (36,), "nearest", crop=(32, 32)))
    assert out.shape == (3, 32, 32)
    assert np.array_equal(
        out, pixels.astype(np.uint8)[2:34, 8:40].transpose(2, 0, 1)
    )  # (36-32)//2, (48-32)//2


def test_transparency_over_white_only_when_the_processor_converts() -> None:
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 0))  # fully transparent
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    composited = decode_image(buf.getvalue(), 32, processing=DINO)
    dropped = decode_image(buf.getvalue(), 32, processing=DEIT)
    assert (composited == 255).all()  # white, as transformers' convert_to_rgb
    assert tuple(dropped[:, 0, 0]) == (10, 20, 30)  # alpha dropped, as load_image's convert("RGB")


def test_without_a_processor_images_decode_as_before() -> None:
    data = make_image("jpeg", (120, 90))
    assert np.array_equal(decode_image(data, 32), decode_image(data, 32, processing=None))
    assert decode_image(data, 32).shape == (3, 32, 32)


@pytest.mark.parametrize("frames", [3, 7, 16, 25, 60])
def test_floor_sampling_is_i_n_over_t(frames: int) -> None:
    fps = 30.0
    video = DecodedVideo(
        np.arange(frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 2, 2), np.uint8),
        np.arange(frames) / fps,
        frames / fps,
    )
    got = sample_frames(video, 8, rule="floor")[:, 0, 0, 0]
    assert list(got) == [i * frames // 8 for i in range(8)]  # transformers' default_sample_indices_fn


def test_a_short_clip_for_an_ast_is_followed_by_nan() -> None:
    wave = np.linspace(-0.5, 0.5, 700, dtype=np.float32)
    (window,), spans = audio_windows(wave, 1000, 16_000, pad="fbank")
    assert np.array_equal(window[:700], wave) and np.isnan(window[700:]).all()
    assert spans == [(0.0, 700 / 16_000)]
    (silence,), _ = audio_windows(wave, 1000, 16_000)  # the default: centred in silence, as before
    assert not np.isnan(silence).any() and silence[0] == 0.0
