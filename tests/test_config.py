"""Recipes: defaults < YAML < command line; bad keys and types fail with one line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from ffcv_imagenet.config import ConfigError, describe, load_config, to_yaml

REPO = Path(__file__).resolve().parents[1]


def test_layers_override_in_order(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training:\n  epochs: 40\n  batch_size: 256\n")
    config = load_config(recipe, ["--training.epochs=16"])
    assert (config.training.epochs, config.training.batch_size) == (16, 256)
    assert config.training.momentum == 0.9  # untouched default


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "rcfg" / "rn50_88.yaml", ["--data.num_workers=7"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(saved) == config


@pytest.mark.parametrize("content, overrides, message", [
    ("training:\n  epoch: 3\n", [], "training.epoch"),
    ("trainin:\n  epochs: 3\n", [], "trainin"),
    ("training:\n  epochs: three\n", [], "training.epochs"),
    ("", ["--lr.lr_per_256=fast"], "lr.lr_per_256"),
    ("", ["--training.precision=fp8"], "training.precision"),
    ("", ["epochs=3"], "--section.key=value"),
    ("training: [1, 2]\n", [], "training"),
    ("- just\n- a list\n", [], "mapping"),
])
def test_bad_recipes_name_the_key(tmp_path: Path, content: str, overrides: list, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(recipe, overrides)
    assert "\n" not in str(caught.value)


def test_missing_recipe_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_describe_lists_every_key_with_help() -> None:
    text = describe()
    for key in ("train_dataset", "lr_per_256", "fixres_epochs", "precision", "flip_tta"):
        assert key in text


def test_every_recipe_names_every_key() -> None:
    """Recipes are data: each one states every hyperparameter, none left to a code default."""
    import yaml

    from ffcv_imagenet.config import Config, to_dict

    expected = {section: set(keys) for section, keys in to_dict(Config()).items()}
    recipes = sorted((Path(__file__).resolve().parents[1] / "rcfg").glob("*.yaml"))
    assert len(recipes) == 13
    for recipe in recipes:
        content = yaml.safe_load(recipe.read_text())
        assert {section: set(keys) for section, keys in content.items()} == expected, recipe.name
