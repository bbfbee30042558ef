"""How long ``thinkctl tiny build`` takes, per stage, at several thread counts side by side.

A full build takes tens of minutes, too long to time at every thread count. This times the parts it
is made of on the real recipe (:class:`thinkctl.tiny.build.TinyBuildConfig` defaults, the real traces
and tokenizer) and extrapolates:

* each training stage (solver, reference, aligned): ``--steps`` optimizer steps after ``--warmup``,
  through :func:`thinkctl.tiny.build.train_lm` on that stage's traces; the mean step time × the stage's
  step count. Weights start random: a step costs the same whatever the weights are;
* the held-out evaluation of the build (reference and aligned, ``n_eval`` problems each): greedy
  generation on ``--eval-n`` problems with a built pair (``--pair``), scaled to ``n_eval``. Without a
  pair it is left out, and said so.

Each thread count runs in its own subprocess (``torch.set_num_threads`` before any work). The table
gives the extrapolated minutes and the speed-up over the first thread count, measured in one run. The
machine's load average is printed first: other jobs on the cores make every figure slower.

    python benchmarks/tiny_build_time.py --threads 1 2 --pair ~/.cache/thinkctl/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

STAGES = (("solver", "careful", "solve_steps", "solve_lr"),
          ("reference", "long", "style_steps", "style_lr"),
          ("aligned", "short", "aligned_steps", "aligned_lr"))


def time_stages(threads: int, steps: int, warmup: int, pair: str | None, eval_n: int) -> dict[str, float]:
    """Extrapolated seconds of each part of the build at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    from transformers import Qwen2ForCausalLM

    from thinkctl.data import load_benchmark
    from thinkctl.tiny.build import TinyBuildConfig, encode_examples, evaluate, model_config, train_lm
    from thinkctl.tiny.task import generate_problems
    from thinkctl.tiny.tokenizer import build_tokenizer

    cfg = TinyBuildConfig()
    tokenizer = build_tokenizer(cfg.vocab_size)
    # 16 length-sorted batches make one pool (see length_bucketed_batches): enough problems for a few pools
    train = generate_problems(max(64 * cfg.batch_size, 2000), seed=cfg.seed, split="train")
    out: dict[str, float] = {}
    for name, style, steps_field, lr_field in STAGES:
        examples = encode_examples(tokenizer, train, style, cfg.seed)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(model_config(cfg, tokenizer))
        # train_lm draws the same batches on every call, so the timed steps cover the same lengths at every thread count
        short = replace(cfg, warmup_steps=1)
        train_lm(model, examples, warmup, getattr(cfg, lr_field), short, tokenizer.pad_token_id, f"{name} warm-up")
        start = time.perf_counter()
        train_lm(model, examples, steps, getattr(cfg, lr_field), short, tokenizer.pad_token_id, f"{name} ({threads} threads)")
        out[name] = (time.perf_counter() - start) / steps * getattr(cfg, steps_field)
    if pair:
        problems = load_benchmark("tiny", split="test", limit=eval_n, seed=cfg.seed)
        start = time.perf_counter()
        for model_dir in ("reference", "aligned"):
            evaluate(os.path.join(os.path.expanduser(pair), model_dir), problems)
        out["evaluation"] = (time.perf_counter() - start) * cfg.n_eval / eval_n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts, the first is the baseline")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--pair", help="a built tiny pair (THINKCTL_HOME/tiny) to time the held-out evaluation on")
    p.add_argument("--eval-n", type=int, default=64, dest="eval_n", help="held-out problems timed per model")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(time_stages(args.worker, args.steps, args.warmup, args.pair, args.eval_n)))
        return
    if args.steps < 1 or args.warmup < 0 or args.eval_n < 1 or min(args.threads) < 1:
        p.error("--steps, --eval-n and --threads must be positive and --warmup non-negative")
    if args.pair and not os.path.isdir(os.path.join(os.path.expanduser(args.pair), "reference")):
        p.error(f"--pair {args.pair}: no reference/ there; build one with `thinkctl tiny build`")
    load = os.getloadavg()[0]
    print(f"cores {os.cpu_count()}, load average {load:.2f} at start{' (other jobs: figures are slower than idle)' if load > 0.5 else ''}")
    results = {}
    for threads in args.threads:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"the {threads}-thread run failed:\n{out.stderr[-3000:]}")
        results[threads] = json.loads(out.stdout.strip().splitlines()[-1])
    parts = list(results[args.threads[0]])
    base = args.threads[0]
    print(f"extrapolated minutes of a full build (mean of {args.steps} steps per stage after {args.warmup} warm-up"
          + (f"; evaluation timed on {args.eval_n} problems)" if args.pair else "; evaluation not timed: no --pair)"))
    print(f"{'threads':<9}" + "".join(f"{name:>12}" for name in parts) + f"{'total':>10}{'speed-up':>10}")
    for threads, r in results.items():
        total, base_total = sum(r.values()), sum(results[base].values())
        print(f"{threads:<9}" + "".join(f"{r[name] / 60:>12.1f}" for name in parts) + f"{total / 60:>10.1f}{base_total / total:>9.2f}×")


if __name__ == "__main__":
    main()
