"""TrRa side by side (issue 23): reference, single-λ and iterated TrRa, adaptive TrRa, the per-problem oracle and
the router over the fused pair at the adaptive student's mean thinking, on the same held-out problems.

    python docs/results/trra_side_by_side.py --run iterated=runs/tiny-trra-iter --run adaptive=runs/tiny-trra-adaptive \
        --router-sweep runs/router-fit-sweep --out docs/results/tiny-trra-adaptive

The router is fitted on a sweep of the fused pair over the adaptive grid on training problems (`thinkctl sweep
--split train`), then looked up on the adaptive run's held-out sweep of the same grid (its eval/results.jsonl),
in budget mode at the adaptive student's mean thinking tokens: the inference-time counterpart at equal length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from thinkctl.io import atomic_write_json, atomic_write_text
from thinkctl.report import load_records
from thinkctl.router.evaluate import evaluate_routing
from thinkctl.router.policy import fit_router
from thinkctl.router.run import load_questions
from thinkctl.trra.compare import compare_runs, comparison_markdown, record_figures
from thinkctl.trra.realign import student_row


def router_row(fit_sweep: Path, adaptive: Path, held_out_sweep: Path, estimator: str, benchmark: str, train_limit: int,
               eval_limit: int) -> dict:
    """The router's row at the adaptive student's mean thinking (budget mode), looked up on the held-out sweep."""
    report = json.loads((adaptive / "report.json").read_text())
    budget = student_row(report)["mean_thinking_tokens"]
    held_out = load_records([held_out_sweep])
    fit = load_records([fit_sweep])
    fit = fit[fit["lam"].isin(set(held_out["lam"]))]  # the router chooses among the λ the held-out sweep ran
    router = fit_router(fit, estimator=estimator, method="fused", questions=load_questions(benchmark, "train", train_limit))
    result = evaluate_routing(router, held_out[held_out["method"] == "fused"], method="fused", budgets=[budget],
                              questions=load_questions(benchmark, "test", eval_limit))
    label = f"{router.estimator.kind} budget={budget:.1f}"
    routed = pd.DataFrame([r for r in result.records if r["route_point"] == label])
    return {"model": f"router over the fused pair ({label} tokens)", **record_figures(routed), "run": "router"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR of a realign run (repeat)")
    parser.add_argument("--router-sweep", type=Path, help="sweep of the fused pair on training problems (the router's fit)")
    parser.add_argument("--adaptive", default="adaptive", help="the --run name of the adaptive run")
    parser.add_argument("--router-held-out", type=Path,
                        help="held-out sweep the router is looked up on (default: the adaptive run's eval/)")
    parser.add_argument("--estimator", default="bins", choices=["bins", "logistic"])
    parser.add_argument("--benchmark", default="tiny")
    parser.add_argument("--train-limit", type=int, default=256)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    extra = []
    if args.router_sweep:
        adaptive = Path(runs[args.adaptive])
        extra.append(router_row(args.router_sweep, adaptive, args.router_held_out or adaptive / "eval", args.estimator,
                                args.benchmark, args.train_limit, args.eval_limit))
    comparison = compare_runs(runs, extra)
    atomic_write_json(args.out.with_suffix(".json"), comparison)
    atomic_write_text(args.out.with_suffix(".md"), comparison_markdown(comparison))
    print(comparison_markdown(comparison))


if __name__ == "__main__":
    main()
