"""Time and peak memory of one optimizer step on the Trainer: plain SFT, TrRa and InRa SFT, side by side.

All three train a random Qwen2 of the same size on the same batches through ``transformers.Trainer``:

* ``sft``   full fine-tuning with the causal-LM loss (the baseline a user knows);
* ``trra``  full fine-tuning of a student towards two frozen teachers with the chunked fused KD
  (:class:`thinkctl.trra.trainer.TrRaTrainer`): what the two extra forwards and the loss cost;
* ``inra``  one adapter layer trained by SFT in front of the frozen model (:class:`thinkctl.inra.train.InRaTrainer`).

Each variant runs in its own subprocess (peak memory per variant: ``torch.cuda.max_memory_allocated`` on CUDA,
``ru_maxrss`` on CPU); the step time is the median over the steps after ``--warmup``. Ratios are printed
against ``sft`` from one run.

    python benchmarks/train_step.py --device cuda                 # hidden 1536, 28 layers, vocab 151,936, 2 × 1024 tokens
    python benchmarks/train_step.py --device cpu --hidden 128 --layers 2 --vocab 512 --seq 64 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

VARIANTS = ("sft", "trra", "inra")


def _model(args: argparse.Namespace, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=max(args.hidden // 128, 2), num_key_value_heads=2, head_dim=64 if args.hidden < 1024 else 128,
                         intermediate_size=args.hidden * 4, max_position_embeddings=args.seq * 2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).to(getattr(torch, args.dtype))


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """``args.steps`` optimizer steps of ``args.variant``; returns the median step time and peak memory."""
    from transformers import Trainer, TrainerCallback

    from thinkctl.batch import collate
    from thinkctl.config import build
    from thinkctl.inra.model import InRaModel
    from thinkctl.inra.train import InRaTrainConfig, InRaTrainer
    from thinkctl.training import ListDataset
    from thinkctl.trra.trainer import TrRaConfig, TrRaTrainer

    g = torch.Generator().manual_seed(0)
    n_prompt = args.seq // 8
    rows = [(torch.randint(0, args.vocab, (args.seq,), generator=g).tolist(), n_prompt) for _ in range(args.batch * (args.steps + 1))]
    training = {"output_dir": tempfile.mkdtemp(), "max_steps": args.steps, "per_device_train_batch_size": args.batch,
                "learning_rate": 1e-5, "save_steps": 10**6, "logging_steps": 10**6, "bf16": args.dtype == "bfloat16",
                "device": "cpu" if args.device == "cpu" else "cuda"}
    collator = lambda batch: collate(batch, pad_id=0)  # noqa: E731
    common = dict(train_dataset=ListDataset(rows), data_collator=collator)
    if args.variant == "sft":
        cfg = build(TrRaConfig, training)
        trainer = Trainer(model=_model(args, 0), args=cfg.training_arguments(), **common)
    elif args.variant == "trra":
        cfg = build(TrRaConfig, {**training, "chunk_size": args.chunk_size, "lambda_": 0.5})
        trainer = TrRaTrainer(model=_model(args, 0), args=cfg.training_arguments(), reference=_model(args, 0), aligned=_model(args, 1),
                              trra=cfg, **common)
    else:
        cfg = build(InRaTrainConfig, {**training, "base": "random", "method": "sft", "teacher": "unused"})
        model = InRaModel.from_base(_model(args, 0).requires_grad_(False), base_name_or_path="random")
        trainer = InRaTrainer(model=model, args=cfg.training.training_arguments(), inra=cfg, **common)

    cuda = args.device.startswith("cuda")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    trainer.add_callback(Clock())
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(times[args.warmup:] or times), "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    p.add_argument("--chunk-size", type=int, default=1024, dest="chunk_size")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["sft"]
    print(f"device={args.device} dtype={args.dtype} random qwen2 h{args.hidden} L{args.layers} V{args.vocab}, "
          f"batch {args.batch} × {args.seq} tokens, median of steps {args.warmup + 1}..{args.steps}")
    print(f"{'variant':<8}{'s/step':>10}{'×sft':>8}{'peak MiB':>11}{'mem×sft':>9}")
    for variant, r in results.items():
        print(f"{variant:<8}{r['seconds']:>10.3f}{r['seconds'] / base['seconds']:>8.2f}{r['peak_mb']:>11.0f}{r['peak_mb'] / base['peak_mb']:>9.2f}")


if __name__ == "__main__":
    main()
