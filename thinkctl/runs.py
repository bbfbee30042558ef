"""A run directory's record of the settings that produced it (``run.json``), checked on every resume.

A sweep resumes by skipping the (benchmark, method, problem, λ, sample) keys already in its results
file. That is only honest when those results came from the same models under the same settings, so
the first run writes ``run.json`` (atomically, once its models and benchmarks have loaded: a run that
fails to start leaves nothing behind) and every rerun into the directory compares its own settings with it: any difference is a :class:`RunSettingsError` naming each differing key with the
recorded and the new value. ``--overwrite`` instead moves the earlier results aside into
``replaced-<time>/`` (hours of generation are never deleted) and starts the directory afresh.

``run.json`` has two sections. ``settings`` are compared: the method, the models' identities
(:func:`thinkctl.models.model_identity`), engine, dtype, device type, sampling, prompt, and per
benchmark its split, limit and a hash of its problems. ``context`` is recorded for people but not
compared (paths and hub names as given, the full device, batch and chunk sizes, the λ grid, the
thinkctl version): a moved checkpoint or a larger batch does not change what a sample means. The λ
grid and the samples per problem may grow on resume (new record keys under the same settings), and
so may the set of benchmarks; the context then grows with them.

A key that one side lacks compares equal to null, so a setting added to thinkctl later (a new
``SamplingConfig`` field defaulting to None) does not break the resume of runs recorded before it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
#: context lists a resume may grow (more λ values, more benchmarks)
GROWING_LISTS = ("lambdas", "benchmark_specs")


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


@dataclass(frozen=True)
class PendingRun:
    """A run directory checked to take results under ``settings`` (:func:`prepare_run`), not yet touched.

    :meth:`start` does the writing (moving earlier results aside, recording ``run.json``); a job calls
    it once everything that can fail before the first sample (models, tokenizers, benchmarks, the
    vocabulary check) has loaded, so a run that fails to start leaves the directory as it was.
    """

    out_dir: Path
    settings: dict[str, Any]
    context: dict[str, Any]
    overwrite: bool
    recorded: dict[str, Any] | None  # the run.json a resume extends (None: a new or overwritten run)

    def start(self) -> Path:
        """Make the directory take this run's results; returns its ``run.json``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / RUN_FILE
        if self.overwrite:
            existing = [self.out_dir / name for name in RESULT_FILES if (self.out_dir / name).exists()]
            if existing:
                aside = _move_aside(self.out_dir, existing)
                log.warning("--overwrite: moved the earlier results of %s into %s", self.out_dir, aside)
        if self.recorded is None:
            return atomic_write_json(path, {
                "thinkctl_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": self.settings, "context": self.context,
            })
        settings = dict(self.recorded["settings"])
        for section in EXTENDABLE:
            settings[section] = {**(self.recorded["settings"].get(section) or {}), **(self.settings.get(section) or {})}
        context = extended_context(self.recorded.get("context") or {}, self.context)
        if (settings, context) != (self.recorded["settings"], self.recorded.get("context")):
            atomic_write_json(path, {**self.recorded, "settings": settings, "context": context})
        return path


def extended_context(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The context of a resumed run: the recorded one, with the λ grid, samples per problem and benchmarks
    grown to cover what the resume adds (so ``run.json`` describes every record, not the first command)."""
    out = dict(recorded)
    for key in GROWING_LISTS:
        if key in current:
            old = list(recorded.get(key) or [])
            out[key] = old + [v for v in current[key] if v not in old]
    if "n_samples" in current:
        out["n_samples"] = max(int(recorded.get("n_samples") or 0), int(current["n_samples"]))
    return out


def prepare_run(
    out_dir: str | os.PathLike[str], settings: Mapping[str, Any], context: Mapping[str, Any], *, overwrite: bool = False
) -> PendingRun:
    """Check that ``out_dir`` may take results produced under ``settings``, reading only.

    A new directory, or any with ``overwrite``, starts afresh; a directory recorded under the same
    settings resumes (a new benchmark is added to the record). Anything else raises
    :class:`RunSettingsError`. Call :meth:`PendingRun.start` on the result once the job can start.
    """
    out_dir = Path(out_dir)
    settings = json.loads(json.dumps(settings))  # compare what JSON stores: tuples as lists, keys as strings
    context = json.loads(json.dumps(dict(context)))
    if overwrite:
        return PendingRun(out_dir, settings, context, overwrite=True, recorded=None)
    recorded = read_run(out_dir)
    if recorded is not None:
        diffs = differences(recorded["settings"], settings)
        if diffs:
            lines = "\n".join(f"  {key}: {old!r} (recorded) → {new!r} (now)" for key, old, new in diffs)
            raise RunSettingsError(
                f"{out_dir} holds results made under other settings; resuming would mix two runs:\n{lines}\n"
                f"Use the recorded settings, another --out, or --overwrite (moves the earlier results into "
                f"{out_dir}/replaced-<time>/)."
            )
    elif (out_dir / RESULTS_FILE).is_file() and (out_dir / RESULTS_FILE).stat().st_size:
        raise RunSettingsError(
            f"{out_dir / RESULTS_FILE} has results but {out_dir} has no {RUN_FILE} (written before thinkctl recorded "
            "run settings), so nothing says which settings produced them and resuming could mix two runs. "
            f"Use another --out, or --overwrite (moves them into {out_dir}/replaced-<time>/)."
        )
    return PendingRun(out_dir, settings, context, overwrite=False, recorded=recorded)


def _owned(out_dir: Path, patterns: Sequence[str]) -> list[Path]:
    """The files and directories of ``out_dir`` matching ``patterns`` (glob), each once, in a stable order."""
    found = {p for pattern in patterns for p in out_dir.glob(pattern)}
    return sorted(p for p in found if not p.name.startswith("replaced-") and p.name != RUN_FILE)


def settings_error(out_dir: Path, diffs: Sequence[tuple[str, Any, Any]], moves: str) -> RunSettingsError:
    """The refusal of a rerun whose settings differ from the recorded ones, each difference on its own line."""
    lines = "\n".join(f"  {key}: {old!r} (recorded) → {new!r} (now)" for key, old, new in diffs)
    return RunSettingsError(
        f"{out_dir} holds work made under other settings; resuming would mix two runs:\n{lines}\n"
        f"Use the recorded settings, another --out, or --overwrite (moves {moves} into {out_dir}/replaced-<time>/)."
    )


def open_staged_run(
    out_dir: str | os.PathLike[str],
    settings: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any],
    *,
    work: Mapping[str, Sequence[str]],
    overwrite: bool = False,
    write: bool = True,
) -> Path:
    """:func:`open_run` for a directory whose work is made in stages that depend on each other (a realign round:
    teacher → data → student → eval; InRa training: data → training); returns its ``run.json``.

    ``work`` lists the settings sections in dependency order, each with the glob patterns of the work it makes.
    A stage gives only the sections it needs (``settings``); those already recorded are compared (as
    :func:`differences` does), the others are added to the record, so ``--stage data`` then ``--stage train``
    into one directory is one run. A difference raises :class:`RunSettingsError` naming each key; with
    ``overwrite`` the work of the first differing section and of every later one moves into
    ``replaced-<time>/`` (what earlier sections made stays: new training settings keep the teacher data) and the
    record starts again from that section. A difference with no work made under it (a stage that failed before
    making any) is no conflict: the record takes the new settings. Work present without a record (thinkctl
    before this) is refused the same way. ``write=False`` (every process of a launch but the main one) only
    compares.
    """
    out_dir = Path(out_dir)
    order = list(work)
    unknown = set(settings) - set(order)
    if unknown:
        raise ValueError(f"settings sections {sorted(unknown)} are not in `work` {order}")
    settings = json.loads(json.dumps(settings))  # compare what JSON stores: tuples as lists, keys as strings
    recorded = read_run(out_dir) if out_dir.is_dir() else None
    old = dict(recorded["settings"]) if recorded is not None else {}
    if recorded is None:
        first, diffs = 0, []
    else:
        diffs = [d for s in order if s in settings and s in old for d in differences({s: old[s]}, {s: settings[s]})]
        first = min((order.index(key.split(".", 1)[0]) for key, _, _ in diffs), default=None)
    later = order[first:] if first is not None else []
    stale = _owned(out_dir, [p for s in later for p in work[s]]) if later else []
    if stale:  # a difference matters where work was made under it (a stage that failed before making any made none)
        moves = f"the work of {', '.join(later)}" if recorded is not None else "the work there"
        if not overwrite:
            if recorded is None:
                raise RunSettingsError(
                    f"{out_dir} has earlier work but no {RUN_FILE} (written before thinkctl recorded run settings), so "
                    "nothing says which settings produced it and resuming could mix two runs. Use another --out, or "
                    f"--overwrite (moves it into {out_dir}/replaced-<time>/).")
            raise settings_error(out_dir, diffs, moves)
        if write:
            log.warning("--overwrite: moved %s of %s into %s", moves, out_dir, _move_aside(out_dir, stale))
    if first is not None:
        old = {s: v for s, v in old.items() if s in order[:first]}
    merged = {**old, **{s: settings[s] for s in order if s in settings}}
    path = out_dir / RUN_FILE
    if write and (recorded is None or merged != recorded["settings"]):
        out_dir.mkdir(parents=True, exist_ok=True)
        base = recorded or {"thinkctl_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(path, {**base, "settings": merged, "context": {**(base.get("context") or {}), **context}})
    return path
