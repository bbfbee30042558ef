"""File-level router jobs behind ``thinkctl route fit|apply|eval``: read inputs, compute signals, write outputs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thinkctl.data import ID_KEYS, QUESTION_KEYS, first_key, load_benchmark
from thinkctl.errors import DataFormatError
from thinkctl.io import atomic_write_json, atomic_write_text, iter_jsonl
from thinkctl.records import load_records
from thinkctl.router.budget import allocate_budget
from thinkctl.router.evaluate import RouteEvaluation, evaluate_routing
from thinkctl.router.features import prompt_entropy, query_features
from thinkctl.router.policy import Router, fit_router

log = logging.getLogger(__name__)


def load_questions(spec: str, split: str | None = None, limit: int | None = None, seed: int = 0) -> dict[str, str]:
    """problem_id → question text of the benchmark a sweep ran on (records carry ids, not texts)."""
    return {p.id: p.question for p in load_benchmark(spec, split=split, limit=limit, seed=seed)}


def entropy_signals(model_path: str, questions: Mapping[str, str], gen_tokens: int = 0,
                    dtype: str = "float32", device: str = "cpu") -> dict[str, dict[str, float]]:
    """problem_id → {"entropy": mean next-token entropy of the model} (see :func:`prompt_entropy`)."""
    from thinkctl.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_path, dtype=dtype, device=device)
    tokenizer = load_tokenizer(model_path)
    ids = list(questions)
    values = prompt_entropy(model, tokenizer, [questions[i] for i in ids], gen_tokens=gen_tokens)
    return {i: {"entropy": v} for i, v in zip(ids, values)}


def route_fit(
    sweep: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    estimator: str = "logistic",
    threshold: float = 0.5,
    method: str | None = None,
    benchmark: str | None = None,
    questions: Mapping[str, str] | None = None,
    entropy_model: str | None = None,
    entropy_tokens: int = 0,
    features: Sequence[str] | None = None,
) -> Router:
    """Fit a router on sweep result files and save its policy to ``out``."""
    records = load_records(sweep)
    signals = None
    if entropy_model is not None:
        if questions is None:
            raise DataFormatError("the entropy signal needs question texts: pass the benchmark the sweep ran on")
        ids = set(records["problem_id"].astype(str))
        signals = entropy_signals(entropy_model, {i: q for i, q in questions.items() if i in ids}, entropy_tokens)
    router = fit_router(records, estimator=estimator, threshold=threshold, method=method, benchmark=benchmark,
                        questions=questions, signals=signals, features=features)
    router.meta.update({"sweep": [str(p) for p in sweep], "entropy_model": entropy_model, "entropy_tokens": entropy_tokens})
    router.save(out)
    return router


def read_queries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Queries to route from JSONL: a question (question/problem/prompt), optional id, level and signals."""
    out = []
    for lineno, rec in enumerate(iter_jsonl(path), start=1):
        key, id_key = first_key(rec, QUESTION_KEYS), first_key(rec, ID_KEYS)
        if key is None:
            raise DataFormatError(f"{path}:{lineno}: record has no question field (one of {list(QUESTION_KEYS)})")
        qid = str(rec[id_key]) if id_key else str(lineno)
        out.append({"id": qid, "question": str(rec[key]), "level": rec.get("level"), "entropy": rec.get("entropy")})
    if not out:
        raise DataFormatError(f"{path} has no queries")
    return out


def route_apply(
    policy: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    budget: float | None = None,
    entropy_model: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """λ per query (threshold rule, or budget mode with ``budget`` mean thinking tokens); returns rows and a summary line."""
    rows, summary = route_queries(Router.load(policy), read_queries(input_path), budget=budget, entropy_model=entropy_model)
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return rows, summary


def route_queries(
    router: Router, queries: Sequence[Mapping[str, Any]], *, budget: float | None = None, entropy_model: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """λ per query of ``queries`` (dicts with ``id``, ``question`` and optional ``level``/``entropy``, as
    :func:`read_queries` returns them): the rows ``route apply`` writes, and its summary line."""
    queries = [dict(q) for q in queries]
    model = entropy_model or router.meta.get("entropy_model")
    if "entropy" in router.estimator.features and model:
        ent = entropy_signals(model, {q["id"]: q["question"] for q in queries}, int(router.meta.get("entropy_tokens", 0)))
        for q in queries:
            q["entropy"] = ent[q["id"]]["entropy"]
    feats = [query_features(q["question"], q.get("level"), entropy=q.get("entropy")) for q in queries]
    p, t = router.predict(feats)
    if budget is None:
        choice = router.choose(p, t)
        mode = f"threshold {router.threshold:g}"
    else:
        choice = allocate_budget(p, t, budget).choice
        mode = f"budget {budget:g} thinking tokens/query"
    rows = [{"id": q["id"], "lam": router.lambdas[j], "p_correct": round(float(p[i, j]), 4),
             "predicted_thinking_tokens": round(float(t[i, j]), 1)} for i, (q, j) in enumerate(zip(queries, choice))]
    n = len(rows)
    summary = (f"{n} queries routed by {mode}: predicted accuracy {100 * sum(r['p_correct'] for r in rows) / n:.1f}%, "
               f"predicted mean thinking tokens {sum(r['predicted_thinking_tokens'] for r in rows) / n:.1f}")
    return rows, summary


def route_eval(
    policy: str | os.PathLike[str],
    sweep: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    questions: Mapping[str, str] | None = None,
    method: str | None = None,
    benchmark: str | None = None,
) -> RouteEvaluation:
    """Evaluate a policy on a held-out sweep; writes ``routed.jsonl`` (for reports), ``route_eval.md/csv`` and
    ``route_oracle.json`` (the per-query oracle's accuracy and thinking, the ceiling of routing)."""
    router = Router.load(policy)
    records = load_records(sweep)
    signals = None
    if "entropy" in router.estimator.features and router.meta.get("entropy_model"):
        if questions is None:
            raise DataFormatError("this policy uses the entropy signal: pass the benchmark the held-out sweep ran on")
        ids = set(records["problem_id"].astype(str))
        signals = entropy_signals(router.meta["entropy_model"], {i: q for i, q in questions.items() if i in ids},
                                  int(router.meta.get("entropy_tokens", 0)))
    result = evaluate_routing(router, records, questions=questions, signals=signals, method=method, benchmark=benchmark)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "routed.jsonl", "".join(json.dumps(r) + "\n" for r in result.records))
    atomic_write_text(out_dir / "route_eval.csv", result.table.to_csv(index=False))
    atomic_write_text(out_dir / "route_eval.md", result.to_markdown())
    atomic_write_json(out_dir / "route_oracle.json", result.oracle)
    return result
