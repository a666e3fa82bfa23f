"""What the real-data benchmark runs: the data sets, their parts, arms, label fractions, seeds and budgets.

Each data set has a bundled recipe (bridle/training/recipes/). The benchmark pretrains with that recipe's
pretraining stages on each part's training data only (never its validation or test part), then fine-tunes
its classifier stage from the pretrained E (`bridle`) and from a fresh E (`random-init`) with the same
steps, learning rate and augmentation, and fits a linear model on raw features (`features`).
"""

from __future__ import annotations

from dataclasses import dataclass

ARMS = ("bridle", "random-init", "features")
SEEDS = (0, 1, 2)
SWEEP_LRS = (3e-4, 1e-3, 2e-3)  # the fine-tuning learning rates tried, for both arms alike


@dataclass(frozen=True)
class Part:
    """One train/test pairing: the training data pretrains and fine-tunes, the test data only scores."""

    name: str  # the `split` of a result row
    dataset_overrides: dict[str, object]  # the recipe's data.dataset keys for this part


@dataclass(frozen=True)
class Benchmark:
    dataset: str  # urbansound8k | cifar10
    recipe: str  # the bundled recipe whose stages the benchmark uses
    parts: tuple[Part, ...]
    fractions: tuple[float, ...]
    steps: dict[float, int]  # fine-tuning steps per label fraction (both arms)
    sweep_fraction: float  # the learning rate is chosen on this fraction, seed 0, the first part


BENCHMARKS = {
    "urbansound8k": Benchmark(
        dataset="urbansound8k",
        recipe="bridle/training/recipes/urban-sounds.yaml",
        parts=(
            Part("fold1->fold2", {"train_folds": [1], "test_folds": [2]}),
            Part("fold2->fold1", {"train_folds": [2], "test_folds": [1]}),
        ),
        fractions=(0.1, 1.0),
        steps={0.1: 150, 1.0: 200},
        sweep_fraction=0.1,
    ),
    "cifar10": Benchmark(
        dataset="cifar10",
        recipe="bridle/training/recipes/cifar10.yaml",
        parts=(Part("val", {"train_split": "train", "test_split": "val"}),),
        fractions=(0.01, 0.1, 1.0),
        steps={0.01: 100, 0.1: 150, 1.0: 250},
        sweep_fraction=0.01,
    ),
}
