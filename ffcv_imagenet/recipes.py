"""Loading a recipe: a YAML file (ours, or an ffcv-imagenet config translated by ``ffcv_recipes``)
< ``--section.key=value`` overrides, collected into the typed tree of ``config``.

``load_config`` raises ConfigError (one line, naming the key or file) for a missing, unparsable or
mis-shaped file, an unknown key or a value its declaration refuses. ``recipe_text`` writes a recipe back
as YAML that loads again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import SECTIONS, Config, ConfigError, base_type, check_known, collect, delta, flatten, to_yaml
from .ffcv_recipes import is_ffcv_imagenet, translate


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A recipe file's sections; one-line errors for a missing, unparsable or mis-shaped file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(content, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections")
    for section, body in content.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: recipe {path} must give this section as a mapping of keys")
    return content


def parse_override(arg: str) -> tuple[str, Any]:
    """``--training.epochs=16`` -> ("training.epochs", 16): YAML values, so lists and booleans work."""
    body = arg[2:] if arg.startswith("--") else arg
    dotted, sep, text = body.partition("=")
    if not sep or "." not in dotted or not arg.startswith("--"):
        raise ConfigError(f"override {arg!r} is not of the form --section.key=value")
    check_known(dotted)
    section, key = dotted.split(".")
    if base_type(SECTIONS[section][key].checker) is str:
        return dotted, text  # a path or a name, taken as written (a folder named 2024 stays a string)
    try:
        return dotted, yaml.safe_load(text)
    except yaml.YAMLError:
        return dotted, text  # not YAML: the declared type refuses it below, naming the key


def recipe_values(recipe: str | Path) -> dict[str, Any]:
    """A recipe file as dotted values: ours as written, ffcv-imagenet's translated (``ffcv_recipes``)."""
    content = read_yaml_mapping(recipe)
    if is_ffcv_imagenet(content):
        return translate(content, Path(recipe)).values
    return flatten(content)


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Base recipe < recipe YAML < overrides; raises ConfigError naming the bad key."""
    values = recipe_values(recipe) if recipe is not None else {}
    values.update(parse_override(arg) for arg in overrides)
    return collect(values)


def translation_notes(recipe: str | Path | None) -> list[str]:
    """What translating an ffcv-imagenet config assumed; nothing for one of ours."""
    if recipe is None:
        return []
    content = read_yaml_mapping(recipe)
    return translate(content, Path(recipe)).notes if is_ffcv_imagenet(content) else []


def recipe_text(config: Config, notes: Sequence[str], full: bool) -> str:
    """The recipe as YAML (loadable again), the notes as comments above it."""
    body = to_yaml(config) if full else yaml.safe_dump(delta(config), sort_keys=False)
    return "".join(f"# {note}\n" for note in notes) + body.rstrip()
