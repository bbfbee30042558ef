#!/usr/bin/env bash
# GPU smoke benchmarks, a few minutes on one GPU: fused two-model decoding and the InRa dual path (inra_decode.py),
# the chunked TrRa loss against full logits (trra_loss_memory.py) and one optimizer step of plain SFT, TrRa and InRa
# on the Trainer (train_step.py), all at R1-Distill-Qwen-1.5B's sizes on random weights. Each prints its ratios;
# copy them into CHANGELOG with the GPU's name. Then, where vLLM is installed, vllm_gpu_check.py: the fused pair
# and InRa in vLLM decode exactly like the transformers backend at λ 0, 0.5, 1, with CUDA graphs and with
# --enforce-eager (exits 1 on a mismatch). Without CUDA it says so and exits 0; without vLLM the check is skipped.
#   bash benchmarks/gpu_smoke.sh            # PYTHON=/path/to/python to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_smoke: $PY cannot import torch; set PYTHON to the project's interpreter" >&2
    exit 1
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_smoke: no CUDA device: skipped (the GPU figures are still to be measured)"
    exit 0
fi
"$PY" -c "import torch; print('gpu_smoke on', torch.cuda.get_device_name(0), '· torch', torch.__version__)"

echo "== decoding: plain vs two-model fusion vs InRa dual path (hidden 1536, 28 layers, vocab 151,936, bf16) =="
"$PY" benchmarks/inra_decode.py --device cuda --dtype bfloat16 --hidden 1536 --layers 28 --vocab 151936 \
    --batch 16 --prompt-len 128 --new-tokens 256 --repeats 3

echo "== TrRa loss: chunked vs full logits (batch 2 × 4096 tokens, vocab 151,936) =="
"$PY" benchmarks/trra_loss_memory.py --device cuda --batch 2 --seq 4096 --chunk-size 2048

echo "== one optimizer step on the Trainer: SFT vs TrRa vs InRa (batch 2 × 1024 tokens, bf16) =="
"$PY" benchmarks/train_step.py --device cuda --dtype bfloat16 --batch 2 --seq 1024 --steps 6

echo "== vLLM: fused pair and InRa equal to the transformers backend at λ 0, 0.5, 1 (CUDA graphs, then --enforce-eager) =="
"$PY" benchmarks/vllm_gpu_check.py
