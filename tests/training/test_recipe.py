from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import MICRO, REPO
from typer.testing import CliRunner

from bridle.training.cli import app
from bridle.training.recipe import RecipeError, load_recipe

RECIPES = sorted((REPO / "bridle" / "training" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_load(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages and recipe.model_config().modality == recipe.data.modality


def test_overrides_reach_stages_and_model() -> None:
    recipe = load_recipe(MICRO, ["stages.0.steps=50", "model.mask_ratio=0.75", "data.batch_size=3"])
    assert recipe.stages[0].steps == 50
    assert recipe.model_config().mask_ratio == 0.75
    assert recipe.data.batch_size == 3


def test_distillation_targets_are_instance_normalised_unless_a_recipe_pins_none() -> None:
    assert [s.target_norm for s in load_recipe(MICRO).stages if s.kind == "tokenizer"] == ["instance"]
    pinned = load_recipe(
        REPO / "bridle" / "training" / "recipes" / "video-motion.yaml"
    )  # rebuilds as shipped
    assert [s.target_norm for s in pinned.stages if s.kind == "tokenizer"] == ["none"]


def test_vq_baseline_has_one_level_of_1024() -> None:
    q = (
        load_recipe(REPO / "bridle" / "training" / "recipes" / "audio-digits-vq.yaml")
        .model_config()
        .quantizer
    )
    assert (q.levels, q.codebook_size) == (1, 1024)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.stepz=5", "unknown keys ['stepz']"),
        ("data.colour=red", "unknown keys ['colour']"),
        ("model.widht=3", "unknown model field 'widht'"),
        ("stages.9.steps=5", "not an index below"),
        ("stages.0.kind=distill", "kind must be one of"),
        ("stages.0.steps=0", "steps must be a positive integer"),
        ("model.preset=huge-audio", "unknown preset"),
        ("stages.1.target_norm=batch", "target_norm must be one of"),
        ("stages.3.encoder_init=imagenet", "encoder_init must be one of"),
        ("stages.0.encoder_init=random", "encoder_init random is for classifier stages in mode finetune"),
        ("stages.3.encoder_init=random", "encoder_init random is for classifier stages in mode finetune"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_recipe_is_a_clear_error(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(MICRO, [override])


def test_cli_bad_key_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MICRO.read_text().replace("checkpoint_every:", "checkpoint_evry:"))
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "unknown keys ['checkpoint_evry']" in result.output


def test_cli_missing_file_exits_nonzero(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
