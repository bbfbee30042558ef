"""Effort levels: OpenAI-style ``reasoning_effort`` names mapped to a λ per checkpoint.

Clients of a reasoning server ask for graded effort (``low``/``medium``/``high``), not a fusion
weight. An :class:`EffortTable` is the per-checkpoint translation, calibrated once from a λ sweep so
that each level means a measured amount of thinking: by default ``high`` thinks like λ = 0 (the
reference), ``medium`` half as much and ``low`` a quarter, each level getting the λ whose mean thinking
tokens hit that fraction of λ = 0's, interpolated linearly between the sweep's grid points
(:func:`effort_from_sweep`).

File format (JSON, ``thinkctl_effort.json`` inside a checkpoint directory is found automatically by
``thinkctl serve``)::

    {"format": "thinkctl-effort", "version": 1,
     "levels": {"low": 1.21, "medium": 0.23, "high": 0.0},
     "meta": {"source": "runs/sweep", "fractions": {...}, "tokens_at_lambda0": 196.4, ...}}

On the command line a table is ``low=1.0,medium=0.5,high=0`` (:func:`parse_effort`), a table file, or
a sweep run directory to calibrate from (:func:`load_effort`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkctl.errors import ConfigError, DataFormatError, InvalidLambdaError
from thinkctl.fusion import validate_lambda
from thinkctl.io import atomic_write_json

EFFORT_FORMAT = "thinkctl-effort"
EFFORT_VERSION = 1
#: the file ``thinkctl serve`` looks for in a checkpoint directory
EFFORT_FILE = "thinkctl_effort.json"
#: fraction of λ = 0's mean thinking tokens each default level aims at
DEFAULT_FRACTIONS: dict[str, float] = {"low": 0.25, "medium": 0.5, "high": 1.0}
#: level names with a meaning of their own in a request (``auto``: let the router choose λ)
RESERVED_LEVELS = frozenset({"auto"})
_LEVEL_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass
class EffortTable:
    """λ per effort level, plus how it was obtained."""

    levels: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.levels:
            raise ConfigError("an effort table needs at least one level, e.g. low=1.0,medium=0.5,high=0")
        checked: dict[str, float] = {}
        for name, lam in self.levels.items():
            if not isinstance(name, str) or not _LEVEL_NAME.match(name):
                raise ConfigError(f"effort level names are lowercase words (a-z, 0-9, _ or -), got {name!r}")
            if name in RESERVED_LEVELS:
                raise ConfigError(f"{name!r} is reserved (it asks the router for λ) and cannot be an effort level")
            try:
                checked[name] = validate_lambda(lam)
            except InvalidLambdaError as e:
                raise ConfigError(f"effort level {name!r}: {e}") from None
        self.levels = checked

    def lam(self, level: str) -> float:
        """λ of ``level``; an unknown level is an error that lists the known ones."""
        if level not in self.levels:
            raise ConfigError(f"unknown effort level {level!r}; this table has {self.describe()}")
        return self.levels[level]

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.levels.items())

    def to_dict(self) -> dict[str, Any]:
        return {"format": EFFORT_FORMAT, "version": EFFORT_VERSION, "levels": self.levels, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Any, where: str = "effort table") -> EffortTable:
        if not isinstance(data, Mapping) or data.get("format") != EFFORT_FORMAT:
            raise ConfigError(f"{where}: not a thinkctl effort table (format must be {EFFORT_FORMAT!r})")
        if data.get("version") != EFFORT_VERSION:
            raise ConfigError(f"{where}: effort table version {data.get('version')!r}, this thinkctl reads {EFFORT_VERSION}")
        levels = data.get("levels")
        if not isinstance(levels, Mapping):
            raise ConfigError(f"{where}: 'levels' must map level names to λ")
        try:
            return cls(dict(levels), dict(data.get("meta") or {}))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table atomically as JSON."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EffortTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"effort table file does not exist: {path}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: cannot parse effort table: {e}") from None
        return cls.from_dict(data, where=str(path))


def parse_effort(text: str) -> EffortTable:
    """``"low=1.0,medium=0.5,high=0"`` → an effort table (the ``--effort`` form)."""
    levels: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"effort levels are written level=λ, e.g. low=1.0,medium=0.5,high=0; got {part!r}")
        name = name.strip()
        if name in levels:
            raise ConfigError(f"effort level {name!r} is given twice")
        try:
            levels[name] = float(value)
        except ValueError:
            raise ConfigError(f"effort level {name!r}: λ must be a number, got {value.strip()!r}") from None
    return EffortTable(levels, {"source": "command line"})


def load_effort(spec: str) -> EffortTable:
    """An effort table from ``--effort``: inline ``level=λ,…``, a table file, or a sweep to calibrate from."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".json":
            return EffortTable.load(path)
        return effort_from_sweep(path)
    if "=" in spec:
        return parse_effort(spec)
    raise ConfigError(
        f"--effort {spec!r} is neither level=λ pairs (low=1.0,medium=0.5,high=0) nor an existing "
        "effort table (.json) or sweep (run directory, summary.csv, results.jsonl)"
    )


def effort_from_curve(
    curve: Mapping[float, float], fractions: Mapping[str, float] = DEFAULT_FRACTIONS
) -> EffortTable:
    """Levels from a λ → mean-thinking-tokens curve: the λ whose thinking is ``fraction`` × λ = 0's.

    Walking away from λ = 0 (towards larger λ for fractions below 1, smaller for above), the first
    grid segment that brackets the target is interpolated linearly. A target the grid never reaches
    gets the grid λ on that side closest to it and is listed in ``meta["unreachable"]``.
    """
    points = {validate_lambda(k): float(v) for k, v in curve.items()}
    if 0.0 not in points:
        raise DataFormatError(f"calibrating effort levels needs λ = 0 in the sweep; its λ grid is {sorted(points)}")
    base = points[0.0]
    if not base > 0:
        raise DataFormatError(f"the sweep thinks {base} tokens at λ = 0: there is no thinking to grade")
    levels: dict[str, float] = {}
    predicted: dict[str, float] = {}
    unreachable: list[str] = []
    for name, fraction in fractions.items():
        if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and fraction > 0):
            raise ConfigError(f"effort fraction for {name!r} must be a positive number, got {fraction!r}")
        target = fraction * base
        # the grid from λ = 0 outwards, in the direction that (usually) moves thinking towards the target
        side = sorted(x for x in points if x >= 0) if fraction <= 1 else sorted((x for x in points if x <= 0), reverse=True)
        lam = 0.0 if target == base else None
        for a, b in zip(side, side[1:]):
            if lam is not None:
                break
            ta, tb = points[a], points[b]
            if min(ta, tb) <= target <= max(ta, tb):
                lam = a if ta == tb else a + (target - ta) * (b - a) / (tb - ta)
        if lam is None:
            lam = min(side, key=lambda x: abs(points[x] - target))
            unreachable.append(name)
            predicted[name] = points[lam]
        else:
            predicted[name] = target
        levels[name] = round(lam, 4)
    meta = {"fractions": dict(fractions), "tokens_at_lambda0": base, "predicted_thinking_tokens": predicted,
            "unreachable": unreachable, "curve": {f"{k:g}": v for k, v in sorted(points.items())}}
    return EffortTable(levels, meta)


def _sweep_curve(path: Path, method: str | None, benchmark: str | None) -> dict[float, float]:
    """Mean thinking tokens per λ of one (benchmark, method) in a sweep's summary.csv or results.jsonl."""
    import pandas as pd

    if path.is_dir():
        path = path / "summary.csv" if (path / "summary.csv").is_file() else path / "results.jsonl"
    if not path.is_file():
        raise DataFormatError(f"no sweep summary at {path}: give a sweep run directory, its summary.csv or results.jsonl")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        tokens = "mean_thinking_tokens"
    else:
        from thinkctl.io import read_jsonl

        df = pd.DataFrame(list(read_jsonl(path)))
        tokens = "thinking_tokens"
    missing = [c for c in ("lam", tokens) if c not in df.columns]
    if missing:
        raise DataFormatError(f"{path} lacks column(s) {missing}: not a thinkctl sweep")
    for column, wanted in (("benchmark", benchmark), ("method", method)):
        if column not in df.columns:
            continue
        present = sorted(df[column].astype(str).unique())
        if wanted is None and len(present) > 1:
            raise DataFormatError(f"{path} holds several {column}s {present}; calibrate on one of them")
        if wanted is not None:
            df = df[df[column].astype(str) == wanted]
            if df.empty:
                raise DataFormatError(f"{path} has no rows with {column} {wanted!r}; it has {present}")
    return {float(lam): float(group[tokens].mean()) for lam, group in df.groupby("lam")}


def effort_from_sweep(
    path: str | os.PathLike[str],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    *,
    method: str | None = None,
    benchmark: str | None = None,
) -> EffortTable:
    """Calibrate an effort table on a λ sweep (run directory, ``summary.csv`` or ``results.jsonl``)."""
    table = effort_from_curve(_sweep_curve(Path(path), method, benchmark), fractions)
    table.meta["source"] = str(path)
    return table
