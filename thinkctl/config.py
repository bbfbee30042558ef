"""Dataclass configs loaded from YAML recipe sections and overridden from the command line.

A recipe is one YAML file with a section per job (``tiny:``, ``sweep:``, ``trra:`` …). Unknown keys
are errors, not silently ignored settings: a typo in a recipe should stop the run before it starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thinkctl.errors import ConfigError

T = TypeVar("T")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The parsed YAML mapping of a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file does not exist: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``, rejecting keys it does not have."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_section(cls: type[T], recipe: str | Path | None, section: str, overrides: dict[str, Any] | None = None) -> T:
    """``cls`` from ``recipe[section]`` (if a recipe is given) updated with non-None ``overrides``."""
    values: dict[str, Any] = {}
    if recipe is not None:
        data = read_recipe(recipe)
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{recipe}: section {section!r} must be a mapping")
        values.update(raw)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, values, where=f"{recipe or 'options'} [{section}]")
