"""Training the TrRa student: a ``transformers.Trainer`` whose loss is fused-teacher distillation.

The student starts as a copy of the reference; the frozen reference and aligned models are held on
the trainer and give, per batch, the final hidden states from which :func:`chunked_fused_kd_loss`
builds the fused target chunk by chunk. Everything else — gradient accumulation, the LR schedule,
bf16 autocast, ``save_steps`` checkpoints with optimizer/scheduler/RNG state and
``resume_from_checkpoint`` — is the Trainer's own, so a killed run resumes from ``checkpoint-N`` with no
lost or repeated steps, and the same code runs as one process or under ``accelerate launch`` (DDP,
FSDP, ZeRO-3): the teachers are prepared for the launch by :func:`thinkctl.training.prepare_frozen`
and the loss is averaged over the whole optimizer step (:class:`thinkctl.training.SummedLossTrainer`).

With ``use_lora`` only LoRA matrices train and the reference teacher is the student itself with its
adapters disabled (identical weights), so the reference is held in memory once.

Names follow ``TrainingArguments`` and TRL's ``GKDConfig`` where they overlap.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments
from trl.distributed import DistributedBackend

from thinkctl.batch import IGNORE_INDEX, collate
from thinkctl.cards import trra_card, write_card
from thinkctl.config import group, lambda_option, option
from thinkctl.errors import ConfigError
from thinkctl.io import atomic_write_json
from thinkctl.losses import chunked_fused_kd_loss, divergence_option, jsd_beta_option, validate_divergence
from thinkctl.training import (
    FINAL_DIR, ListDataset, SummedLossTrainer, TrainerConfig, head_weights, last_checkpoint, prepare_frozen, training_examples,
)
from thinkctl.trra.data import DistillExample, encode_example

log = logging.getLogger(__name__)

FINAL_MARKER = "trra_student.json"


@dataclass
class TrRaConfig:
    """The ``trra:`` section of a recipe: the Trainer settings (:class:`TrainerConfig`) and the distillation's own."""

    training: TrainerConfig = group(lambda: TrainerConfig(output_dir="runs/trra/student"))
    student_dtype: str = option("float32", "precision of the trained student's weights")
    teacher_dtype: str = option("float32", "precision of the frozen reference and aligned teachers")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    lambda_: float = lambda_option(0.5, "fusion weight λ of the teacher the student is distilled towards")
    lambda_per_example: bool = option(False, "distil each example towards the fused teacher at the λ it was generated "
                                             "at (adaptive teacher data) instead of lambda_")
    divergence: str = divergence_option()
    jsd_beta: float = jsd_beta_option()
    chunk_size: int = option(1024, "response tokens per loss chunk: peak loss memory ≈ 4 × chunk_size × vocab floats")
    max_length: int = option(1024, "prompt + response tokens kept per example")
    use_lora: bool = option(False, "train LoRA adapters (merged on save); the reference teacher is the student with adapters off")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target_modules: list[str] = option(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="comma-separated module names that get LoRA adapters",
    )

    def __post_init__(self) -> None:
        validate_divergence(self.divergence, self.jsd_beta)
        for name in ("chunk_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trra: {name} must be ≥ 1, got {getattr(self, name)}")

    def training_arguments(self) -> TrainingArguments:
        """The ``TrainingArguments`` of this run (create them before loading models: ZeRO-3 loads sharded)."""
        return self.training.training_arguments(gradient_checkpointing=self.gradient_checkpointing)


def _final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states after the final norm (the lm_head input), without full logits.

    ``logits_to_keep=1`` keeps the model from materialising the ``[batch, seq, vocab]`` logits the chunked
    loss avoids; a prepared teacher (DeepSpeed engine, FSDP wrapper) is called through its wrapper, which
    gathers its sharded layers for the forward.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


class TrRaTrainer(SummedLossTrainer):
    """``Trainer`` with the fused-teacher distillation loss; ``reference=None`` means "the student, adapters off"."""

    def __init__(self, *args: Any, reference: PreTrainedModel | None, aligned: PreTrainedModel, trra: TrRaConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if trra.use_lora and (self.is_fsdp_enabled or DistributedBackend(self.accelerator).is_zero3):
            raise ConfigError("trra: LoRA students are merged into whole weights on save; train them on one process "
                              "or under DDP (configs/accelerate/ddp.yaml), not FSDP/ZeRO-3")
        self.reference = prepare_frozen(reference, self.accelerator) if reference is not None else None
        self.aligned = prepare_frozen(aligned, self.accelerator)
        self.trra = trra

    def _lambda(self, inputs: dict[str, Any]) -> float | list[float]:
        """The fused teacher's λ: one for the run, or one per batch row (``inputs["lam"]``, adaptive data)."""
        return inputs["lam"] if self.trra.lambda_per_example else self.trra.lambda_

    def count_items(self, inputs: dict[str, torch.Tensor]) -> int:
        return int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())

    def _reference_hidden(self, student: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:
            return _final_hidden(self.reference, input_ids, attention_mask)
        with student.disable_adapter():
            return _final_hidden(student, input_ids, attention_mask)

    def loss_terms(self, student: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        mask = labels[:, 1:] != IGNORE_INDEX
        student_hidden = _final_hidden(student, input_ids, attention_mask)[:, :-1]
        with torch.no_grad():
            ref_hidden = self._reference_hidden(student, input_ids, attention_mask)[:, :-1]
            aligned_hidden = _final_hidden(self.aligned, input_ids, attention_mask)[:, :-1]
        frozen = [m for m in (self.reference, self.aligned) if m is not None]
        with head_weights(self.accelerator, student, frozen) as heads:
            student_head, aligned_head = heads[0], heads[-1]
            ref_head = heads[1] if self.reference is not None else student_head  # LoRA leaves the lm_head alone
            total = chunked_fused_kd_loss(
                student_hidden, ref_hidden, aligned_hidden, student_head, ref_head, aligned_head, mask,
                self._lambda(inputs), self.trra.divergence, self.trra.jsd_beta, self.trra.chunk_size, reduction="sum",
            )
        return total, mask.sum()


def build_student(reference: PreTrainedModel, cfg: TrRaConfig) -> PreTrainedModel:
    """The trainable student: the reference's weights, full or with LoRA adapters (peft)."""
    if not cfg.use_lora:
        for p in reference.parameters():
            p.requires_grad_(True)
        return reference.train()
    from peft import LoraConfig, get_peft_model

    if cfg.gradient_checkpointing:
        reference.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(reference, lora)


def collate_with_lambda(rows: list[tuple[Any, int, float]], pad_id: int) -> dict[str, torch.Tensor]:
    """:func:`thinkctl.batch.collate` of ``(ids, n_prompt, λ)`` rows, plus ``lam``: the teacher's λ per row.

    λ stays a list of Python floats: the Trainer casts every float tensor of a batch to DeepSpeed's bf16, which
    would round a calibrated λ (0.4137 → 0.4141); the loss makes it a float64 tensor itself."""
    batch: dict[str, Any] = collate([(ids, n_prompt) for ids, n_prompt, _ in rows], pad_id)
    batch["lam"] = [float(lam) for _, _, lam in rows]
    return batch


def make_trainer(
    cfg: TrRaConfig,
    student: Any,
    reference: PreTrainedModel | None,
    aligned: PreTrainedModel,
    tokenizer: Any,
    examples: list[DistillExample],
    callbacks: list[TrainerCallback] | None = None,
    args: TrainingArguments | None = None,
) -> TrRaTrainer:
    """A :class:`TrRaTrainer` over ``examples`` encoded with ``tokenizer`` (``args`` default: ``cfg``'s).

    With ``cfg.lambda_per_example`` every example must say its teacher's λ (``DistillExample.lam``).
    """
    if cfg.lambda_per_example:
        unknown = sum(ex.lam is None for ex in examples)
        if unknown:
            raise ConfigError(f"trra: lambda_per_example is set but {unknown} of {len(examples)} examples carry no λ "
                              "(trace datasets have none): distil them at one lambda_ instead")
    lams = [ex.lam if cfg.lambda_per_example else cfg.lambda_ for ex in examples]
    encoded = ((*encode_example(tokenizer, ex, cfg.max_length), lam) for ex, lam in zip(examples, lams))
    rows = training_examples(encoded, cfg.max_length, "trra")
    return TrRaTrainer(
        model=student, args=args or cfg.training_arguments(), train_dataset=ListDataset(rows),
        data_collator=functools.partial(collate_with_lambda, pad_id=tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks,
        reference=reference, aligned=aligned, trra=cfg,
    )


def final_student_path(cfg: TrRaConfig) -> Path:
    return Path(cfg.training.output_dir) / FINAL_DIR


def student_reference(path: str | Path) -> str | None:
    """The reference a saved TrRa student was distilled from (its marker says), or None when ``path`` is no student."""
    marker = Path(path).expanduser() / FINAL_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8")).get("reference")


def is_trained(cfg: TrRaConfig) -> bool:
    """True once the final student was saved completely (its marker is written last)."""
    return (final_student_path(cfg) / FINAL_MARKER).is_file()


def save_student(trainer: TrRaTrainer, tokenizer: Any, cfg: TrRaConfig, teachers: dict[str, str] | None = None) -> Path:
    """Save the student as an ordinary checkpoint (LoRA merged in) + tokenizer, then the completion marker, which
    names the ``teachers`` (reference, aligned): a sweep of the student measures it against its reference.

    Every process calls this: under FSDP/ZeRO-3 ``save_model`` gathers the sharded weights (a collective) and
    the main process writes them.
    """
    path = final_student_path(cfg)
    main = trainer.accelerator.is_main_process
    if not cfg.use_lora:
        trainer.save_model(str(path))  # weights and the tokenizer (the trainer's processing class)
    elif main:  # one process or DDP (TrRaTrainer refuses sharded LoRA): the weights are whole here
        trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
    if main:
        atomic_write_json(path / FINAL_MARKER, {"config": asdict(cfg), "global_step": trainer.state.global_step,
                                                **(teachers or {})})
    trainer.accelerator.wait_for_everyone()
    return path


def train_trra(cfg: TrRaConfig, reference: str, aligned: str, examples: list[DistillExample], callbacks: list[TrainerCallback] | None = None) -> Path:
    """Distil a student (initialised from ``reference``) towards the fused pair at ``cfg.lambda_``.

    Runs as one process or on every process of an ``accelerate launch``. Resumes from the last
    ``checkpoint-N`` in the output directory; returns the saved student directory (``output_dir/final``), or
    that directory straight away when a previous run completed it.
    """
    from thinkctl.models import check_same_vocab, load_causal_lm, load_tokenizer

    if is_trained(cfg):
        log.info("student already trained at %s", final_student_path(cfg))
        return final_student_path(cfg)
    args = cfg.training_arguments()
    tokenizer = load_tokenizer(reference)
    check_same_vocab(tokenizer, load_tokenizer(aligned))
    student = load_causal_lm(reference, cfg.student_dtype)
    teacher_aligned = load_causal_lm(aligned, cfg.teacher_dtype)
    teacher_reference = None if cfg.use_lora else load_causal_lm(reference, cfg.teacher_dtype)
    check_same_vocab(tokenizer, tokenizer, student, teacher_aligned)
    if cfg.gradient_checkpointing:
        student.config.use_cache = False
    trainer = make_trainer(cfg, build_student(student, cfg), teacher_reference, teacher_aligned, tokenizer, examples, callbacks, args)
    last = last_checkpoint(cfg.training.output_dir)
    if last:
        log.info("resuming TrRa training from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.finish()
    path = save_student(trainer, tokenizer, cfg, {"reference": reference, "aligned": aligned})
    if trainer.accelerator.is_main_process:
        write_card(path, trra_card(path, reference, aligned, cfg.lambda_, adaptive=cfg.lambda_per_example))
    return path
