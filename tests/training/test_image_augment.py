"""Image augmentation: typed settings, determinism per seed, each step's effect, off for evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridle.model.config import preset
from bridle.training.augment import AugmentError, augment_settings, build_augment
from bridle.training.data import MediaDataset
from bridle.training.image_augment import ImageAugment, ImageAugmentSettings, affine
from bridle.training.recipe import RecipeError, load_recipe

CFG = preset("micro-image")
RECIPE = Path(__file__).resolve().parents[2] / "bridle" / "training" / "recipes" / "image-digits-printed.yaml"
S = CFG.input.image_size
ALL_ON = {
    "affine_p": 1.0,
    "polarity_p": 0.5,
    "contrast_p": 0.5,
    "blur_p": 0.5,
    "noise_p": 0.5,
    "jpeg_p": 0.5,
}


def digit_like(seed: int = 0) -> np.ndarray:
    """A light bar on a dark square, (3, S, S) uint8."""
    x = np.full((3, S, S), 20, np.uint8)
    x[:, S // 4 : 3 * S // 4, S // 2 - 2 : S // 2 + 2] = 230
    return x + np.random.default_rng(seed).integers(0, 3, x.shape, dtype=np.uint8)


def test_settings_are_typed_and_checked():
    s = augment_settings("image", {"affine_p": 0.5, "scale": [0.8, 1.0]})
    assert isinstance(s, ImageAugmentSettings) and s.scale == (0.8, 1.0)
    for bad in ({"affine_p": 2}, {"scale": [1.2, 0.8]}, {"jpeg_quality": [0, 50]}, {"tilt": 1}):
        with pytest.raises(AugmentError):
            augment_settings("image", bad)
    with pytest.raises(ValueError, match="image model"):
        ImageAugment(ImageAugmentSettings(), preset("micro-audio"))


def test_same_seed_same_result_other_seed_other_result():
    augment = build_augment("image", ALL_ON, CFG)
    x = digit_like()
    a = augment(x, np.random.default_rng([0, 1, 2]))
    b = augment(x, np.random.default_rng([0, 1, 2]))
    c = augment(x, np.random.default_rng([0, 2, 2]))
    assert a.shape == x.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_all_off_is_the_identity():
    augment = ImageAugment(ImageAugmentSettings(), CFG)
    x = digit_like()
    np.testing.assert_array_equal(augment(x, np.random.default_rng(0)), x)


def test_polarity_inverts_and_affine_keeps_the_background():
    x = digit_like()
    inverted = ImageAugment(ImageAugmentSettings(polarity_p=1.0), CFG)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(inverted, 255 - x)
    from PIL import Image

    small = np.asarray(affine(Image.fromarray(x.transpose(1, 2, 0)), 0.5, (0.0, 0.0), 30.0))
    assert small.shape == (S, S, 3)
    assert abs(int(small[0, 0, 0]) - 20) <= 3  # uncovered corners take the border colour, not black/white
    assert small.max() > 150  # the bar is still there


def test_evaluation_data_is_never_augmented(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(digit_like().transpose(1, 2, 0)).save(tmp_path / label / "0.png")
    plain = MediaDataset(tmp_path, CFG, cache=True)
    augmented = MediaDataset(tmp_path, CFG, cache=True, augment=build_augment("image", ALL_ON, CFG))
    assert plain.augment is None
    assert not np.array_equal(augmented[0, 1][0].numpy(), plain[0][0].numpy())
    np.testing.assert_array_equal(augmented[0, 1][0].numpy(), augmented[0, 1][0].numpy())


def test_the_image_recipe_sets_augmentation_and_a_bad_key_is_refused():
    recipe = load_recipe(RECIPE)
    settings = augment_settings("image", recipe.data.augment)
    assert settings.affine_p > 0 and settings.polarity_p > 0 and settings.jpeg_p > 0
    with pytest.raises(RecipeError):
        load_recipe(RECIPE, ["data.augment.tilt=1"])
