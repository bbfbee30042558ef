#!/usr/bin/env bash
# Every figure in docs/results (and the README's tiny-default numbers), measured on the tiny default
# pair, greedy, on CPU. Run from the repository root with thinkctl installed:
#   bash docs/results/reproduce.sh [RUNS_DIR]
# Each step resumes from what an interrupted run left in RUNS_DIR (default runs/results).
set -euo pipefail

RUNS=${1:-runs/results}
TINY=${THINKCTL_HOME:-$HOME/.cache/thinkctl}/tiny
DOCS=docs/results
TARGET=${TARGET_TOKENS:-67}     # TrRa target: half the reference thinking, at the knee of the demo curve
mkdir -p "$RUNS" "$DOCS"

# The pair (per-level table in build_info.json) and the held-out λ sweep (300 test problems, seed 0).
thinkctl tiny build
cp "$TINY/build_info.json" "$DOCS/tiny-build-info.json"
thinkctl demo --out "$RUNS/demo"
cp "$RUNS/demo/summary.md" "$DOCS/tiny-demo.md"

# Router: fitted on train-split problems (seed 1), evaluated on the demo's test problems.
thinkctl sweep --ref "$TINY/reference" --aligned "$TINY/aligned" --recipe recipes/tiny.yaml \
    --split train --seed 1 --out "$RUNS/train-sweep"
thinkctl route fit --sweep "$RUNS/train-sweep" --questions tiny --split train --seed 1 --limit 300 \
    --out "$RUNS/policy.json"
thinkctl route eval --policy "$RUNS/policy.json" --sweep "$RUNS/demo" --questions tiny --split test --seed 0 \
    --limit 300 --out "$RUNS/routed"
cp "$RUNS/routed/route_eval.md" "$DOCS/tiny-routing-fused.md"
thinkctl route fit --sweep "$RUNS/train-sweep" --questions tiny --split train --seed 1 --limit 300 --estimator bins \
    --out "$RUNS/policy-bins.json"
thinkctl route eval --policy "$RUNS/policy-bins.json" --sweep "$RUNS/demo" --questions tiny --split test --seed 0 \
    --limit 300 --out "$RUNS/routed-bins"
cp "$RUNS/routed-bins/route_eval.md" "$DOCS/tiny-routing-fused-bins.md"

# TrRa at the knee.
thinkctl realign --recipe recipes/tiny-trra.yaml --target-tokens "$TARGET" --out "$RUNS/trra"
cp "$RUNS/trra/report.md" "$DOCS/tiny-trra.md"

# InRa dial.
thinkctl inra train --recipe recipes/tiny-inra.yaml --base "$TINY/reference" --teacher "$TINY/aligned" \
    --output-dir "$RUNS/inra"
thinkctl sweep --inra "$RUNS/inra/final" --recipe recipes/tiny-inra.yaml --out "$RUNS/inra/sweep"
python -c "
import sys
from thinkctl.inra.dial import dial_check, write_dial_report
from thinkctl.records import load_records
from thinkctl.report import summarize
check = dial_check(summarize(load_records([sys.argv[1]])))
write_dial_report(check, sys.argv[1], title='InRa dial on the tiny pair')
" "$RUNS/inra/sweep"
cp "$RUNS/inra/sweep/dial.md" "$DOCS/tiny-inra-dial.md"
cp "$RUNS/inra/sweep/sweep.png" "$DOCS/tiny-inra-sweep.png"

# Hard thinking budgets alone (λ = 0), λ alone (the demo) and both, compared at equal mean thinking.
for spec in "0 40" "0 51" "0 62" "0 80" "0 120" "0.25 60"; do
    set -- $spec
    thinkctl sweep --ref "$TINY/reference" --aligned "$TINY/aligned" --recipe recipes/tiny.yaml --lambdas "$1" \
        --max-thinking-tokens "$2" --out "$RUNS/budget-$1-$2"
done

thinkctl report "$RUNS/demo" "$RUNS/routed" "$RUNS/trra/eval" "$RUNS/inra/sweep" --out "$DOCS/report" \
    --title "thinkctl on the tiny default"
