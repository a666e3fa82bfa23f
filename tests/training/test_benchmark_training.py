"""What the benchmark recipes add to training: a `data.dataset` block, label fractions, batch mixing
(mixup, CutMix), the natural-image and time-shift augmentations, and clip-level audio evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bridle.data.small_benchmarks import official_urbansound8k
from bridle.model.config import preset
from bridle.training.audio_augment import AudioAugment, AudioAugmentSettings
from bridle.training.distributed import DistInfo
from bridle.training.image_augment import ImageAugment, ImageAugmentSettings, colour_jitter, padded_crop
from bridle.training.mixing import BatchMixer, cutmix
from bridle.training.recipe import MixSpec, RecipeError, recipe_from_dict
from bridle.training.stages import evaluate, labelled_part, prepare_run, run_stage


def recipe(tmp_path: Path, root: Path, **data: object) -> dict:
    return {
        "name": "us-micro",
        "out_dir": str(tmp_path / "run"),
        "checkpoint_every": 50,
        "model": {"preset": "micro-audio"},
        "data": {
            "modality": "audio",
            "dataset": {"name": "urbansound8k", "root": str(root), "train_folds": [1], "test_folds": [2]},
            "batch_size": 8,
            **data,
        },
        "stages": [
            {"kind": "pretrain", "steps": 2, "lr": 1e-3},
            {"kind": "classifier", "mode": "finetune", "steps": 3, "lr": 1e-3},
        ],
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": "somewhere"}, "either train"),
        ({"modality": "image"}, "is audio, data.modality says 'image'"),
        (
            {"dataset": {"name": "urbansound8k", "root": ".", "train_folds": [1], "test_folds": [1]}},
            "in both",
        ),
        ({"dataset": {"name": "mnist", "root": "."}}, "must be one of"),
        (
            {
                "modality": "image",
                "dataset": {"name": "cifar10", "root": ".", "train_split": "train-all", "test_split": "val"},
            },
            "overlaps",
        ),
        ({"label_fraction": 0}, "label_fraction"),
        ({"mix": {"p": 2}}, "data.mix"),
        ({"mix": {"alpha": 1}}, "unknown keys"),
    ],
)
def test_bad_dataset_blocks_are_refused(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(recipe(tmp_path, tmp_path, **data))


def test_a_recipe_trains_on_a_label_fraction_of_urbansound8k_folds_with_mixing(tmp_path: Path) -> None:
    root = official_urbansound8k(tmp_path / "us8k", per_class=4)
    r = recipe_from_dict(recipe(tmp_path, root, label_fraction=0.5, mix={"p": 1.0}, augment={"shift_p": 1.0}))
    ctx = prepare_run(r, DistInfo(), reuse_config=False)
    assert (len(ctx.train_set), len(ctx.test_set)) == (40, 40)  # fold 1 trains, fold 2 tests
    assert all(e.path.parent.name == "fold2" for e in ctx.test_set.entries)
    run_stage(ctx, 0, resume=False)
    summary = run_stage(ctx, 1, resume=False).summary
    assert 0.0 <= summary["accuracy"] <= 1.0
    labelled = labelled_part(ctx)  # half of each class's 4 clips
    assert len(labelled) == 20 and sorted(labelled.targets) == sorted(list(range(10)) * 2)


def test_audio_is_scored_per_clip_over_all_its_windows(tmp_path: Path) -> None:
    """A classifier that answers 'class 1' in a clip's second window only scores the clip by the pooled
    probabilities: a clip of two windows whose mean favours class 1 counts as class 1."""
    root = official_urbansound8k(tmp_path / "us8k", per_class=2, folds=(1, 2))
    r = recipe_from_dict(recipe(tmp_path, root))
    ctx = prepare_run(r, DistInfo(), reuse_config=False)
    cfg = ctx.config.input
    test = ctx.test_set.subset([0])
    long = np.concatenate([np.zeros(cfg.window_samples, np.float32), np.ones(cfg.window_samples, np.float32)])
    test._cache = [long]
    test.targets = [1]

    class Loud(torch.nn.Module):  # class 1 when the window is loud, with high confidence; else mild 0
        def eval(self):
            return self

        def logits(self, x):
            loud = (x.flatten(1).mean(1) > x.flatten(1).mean()).float()
            return torch.stack([1.0 - loud, 4.0 * loud], dim=1) + torch.zeros(len(x), 10)[:, :2].sum(1, True)

    assert evaluate(Loud(), torch.nn.Identity(), test, 4, DistInfo()) == 1.0  # type: ignore[arg-type]


def test_mixup_and_cutmix_blend_targets_as_they_blend_inputs() -> None:
    x = torch.arange(4.0)[:, None, None, None].expand(4, 1, 8, 8).clone()
    y = torch.tensor([0, 1, 2, 3])
    plain, target = BatchMixer(MixSpec(p=0.0), 4, 0)(x, y)
    assert torch.equal(plain, x) and torch.equal(target, torch.eye(4))
    for cutmix_p in (0.0, 1.0):
        mixed, target = BatchMixer(MixSpec(p=1.0, cutmix_p=cutmix_p), 4, 1)(x, y)
        assert torch.allclose(target.sum(1), torch.ones(4))
        # each input is its target's blend of the two constant images, on average over its pixels
        assert torch.allclose(mixed.mean((1, 2, 3)), target @ torch.arange(4.0), atol=1e-5)
    rng = np.random.default_rng(0)
    _, kept = cutmix(torch.zeros(1, 1, 10, 10), torch.ones(1, 1, 10, 10), 0.75, rng)
    assert 0.0 <= kept <= 1.0


def test_soft_targets_train_a_classifier_head() -> None:
    from bridle.model.bridle import Classification
    from bridle.model.encoder import Encoder
    from bridle.model.tokenizer import RandomProjectionTokenizer

    cfg = preset("micro-image")
    model = Classification(cfg, Encoder(cfg), RandomProjectionTokenizer(cfg), "random", 3, "finetune")
    x = torch.randn(4, 3, cfg.input.image_size, cfg.input.image_size)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    loss, scalars = model(x, soft)
    loss.backward()
    assert loss.item() > 0 and 0.0 <= scalars["train_accuracy"] <= 1.0


def test_natural_image_steps_and_the_unchanged_older_chain() -> None:
    cfg = preset("micro-image")
    s = cfg.input.image_size
    image = np.random.default_rng(0).integers(0, 256, (3, s, s), dtype=np.uint8)
    older = ImageAugment(ImageAugmentSettings(contrast_p=0.5, noise_p=0.5), cfg)
    newer = ImageAugment(ImageAugmentSettings(contrast_p=0.5, noise_p=0.5, flip_p=1.0), cfg)
    a = older(image, np.random.default_rng(5))
    b = newer(image, np.random.default_rng(5))
    np.testing.assert_array_equal(b, a[:, :, ::-1])  # the new steps draw after the older ones
    hwc = image.transpose(1, 2, 0)
    crop = padded_crop(hwc, 4, np.random.default_rng(1))
    assert crop.shape == hwc.shape
    np.testing.assert_array_equal(colour_jitter(hwc, np.ones(3)), hwc)
    assert colour_jitter(hwc, np.array([1.0, 1.0, 0.0])).std(axis=2).max() <= 1  # no saturation: grey


def test_time_shift_rolls_the_wave() -> None:
    cfg = preset("micro-audio")
    wave = np.zeros(16000, np.float32)
    wave[100] = 0.5
    shifted = AudioAugment(AudioAugmentSettings(shift_p=1.0, shift_seconds=0.5), cfg)(
        wave, np.random.default_rng(2)
    )
    assert len(shifted) == len(wave) and shifted.max() == 0.5 and int(shifted.argmax()) != 100
