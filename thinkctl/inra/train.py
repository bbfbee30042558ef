"""Training the InRa adapter on the Hugging Face Trainer: SFT on short traces, fused distillation, or DPO.

Only the adapter layers train; the base is frozen inside the same :class:`InRaModel` (never a second copy),
so only adapter parameters reach the optimizer. Three methods:

* ``method="sft"`` (the paper's): next-token cross-entropy of the adapter path on short traces — an existing
  dataset (``data``, e.g. ``wh-zhu/short_cot_calibration``) or, without one, verified-correct rollouts of the
  aligned ``teacher`` (the tiny pair has no published traces).
* ``method="distill"``: the adapter path is distilled towards the fused teacher
  ``fuse(z_teacher, z_base, teacher_lambda)`` with TrRa's loss (:func:`thinkctl.losses.fused_kd_loss`, the
  logits form: both paths' logits are computed here anyway; ``divergence``: forward_kl | reverse_kl | jsd), on
  sequences decoded from the fused pair at ``rollout_lambdas`` (covering the states the dial visits).
* ``method="dpo"``: preference pairs from sampled rollouts of the base model graded with
  :mod:`thinkctl.grading` (see :func:`thinkctl.inra.pairs.preference_pair`), trained with TRL's sigmoid DPO
  loss on the adapter path. The DPO reference (the model without the adapter) is the original path of the
  same network, run without gradients in the same step (TRL's default, ``precompute_ref_log_probs=False``).
  TRL 1.16 keeps that loss inline in ``DPOTrainer._compute_loss`` and its trainer needs a ``PreTrainedModel``
  whose forward takes ``fused_lm_head`` and a separate or PEFT reference, none of which fits a frozen-base
  dual-path module; the loss is restated in :func:`dpo_loss` (tested against a float64 reference) and TRL's
  ``selective_log_softmax`` computes the per-token log-probs.

The same code runs as one process or under ``accelerate launch`` (DDP, FSDP, ZeRO-3; see
:mod:`thinkctl.training`). Checkpoints are the Trainer's ``checkpoint-N`` (each one an adapter-only InRa
checkpoint plus optimizer, scheduler and RNG state), resumed after a kill with no lost or repeated steps; the
result is the InRa checkpoint ``OUTPUT_DIR/final``. Rollouts are generated once, on the main process, and
cached in ``OUTPUT_DIR/rollouts.jsonl``.
"""

from __future__ import annotations

import functools
import gc
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from transformers import TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import selective_log_softmax

from thinkctl.batch import IGNORE_INDEX, Example, collate, encode, encode_text, positions
from thinkctl.config import group, lambda_grid_option, lambda_option, option
from thinkctl.data import load_benchmark
from thinkctl.errors import ConfigError
from thinkctl.inra.checkpoint import adapter_weights, save_inra
from thinkctl.inra.model import InRaModel
from thinkctl.inra.pairs import Rollout, collect_rollouts, load_rollouts, preference_pair, save_rollouts
from thinkctl.losses import divergence_option, fused_kd_loss, jsd_beta_option, validate_divergence
from thinkctl.models import check_same_vocab, load_causal_lm, load_tokenizer, model_identity
from thinkctl.rollout.hf import HFBackend
from thinkctl.runs import open_staged_run
from thinkctl.sampling import SamplingConfig
from thinkctl.training import (
    FINAL_DIR, ListDataset, SummedLossTrainer, TraceConfig, TrainerConfig, consumed_rows, last_checkpoint, prepare_frozen,
    training_examples,
)

log = logging.getLogger(__name__)

METHODS = ("sft", "distill", "dpo")


@dataclass
class InRaTrainConfig:
    """The ``inra:`` section of a recipe: the Trainer settings (:class:`TrainerConfig`) and the adapter's own.

    Training rollouts are sampled with ``rollout`` (recipe keys ``rollout_max_new_tokens``,
    ``rollout_temperature``, ``rollout_top_p``, ``rollout_seed``).
    """

    base: str = option("", "base (reference) model the adapter is added to: hub name or path")
    method: str = option("distill", "sft (short traces), distill (towards the fused teacher) or dpo (shorter correct thinking)",
                         choices=METHODS)
    teacher: str | None = option(None, "aligned model: the fused distillation target (distill), or whose verified-correct "
                                       "rollouts sft trains on when no trace dataset is given")
    teacher_lambda: float = lambda_option(1.0, "λ of the fused distillation target")
    divergence: str = divergence_option(renamed_from=("loss_kind",))
    jsd_beta: float = jsd_beta_option()
    beta: float = option(0.1, "DPO β (strength of the preference against the frozen base)")
    num_adapter_layers: int = option(1, "identity-initialised adapter layers in front of the base's layers")
    traces: TraceConfig = group(TraceConfig)
    benchmark: str = option("tiny", "benchmark whose problems the rollouts answer")
    split: str | None = option("train", "its split")
    limit: int | None = option(256, "problems to roll out on")
    rollout_lambdas: list[float] = lambda_grid_option((0.0, 0.5, 1.0), "λ values the distillation rollouts are decoded at")
    rollout_samples: int = option(1, "rollouts per problem and λ (DPO needs ≥ 2)")
    rollout: SamplingConfig = group(SamplingConfig, prefix="rollout_")
    rollout_batch_size: int = option(32, "prompts generated together in the rollouts")
    max_length: int = option(384, "prompt + response tokens kept per training sequence")
    dtype: str = option("float32", "model precision", choices=("float32", "bfloat16", "float16"))
    training: TrainerConfig = group(lambda: TrainerConfig(
        output_dir="runs/inra", learning_rate=1e-3, max_steps=200, warmup_ratio=0.05, save_steps=50))

    def __post_init__(self) -> None:
        if not self.base:
            raise ConfigError("inra: `base` (the model to add the adapter to) is required")
        if self.method not in METHODS:
            raise ConfigError(f"inra: method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "distill" and not self.teacher:
            raise ConfigError("inra: method 'distill' needs `teacher` (the aligned model the fused target uses)")
        if self.method == "sft" and not (self.traces.data or self.teacher):
            raise ConfigError("inra: method 'sft' needs a trace dataset (`data`) or a `teacher` whose rollouts to train on")
        validate_divergence(self.divergence, self.jsd_beta)
        for name in ("num_adapter_layers", "rollout_samples", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"inra: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.method == "dpo" and self.rollout_samples < 2:
            raise ConfigError("inra: DPO needs rollout_samples ≥ 2 (pairs come from several samples per prompt)")


# --- pure loss pieces ------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over completion tokens, per row (logits at t predict the token at t+1)."""
    per_token = selective_log_softmax(logits[:, :-1].float(), input_ids[:, 1:])
    return (per_token * completion_mask[:, 1:]).sum(dim=-1)


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


def build_rollouts(cfg: InRaTrainConfig, tokenizer: Any, path: Path, device: str) -> list[list[Rollout]]:
    """Rollouts for training, generated once and cached at ``path``.

    SFT decodes the aligned teacher alone and DPO the base alone (λ = 0 of a one-model backend); distillation
    decodes the fused base/teacher pair at each of ``rollout_lambdas`` so the adapter learns on the states it will
    see across the dial. The generating models are loaded here and freed afterwards.
    """
    if path.is_file():
        log.info("reusing rollouts from %s", path)
        return load_rollouts(path)
    if is_deepspeed_zero3_enabled():
        raise ConfigError("inra: rollouts cannot be generated from ZeRO-3-sharded models; generate them once without "
                          f"ZeRO-3 (they are cached in {path}) or train method sft on a trace dataset")
    problems = load_benchmark(cfg.benchmark, cfg.split, cfg.limit, cfg.training.seed)
    first = cfg.teacher if cfg.method == "sft" else cfg.base
    second = cfg.teacher if cfg.method == "distill" else None
    backend = HFBackend(load_causal_lm(first, cfg.dtype, device), load_causal_lm(second, cfg.dtype, device) if second else None,
                        tokenizer, batch_size=cfg.rollout_batch_size, device=device)
    lambdas = cfg.rollout_lambdas if cfg.method == "distill" else [0.0]
    groups = collect_rollouts(backend, problems, lambdas, cfg.rollout_samples, cfg.rollout, tokenizer)
    del backend
    gc.collect()
    save_rollouts(path, groups)
    return groups


def training_rows(cfg: InRaTrainConfig, tokenizer: Any, groups: list[list[Rollout]]) -> list[Any]:
    """Encoded training rows: sequences (sft, distill) or (chosen, rejected) pairs (dpo)."""

    def enc(r: Rollout) -> Example:
        return encode(tokenizer, r.prompt, r.token_ids, cfg.max_length)

    if cfg.method == "dpo":
        pairs = [p for p in (preference_pair(g) for g in groups) if p is not None]
        if not pairs:
            raise ConfigError("inra: the rollouts gave no preference pairs (no prompt had a correct answer to prefer)")
        log.info("DPO: %d preference pairs from %d prompts", len(pairs), len(groups))
        return [(enc(c), enc(r)) for c, r in pairs]
    if cfg.method == "sft" and cfg.traces.data:
        traces = cfg.traces.load(tokenizer, consumed_rows(cfg.training))
        encoded = (encode_text(tokenizer, t.prompt, t.response, cfg.max_length) for t in traces)
    elif cfg.method == "sft":
        encoded = (enc(r) for g in groups for r in g if r.correct and r.finish_reason == "stop")
    else:
        encoded = (enc(r) for g in groups for r in g)
    rows = training_examples(encoded, cfg.max_length, f"inra {cfg.method}")
    log.info("%s: %d sequences", cfg.method, len(rows))
    return rows


def collate_pairs(pairs: list[tuple[Example, Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of the chosen rows followed by the rejected rows (row i and i + n are a pair)."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


# --- the trainer -----------------------------------------------------------------------------------------


class InRaTrainer(SummedLossTrainer):
    """``Trainer`` over an :class:`InRaModel`: only adapter parameters train, checkpoints are InRa checkpoints."""

    def __init__(self, *args: Any, inra: InRaTrainConfig, teacher: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inra = inra
        self.teacher = prepare_frozen(teacher, self.accelerator) if teacher is not None else None

    def count_items(self, inputs: dict[str, torch.Tensor]) -> int:
        """Response tokens; DPO: pairs."""
        if self.inra.method == "dpo":
            return inputs["input_ids"].shape[0] // 2
        return int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_terms(self, model: InRaModel, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        completion = (labels != IGNORE_INDEX).long()
        if self.inra.method == "sft":
            logits = model.path_logits(input_ids, attention_mask, ("adapter",))["adapter"]
            return -sequence_logps(logits, input_ids, completion).sum(), completion[:, 1:].sum()
        if self.inra.method == "dpo":
            z = model.path_logits(input_ids, attention_mask)  # the original path runs without gradients
            chosen, rejected = sequence_logps(z["adapter"], input_ids, completion).chunk(2)
            ref_chosen, ref_rejected = sequence_logps(z["original"], input_ids, completion).chunk(2)
            losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.inra.beta)
            return losses.sum(), torch.tensor(losses.shape[0])
        z = model.path_logits(input_ids, attention_mask)
        with torch.no_grad():
            z_teacher = self.teacher(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits
        mask = completion[:, 1:]
        total = fused_kd_loss(z["adapter"][:, :-1], z["original"][:, :-1], z_teacher[:, :-1], mask, self.inra.teacher_lambda,
                              self.inra.divergence, self.inra.jsd_beta, reduction="sum")
        return total, mask.sum()

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoints are adapter-only InRa checkpoints (the format vLLM's model reads): the frozen base is never
        rewritten. Under FSDP/ZeRO-3 the Trainer hands over the gathered state dict to take the adapter from."""
        if not self.args.should_save:
            return
        adapter = None if state_dict is None else {k: v for k, v in state_dict.items() if k.startswith("adapter_layers.")}
        save_inra(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir, tokenizer=self.processing_class,
                  adapter_state=adapter)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Resume the adapter of ``checkpoint-N`` (optimizer, scheduler and RNG state are the Trainer's to restore).

        ``set_model_state_dict`` loads full tensors into a plain, DDP or FSDP-sharded model alike.
        """
        unwrapped = self.accelerator.unwrap_model(self.model)
        state = adapter_weights(resume_from_checkpoint, unwrapped.num_adapter_layers)
        set_model_state_dict(model if model is not None else self.model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def make_inra_trainer(
    cfg: InRaTrainConfig,
    model: InRaModel,
    tokenizer: Any,
    rows: list[Any],
    teacher: Any = None,
    args: TrainingArguments | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> InRaTrainer:
    """An :class:`InRaTrainer` over encoded ``rows`` (see :func:`training_rows`); ``args`` default: ``cfg``'s."""
    collator = collate_pairs if cfg.method == "dpo" else collate
    return InRaTrainer(
        model=model, args=args or cfg.training.training_arguments(), train_dataset=ListDataset(rows),
        data_collator=functools.partial(collator, pad_id=tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks, inra=cfg, teacher=teacher,
    )


#: what an InRa run directory holds, per settings section (see :func:`thinkctl.runs.open_staged_run`)
WORK = {"data": ("rollouts.jsonl",), "training": (f"{PREFIX_CHECKPOINT_DIR}-*", FINAL_DIR, "trainer_state.json")}
#: the settings that decide the training data (the rollouts, or the trace rows); the others decide the training
_DATA_KEYS = ("method", "benchmark", "split", "limit", "rollout_lambdas", "rollout_samples", "rollout", "dtype")


def run_settings(cfg: InRaTrainConfig) -> dict[str, dict[str, Any]]:
    """The compared settings of an InRa run, in :data:`WORK`'s sections: the models by identity
    (:func:`thinkctl.models.model_identity`), a trace file by content, the Trainer's settings but where and how
    often it saves and logs."""
    values = asdict(cfg)
    data = {k: values.pop(k) for k in _DATA_KEYS}
    data.update(base=model_identity(cfg.base), teacher=model_identity(cfg.teacher) if cfg.teacher else None,
                traces=cfg.traces.identity() if cfg.traces.data else None, seed=cfg.training.seed)
    for key in ("base", "teacher", "traces", "rollout_batch_size", "training"):
        values.pop(key)
    return {"data": data, "training": {**values, "training": cfg.training.compared()}}


def check_inputs(cfg: InRaTrainConfig) -> Any:
    """The base's tokenizer, after checking what training needs before anything generates or trains: the trace
    file exists, and the teacher shares the base's vocabulary."""
    cfg.traces.check()
    tokenizer = load_tokenizer(cfg.base)
    if cfg.teacher and (cfg.method == "distill" or not cfg.traces.data):
        check_same_vocab(tokenizer, load_tokenizer(cfg.teacher), names=("base", "teacher"))
    return tokenizer


def train_inra(cfg: InRaTrainConfig, callbacks: list[TrainerCallback] | None = None, overwrite: bool = False) -> Path:
    """Train an adapter on ``cfg.base`` and save the final InRa checkpoint to ``OUTPUT_DIR/final``.

    Runs as one process or on every process of an ``accelerate launch``; resumes from the latest
    ``checkpoint-N`` in the output directory. The directory records the run's settings (``run.json``): a rerun
    under other ones is refused with each difference named, unless ``overwrite`` moves the work they invalidate
    aside (new training settings keep the rollouts). Returns the final checkpoint path.
    """
    output_dir = Path(cfg.training.output_dir)
    tokenizer = check_inputs(cfg)
    args = cfg.training.training_arguments()  # first: under ZeRO-3 it makes the model loads below sharded
    with args.main_process_first(local=False, desc="InRa run settings"):
        open_staged_run(output_dir, run_settings(cfg), {"inra": asdict(cfg)}, work=WORK, overwrite=overwrite,
                        write=args.process_index == 0)
    with args.main_process_first(desc="InRa training data"):
        needs_rollouts = not (cfg.method == "sft" and cfg.traces.data)
        groups = build_rollouts(cfg, tokenizer, output_dir / "rollouts.jsonl", str(args.device)) if needs_rollouts else []
    rows = training_rows(cfg, tokenizer, groups)
    torch.manual_seed(cfg.training.seed)
    base = load_causal_lm(cfg.base, cfg.dtype)
    model = InRaModel.from_base(base, cfg.num_adapter_layers, default_lambda=1.0, base_name_or_path=cfg.base)
    teacher = load_causal_lm(cfg.teacher, cfg.dtype) if cfg.method == "distill" else None
    trainer = make_inra_trainer(cfg, model, tokenizer, rows, teacher, args, callbacks)
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    trainer.finish()
    final = output_dir / FINAL_DIR
    trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    return final
