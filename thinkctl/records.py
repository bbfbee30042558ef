"""The per-sample record: one JSON line per graded response, and the one way to read records back.

Every job that generates and grades (sweeps, TrRa's evaluation and calibration, the tiny build's
evaluation) writes :class:`SampleRecord` lines to ``results.jsonl``; ``thinkctl route eval`` writes the
same records to ``routed.jsonl`` with the routing policy filled in. Reports, the router and λ
calibration read them with :func:`load_records` and summarise them with :func:`aggregate`.

Adding a field is one line in :class:`SampleRecord` with a default: files written before it still
load (the field takes its default), and keys a reader does not know (written by a newer thinkctl)
are ignored.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from thinkctl.errors import DataFormatError
from thinkctl.grading import grade
from thinkctl.io import iter_jsonl

if TYPE_CHECKING:
    from thinkctl.data import Problem
    from thinkctl.rollout.base import Completion

#: the files a run directory keeps records in
RECORD_FILES = ("results.jsonl", "routed.jsonl")

RecordKey = tuple[str, str, str, float, int]


@dataclass(frozen=True, kw_only=True)
class SampleRecord:
    """One generated response to one problem at one λ, graded. Fields without a default are required."""

    benchmark: str
    method: str  # fused | plain | inra | student | calibration | routed
    model: str = ""
    problem_id: str
    level: int | None = None  # difficulty grade, when the benchmark has one
    lam: float
    sample: int = 0  # index of the sample for this (problem, λ)
    response: str = ""
    answer: str | None = None  # extracted from the response; None when it has none
    gold: str = ""
    correct: bool
    thinking_tokens: int
    total_tokens: int
    finish_reason: str = ""  # "stop" or "length" (cut off by max_new_tokens: the sample hit the limit)
    thinking_closed: bool | None = None  # False: the think block never closed (no answer); None: no block, or not recorded
    thinking_forced: bool | None = None  # a thinking budget closed the think block (None: no budget set)
    route_point: str | None = None  # routed records: the routing policy that chose λ
    route_estimator: str | None = None  # routed records: the router's estimator
    control: str | None = None  # the control acting while it thought: hard | soft | bias | target (None: λ alone)
    thinking_budget: int | None = None  # that control's budget B (target: its target N)
    final_lam: float | None = None  # the λ thinking ended with (a schedule moves λ from `lam`, the request's λ)
    base: str | None = None  # the model λ = 0 stands for (a pair's reference, a plain model), or that a TrRa student
    #                          was distilled from: the reference its thinking reduction is measured against (None: unknown)

    @property
    def key(self) -> RecordKey:
        """The identity of a record; a resumed sweep never writes a key twice."""
        return self.benchmark, self.method, self.problem_id, self.lam, self.sample

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "record") -> SampleRecord:
        """A record from a parsed JSON line (or a DataFrame row), with field types checked.

        ``where`` names the record in errors (``results.jsonl: record 3``).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items() if k in names}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise DataFormatError(f"{where} lacks field(s) {missing}")
        for name in ("lam", "thinking_tokens", "total_tokens", "sample"):
            value = values.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise DataFormatError(f"{where} has a non-numeric {name} {value!r}")
        if values["correct"] not in (True, False):  # also admits 0 and 1
            raise DataFormatError(f"{where} has correct={values['correct']!r}: it must be true or false")
        if values.get("thinking_closed") not in (None, True, False):
            raise DataFormatError(f"{where} has thinking_closed={values['thinking_closed']!r}: it must be true, false or null")
        level, budget, final = values.get("level"), values.get("thinking_budget"), values.get("final_lam")
        return cls(**{
            **values,
            "thinking_budget": None if budget is None else int(budget),
            "final_lam": None if final is None else float(final),
            "problem_id": str(values["problem_id"]),
            "level": None if level is None else int(level),
            "lam": float(values["lam"]),
            "sample": int(values.get("sample", 0)),
            "correct": bool(values["correct"]),
            "thinking_tokens": int(values["thinking_tokens"]),
            "total_tokens": int(values["total_tokens"]),
        })


def graded_record(
    problem: Problem, completion: Completion, tokenizer: Any, *, benchmark: str, method: str, model: str, sample: int,
    opened: bool = False, base: str | None = None,
) -> SampleRecord:
    """Grade ``completion`` as the answer to ``problem`` and record it under the run's identity.

    ``opened``: the prompt opened the think block (see :func:`thinkctl.grading.grade`); ``base``: see
    :class:`SampleRecord`.
    """
    result = grade(completion, problem.answer, tokenizer, opened)
    return SampleRecord(
        benchmark=benchmark, method=method, model=model, problem_id=problem.id, level=problem.level,
        lam=completion.lam, sample=sample, response=completion.text, answer=result.answer, gold=problem.answer,
        correct=result.correct, thinking_tokens=result.thinking_tokens, total_tokens=completion.num_tokens,
        finish_reason=completion.finish_reason, thinking_closed=result.thinking_closed,
        thinking_forced=completion.meta.get("thinking_forced"), control=completion.meta.get("control"),
        thinking_budget=completion.meta.get("thinking_budget") if completion.meta.get("control") else None,
        final_lam=completion.meta.get("final_lambda"), base=base,
    )


def read_records(path: str | os.PathLike[str]) -> list[SampleRecord]:
    """Every record of one JSONL file; a malformed line (``file:line``) or record (``file: record n``) is named."""
    rows = list(iter_jsonl(path))
    if not rows:
        raise DataFormatError(f"{path} has no records")
    return [SampleRecord.from_dict(row, f"{path}: record {i}") for i, row in enumerate(rows, start=1)]


def _own_files(directory: Path) -> list[Path]:
    return [directory / name for name in RECORD_FILES if (directory / name).is_file()]


def _run_dir_files(path: Path) -> list[Path]:
    """The record files of a run directory: its own, else a realign run's evaluation (``eval/``, or every round's
    ``round-k/eval/`` of an iterated run), else those of the runs directly inside it (a controls sweep: one run per
    control and budget, and ``fixed/``). Calibration records are not results; work moved to ``replaced-*`` is stale."""
    for directory in (path, path / "eval"):
        if found := _own_files(directory):
            return found
    rounds = sorted((p for p in path.glob("round-*") if p.name.removeprefix("round-").isdigit()),
                    key=lambda p: int(p.name.removeprefix("round-")))
    if rounds:
        return [f for r in rounds for f in _run_dir_files(r)]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and p.name != "calibration" and not p.name.startswith("replaced-"))
    return [f for run in runs for f in _own_files(run)]


def record_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Record files named directly, or held by run directories (``results.jsonl``, ``routed.jsonl``; a realign run's
    ``eval/`` and an iterated run's rounds)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _run_dir_files(path)
            if not found:
                raise DataFormatError(f"{path} holds no {' or '.join(RECORD_FILES)} (nor a realign run's eval/ or round-k/eval/)")
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise DataFormatError("no result files given")
    return files


def records_frame(records: Iterable[SampleRecord | Mapping[str, Any]]) -> pd.DataFrame:
    """Records (or mappings checked as records) as a DataFrame with one column per field."""
    rows = [r.to_dict() if isinstance(r, SampleRecord) else SampleRecord.from_dict(r, f"record {i}").to_dict()
            for i, r in enumerate(records, start=1)]
    if not rows:
        raise DataFormatError("no records given")
    return pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(SampleRecord)])


#: methods whose λ = 0 is their ``base`` model alone (a fused pair's reference, a plain model)
BASE_AT_ZERO = ("fused", "plain")


def model_key(df: pd.DataFrame) -> pd.Series:
    """The model each record's sample comes from: at λ = 0 a fused pair is its reference alone, so the λ = 0 rows of
    several pairs over one reference (the rounds of an iterated TrRa run) are one model; otherwise ``model``."""
    at_zero = df["method"].isin(BASE_AT_ZERO) & (df["lam"] == 0.0) & df["base"].notna()
    return df["base"].where(at_zero, df["model"])


def drop_overlaps(df: pd.DataFrame) -> pd.DataFrame:
    """Count each sample once when runs overlap (a realign run's reference rows are a sweep's λ=0 rows, and every
    round of an iterated run evaluates the same reference).

    A control's runs at several budgets share every other key, so the control and budget are part of it.
    """
    key = ["benchmark", "method", "model_key", "problem_id", "lam", "sample", "route_point", "control", "thinking_budget"]
    keyed = df.assign(model_key=model_key(df))
    return df[~keyed[key].astype(str).duplicated()].reset_index(drop=True)


def load_records(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """The records of JSONL files and run directories as one DataFrame, each sample counted once."""
    return drop_overlaps(records_frame(r for path in record_files(paths) for r in read_records(path)))


def points_down(accuracy_pct: float, reference_pct: float) -> float:
    """How many points (percent) an accuracy is below a reference's, rounded to 1e-9.

    Accuracies are ratios of counts, so a drop of exactly k points is common, and in floats 281/300 − 275/300 is
    2.000000000000014 points: rounded, "exactly 2 points down" compares as 2 with ``<=``, ``>`` and ``>=`` alike.
    """
    return round(reference_pct - accuracy_pct, 9)


def within_points(accuracy_pct: float, reference_pct: float, points: float) -> bool:
    """Whether an accuracy (percent) is at most ``points`` below a reference's, "exactly ``points`` down" included."""
    return points_down(accuracy_pct, reference_pct) <= points


def aggregate(records: pd.DataFrame, by: Sequence[str], sort: bool = True) -> pd.DataFrame:
    """Per group: sample count, accuracy, mean and median thinking tokens, mean total tokens, and the
    shares of samples that hit the token limit and whose thinking never closed.

    The limit share says whether a mean length is a measurement or the cap in disguise.
    """
    df = records.assign(
        _hit_limit=records["finish_reason"] == "length", _unclosed=records["thinking_closed"].eq(False)
    )
    return df.groupby(list(by), sort=sort, dropna=False).agg(
        n=("correct", "size"),
        accuracy=("correct", "mean"),
        mean_thinking_tokens=("thinking_tokens", "mean"),
        median_thinking_tokens=("thinking_tokens", "median"),
        mean_total_tokens=("total_tokens", "mean"),
        hit_limit=("_hit_limit", "mean"),
        unclosed=("_unclosed", "mean"),
    ).reset_index()
