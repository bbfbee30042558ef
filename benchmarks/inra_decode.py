"""InRa decoding cost: dual path (separate and batched) vs the plain model vs two-model fusion.

Every variant decodes the same batch of random prompts for exactly ``--new-tokens`` steps (no stop token)
through :func:`thinkctl.decoding.fused_generate`:

* ``plain``: the base model alone (λ = 0, one stream);
* ``two-model``: base + a second full model (a copy of the base with a perturbed layer) fused at λ;
* ``inra``: one base + adapter, the two paths as separate streams (original layers run twice);
* ``inra-batched``: the two paths share ONE pass over the original layers per step (2B rows).

Each measurement runs in its own process so peak memory is its own: peak RSS on CPU (minus the RSS
before the models were built), ``torch.cuda.max_memory_allocated`` on CUDA. Rounds interleave the
variants (plain, two-model, inra, inra-batched, plain, …) and the median per variant is reported, so
load from other processes on a shared machine hits every variant alike. Results print as ratios to
``plain`` and to ``two-model``. Not a test: numbers depend on the machine.

    python benchmarks/inra_decode.py                      # random Qwen2, CPU
    python benchmarks/inra_decode.py --model /path/to/qwen2 --device cuda --batch 8 --new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

VARIANTS = ("plain", "two-model", "inra", "inra-batched")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(args: argparse.Namespace):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinkctl.models import load_causal_lm

    if args.model:
        return load_causal_lm(args.model, args.dtype, args.device)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(args.hidden // 256, 1), head_dim=64, intermediate_size=args.hidden * 3,
        max_position_embeddings=4096, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).to(dtype=getattr(torch, args.dtype), device=args.device).eval()


def _run(variant: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import copy

    import torch

    from thinkctl.decoding import fused_generate
    from thinkctl.inra import InRaModel
    from thinkctl.sampling import SamplingConfig

    torch.set_num_threads(args.threads)
    baseline = _rss_mb()
    base = _build(args)
    lam = 0.0 if variant == "plain" else args.lam
    if variant == "plain":
        streams = (base, None)
    elif variant == "two-model":
        aligned = copy.deepcopy(base)
        with torch.no_grad():
            aligned.model.layers[-1].mlp.down_proj.weight.mul_(1.1)
        streams = (base, aligned)
    else:
        inra = InRaModel.from_base(base)
        with torch.no_grad():
            for p in inra.adapter_parameters():
                p.add_(torch.randn_like(p) * 0.01)
        streams = inra.batched_streams() if variant == "inra-batched" else (inra.original_stream(), inra.adapter_stream())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.prompt_len), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens)
    cuda = args.device.startswith("cuda")

    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fused_generate(streams[0], streams[1], ids, mask, lam, sampling, [])
        if cuda:
            torch.cuda.synchronize()
        assert all(len(t) == args.new_tokens for t in out.token_ids)
        return time.perf_counter() - t0

    once()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = once()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb() - baseline
    queue.put({"seconds": seconds, "peak_mb": peak})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a Qwen2/Llama checkpoint; default: a random Qwen2 of the sizes below")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32, dest="prompt_len")
    p.add_argument("--new-tokens", type=int, default=64, dest="new_tokens")
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            queue = ctx.Queue()
            proc = ctx.Process(target=_run, args=(variant, args, queue))
            proc.start()
            runs[variant].append(queue.get())
            proc.join()
    results = {
        v: {"seconds": statistics.median(r["seconds"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs),
            "all_seconds": [r["seconds"] for r in rs]}
        for v, rs in runs.items()
    }
    plain, two = results["plain"], results["two-model"]
    tokens = args.batch * args.new_tokens
    print(f"device={args.device} dtype={args.dtype} batch={args.batch} prompt={args.prompt_len} new_tokens={args.new_tokens} "
          f"λ={args.lam} model={args.model or f'random qwen2 h{args.hidden} L{args.layers} V{args.vocab}'}")
    print(f"{'variant':<14}{'s':>8}{'tok/s':>9}{'×plain':>8}{'two/this':>10}{'peak MB':>9}{'mem×plain':>10}{'mem two/this':>13}")
    for variant, r in results.items():
        print(f"{variant:<14}{r['seconds']:>8.3f}{tokens / r['seconds']:>9.1f}{r['seconds'] / plain['seconds']:>8.2f}"
              f"{two['seconds'] / r['seconds']:>10.2f}{r['peak_mb']:>9.1f}{r['peak_mb'] / plain['peak_mb']:>10.2f}"
              f"{two['peak_mb'] / r['peak_mb']:>13.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
