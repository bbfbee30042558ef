#!/usr/bin/env bash
# Build one tiny world and measure it: the demo sweep and its shape check, and with `all` also the router,
# TrRa at the knee and the InRa dial. Every figure of docs/results/tiny-builds.md comes from runs of this
# script on several builds (seeds, thread counts); reproduce.sh runs it for the documented seed-0 build.
#   bash docs/results/measure_build.sh SEED RUNS_DIR [demo|all]
# THINKCTL_HOME defaults to RUNS_DIR/home, so builds of different seeds never share a pair. Each step
# resumes from what an interrupted run left in RUNS_DIR. OMP_NUM_THREADS sets the thread count.
set -euo pipefail

SEED=$1
RUNS=$2
WHAT=${3:-all}
export THINKCTL_HOME=${THINKCTL_HOME:-$RUNS/home}
TINY=$THINKCTL_HOME/tiny
TARGET=${TARGET_TOKENS:-}     # TrRa target; default: the knee of the train sweep's λ curve (thinkctl.tiny.shape.knee_tokens)
mkdir -p "$RUNS"
RECIPE=$RUNS/tiny.yaml        # recipes/tiny.yaml with this build's seed
sed "s/^  seed: 0$/  seed: $SEED/" recipes/tiny.yaml > "$RECIPE"

# The pair (per-level table in build_info.json) and the held-out λ sweep (300 test problems) with its shape check.
thinkctl tiny build --recipe "$RECIPE"
cp "$TINY/build_info.json" "$RUNS/build_info.json"
thinkctl demo --recipe "$RECIPE" --out "$RUNS/demo"
[ "$WHAT" = demo ] && exit 0

# Router: fitted on train-split problems (seed 1), evaluated on the demo's test problems; the oracle beside it.
thinkctl sweep --ref "$TINY/reference" --aligned "$TINY/aligned" --recipe "$RECIPE" \
    --split train --seed 1 --out "$RUNS/train-sweep"
for estimator in logistic bins; do
    thinkctl route fit --sweep "$RUNS/train-sweep" --questions tiny --split train --seed 1 --limit 300 \
        --estimator "$estimator" --out "$RUNS/policy-$estimator.json"
    thinkctl route eval --policy "$RUNS/policy-$estimator.json" --sweep "$RUNS/demo" --questions tiny --split test \
        --seed 0 --limit 300 --out "$RUNS/routed-$estimator"
done

# TrRa at the knee: the thinking of the cheapest λ within a point of λ 0, read off the train-split sweep (not the test
# problems the student is graded on), unless TARGET_TOKENS says otherwise.
if [ -z "$TARGET" ]; then
    TARGET=$(python -c "
import sys
from thinkctl.records import load_records
from thinkctl.tiny.shape import knee_tokens
print(round(knee_tokens(load_records([sys.argv[1]]))))" "$RUNS/train-sweep")
fi
thinkctl realign --recipe recipes/tiny-trra.yaml --ref "$TINY/reference" --aligned "$TINY/aligned" \
    --target-tokens "$TARGET" --out "$RUNS/trra"

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
