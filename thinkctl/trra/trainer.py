"""Training the TrRa student: a ``transformers.Trainer`` whose loss is fused-teacher distillation.

The student starts as a copy of the reference; the frozen reference and aligned models are held on
the trainer and give, per batch, the final hidden states from which :func:`chunked_fused_kd_loss`
builds the fused target chunk by chunk. Everything else — gradient accumulation, the LR schedule,
bf16 autocast, ``save_steps`` checkpoints with optimizer/scheduler/RNG state and
``resume_from_checkpoint`` — is the Trainer's own, so a killed run resumes from ``checkpoint-N`` with no
lost or repeated steps.

With ``use_lora`` only LoRA matrices train and the reference teacher is the student itself with its
adapters disabled (identical weights), so the reference is held in memory once.

Names follow ``TrainingArguments`` and TRL's ``GKDConfig`` where they overlap.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from thinkctl.batch import IGNORE_INDEX, collate
from thinkctl.config import lambda_option, option
from thinkctl.errors import ConfigError
from thinkctl.io import atomic_write_json
from thinkctl.losses import chunked_fused_kd_loss, divergence_option, jsd_beta_option, validate_divergence
from thinkctl.trra.data import DistillExample, encode_example

log = logging.getLogger(__name__)

FINAL_DIR = "final"
FINAL_MARKER = "trra_student.json"


@dataclass
class TrRaConfig:
    """The ``trra:`` section of a recipe (TrainingArguments-style names)."""

    output_dir: str = option("runs/trra/student", "Trainer checkpoints; the distilled student lands in OUTPUT_DIR/final")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    num_train_epochs: float = option(1.0, "passes over the distillation data (when max_steps < 1)")
    max_steps: int = option(-1, "optimizer steps; < 1 trains num_train_epochs instead")
    per_device_train_batch_size: int = option(8, "sequences per device and micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.0, "fraction of the steps spent warming the learning rate up")
    lr_scheduler_type: str = option("linear", "transformers learning-rate schedule: linear, cosine, constant, …")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    bf16: bool = option(False, "bf16 autocast (weights stay in student_dtype)")
    student_dtype: str = option("float32", "precision of the trained student's weights")
    teacher_dtype: str = option("float32", "precision of the frozen reference and aligned teachers")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    seed: int = option(0, "training seed (data order, initialisation of LoRA)")
    save_steps: int = option(100, "checkpoint every this many steps (resumable after a kill)")
    save_total_limit: int | None = option(2, "checkpoints kept")
    logging_steps: int = option(10, "log the loss every this many steps")
    lambda_: float = lambda_option(0.5, "fusion weight λ of the teacher the student is distilled towards")
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
    device: str = option("auto", "training device: auto, cpu or cuda")

    def __post_init__(self) -> None:
        validate_divergence(self.divergence, self.jsd_beta)
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "chunk_size", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trra: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_steps < 1 and self.num_train_epochs <= 0:
            raise ConfigError("trra: set max_steps ≥ 1 or num_train_epochs > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"trra: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"trra: device must be auto, cpu or cuda, got {self.device!r}")

    def training_arguments(self) -> TrainingArguments:
        """The ``TrainingArguments`` this config stands for (no reporting integrations, steps-based saving)."""
        return TrainingArguments(
            output_dir=self.output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            warmup_steps=self.warmup_ratio,
            lr_scheduler_type=self.lr_scheduler_type,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            bf16=self.bf16,
            gradient_checkpointing=self.gradient_checkpointing,
            seed=self.seed,
            data_seed=self.seed,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps,
            report_to=[],
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=self.device == "cpu",
        )


def _freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states after the final norm (the lm_head input), without full logits.

    Called on the (possibly wrapped) student so that PEFT/DDP see an ordinary forward; ``logits_to_keep=1``
    keeps the model from materialising the ``[batch, seq, vocab]`` logits the chunked loss avoids.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def _head_weight(model: Any) -> torch.Tensor:
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ConfigError("TrRa's chunked loss needs an lm_head without bias (logits = h @ Wᵀ), as in Qwen2/Llama")
    return head.weight


class TrRaTrainer(Trainer):
    """``Trainer`` with the fused-teacher distillation loss; ``reference=None`` means "the student, adapters off"."""

    def __init__(self, *args: Any, reference: PreTrainedModel | None, aligned: PreTrainedModel, trra: TrRaConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device = self.args.device
        self.reference = _freeze(reference).to(device) if reference is not None else None
        self.aligned = _freeze(aligned).to(device)
        self.trra = trra
        self.loss_is_scaled_for_ga = False

    def _reference_hidden(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is not None:
            return _final_hidden(self.reference, input_ids, attention_mask), _head_weight(self.reference)
        unwrapped = self.accelerator.unwrap_model(model)
        with unwrapped.disable_adapter():
            return _final_hidden(unwrapped, input_ids, attention_mask), _head_weight(unwrapped)

    def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        mask = labels[:, 1:] != IGNORE_INDEX
        student_hidden = _final_hidden(model, input_ids, attention_mask)[:, :-1]
        with torch.no_grad():
            ref_hidden, ref_head = self._reference_hidden(model, input_ids, attention_mask)
            aligned_hidden = _final_hidden(self.aligned, input_ids, attention_mask)
        loss = chunked_fused_kd_loss(
            student_hidden, ref_hidden[:, :-1], aligned_hidden[:, :-1],
            _head_weight(self.accelerator.unwrap_model(model)), ref_head, _head_weight(self.aligned),
            mask, self.trra.lambda_, self.trra.divergence, self.trra.jsd_beta, self.trra.chunk_size,
        )
        return (loss, None) if return_outputs else loss


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.rows[i]


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


def make_trainer(
    cfg: TrRaConfig,
    student: Any,
    reference: PreTrainedModel | None,
    aligned: PreTrainedModel,
    tokenizer: Any,
    examples: list[DistillExample],
    callbacks: list[TrainerCallback] | None = None,
) -> TrRaTrainer:
    """A :class:`TrRaTrainer` over ``examples`` encoded with ``tokenizer``."""
    rows = [encode_example(tokenizer, ex, cfg.max_length) for ex in examples]
    rows = [(ids, n_prompt) for ids, n_prompt in rows if len(ids) > max(n_prompt, 1)]  # a response token to predict
    if not rows:
        raise ConfigError(f"no example has a response token within max_length={cfg.max_length}")
    return TrRaTrainer(
        model=student, args=cfg.training_arguments(), train_dataset=_TokenDataset(rows),
        data_collator=functools.partial(collate, pad_id=tokenizer.pad_token_id), processing_class=tokenizer, callbacks=callbacks,
        reference=reference, aligned=aligned, trra=cfg,
    )


def final_student_path(cfg: TrRaConfig) -> Path:
    return Path(cfg.output_dir) / FINAL_DIR


def is_trained(cfg: TrRaConfig) -> bool:
    """True once the final student was saved completely (its marker is written last)."""
    return (final_student_path(cfg) / FINAL_MARKER).is_file()


def save_student(trainer: TrRaTrainer, tokenizer: Any, cfg: TrRaConfig) -> Path:
    """Save the student as an ordinary checkpoint (LoRA merged in) + tokenizer, then the completion marker."""
    path = final_student_path(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.use_lora:
        model = model.merge_and_unload()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    atomic_write_json(path / FINAL_MARKER, {"config": asdict(cfg), "global_step": trainer.state.global_step})
    return path


def train_trra(cfg: TrRaConfig, reference: str, aligned: str, examples: list[DistillExample], callbacks: list[TrainerCallback] | None = None) -> Path:
    """Distil a student (initialised from ``reference``) towards the fused pair at ``cfg.lambda_``.

    Resumes from the last ``checkpoint-N`` in ``cfg.output_dir``; returns the saved student directory
    (``output_dir/final``), or that directory straight away when a previous run completed it.
    """
    from thinkctl.models import check_same_vocab, load_causal_lm, load_tokenizer

    if is_trained(cfg):
        log.info("student already trained at %s", final_student_path(cfg))
        return final_student_path(cfg)
    tokenizer = load_tokenizer(reference)
    check_same_vocab(tokenizer, load_tokenizer(aligned))
    student = load_causal_lm(reference, cfg.student_dtype)
    teacher_aligned = load_causal_lm(aligned, cfg.teacher_dtype)
    teacher_reference = None if cfg.use_lora else load_causal_lm(reference, cfg.teacher_dtype)
    check_same_vocab(tokenizer, tokenizer, student, teacher_aligned)
    if cfg.gradient_checkpointing:
        student.config.use_cache = False
    trainer = make_trainer(cfg, build_student(student, cfg), teacher_reference, teacher_aligned, tokenizer, examples, callbacks)
    last = get_last_checkpoint(cfg.output_dir) if Path(cfg.output_dir).is_dir() else None
    if last:
        log.info("resuming TrRa training from %s", last)
    trainer.train(resume_from_checkpoint=last)
    return save_student(trainer, tokenizer, cfg)
