"""Difficulty routers: predict, per query and λ, P(correct) and thinking length; route to the cheapest safe λ.

Both estimators are calibrated from a sweep (every λ of a grid run on the same problems, graded per
sample) and answer the same question — for this query, at each λ of the grid, how likely is a correct
answer and how many thinking tokens will it take — so routing and budget allocation work with either:

* ``"bins"``: difficulty bins → λ table. A cheap difficulty score (``level`` when the benchmark grades
  it, else the operation-word count, …) is binned; each (bin, λ) cell holds the Laplace-smoothed
  accuracy and mean thinking tokens seen in the sweep. No fitting beyond counting, no extra generation.
* ``"logistic"``: per λ, an L2-regularised logistic regression of correctness on standardised query
  features (text features, level, and the model-entropy signal when given), fitted by Newton's method
  in float64 (no sklearn dependency), plus a ridge regression of thinking tokens.

Routing picks, among the λ whose predicted P(correct) reaches ``threshold``, the one predicted to think
least (ties go to the larger λ); when none reaches it, the λ with the highest P(correct). A policy file
(JSON, or YAML by suffix) stores the estimator, its features and coefficients, the λ grid and threshold.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thinkctl.decoding import lambda_for_length
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.fusion import validate_lambda_grid
from thinkctl.io import atomic_write_text
from thinkctl.records import aggregate, records_frame
from thinkctl.router.features import FEATURE_NAMES, TEXT_FEATURES, feature_matrix, query_features

POLICY_FORMAT = "thinkctl-router"
POLICY_VERSION = 1
ESTIMATORS = ("logistic", "bins")
#: relative difference in predicted thinking tokens under which two λ count as equally cheap
TOKEN_TIE = 0.02
#: the difficulty score a bins router uses: the first of these the sweep's queries all have
BIN_SCORE_ORDER = ("level", "n_op_words", "n_numbers", "n_chars", "entropy")


# ---------------------------------------------------------------- small float64 regressions


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(
    X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0, iters: int = 100
) -> tuple[np.ndarray, float]:
    """Weighted L2-regularised logistic regression by Newton's method; returns (coef, intercept).

    ``y`` may be fractional (the correct rate of a problem over its samples, with ``weight`` = sample
    count). The intercept gets a tiny penalty so a λ at which every answer is right (or wrong) still
    yields a finite, confident model instead of diverging.
    """
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    reg = np.full(d + 1, float(l2))
    reg[-1] = 1e-3
    beta = np.zeros(d + 1)
    for _ in range(iters):
        p = _sigmoid(A @ beta)
        grad = A.T @ (w * (p - y)) + reg * beta
        hess = (A * (w * p * (1 - p))[:, None]).T @ A + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return beta[:-1], float(beta[-1])


def fit_ridge(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """Weighted ridge regression (unpenalised intercept) in closed form; returns (coef, intercept)."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    reg = np.full(d + 1, float(l2))
    reg[-1] = 0.0
    beta = np.linalg.solve((A * w[:, None]).T @ A + np.diag(reg), A.T @ (w * y))
    return beta[:-1], float(beta[-1])


# ---------------------------------------------------------------- sweep → per-problem table


@dataclass
class SweepTable:
    """A sweep reduced to one row per problem: features, and per λ the correct rate and mean tokens.

    ``correct``/``tokens``/``count`` are (problems × λ) arrays; a (problem, λ) the sweep did not run is
    NaN with count 0, and estimators fit each λ on the problems that have it.
    """

    problem_ids: list[str]
    lambdas: list[float]
    features: list[dict[str, float]]
    correct: np.ndarray
    tokens: np.ndarray
    count: np.ndarray
    benchmark: str
    method: str


def _as_frame(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records as :func:`thinkctl.records.load_records` returns them (mappings are checked as records)."""
    return records if isinstance(records, pd.DataFrame) else records_frame(records)


def select_sweep(df: pd.DataFrame, method: str | None = None, benchmark: str | None = None) -> pd.DataFrame:
    """The records of one benchmark and one (fixed-λ) method; ambiguity is an error, not a guess."""
    df = df[df["method"] != "routed"]
    for column, wanted in (("benchmark", benchmark), ("method", method)):
        present = sorted(df[column].astype(str).unique())
        if wanted is None:
            if len(present) != 1:
                raise DataFormatError(f"the sweep holds several {column}s {present}; choose one ({column}=…)")
            wanted = present[0]
        df = df[df[column] == wanted]
        if df.empty:
            raise DataFormatError(f"the sweep has no records with {column} {wanted!r}; it has {present}")
    return df


def sweep_table(
    records: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    method: str | None = None,
    benchmark: str | None = None,
    questions: Mapping[str, str] | None = None,
    signals: Mapping[str, Mapping[str, float]] | None = None,
) -> SweepTable:
    """Group a sweep by problem: ``questions`` (problem_id → text) and ``signals`` (problem_id → {name: value})
    supply features records do not carry; ``level`` comes from the records."""
    df = select_sweep(_as_frame(records), method, benchmark)
    lambdas = sorted(float(lam) for lam in df["lam"].unique())
    ids = sorted(df["problem_id"].unique(), key=_natural_key)
    if questions is not None:
        missing = [i for i in ids if i not in questions]
        if missing:
            raise DataFormatError(
                f"{len(missing)} problem id(s) of the sweep have no question text (first: {missing[0]!r}); "
                "pass the benchmark the sweep ran on"
            )
    agg = aggregate(df, ["problem_id", "lam"]).set_index(["problem_id", "lam"])
    agg = agg.reindex(pd.MultiIndex.from_product([ids, lambdas], names=["problem_id", "lam"]))
    shape = (len(ids), len(lambdas))
    levels = df.groupby("problem_id")["level"].first()
    features = []
    for pid in ids:
        level = levels.get(pid)
        level = None if level is None or pd.isna(level) else int(level)
        feats = query_features(questions[pid] if questions is not None else None, level, **dict((signals or {}).get(pid, {})))
        features.append(feats)
    return SweepTable(
        problem_ids=ids, lambdas=lambdas, features=features,
        correct=agg["accuracy"].to_numpy(dtype=float).reshape(shape), tokens=agg["mean_thinking_tokens"].to_numpy().reshape(shape),
        count=agg["n"].fillna(0).to_numpy().reshape(shape),
        benchmark=str(df["benchmark"].iloc[0]), method=str(df["method"].iloc[0]),
    )


def _natural_key(text: str) -> tuple:
    """Sort ``tiny-test-0-10`` after ``tiny-test-0-9``: digit runs compare as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


# ---------------------------------------------------------------- estimators


@dataclass
class LogisticEstimator:
    """Per-λ logistic P(correct | features) and ridge thinking-token models over standardised features."""

    features: list[str]
    mean: list[float]
    std: list[float]
    correct_coef: list[list[float]]
    correct_intercept: list[float]
    tokens_coef: list[list[float]]
    tokens_intercept: list[float]
    tokens_range: list[list[float]]
    kind: str = "logistic"

    @classmethod
    def fit(cls, table: SweepTable, features: Sequence[str] | None = None, l2: float = 1.0) -> LogisticEstimator:
        names = _usable_features(table, features)
        values = np.array([[f.get(n, np.nan) for n in names] for f in table.features], dtype=np.float64)
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant feature carries no signal; keep it harmless
        X = feature_matrix(table.features, names, mean, std)
        cc, ci, tc, ti, tr = [], [], [], [], []
        for j in range(len(table.lambdas)):
            have = table.count[:, j] > 0
            if not have.any():
                raise DataFormatError(f"no sweep records at λ={table.lambdas[j]:g} to fit on")
            w = table.count[have, j]
            coef, icpt = fit_logistic(X[have], table.correct[have, j], w, l2)
            cc.append(coef.tolist())
            ci.append(icpt)
            coef, icpt = fit_ridge(X[have], table.tokens[have, j], w, l2)
            tc.append(coef.tolist())
            ti.append(icpt)
            tr.append([float(table.tokens[have, j].min()), float(table.tokens[have, j].max())])
        return cls(list(names), mean.tolist(), std.tolist(), cc, ci, tc, ti, tr)

    def predict(self, rows: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        X = feature_matrix(rows, self.features, self.mean, self.std)
        p = _sigmoid(X @ np.asarray(self.correct_coef).T + np.asarray(self.correct_intercept))
        t = X @ np.asarray(self.tokens_coef).T + np.asarray(self.tokens_intercept)
        lo, hi = np.asarray(self.tokens_range).T
        return p, np.clip(t, lo, hi)


@dataclass
class BinsEstimator:
    """Difficulty bins → per-λ smoothed accuracy and mean tokens; queries without the score use the pooled row."""

    score: str
    values: list[float]
    correct: list[list[float]]
    tokens: list[list[float]]
    pooled_correct: list[float]
    pooled_tokens: list[float]
    kind: str = "bins"

    @property
    def features(self) -> list[str]:
        return [self.score]

    @classmethod
    def fit(cls, table: SweepTable, features: Sequence[str] | None = None, max_bins: int = 8) -> BinsEstimator:
        candidates = list(features) if features else list(BIN_SCORE_ORDER)
        score = next((n for n in candidates if all(n in f for f in table.features)), None)
        if score is None:
            raise DataFormatError(
                f"no difficulty score among {candidates} is known for every problem; give question texts or levels"
            )
        s = np.array([f[score] for f in table.features])
        uniq = np.unique(s)
        if len(uniq) > max_bins:  # many distinct values (lengths, entropies): quantile bins, labelled by their median
            edges = np.quantile(s, np.linspace(0, 1, max_bins + 1)[1:-1])
            bins = np.searchsorted(edges, s, side="right")
            values = [float(np.median(s[bins == b])) for b in np.unique(bins)]
            bins = np.searchsorted(np.unique(bins), bins)
        else:
            values = uniq.tolist()
            bins = np.searchsorted(uniq, s)
        ok = table.count > 0
        right = np.where(ok, table.correct * table.count, 0.0)
        toks = np.where(ok, table.tokens * table.count, 0.0)
        pooled_c = (right.sum(0) + 1) / (table.count.sum(0) + 2)
        pooled_t = toks.sum(0) / np.maximum(table.count.sum(0), 1)
        corr, tok = [], []
        for b in range(len(values)):
            n = table.count[bins == b].sum(0)
            corr.append(np.where(n > 0, (right[bins == b].sum(0) + 1) / (n + 2), pooled_c).tolist())
            tok.append(np.where(n > 0, toks[bins == b].sum(0) / np.maximum(n, 1), pooled_t).tolist())
        return cls(score, [float(v) for v in values], corr, tok, pooled_c.tolist(), pooled_t.tolist())

    def predict(self, rows: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(self.values)
        corr, tok = np.asarray(self.correct), np.asarray(self.tokens)
        p = np.empty((len(rows), len(self.pooled_correct)))
        t = np.empty_like(p)
        for i, row in enumerate(rows):
            if self.score in row:
                b = int(np.argmin(np.abs(values - row[self.score])))
                p[i], t[i] = corr[b], tok[b]
            else:
                p[i], t[i] = self.pooled_correct, self.pooled_tokens
        return p, t


def _usable_features(table: SweepTable, features: Sequence[str] | None) -> list[str]:
    """Requested features (default: all) that at least one problem of the sweep has."""
    wanted = list(features) if features else list(FEATURE_NAMES)
    unknown = sorted(set(wanted) - set(FEATURE_NAMES))
    if unknown:
        raise ConfigError(f"unknown router feature(s) {unknown}; known: {list(FEATURE_NAMES)}")
    usable = [n for n in wanted if any(n in f for f in table.features)]
    if features and len(usable) < len(wanted):
        raise DataFormatError(
            f"feature(s) {sorted(set(wanted) - set(usable))} are unknown for every problem of the sweep "
            f"(text features {list(TEXT_FEATURES)} need question texts; entropy needs signals)"
        )
    if not usable:
        raise DataFormatError("no query features known: the sweep has no levels and no question texts were given")
    return usable


_ESTIMATOR_TYPES = {"logistic": LogisticEstimator, "bins": BinsEstimator}


# ---------------------------------------------------------------- the router


@dataclass
class Router:
    """A fitted routing policy: estimator + λ grid + correctness threshold (see module docstring)."""

    estimator: LogisticEstimator | BinsEstimator
    lambdas: list[float]
    threshold: float = 0.5
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lambdas = validate_lambda_grid(self.lambdas)
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"router threshold must be a probability in [0, 1], got {self.threshold}")

    def predict(self, queries: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(P(correct), predicted thinking tokens), each (queries × λ), from feature dicts."""
        return self.estimator.predict(list(queries))

    def choose(self, p: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Index into the λ grid per query: cheapest λ with P ≥ threshold, else the most likely correct.

        Predicted lengths within :data:`TOKEN_TIE` of the cheapest count as a tie, won by the more
        likely correct λ: past the aligned model's floor a larger λ thinks no less (its prediction is
        a fraction of a token shorter, which is noise) but is right less often.
        """
        lam = np.asarray(self.lambdas)
        out = np.empty(len(p), dtype=int)
        for i in range(len(p)):
            ok = np.flatnonzero(p[i] >= self.threshold)
            if ok.size:
                near = ok[tokens[i, ok] <= tokens[i, ok].min() * (1 + TOKEN_TIE)]
                out[i] = near[np.lexsort((-lam[near], -p[i, near]))[0]]
            else:
                out[i] = np.lexsort((-lam, tokens[i], -p[i]))[0]
        return out

    def route_features(self, queries: Sequence[Mapping[str, float]]) -> list[float]:
        p, t = self.predict(queries)
        return [self.lambdas[j] for j in self.choose(p, t)]

    def route(self, question: str | None = None, *, level: int | None = None, **signals: float | None) -> float:
        """The λ for one query from its text, its difficulty level and any model signal (e.g. ``entropy``)."""
        return self.route_features([query_features(question, level, **signals)])[0]

    def lambda_for_length(self, target: float, question: str | None = None, *, level: int | None = None,
                          **signals: float | None) -> float:
        """The λ whose predicted thinking for this query is ``target`` tokens, interpolated on the grid.

        Target mode's start λ (:class:`thinkctl.sampling.ScheduleConfig`): the router's per-λ length
        estimate for *this* prompt is a closer plan than the effort table's mean over a benchmark; a
        target outside the predicted range gets the grid end nearest to it
        (:func:`thinkctl.decoding.lambda_for_length`).
        """
        _, tokens = self.predict([query_features(question, level, **signals)])
        return round(lambda_for_length(dict(zip(self.lambdas, tokens[0].tolist())), target), 4)

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "lambdas": self.lambdas,
                "threshold": self.threshold, "estimator": asdict(self.estimator), "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "policy") -> Router:
        if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
            raise ConfigError(f"{where}: not a thinkctl router policy (format must be {POLICY_FORMAT!r})")
        if data.get("version") != POLICY_VERSION:
            raise ConfigError(f"{where}: policy version {data.get('version')!r}, this thinkctl reads {POLICY_VERSION}")
        try:
            est = dict(data["estimator"])
            kind = est.pop("kind")
            if kind not in _ESTIMATOR_TYPES:
                raise ConfigError(f"{where}: unknown estimator kind {kind!r}; known: {list(ESTIMATORS)}")
            estimator = _ESTIMATOR_TYPES[kind](**est)
            router = cls(estimator, list(data["lambdas"]), float(data["threshold"]), dict(data.get("meta", {})))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{where}: malformed router policy ({type(e).__name__}: {e})") from None
        if len(estimator.pooled_correct if kind == "bins" else estimator.correct_intercept) != len(router.lambdas):
            raise ConfigError(f"{where}: estimator has a different number of λ values than the grid {router.lambdas}")
        return router

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy atomically: YAML for ``.yaml``/``.yml``, JSON otherwise."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Router:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"router policy file does not exist: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # json and yaml raise different types; both mean a broken file
            raise ConfigError(f"{path}: cannot parse router policy: {e}") from None
        return cls.from_dict(data, where=str(path))


def fit_router(
    records: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    estimator: str = "logistic",
    threshold: float = 0.5,
    method: str | None = None,
    benchmark: str | None = None,
    questions: Mapping[str, str] | None = None,
    signals: Mapping[str, Mapping[str, float]] | None = None,
    features: Sequence[str] | None = None,
    l2: float = 1.0,
) -> Router:
    """Calibrate a router on a sweep (per-sample correctness and thinking length at every λ of a grid)."""
    if estimator not in _ESTIMATOR_TYPES:
        raise ConfigError(f"unknown router estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if not math.isfinite(l2) or l2 < 0:
        raise ConfigError(f"l2 must be a finite non-negative number, got {l2}")
    table = sweep_table(records, method=method, benchmark=benchmark, questions=questions, signals=signals)
    est = LogisticEstimator.fit(table, features, l2) if estimator == "logistic" else BinsEstimator.fit(table, features)
    meta = {"benchmark": table.benchmark, "method": table.method, "n_problems": len(table.problem_ids),
            "n_records": int(table.count.sum())}
    return Router(est, table.lambdas, threshold, meta)
