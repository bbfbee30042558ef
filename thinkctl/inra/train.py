"""Training the InRa adapter: DPO towards shorter correct thinking, or TrRa-style fused distillation.

Only the adapter layers train; the base is frozen, so the DPO reference (the model without the
adapter) is the original path of the same network and no second copy of the weights is held. Its
sequence log-probs never change during training, so they are computed once when the data is built.

* ``method="dpo"``: preference pairs from sampled rollouts of the base model graded with
  :mod:`thinkctl.grading` (see :func:`thinkctl.inra.pairs.preference_pair`), trained with TRL's sigmoid
  DPO loss on the adapter path. TRL 1.16 keeps that loss inline in ``DPOTrainer._compute_loss`` and
  its trainer needs a ``PreTrainedModel`` whose forward takes ``fused_lm_head`` and a separate or PEFT
  reference, none of which fits a frozen-base dual-path module; the loss is restated in
  :func:`dpo_loss` (tested against a float64 reference) and TRL's ``selective_log_softmax`` computes
  the per-token log-probs.
* ``method="distill"``: the adapter path is distilled towards the fused teacher
  ``fuse(z_teacher, z_base, teacher_lambda)`` with TrRa's loss (:func:`thinkctl.losses.fused_kd_loss`,
  the logits form: both paths' logits are computed here anyway; ``divergence``: forward_kl |
  reverse_kl | jsd), on sequences decoded from the fused pair at ``rollout_lambdas`` (covering the
  states the dial visits).

Runs checkpoint every ``save_steps`` (adapter + optimizer + scheduler + step) and resume from the
latest checkpoint in ``output_dir``; the rollouts are cached in ``output_dir/rollouts.jsonl``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from trl.trainer.utils import selective_log_softmax

from thinkctl.batch import IGNORE_INDEX, Example, collate, encode, positions
from thinkctl.config import group, lambda_grid_option, lambda_option, option
from thinkctl.data import load_benchmark
from thinkctl.errors import ConfigError
from thinkctl.inra.checkpoint import load_adapter_weights, save_inra
from thinkctl.inra.model import InRaModel
from thinkctl.inra.pairs import Rollout, collect_rollouts, load_rollouts, preference_pair, save_rollouts
from thinkctl.io import atomic_write_json
from thinkctl.losses import divergence_option, fused_kd_loss, jsd_beta_option, validate_divergence
from thinkctl.models import load_causal_lm, load_tokenizer
from thinkctl.rollout.hf import HFBackend
from thinkctl.sampling import SamplingConfig

log = logging.getLogger(__name__)

METHODS = ("dpo", "distill")
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"


@dataclass
class InRaTrainConfig:
    """The ``inra:`` section of a recipe; names follow ``transformers.TrainingArguments`` where they overlap.

    Training rollouts are sampled with ``rollout`` (recipe keys ``rollout_max_new_tokens``,
    ``rollout_temperature``, ``rollout_top_p``, ``rollout_seed``).
    """

    base: str = option("", "base (reference) model the adapter is added to: hub name or path")
    output_dir: str = option("runs/inra", "run directory; the checkpoint lands in OUTPUT_DIR/final")
    method: str = option("distill", "distill (towards the fused teacher) or dpo (shorter correct thinking)", choices=METHODS)
    teacher: str | None = option(None, "aligned model the fused distillation target uses")
    teacher_lambda: float = lambda_option(1.0, "λ of the fused distillation target")
    divergence: str = divergence_option(renamed_from=("loss_kind",))
    jsd_beta: float = jsd_beta_option()
    beta: float = option(0.1, "DPO β (strength of the preference against the frozen base)")
    num_adapter_layers: int = option(1, "identity-initialised adapter layers in front of the base's layers")
    benchmark: str = option("tiny", "benchmark whose problems the rollouts answer")
    split: str | None = option("train", "its split")
    limit: int | None = option(256, "problems to roll out on")
    rollout_lambdas: list[float] = lambda_grid_option((0.0, 0.5, 1.0), "λ values the distillation rollouts are decoded at")
    rollout_samples: int = option(1, "rollouts per problem and λ (DPO needs ≥ 2)")
    rollout: SamplingConfig = group(SamplingConfig, prefix="rollout_")
    rollout_batch_size: int = option(32, "prompts generated together in the rollouts")
    max_length: int = option(384, "prompt + response tokens kept per training sequence")
    learning_rate: float = option(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(10, "linear warmup steps")
    max_steps: int = option(200, "optimizer steps")
    per_device_train_batch_size: int = option(8, "sequences (DPO: pairs) per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    logging_steps: int = option(10, "log the loss every this many steps")
    save_steps: int = option(50, "checkpoint every this many steps (resumable after a kill)")
    seed: int = option(0, "training seed (problems, data order)")
    dtype: str = option("float32", "model precision", choices=("float32", "bfloat16", "float16"))
    device: str = option("cpu", "training device: cpu, cuda, …")

    def __post_init__(self) -> None:
        if not self.base:
            raise ConfigError("inra: `base` (the model to add the adapter to) is required")
        if self.method not in METHODS:
            raise ConfigError(f"inra: method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "distill" and not self.teacher:
            raise ConfigError("inra: method 'distill' needs `teacher` (the aligned model the fused target uses)")
        validate_divergence(self.divergence, self.jsd_beta)
        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "num_adapter_layers", "rollout_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"inra: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.method == "dpo" and self.rollout_samples < 2:
            raise ConfigError("inra: DPO needs rollout_samples ≥ 2 (pairs come from several samples per prompt)")


# --- pure loss pieces ------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over completion tokens, per row (logits at t predict the token at t+1)."""
    per_token = selective_log_softmax(logits[:, :-1].float(), input_ids[:, 1:])
    return (per_token * completion_mask[:, 1:]).sum(dim=-1)


def _completion_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 on response tokens, 0 on prompt and padding (the collated labels' non-ignored positions)."""
    return (batch["labels"] != IGNORE_INDEX).long()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair sigmoid DPO loss ``−log σ(β·[(π_c − ref_c) − (π_r − ref_r)])`` (TRL's ``loss_type="sigmoid"``)."""
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * delta)


# --- data ------------------------------------------------------------------------------------------------


def encode_rollout(tokenizer: Any, rollout: Rollout, max_length: int) -> Example:
    """Prompt + response token ids (truncated to ``max_length``) and the prompt length."""
    return encode(tokenizer, rollout.prompt, rollout.token_ids, max_length)


def _inputs(rows: list[Example], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """A collated batch on ``device``."""
    return {k: v.to(device) for k, v in collate(rows, pad_id).items()}


def build_rollouts(cfg: InRaTrainConfig, base: Any, teacher: Any, tokenizer: Any, path: Path) -> list[list[Rollout]]:
    """Rollouts for training, generated once and cached at ``path``.

    DPO samples the base model alone (λ = 0); distillation decodes the fused base/teacher pair at
    each of ``rollout_lambdas`` so the adapter learns on the states it will see across the dial.
    """
    if path.is_file():
        log.info("reusing rollouts from %s", path)
        return load_rollouts(path)
    problems = load_benchmark(cfg.benchmark, cfg.split, cfg.limit, cfg.seed)
    backend = HFBackend(base, teacher, tokenizer, batch_size=cfg.rollout_batch_size, device=cfg.device)
    lambdas = [0.0] if cfg.method == "dpo" else cfg.rollout_lambdas
    groups = collect_rollouts(backend, problems, lambdas, cfg.rollout_samples, cfg.rollout, tokenizer)
    save_rollouts(path, groups)
    return groups


# --- the loop ------------------------------------------------------------------------------------------------


class _Examples:
    """Training examples as encoded rows: pairs (chosen, rejected, ref logps) for DPO, sequences for distill."""

    def __init__(self, cfg: InRaTrainConfig, model: InRaModel, tokenizer: Any, groups: list[list[Rollout]]) -> None:
        self.cfg = cfg
        self.pad_id = tokenizer.pad_token_id
        if cfg.method == "dpo":
            pairs = [p for p in (preference_pair(g) for g in groups) if p is not None]
            if not pairs:
                raise ConfigError("inra: the rollouts gave no preference pairs (no prompt had a correct answer to prefer)")
            self.rows = [(encode_rollout(tokenizer, c, cfg.max_length), encode_rollout(tokenizer, r, cfg.max_length)) for c, r in pairs]
            self.ref_logps = self._reference_logps(model)
            log.info("DPO: %d preference pairs from %d prompts", len(self.rows), len(groups))
        else:
            self.rows = [encode_rollout(tokenizer, r, cfg.max_length) for g in groups for r in g]
            log.info("distill: %d sequences", len(self.rows))

    @torch.no_grad()
    def _reference_logps(self, model: InRaModel) -> torch.Tensor:
        """Original-path log-probs of every chosen and rejected response: (n_pairs, 2), computed once."""
        out = []
        bs = self.cfg.per_device_train_batch_size
        for start in range(0, len(self.rows), bs):
            batch = self.rows[start : start + bs]
            inputs = _inputs([c for c, _ in batch] + [r for _, r in batch], self.pad_id, self.cfg.device)
            logits = model.path_logits(inputs["input_ids"], inputs["attention_mask"], ("original",))["original"]
            logps = sequence_logps(logits, inputs["input_ids"], _completion_mask(inputs))
            out.append(torch.stack(logps.chunk(2), dim=-1))
        return torch.cat(out).cpu()

    def __len__(self) -> int:
        return len(self.rows)

    def order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.rows)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(idx)
        return idx

    def batch(self, step: int) -> list[int]:
        """The example indices of micro-batch number ``step`` (deterministic, so resume needs no state)."""
        bs = self.cfg.per_device_train_batch_size
        per_epoch = max(len(self.rows) // bs, 1)
        epoch, k = divmod(step, per_epoch)
        order = self.order(epoch)
        return order[k * bs : (k + 1) * bs] or order[:bs]


def compute_loss(
    model: InRaModel, examples: _Examples, idx: list[int], teacher: Any, cfg: InRaTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch and a few numbers worth logging."""
    if cfg.method == "dpo":
        rows = [examples.rows[i] for i in idx]
        inputs = _inputs([c for c, _ in rows] + [r for _, r in rows], examples.pad_id, cfg.device)
        logits = model.path_logits(inputs["input_ids"], inputs["attention_mask"], ("adapter",))["adapter"]
        chosen, rejected = sequence_logps(logits, inputs["input_ids"], _completion_mask(inputs)).chunk(2)
        ref = examples.ref_logps[idx].to(chosen.device)
        losses = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.beta)
        margin = ((chosen - ref[:, 0]) - (rejected - ref[:, 1])).mean().item() * cfg.beta
        return losses.mean(), {"reward_margin": margin}
    inputs = _inputs([examples.rows[i] for i in idx], examples.pad_id, cfg.device)
    z = model.path_logits(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        z_teacher = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            position_ids=positions(inputs["attention_mask"])).logits
    mask = _completion_mask(inputs)[:, 1:]
    loss = fused_kd_loss(z["adapter"][:, :-1], z["original"][:, :-1], z_teacher[:, :-1], mask, cfg.teacher_lambda,
                         cfg.divergence, cfg.jsd_beta)
    return loss, {}


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer state was written last)."""
    done = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def _save_checkpoint(model: InRaModel, tokenizer: Any, optimizer: Any, scheduler: Any, step: int, output_dir: Path) -> None:
    path = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    save_inra(model, path, tokenizer=tokenizer)
    tmp = path / (STATE_FILE + ".tmp")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp)
    tmp.replace(path / STATE_FILE)
    for old in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != path and old.name[len(CHECKPOINT_PREFIX) :].isdigit():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


def train_inra(cfg: InRaTrainConfig) -> Path:
    """Train an adapter on ``cfg.base`` and save the final InRa checkpoint to ``cfg.output_dir``.

    Resumes from the latest ``checkpoint-N`` in ``output_dir``; returns the final checkpoint path.
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "train_config.json", asdict(cfg))
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.base)
    base = load_causal_lm(cfg.base, cfg.dtype, cfg.device)
    teacher = load_causal_lm(cfg.teacher, cfg.dtype, cfg.device) if cfg.teacher else None
    model = InRaModel.from_base(base, cfg.num_adapter_layers, default_lambda=1.0, base_name_or_path=cfg.base)

    groups = build_rollouts(cfg, base, teacher if cfg.method == "distill" else None, tokenizer, output_dir / "rollouts.jsonl")
    examples = _Examples(cfg, model, tokenizer, groups)

    params = model.adapter_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    step = 0
    resume = latest_checkpoint(output_dir)
    if resume is not None:
        load_adapter_weights(model, resume)
        state = torch.load(resume / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        log.info("resumed from %s (step %d)", resume, step)

    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"inra {cfg.method}", unit="step")
    running: list[float] = []
    while step < cfg.max_steps:
        optimizer.zero_grad(set_to_none=True)
        extras: dict[str, float] = {}
        for micro in range(cfg.gradient_accumulation_steps):
            loss, extras = compute_loss(model, examples, examples.batch(step * cfg.gradient_accumulation_steps + micro), teacher, cfg)
            (loss / cfg.gradient_accumulation_steps).backward()
            running.append(loss.item())
        if not math.isfinite(running[-1]):
            raise FloatingPointError(f"InRa training loss became {running[-1]} at step {step}; lower learning_rate")
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            mean = sum(running) / len(running)
            bar.set_postfix(loss=f"{mean:.4f}", **{k: f"{v:.3f}" for k, v in extras.items()})
            log.info("step %d loss %.4f lr %.2e %s", step, mean, scheduler.get_last_lr()[0], extras or "")
            running = []
        if step % cfg.save_steps == 0 and step < cfg.max_steps:
            _save_checkpoint(model, tokenizer, optimizer, scheduler, step, output_dir)
    bar.close()
    model.eval()
    final = save_inra(model, output_dir / "final", tokenizer=tokenizer)
    return final
