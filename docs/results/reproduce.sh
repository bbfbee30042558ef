#!/usr/bin/env bash
# Every figure in docs/results (and the README's tiny-default numbers), measured on the tiny default
# pair, greedy, on CPU. Run from the repository root with thinkctl installed:
#   bash docs/results/reproduce.sh [RUNS_DIR]
# The documented build is seed 0 (measure_build.sh does the measuring); its figures are copied here.
# Each step resumes from what an interrupted run left in RUNS_DIR (default runs/results).
# The ranges over builds (docs/results/tiny-builds.md) come from measure_build.sh on further seeds and
# thread counts, summed up by across_builds.py; see the README, "The tiny default on your machine".
set -euo pipefail

RUNS=${1:-runs/results}
DOCS=docs/results
export THINKCTL_HOME=${THINKCTL_HOME:-$HOME/.cache/thinkctl}
TINY=$THINKCTL_HOME/tiny
bash "$DOCS/measure_build.sh" 0 "$RUNS" all

cp "$TINY/build_info.json" "$DOCS/tiny-build-info.json"
cp "$RUNS/demo/summary.md" "$DOCS/tiny-demo.md"
cp "$RUNS/routed-logistic/route_eval.md" "$DOCS/tiny-routing-fused.md"
cp "$RUNS/routed-bins/route_eval.md" "$DOCS/tiny-routing-fused-bins.md"
cp "$RUNS/trra/report.md" "$DOCS/tiny-trra.md"
cp "$RUNS/inra/sweep/dial.md" "$DOCS/tiny-inra-dial.md"
cp "$RUNS/inra/sweep/sweep.png" "$DOCS/tiny-inra-sweep.png"

# Hard thinking budgets alone (λ = 0), λ alone (the demo) and both, compared at equal mean thinking.
for spec in "0 20" "0 40" "0 60" "0 80" "0.25 40"; do
    set -- $spec
    thinkctl sweep --ref "$TINY/reference" --aligned "$TINY/aligned" --recipe recipes/tiny.yaml --lambdas "$1" \
        --max-thinking-tokens "$2" --out "$RUNS/budget-$1-$2"
done

thinkctl report "$RUNS/demo" "$RUNS/routed-logistic" "$RUNS/trra/eval" "$RUNS/inra/sweep" --out "$DOCS/report" \
    --title "thinkctl on the tiny default"
