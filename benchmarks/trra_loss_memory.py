"""Peak memory and time of the TrRa loss: chunked (hidden states + lm_head, one chunk of logits alive)
against naive (full ``batch×seq×vocab`` logits of student, reference and aligned), forward + backward.

Each variant runs in its own subprocess so peak host RSS is measured per variant (``ru_maxrss``);
on CUDA, ``torch.cuda.max_memory_allocated`` is used instead. Reported "peak" is above the inputs
(hidden states and the three lm_head weights, which both variants need), plus the total.

    python benchmarks/trra_loss_memory.py                      # batch 2 × seq 512 × hidden 1536, vocab 151,936
    python benchmarks/trra_loss_memory.py --seq 256 --device cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """One forward + backward of ``args.variant``; returns peak memory (MiB) and seconds."""
    from thinkctl.losses import chunked_fused_kd_loss, fused_kd_loss

    device = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    b, t, h, v = args.batch, args.seq, args.hidden, args.vocab
    hidden = [(torch.randn(b, t, h, generator=g) * 0.5).to(device) for _ in range(3)]
    heads = [(torch.randn(v, h, generator=g) * h**-0.5).to(device) for _ in range(3)]
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, : t // 8] = False  # a prompt
    h_s, w_s = hidden[0].requires_grad_(), heads[0].requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _current_rss_mib()
    start = time.perf_counter()
    if args.variant == "naive":
        with torch.no_grad():
            z_r, z_a = hidden[1] @ heads[1].T, hidden[2] @ heads[2].T
        loss = fused_kd_loss(h_s @ w_s.T, z_r, z_a, mask, args.lam)
    else:
        loss = chunked_fused_kd_loss(h_s, hidden[1], hidden[2], w_s, heads[1], heads[2], mask, args.lam, chunk_size=args.chunk_size)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mib()
    return {"seconds": time.perf_counter() - start, "peak_mib": peak, "inputs_mib": base, "loss": loss.item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--chunk-size", type=int, default=256, dest="chunk_size")
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("chunked", "naive"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("batch", "seq", "hidden", "vocab", "chunk_size", "lam", "device")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{variant} failed (rc {out.returncode}; out of memory?):\n{out.stderr[-2000:]}", file=sys.stderr)
            sys.exit(1)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    kind = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"TrRa loss fwd+bwd, batch {args.batch} × seq {args.seq} × hidden {args.hidden}, vocab {args.vocab:,}, "
          f"chunk {args.chunk_size}, {args.device} ({kind}, MiB)")
    print(f"{'variant':<10}{'peak':>10}{'above inputs':>14}{'seconds':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['peak_mib']:>10.0f}{r['peak_mib'] - r['inputs_mib']:>14.0f}{r['seconds']:>10.2f}")
    n, c = results["naive"], results["chunked"]
    print(f"naive / chunked: peak ×{n['peak_mib'] / c['peak_mib']:.2f}, above inputs ×"
          f"{(n['peak_mib'] - n['inputs_mib']) / max(c['peak_mib'] - c['inputs_mib'], 1):.2f}, time ×{n['seconds'] / c['seconds']:.2f}; "
          f"|Δloss| = {abs(n['loss'] - c['loss']):.2e}")


if __name__ == "__main__":
    main()
