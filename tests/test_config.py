"""Recipes: defaults < YAML < command line; bad keys and types fail with one line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from ffcv_imagenet.config import STANDARD_CROP_RATIO, Config, ConfigError, describe, to_yaml
from ffcv_imagenet.recipes import load_config

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
    ("", ["--augment.rrc_scale=[0.5, 0.2]"], "augment.rrc_scale must be .min, max. with min <= max"),
    ("", ["--augment.rrc_scale=[0.0, 0.5]"], "augment.rrc_scale"),
    ("", ["--augment.rrc_ratio=[0.75]"], "augment.rrc_ratio must be a list of 2 items"),
    ("", ["--augment.rrc_ratio=[-1, 2]"], "augment.rrc_ratio"),
    ("", ["--augment.flip=maybe"], "augment.flip"),
    ("", ["--training.loss=nll"], "training.loss must be one of ce, bce, focal"),
    ("", ["--training.bce_target_threshold=1.0"], "training.bce_target_threshold"),
    ("", ["--training.focal_alpha=[1, -1]"], "training.focal_alpha"),
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
    for key in ("train_dataset", "lr_per_256", "fixres_epochs", "precision", "flip_tta", "rrc_scale", "rrc_ratio",
                "flip", "loss", "bce_target_threshold", "focal_gamma", "focal_alpha"):
        assert key in text


def test_every_recipe_holds_only_what_differs_from_the_base() -> None:
    """Recipes are deltas: every key they name is declared, and none restates a base default."""
    import yaml

    from ffcv_imagenet.config import SECTIONS, Config, to_dict

    base = to_dict(Config())
    recipes = sorted((REPO / "rcfg").glob("*.yaml"))
    assert len(recipes) == 13
    for recipe in recipes:
        content = yaml.safe_load(recipe.read_text())
        for section, body in content.items():
            for key, value in body.items():
                assert key in SECTIONS[section], (recipe.name, section, key)
                assert value != base[section][key], f"{recipe.name} restates the default of {section}.{key}"
        assert load_config(recipe) != Config()


@pytest.mark.parametrize("override, message", [
    ("--training.epochs=0", "training.epochs must be positive: 0"),  # Positive
    ("--training.epochs=2.5", "training.epochs must be an integer: 2.5"),  # Typed
    ("--training.channels_last=1", "training.channels_last must be true or false: 1"),
    ("--augment.mix_prob=1.5", "augment.mix_prob must be between 0.0 and 1.0: 1.5"),  # fastargs' InRange
    ("--augment.randaugment_ops=15", "augment.randaugment_ops must be between 0 and 14: 15"),
    ("--ema.decay=1.0", "ema.decay must be in [0, 1): 1.0"),  # Interval, open at the top
    ("--validation.crop_ratio=0", "validation.crop_ratio must be in (0, 1]: 0"),  # open at the bottom
    ("--resolution.fixres_epochs=-2", "resolution.fixres_epochs must be at least -1: -2"),
    ("--lr.schedule=exp", "lr.schedule must be one of linear, cosine, step, onecycle: 'exp'"),  # Choice
    ("--training.betas=[0.9]", "training.betas must be a list of 2 items"),  # ListOf
    ("--training.betas=[0.9, 1.0]", "training.betas must be a list of 2 items, each a number and in [0, 1)"),
    ("--validation.resolutions=[224, -1]", "validation.resolutions must be a list of items"),
    ("--training.epochs=", "training.epochs must be an integer: None"),
])
def test_each_checker_kind_names_the_key_and_the_rule(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "rcfg" / "demo.yaml", [override])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.parametrize("content, overrides, message", [
    ("training:\n  epoch: 3\n", [], "training.epoch: unknown key (did you mean training.epochs?)"),
    ("", ["--lr.lr_per_265=0.1"], "lr.lr_per_265: unknown key (did you mean lr.lr_per_256?)"),
    ("valdation:\n  every: 2\n", [], "valdation: unknown section (did you mean validation?)"),
    ("", ["--training.wibble=1"], "training.wibble: unknown key;"),
])
def test_unknown_keys_in_a_file_or_on_the_command_line_are_refused(tmp_path: Path, content: str, overrides: list,
                                                                    message: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_config(recipe, overrides)
    assert str(caught.value).startswith(message)


def test_overrides_take_yaml_values_and_strings_as_written() -> None:
    config = load_config(REPO / "rcfg" / "demo.yaml", ["--validation.resolutions=[128, 160]",
                                                       "--training.nesterov=true", "--logging.folder=2024",
                                                       "--lr.lr_per_256=1"])
    assert config.validation.resolutions == [128, 160] and config.training.nesterov is True
    assert config.logging.folder == "2024" and config.lr.lr_per_256 == 1.0
    assert isinstance(config.lr.lr_per_256, float)


def test_print_config_prints_the_resolved_recipe_and_help_config_every_key() -> None:
    import subprocess
    import sys

    import yaml

    from ffcv_imagenet.config import SECTIONS, to_dict

    command = [sys.executable, str(REPO / "train_imagenet.py"), "--config", str(REPO / "rcfg" / "rn50_88.yaml")]
    printed = subprocess.run(command + ["--print-config", "--training.epochs=40"], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    expected = to_dict(load_config(REPO / "rcfg" / "rn50_88.yaml", ["--training.epochs=40"]))
    assert yaml.safe_load(printed.stdout) == expected
    listed = subprocess.run(command[:2] + ["--help-config"], capture_output=True, text=True).stdout
    for section, params in SECTIONS.items():
        for key, param in params.items():
            assert any(line.strip().startswith(f"{key} (") and repr(param.default) in line
                       for line in listed.splitlines()), f"{section}.{key}"


def test_one_standard_crop_ratio_for_validation_fixres_and_the_decoders() -> None:
    from ffcv_imagenet.decoders import FIXRES_CROP_RATIO, VAL_CROP_RATIO

    base = Config()
    assert STANDARD_CROP_RATIO == 224 / 256
    assert base.validation.crop_ratio == base.resolution.fixres_crop_ratio == STANDARD_CROP_RATIO
    assert VAL_CROP_RATIO == FIXRES_CROP_RATIO == STANDARD_CROP_RATIO
