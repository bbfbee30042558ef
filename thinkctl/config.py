"""Job configs: dataclasses read from recipe sections and offered as command-line flags.

Every job (a sweep, ``realign``, InRa training, …) is configured by a dataclass whose fields are each
declared once with :func:`option`: the field's ``metadata`` holds its help text, its choices and, for
λ, the parser and validator (as TRL keeps help on its config fields). From that one declaration
:func:`add_flags` generates the ``--flags`` of a command and :func:`load_section` reads the field from
a recipe section, so a new setting is one line in one place.

A field declared with :func:`group` holds another config dataclass (``sampling: SamplingConfig``) and
is *flattened*: its fields are read from the same recipe section and the same flags, under an optional
prefix (InRa's ``rollout: SamplingConfig`` reads ``rollout_temperature``). Recipes and flags stay flat
while every job composes the same :class:`thinkctl.sampling.SamplingConfig`.

A recipe is one YAML file with a section per job (``tiny:``, ``sweep:``, ``trra:`` …). Unknown keys are
errors, not silently ignored settings: a typo stops the run before it starts, and a renamed key names
its new spelling. λ values are validated where they enter: command-line text by the flag's type,
recipe values when the section is read; code behind those boundaries trusts them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thinkctl.errors import ConfigError, ThinkctlError
from thinkctl.fusion import parse_lambda, parse_lambda_grid, validate_lambda, validate_lambda_grid

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] = _MISSING,
    choices: Sequence[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    flag: str | None = None,
    exclusive: str | None = None,
    renamed_from: Sequence[str] = (),
) -> Any:
    """A config field with its documentation and command-line behaviour in ``metadata``.

    ``parse`` turns flag text into a value (default: the field's type) and ``check`` validates a recipe
    value; both raise :class:`ThinkctlError` with a message. ``flag`` replaces the generated spelling
    (``--name-with-dashes``), ``exclusive`` puts flags sharing the name in one mutually exclusive group,
    and ``renamed_from`` lists old recipe keys that now fail with a message naming this field.
    """
    metadata = {"help": help, "choices": choices, "parse": parse, "check": check, "flag": flag,
                "exclusive": exclusive, "renamed_from": tuple(renamed_from)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def lambda_option(default: float | None, help: str, **kwargs: Any) -> Any:
    """A fusion weight λ: parsed from flag text, validated in recipes, by :mod:`thinkctl.fusion`."""
    return option(default, help, parse=parse_lambda, check=validate_lambda, **kwargs)


def lambda_grid_option(default: Sequence[float], help: str) -> Any:
    """A λ grid: ``0,0.5,1`` on the command line, a YAML list in recipes; finite and without repeats."""
    return option(default_factory=lambda: list(default), help=help, parse=parse_lambda_grid, check=validate_lambda_grid)


def group(factory: Callable[[], Any], prefix: str = "") -> Any:
    """A field holding a composed config (``factory()`` is its default), flattened under ``prefix``."""
    return dataclasses.field(default_factory=factory, metadata={"group": True, "prefix": prefix})


@dataclasses.dataclass(frozen=True)
class Option:
    """One flat setting of a config class: its recipe key (the flag is derived from it), its field,
    type and default."""

    key: str
    field: dataclasses.Field
    type: Any
    default: Any

    @property
    def meta(self) -> typing.Mapping[str, Any]:
        return self.field.metadata

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.key.rstrip("_").replace("_", "-")


def _field_default(f: dataclasses.Field, instance: Any) -> Any:
    if instance is not None:
        return getattr(instance, f.name)
    if f.default is not _MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not _MISSING else _MISSING


def options(cls: type, prefix: str = "", instance: Any = None) -> tuple[Option, ...]:
    """Every flat setting of config class ``cls``, composed groups flattened (see module docstring)."""
    hints = typing.get_type_hints(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):
        default = _field_default(f, instance)
        if f.metadata.get("group"):
            out += options(hints[f.name], prefix + f.metadata["prefix"], default)
        else:
            out.append(Option(prefix + f.name, f, hints[f.name], default))
    keys = [o.key for o in out]
    if len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: flattened config keys collide: {sorted(k for k in keys if keys.count(k) > 1)}")
    return tuple(out)


def _renamed(cls: type) -> dict[str, str]:
    return {old: o.key for o in options(cls) for old in o.meta.get("renamed_from", ())}


def build(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """``cls`` from flat ``values`` (recipe keys), composing its groups; unknown keys are errors."""
    known = {o.key for o in options(cls)}
    renamed = _renamed(cls)
    for key in values:
        if key in renamed:
            raise ConfigError(f"{where}: `{key}` was renamed to `{renamed[key]}`; rename it in the recipe")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    try:
        return _compose(cls, values, "", None)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _compose(cls: type, values: dict[str, Any], prefix: str, instance: Any) -> Any:
    """An instance of ``cls`` from the flat values under ``prefix``; unset fields keep ``instance``'s
    values (a group's default) or the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            nested_prefix = prefix + f.metadata["prefix"]
            if any(o.key in values for o in options(hints[f.name], nested_prefix)):
                kwargs[f.name] = _compose(hints[f.name], values, nested_prefix, _field_default(f, instance))
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return dataclasses.replace(instance, **kwargs) if instance is not None else cls(**kwargs)


#: every section a recipe may hold, and the commands that read it: ``tiny`` (tiny build, demo), ``sweep``
#: (sweep, demo), ``realign`` and ``trra`` (realign), ``inra`` (inra train). A recipe may hold several, so
#: each command reads its own and the others are let be; a section outside these is a typo.
RECIPE_SECTIONS = ("tiny", "sweep", "realign", "trra", "inra")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The parsed YAML mapping of a recipe file; a section no command reads is an error naming it
    (a misspelt ``swep:`` would otherwise run on defaults without a word)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file does not exist: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    unknown = [str(k) for k in data if k not in RECIPE_SECTIONS]
    if unknown:
        hints = "".join(
            f" (`{k}`: did you mean `{close[0]}`?)" for k in unknown if (close := difflib.get_close_matches(k, RECIPE_SECTIONS, 1))
        )
        raise ConfigError(f"{path}: unknown section(s) {unknown}{hints}; recipe sections are {list(RECIPE_SECTIONS)}")
    return data


def recipe_values(cls: type, recipe: str | Path | None, section: str) -> dict[str, Any]:
    """The flat values of ``recipe[section]`` for ``cls``, λ fields validated (the recipe boundary)."""
    if recipe is None:
        return {}
    raw = read_recipe(recipe).get(section) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{recipe}: section {section!r} must be a mapping")
    checks = {o.key: o.meta["check"] for o in options(cls) if o.meta.get("check")}
    values = dict(raw)
    for key, check in checks.items():
        if key in values:
            try:
                values[key] = check(values[key])
            except ThinkctlError as e:
                raise type(e)(f"{recipe} [{section}] {key}: {e}") from None
    return values


def load_section(cls: type[T], recipe: str | Path | None, section: str, overrides: dict[str, Any] | None = None) -> T:
    """``cls`` from ``recipe[section]`` (if a recipe is given) updated with the non-None ``overrides``.

    Overrides are values already parsed at their own boundary (command-line flags) or set by code.
    """
    values = recipe_values(cls, recipe, section)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(cls, values, where=f"{recipe or 'options'} [{section}]")


# ---------------------------------------------------------------- command-line flags


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so argparse shows its ThinkctlError message (argparse hides other exceptions)."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ThinkctlError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


def _scalar(tp: Any) -> Any:
    """``int | None`` → ``int``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [item(p.strip()) for p in text.split(",") if p.strip()]

    parse.__name__ = f"comma-separated {getattr(item, '__name__', 'value')} list"
    return parse


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def add_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = (), defaults: typing.Mapping[str, Any] | None = None
) -> None:
    """Add a ``--flag`` per setting of ``cls`` (see :func:`options`), help and default from the field.

    Every flag defaults to None, so a value is taken from the command line only when given there and
    otherwise comes from the recipe or the dataclass (see :func:`flag_values`). ``defaults`` (recipe key →
    value) are the defaults a command applies over the dataclass's (``demo``'s), shown in the help instead.
    """
    groups: dict[str, Any] = {}
    for o in options(cls):
        if o.key in exclude:
            continue
        tp = _scalar(o.type)
        parse = o.meta.get("parse")
        kwargs: dict[str, Any] = {"dest": o.key, "default": None, "choices": o.meta.get("choices")}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            item = _comma_list(typing.get_args(tp)[0]) if typing.get_origin(tp) is list else tp
            kwargs["type"] = arg_type(parse or item)
            kwargs["metavar"] = None if kwargs["choices"] else o.flag.lstrip("-").upper().replace("-", "_")
        text = o.meta.get("help", "")
        default = (defaults or {}).get(o.key, o.default)
        if default is not _MISSING and default not in (None, ""):
            text += f" (default: {_shown(default)})"
        kwargs["help"] = text.replace("%", "%%")
        exclusive = o.meta.get("exclusive")
        if exclusive and exclusive not in groups:
            groups[exclusive] = parser.add_mutually_exclusive_group()
        (groups[exclusive] if exclusive else parser).add_argument(o.flag, **kwargs)


def flag_values(args: argparse.Namespace, cls: type, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The settings of ``cls`` given as flags (values of None were not given)."""
    return {o.key: getattr(args, o.key) for o in options(cls) if o.key not in exclude and getattr(args, o.key, None) is not None}
