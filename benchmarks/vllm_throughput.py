"""Rollout throughput: vLLM vs the transformers backend, and InRa-in-vLLM vs plain vs two-model fusion.

    python benchmarks/vllm_throughput.py                       # the tiny default pair (built if missing)
    python benchmarks/vllm_throughput.py --reference R --aligned A --prompts 64 --max-new-tokens 256

One run, one machine: every configuration decodes the same prompts (greedy, batch = all prompts,
``--prompts`` ≥ 16) after one warm-up call, engines started one at a time. Printed: generated tokens/s
per configuration and the ratios that matter: vLLM over transformers (plain model, fused pair), and
InRa-in-vLLM against the plain model and against two-model fusion in vLLM. Greedy continuations stop
at EOS, so the token counts of configurations differ; tokens/s is generated tokens over wall time.
The InRa checkpoint is an identity adapter over the reference (weights do not change the cost).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from thinkctl.data import load_benchmark, render_prompt
from thinkctl.models import load_tokenizer
from thinkctl.rollout.base import RolloutBackend
from thinkctl.sampling import SamplingConfig


def _inra_checkpoint(reference: str, out: Path) -> str:
    from thinkctl.inra import InRaModel, save_inra
    from thinkctl.models import load_causal_lm

    model = InRaModel.from_base(load_causal_lm(reference), base_name_or_path=str(Path(reference).resolve()))
    return str(save_inra(model, out, tokenizer=load_tokenizer(reference)))


def measure(make: Callable[[], RolloutBackend], prompts: list[str], lam: float, sampling: SamplingConfig) -> dict:
    """Tokens/s of one backend: build it, warm up on a slice, then time one call over every prompt."""
    backend = make()
    try:
        backend.generate(prompts[:2], lam, SamplingConfig(max_new_tokens=4))
        start = time.perf_counter()
        out = backend.generate(prompts, lam, sampling)
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    tokens = sum(c.num_tokens for c in out)
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="reference model dir (default: the tiny pair)")
    parser.add_argument("--aligned", help="aligned model dir (default: the tiny pair)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128, dest="max_new_tokens")
    parser.add_argument("--lam", type=float, default=0.5, help="λ for the dual-stream configurations")
    parser.add_argument("--skip-hf", action="store_true", help="vLLM configurations only")
    args = parser.parse_args(argv)
    if args.prompts < 16:
        parser.error("--prompts must be at least 16 (the comparison is about batched rollouts)")

    from thinkctl.rollout.hf import HFBackend
    from thinkctl.rollout.vllm import VLLMBackend

    if args.reference is None:
        from thinkctl.tiny import build_tiny_pair

        pair = build_tiny_pair()
        args.reference, args.aligned = str(pair.reference), str(pair.aligned)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    ref, al, lam, n = args.reference, args.aligned, args.lam, args.prompts
    with tempfile.TemporaryDirectory() as tmp:
        inra = _inra_checkpoint(ref, Path(tmp) / "inra")
        prompts = [render_prompt(load_tokenizer(ref), p.question) for p in load_benchmark("tiny", limit=n)]
        if len(prompts) < n:
            prompts = (prompts * (n // len(prompts) + 1))[:n]
        configs: dict[str, tuple[Callable[[], RolloutBackend], float]] = {
            "vllm plain": (lambda: VLLMBackend(ref, progress=False, max_num_seqs=n), 0.0),
            "vllm fused pair": (lambda: VLLMBackend(ref, al, progress=False, max_num_seqs=n), lam),
            "vllm InRa": (lambda: VLLMBackend(inra, progress=False, max_num_seqs=n), lam),
        }
        if not args.skip_hf:
            configs["hf plain"] = (lambda: HFBackend.from_paths(ref, batch_size=n), 0.0)
            configs["hf fused pair"] = (lambda: HFBackend.from_paths(ref, al, batch_size=n), lam)
        results = {name: measure(make, prompts, x, sampling) for name, (make, x) in configs.items()}

    print(f"\n{n} prompts, ≤{args.max_new_tokens} new tokens, greedy; λ={lam} for fused/InRa")
    print(f"{'configuration':<18}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}")
    for name, r in results.items():
        print(f"{name:<18}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tok_s']:>11.1f}")
    ratios = [("vllm plain / hf plain", "vllm plain", "hf plain"),
              ("vllm fused / hf fused", "vllm fused pair", "hf fused pair"),
              ("vllm InRa / vllm plain", "vllm InRa", "vllm plain"),
              ("vllm InRa / vllm fused", "vllm InRa", "vllm fused pair")]
    print()
    for label, a, b in ratios:
        if a in results and b in results:
            print(f"{label:<26}{results[a]['tok_s'] / results[b]['tok_s']:>6.2f}x")


if __name__ == "__main__":
    main()
