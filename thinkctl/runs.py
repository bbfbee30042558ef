"""A run directory's record of the settings that produced it (``run.json``), checked on every resume.

A sweep resumes by skipping the (benchmark, method, problem, λ, sample) keys already in its results
file. That is only honest when those results came from the same models under the same settings, so
the first run writes ``run.json`` (atomically) and every rerun into the directory compares its own
settings with it: any difference is a :class:`RunSettingsError` naming each differing key with the
recorded and the new value. ``--overwrite`` instead moves the earlier results aside into
``replaced-<time>/`` (hours of generation are never deleted) and starts the directory afresh.

``run.json`` has two sections. ``settings`` are compared: the method, the models' identities
(:func:`thinkctl.models.model_identity`), engine, dtype, device type, sampling, prompt, and per
benchmark its split, limit and a hash of its problems. ``context`` is recorded for people but not
compared (paths and hub names as given, the full device, batch and chunk sizes, the λ grid, the
thinkctl version): a moved checkpoint or a larger batch does not change what a sample means. The λ
grid and the samples per problem may grow on resume (new record keys under the same settings), and
so may the set of benchmarks.

A key that one side lacks compares equal to null, so a setting added to thinkctl later (a new
``SamplingConfig`` field defaulting to None) does not break the resume of runs recorded before it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.io import atomic_write_json

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
#: what a run directory's results consist of: ``--overwrite`` moves these aside
RESULT_FILES = (RESULTS_FILE, RUN_FILE, "summary.csv", "summary.md", "sweep.png")
#: settings sections whose entries a resume may add to (another benchmark into the same run)
EXTENDABLE = ("benchmarks",)


class RunSettingsError(ConfigError):
    """A run directory holds results made under other settings than the ones given now."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, current value)`` for every setting that differs (see module docstring).

    Entries of :data:`EXTENDABLE` sections that only one side has are not differences.
    """
    one_sided = {
        f"{section}.{name}"
        for section in EXTENDABLE
        for name in set(recorded.get(section) or {}) ^ set(current.get(section) or {})
    }
    old, new = flatten(recorded), flatten(current)
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not any(key.startswith(prefix + ".") for prefix in one_sided)
    ]


def _version() -> str:
    try:
        return metadata.version("thinkctl")
    except metadata.PackageNotFoundError:
        return "unknown"


def _move_aside(out_dir: Path, files: list[Path]) -> Path:
    stamp = time.strftime("replaced-%Y%m%d-%H%M%S")
    aside, n = out_dir / stamp, 1
    while aside.exists():
        aside, n = out_dir / f"{stamp}-{n}", n + 1
    aside.mkdir()
    for f in files:
        os.replace(f, aside / f.name)
    return aside


def read_run(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` of a run directory, or None when it has none."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e.msg}); move it aside or rerun with --overwrite") from None
    if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
        raise DataFormatError(f"{path} has no `settings` mapping; move it aside or rerun with --overwrite")
    return run


def open_run(
    out_dir: str | os.PathLike[str], settings: Mapping[str, Any], context: Mapping[str, Any], *, overwrite: bool = False
) -> Path:
    """Make ``out_dir`` ready to take results produced under ``settings``; returns its ``run.json``.

    A new directory records ``settings`` and ``context``. A directory recorded under the same settings
    resumes (a new benchmark is added to the record). Anything else raises :class:`RunSettingsError`,
    unless ``overwrite`` moves the earlier results aside first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_FILE
    settings = json.loads(json.dumps(settings))  # compare what JSON stores: tuples as lists, keys as strings
    existing = [out_dir / name for name in RESULT_FILES if (out_dir / name).exists()]
    if overwrite and existing:
        aside = _move_aside(out_dir, existing)
        log.warning("--overwrite: moved the earlier results of %s into %s", out_dir, aside)
    elif (recorded := read_run(out_dir)) is not None:
        diffs = differences(recorded["settings"], settings)
        if diffs:
            lines = "\n".join(f"  {key}: {old!r} (recorded) → {new!r} (now)" for key, old, new in diffs)
            raise RunSettingsError(
                f"{out_dir} holds results made under other settings; resuming would mix two runs:\n{lines}\n"
                f"Use the recorded settings, another --out, or --overwrite (moves the earlier results into "
                f"{out_dir}/replaced-<time>/)."
            )
        merged = dict(recorded["settings"])
        for section in EXTENDABLE:
            merged[section] = {**(recorded["settings"].get(section) or {}), **(settings.get(section) or {})}
        if merged != recorded["settings"]:
            atomic_write_json(path, {**recorded, "settings": merged})
        return path
    elif (out_dir / RESULTS_FILE).is_file() and (out_dir / RESULTS_FILE).stat().st_size:
        raise RunSettingsError(
            f"{out_dir / RESULTS_FILE} has results but {out_dir} has no {RUN_FILE} (written before thinkctl recorded "
            "run settings), so nothing says which settings produced them and resuming could mix two runs. "
            f"Use another --out, or --overwrite (moves them into {out_dir}/replaced-<time>/)."
        )
    return atomic_write_json(path, {
        "thinkctl_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings, "context": dict(context),
    })
