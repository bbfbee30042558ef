"""Build the tiny default pair on CPU: tokenizer, reference (long thinker), aligned (short thinker).

Three stages, each saved as a checkpoint directory:

1. ``solver/``: trained from scratch on careful traces, some verified once by restating the last
   equation (:func:`~thinkctl.tiny.task.solver_trace`): the copying and one-step arithmetic everything
   else relies on, learnt before any style preference is;
2. ``reference/``: the solver fine-tuned on reference traces (careful steps, then 0–3 checks);
3. ``aligned/``: the reference fine-tuned on aligned traces (mostly the fast pass, never checks), the
   way real aligned models are fine-tunes of their reference; sharing that ancestry keeps fused
   decoding coherent at intermediate λ. How well it fetches operands without restating them is what
   a model of this size can do, not something the data scripts.

All are ``Qwen2ForCausalLM`` with head_dim 64 (vLLM's CPU attention rejects smaller heads) saved with
``save_pretrained`` next to the tokenizer, so every loader in thinkctl (and vLLM) treats them as
ordinary checkpoints. The build is deterministic in its seed. Each stage records a digest of the
settings it depends on (its own and its parents'), so a rerun skips finished stages, resumes after an
interruption at stage granularity, and retrains only what a config change affects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from thinkctl.batch import collate
from thinkctl.data import Problem, load_benchmark, render_prompt
from thinkctl.io import atomic_write_json
from thinkctl.tiny.task import (
    CHECK_VERSION,
    FAST_VERSION,
    TASK_VERSION,
    TinyProblem,
    generate_problems,
    long_trace,
    short_trace,
    solver_trace,
)
from thinkctl.tiny.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

MARKER = "thinkctl_build.json"


@dataclass(frozen=True)
class TinyBuildConfig:
    """Sizes and schedule of the tiny pair; the defaults build in 13–15 minutes on 2 CPU cores (``benchmarks/tiny_build_time.py``)."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 192
    num_layers: int = 4
    intermediate_size: int = 576
    n_train: int = 20000
    batch_size: int = 32
    warmup_steps: int = 40
    solve_steps: int = 1000
    solve_lr: float = 2e-3
    style_steps: int = 400  # 200 left the checks' answer copy and level 5 to the build (seeds 1, 2: λ 0 96.0, 95.7%)
    style_lr: float = 5e-4
    aligned_steps: int = 400
    aligned_lr: float = 7e-4
    n_eval: int = 300

    def digest(self, stage: str = "aligned") -> str:
        """Digest of the settings that determine ``stage`` ("solver", "reference" or "aligned")."""
        fields = {**asdict(self), "task_version": TASK_VERSION, "check_version": CHECK_VERSION, "fast_version": FAST_VERSION}
        fields.pop("n_eval")
        if stage in ("solver", "reference"):
            for key in ("aligned_steps", "aligned_lr", "fast_version"):
                fields.pop(key)
        if stage == "solver":
            for key in ("style_steps", "style_lr", "check_version"):
                fields.pop(key)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TinyPair:
    """Where a built pair lives (``solver`` is the intermediate stage the reference starts from)."""

    root: Path
    reference: Path
    aligned: Path

    @property
    def solver(self) -> Path:
        return self.root / "solver"


def default_tiny_dir() -> Path:
    """``$THINKCTL_HOME/tiny``, with ``THINKCTL_HOME`` defaulting to ``~/.cache/thinkctl``."""
    return Path(os.environ.get("THINKCTL_HOME", Path.home() / ".cache" / "thinkctl")).expanduser() / "tiny"


def model_config(cfg: TinyBuildConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    heads = cfg.hidden_size // 64
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )


def encode_examples(
    tokenizer: PreTrainedTokenizerFast, problems: list[TinyProblem], style: str, seed: int
) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per problem: chat prompt, then the response in ``style`` and EOS.

    ``style`` is "long" (reference traces), "short" (aligned traces) or "careful" (careful steps,
    sometimes verified once: the solver's curriculum).
    """
    rng = random.Random(seed)
    out = []
    for p in problems:
        prompt = tokenizer(render_prompt(tokenizer, p.question), add_special_tokens=False)["input_ids"]
        if style == "careful":
            response = solver_trace(p, rng)
        else:
            response = long_trace(p, rng) if style == "long" else short_trace(p, rng)
        ids = prompt + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((ids, len(prompt)))
    return out


def length_bucketed_batches(n_examples: int, lengths: list[int], batch_size: int, rng: random.Random):
    """Endless batches of example indices, each drawn from a pool of 16 batches sorted by length.

    Levels 1–5 make sequences of very different lengths; random batches would pad most rows to the
    longest, wasting about half the compute on padding. Pools keep batches random across the data
    while each batch holds similar lengths.
    """
    pool = 16 * batch_size
    while True:
        order = rng.sample(range(n_examples), n_examples)
        for start in range(0, n_examples - pool + 1, pool):
            chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
            batches = [chunk[i : i + batch_size] for i in range(0, pool, batch_size)]
            rng.shuffle(batches)
            yield from batches


def train_lm(
    model: Qwen2ForCausalLM,
    examples: list[tuple[list[int], int]],
    steps: int,
    lr: float,
    cfg: TinyBuildConfig,
    pad_id: int,
    desc: str,
) -> list[float]:
    """AdamW with linear warmup and cosine decay on response tokens; returns the loss curve."""
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = min(cfg.warmup_steps, max(steps // 5, 1))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(steps - warmup, 1))),
    )
    model.train()
    losses = []
    batches = length_bucketed_batches(len(examples), [len(ids) for ids, _ in examples], cfg.batch_size, rng)
    bar = tqdm(range(steps), desc=desc, unit="step")
    for _ in bar:
        batch = collate([examples[i] for i in next(batches)], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def _is_built(path: Path, digest: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("config_digest") == digest


def _save(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path, info: dict) -> None:
    """Save weights and tokenizer, then the marker last: a directory without a marker is unfinished."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    atomic_write_json(path / MARKER, info)


def evaluate(path: Path, problems: list[Problem]) -> dict:
    """Greedy accuracy and mean thinking tokens of a saved model on held-out problems, overall and per
    level (the real stack: thinkctl's own sweep and grading)."""
    from thinkctl.records import aggregate, load_records
    from thinkctl.rollout.hf import HFBackend
    from thinkctl.sampling import SamplingConfig
    from thinkctl.sweep import run_sweep

    backend = HFBackend.from_paths(str(path), batch_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_sweep(backend, problems, [0.0], SamplingConfig(max_new_tokens=512), tmp, benchmark="tiny", summarize=False)
        records = load_records([results])
    keys = ("n", "accuracy", "mean_thinking_tokens")

    def stats(row: dict) -> dict:
        return {k: int(row[k]) if k == "n" else float(row[k]) for k in keys}

    overall = stats(aggregate(records, ["benchmark"]).iloc[0])
    by_level = {int(row["level"]): stats(row) for row in aggregate(records, ["level"]).to_dict("records")}
    return {**overall, "by_level": by_level}


def build_tiny_pair(out_dir: str | Path | None = None, config: TinyBuildConfig | None = None, force: bool = False) -> TinyPair:
    """Build (or reuse) the tiny pair under ``out_dir``; see the module docstring."""
    cfg = config or TinyBuildConfig()
    root = Path(out_dir) if out_dir is not None else default_tiny_dir()
    pair = TinyPair(root, root / "reference", root / "aligned")
    stages = [
        # (name, directory, parent directory or None, traces, steps, lr, progress label)
        ("solver", pair.solver, None, "careful", cfg.solve_steps, cfg.solve_lr, "1/3 solver (careful steps, from scratch)"),
        ("reference", pair.reference, pair.solver, "long", cfg.style_steps, cfg.style_lr, "2/3 reference (long traces)"),
        ("aligned", pair.aligned, pair.reference, "short", cfg.aligned_steps, cfg.aligned_lr, "3/3 aligned (fast traces)"),
    ]
    if not force and all(_is_built(path, cfg.digest(name)) for name, path, *_ in stages) and (root / "build_info.json").is_file():
        log.info("tiny pair already built at %s", root)
        return pair
    # the tokenizer is part of the task, like a real model's: its corpus is fixed (seed 0) whatever the build's seed,
    # so seeds vary the training run (data order, initialisation, problems), never the token ids
    tokenizer = build_tokenizer(cfg.vocab_size)
    train: list[TinyProblem] = []
    retrain = force  # once a stage is retrained, every later stage starts from new weights
    for offset, (name, path, parent, style, steps, lr, label) in enumerate(stages):
        if not retrain and _is_built(path, cfg.digest(name)):
            continue
        retrain = True
        train = train or generate_problems(cfg.n_train, seed=cfg.seed, split="train")
        start = time.time()
        torch.manual_seed(cfg.seed + offset)
        model = Qwen2ForCausalLM.from_pretrained(parent) if parent else Qwen2ForCausalLM(model_config(cfg, tokenizer))
        losses = train_lm(model, encode_examples(tokenizer, train, style, cfg.seed), steps, lr, cfg, tokenizer.pad_token_id, label)
        info = {"config": asdict(cfg), "config_digest": cfg.digest(name), "final_loss": losses[-1], "train_seconds": time.time() - start}
        _save(model, tokenizer, path, info)

    held_out = load_benchmark("tiny", split="test", limit=cfg.n_eval, seed=cfg.seed) if cfg.n_eval else []
    # the kernels a build trains with (threads, vector ISA) decide its floating-point path: recorded to tell builds apart
    summary: dict = {"config": asdict(cfg), "config_digest": cfg.digest(), "torch_threads": torch.get_num_threads(),
                     "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, path in (("solver", pair.solver), ("reference", pair.reference), ("aligned", pair.aligned)):
        summary[name] = json.loads((path / MARKER).read_text())
        summary[name].pop("config", None)
        if held_out and name != "solver":
            summary[name]["held_out"] = evaluate(path, held_out)
            log.info("%s: %s", name, summary[name]["held_out"])
    atomic_write_json(root / "build_info.json", summary)
    return pair
