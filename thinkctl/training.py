"""What TrRa and InRa training share: Trainer settings, frozen models held the way the launch needs, a Trainer
whose loss is averaged over a whole optimizer step, and offline trace datasets.

Scale-out is the Hugging Face Trainer's under ``accelerate launch``: one process, DDP, FSDP or DeepSpeed ZeRO-3
(configs in ``configs/accelerate/``), one node or several. thinkctl adds no distributed code of its own. It decides
two things the Trainer cannot:

* **Frozen models** (TrRa's reference and aligned teachers, InRa's distillation teacher) are prepared as TRL's
  trainers prepare their reference and teacher models (:func:`prepare_frozen`): under ZeRO-3 a DeepSpeed inference
  engine with sharded parameters (``trl.models.prepare_deepspeed``), under FSDP an FSDP wrap that shards them
  (``trl.models.prepare_fsdp``; ``accelerator.prepare_model(evaluation_mode=True)`` would leave them whole), otherwise
  one replica on each process's device with no DDP wrapper. They never train and never reach the optimizer.
* **The loss is a sum over items** (response tokens; DPO: preference pairs) divided by the items of the whole
  optimizer step, counted over every micro-batch and process (:class:`SummedLossTrainer`). So the gradient of a
  step does not depend on how its batch is split into micro-batches or over processes: one process with batch 16
  and eight with batch 2 take the same steps, up to float rounding.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.distributed import DistributedBackend
from trl.models.utils import _ForwardRedirection, prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import maybe_gather_lm_head_ctx

from thinkctl.config import option
from thinkctl.data import LOCAL_SUFFIXES, render_prompt
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.io import iter_jsonl
from thinkctl.models import file_fingerprint
from thinkctl.thinking import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

FINAL_DIR = "final"


# --- settings -------------------------------------------------------------------------------------------------


#: :class:`TrainerConfig` keys a run's settings record leaves out (see :meth:`TrainerConfig.compared`)
UNCOMPARED_TRAINER_KEYS = ("output_dir", "save_steps", "save_total_limit", "logging_steps")


@dataclass
class TrainerConfig:
    """The Trainer settings every thinkctl training job composes (``TrainingArguments`` names).

    Batch sizes are per process: the global batch is ``per_device_train_batch_size × gradient_accumulation_steps ×
    processes``, so moving a recipe from one GPU to eight keeps its steps when the product is kept.
    """

    output_dir: str = option("runs/train", "run directory: Trainer checkpoints (checkpoint-N) and the result in OUTPUT_DIR/final")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    num_train_epochs: float = option(1.0, "passes over the training data (when max_steps < 1)")
    max_steps: int = option(-1, "optimizer steps; < 1 trains num_train_epochs instead")
    per_device_train_batch_size: int = option(8, "sequences (DPO: pairs) per process and micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.0, "fraction of the steps spent warming the learning rate up", renamed_from=("warmup_steps",))
    lr_scheduler_type: str = option("linear", "transformers learning-rate schedule: linear, cosine, constant, …")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    bf16: bool = option(False, "bf16 autocast (weights keep their own precision)")
    seed: int = option(0, "training seed (data order, initialisation)")
    save_steps: int = option(100, "checkpoint every this many steps (resumable after a kill)")
    save_total_limit: int | None = option(2, "checkpoints kept")
    logging_steps: int = option(10, "log the loss every this many steps")
    device: str = option("auto", "auto (each process's GPU under accelerate, else CPU), cpu or cuda")

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_steps < 1 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps ≥ 1 or num_train_epochs > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def compared(self) -> dict[str, Any]:
        """The settings that change what training makes, for a run's record: all but where it is written and how
        often it logs and saves (a resumed run may checkpoint more often and still be the same run)."""
        return {k: v for k, v in asdict(self).items() if k not in UNCOMPARED_TRAINER_KEYS}

    @property
    def use_cpu(self) -> bool:
        """CPU when asked, or when "auto" finds no GPU: accelerate then runs several processes as gloo DDP instead
        of letting each one train alone."""
        return self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())

    def training_arguments(self, **overrides: Any) -> TrainingArguments:
        """The ``TrainingArguments`` this config stands for (no reporting integrations, steps-based saving).

        Create them before loading the models: under ZeRO-3 they switch on DeepSpeed's sharded loading.
        """
        values: dict[str, Any] = dict(
            output_dir=self.output_dir, learning_rate=self.learning_rate, num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps, per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, warmup_steps=self.warmup_ratio,
            lr_scheduler_type=self.lr_scheduler_type, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
            bf16=self.bf16, seed=self.seed, data_seed=self.seed, save_strategy="steps", save_steps=self.save_steps,
            save_total_limit=self.save_total_limit, logging_steps=self.logging_steps, report_to=[],
            remove_unused_columns=False, dataloader_num_workers=0, average_tokens_across_devices=True,
            use_cpu=self.use_cpu,
        )
        return TrainingArguments(**{**values, **overrides})


def launched_processes() -> int:
    """Processes of this launch (``accelerate launch``/torchrun set ``WORLD_SIZE``); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` to resume from, if any.

    The Trainer writes ``trainer_state.json`` last; a run killed while saving leaves a checkpoint without it,
    which ``get_last_checkpoint`` would pick and the resume would then fail on.
    """
    done = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if p.name.rpartition("-")[2].isdigit() and (p / TRAINER_STATE_NAME).is_file()]
    return str(max(done, key=lambda p: int(p.name.rpartition("-")[2]))) if done else None


def training_examples(rows: Iterable[tuple[Any, ...]], max_length: int, what: str) -> list[tuple[Any, ...]]:
    """Encoded rows ready for a :class:`ListDataset`: held as int32 arrays (4 bytes a token where a list of Python
    ints takes 36), without rows that have no response token within ``max_length``. A row is an
    :data:`~thinkctl.batch.Example` ``(ids, n_prompt)``, optionally followed by per-row values its collator reads
    (TrRa's teacher λ), which are kept as they are.

    How many rows fill ``max_length`` (and were cut there, losing their end: answer and EOS) and how many were
    dropped is logged, so a too-short ``max_length`` is never silent.
    """
    kept: list[tuple[Any, ...]] = []
    full = dropped = 0
    for ids, n_prompt, *extra in rows:
        full += len(ids) >= max_length
        if len(ids) <= max(n_prompt, 1):  # no response token to predict
            dropped += 1
            continue
        kept.append((np.asarray(ids, dtype=np.int32), n_prompt, *extra))
    total = len(kept) + dropped
    if full:
        log.warning("%s: %d of %d sequences fill max_length=%d tokens and are cut there (their ends are not trained "
                    "on); raise max_length to keep them whole", what, full, total, max_length)
    if dropped:
        log.warning("%s: dropped %d of %d sequences with no response token within max_length=%d", what, dropped, total,
                    max_length)
    if not kept:
        raise ConfigError(f"{what}: no training sequence has a response token within max_length={max_length}")
    return kept


class ListDataset(torch.utils.data.Dataset):
    """Rows held in memory (encoded examples); the collator makes batches of them."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.rows[i]


# --- frozen models ----------------------------------------------------------------------------------------------


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen model can never be picked up by the optimizer."""
    model.eval()
    model.requires_grad_(False)
    return model


def prepare_frozen(model: nn.Module, accelerator: Any) -> nn.Module:
    """A frozen model held as the launch needs it (see the module docstring); what TRL's DPO/GRPO trainers do
    with their reference model."""
    freeze(model)
    if accelerator.state.deepspeed_plugin is not None:
        return prepare_deepspeed(model, accelerator)  # ZeRO-3 shards it; other stages replicate it (stage 0)
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)  # to this process's device, no DDP wrapper


@contextlib.contextmanager
def head_weights(accelerator: Any, student: nn.Module, frozen: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The whole lm_head weights of ``student`` and each of the ``frozen`` (prepared) models, for a loss that reads
    them directly.

    TrRa's chunked loss multiplies hidden states by the head weights itself instead of calling the heads, so under
    sharding it must gather them on purpose: ZeRO-3 keeps every weight at ``numel 0`` outside its module's forward
    (``deepspeed.zero.GatheredParameters``, through TRL's ``maybe_gather_lm_head_ctx``), FSDP1 keeps the frozen
    models' root parameters sharded outside their forward (``summon_full_params(recurse=False)``) and FSDP2 holds
    DTensors (``full_tensor()``, differentiable for the student). The student's own FSDP1 root is already whole:
    this runs inside its forward (see :class:`SummedLossTrainer`), where summoning is not allowed anyway.
    """
    dist = DistributedBackend(accelerator)
    heads = [accelerator.unwrap_model(m).get_output_embeddings() for m in (student, *frozen)]
    for head in heads:
        if getattr(head, "bias", None) is not None:
            raise ConfigError("the chunked loss needs lm_heads without bias (logits = h @ Wᵀ), as in Qwen2/Llama")
    with contextlib.ExitStack() as stack:
        stack.enter_context(maybe_gather_lm_head_ctx(*(h.weight for h in heads)))
        for model in frozen:
            stack.enter_context(dist.summon_full_params(model, recurse=False))
        yield [h.weight.full_tensor() if isinstance(h.weight, DTensor) else h.weight for h in heads]


# --- the trainer ----------------------------------------------------------------------------------------------------


class SummedLossTrainer(Trainer):
    """A ``Trainer`` whose subclasses give a loss as (sum over items, item count); it divides by the step's items.

    Subclasses implement :meth:`loss_terms` (called with the unwrapped model, inside the wrapped model's forward)
    and :meth:`count_items` (the items of one collated micro-batch). Running the loss inside the wrapper's forward
    (TRL's ``_ForwardRedirection``, as its DistillationTrainer does) is what keeps DDP's gradient hooks armed and
    FSDP/ZeRO-3 parameters materialised while the loss reads the model's weights.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the items of all micro-batches of the step

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redirect = _ForwardRedirection()
        for variable, enabled, name in (("ACCELERATE_USE_FSDP", self.is_fsdp_enabled, "FSDP"),
                                        ("ACCELERATE_USE_DEEPSPEED", self.is_deepspeed_enabled, "DeepSpeed")):
            if os.environ.get(variable, "false").lower() == "true" and not enabled:
                raise ConfigError(
                    f"the accelerate config asks for {name}, but accelerate did not enable it (distributed type "
                    f"{self.accelerator.distributed_type}; accelerate enables {name} on GPUs only): the run would "
                    "silently fall back to DDP. Use configs/accelerate/ddp.yaml on this machine.")

    def loss_terms(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the per-item losses, number of items) of one micro-batch."""
        raise NotImplementedError

    def count_items(self, inputs: dict[str, torch.Tensor]) -> int:
        """Loss items in one collated micro-batch."""
        raise NotImplementedError

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """Items of one optimizer step: every micro-batch of every process (replaces the Trainer's label count,
        which only knows causal-LM labels)."""
        n = torch.tensor(sum(self.count_items(b) for b in batch_samples), device=device)
        return self.accelerator.gather(n).sum() if self.accelerator.num_processes > 1 else n

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The step-normalised loss; a direct call without ``num_items_in_batch`` gets this batch's own mean.

        Processes average their gradients, so each process's share is scaled by their number: the average of
        ``sum_p × P / N`` over the P processes is ``Σ sum_p / N``, the mean over the step's N items.
        """
        unwrapped = self.accelerator.unwrap_model(model)
        total, count = self._redirect(model, unwrapped, self.loss_terms, unwrapped, inputs)
        if num_items_in_batch is None:
            loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
        else:
            loss = total * self.accelerator.num_processes / num_items_in_batch
        return (loss, None) if return_outputs else loss

    def finish(self) -> None:
        """Write ``trainer_state.json`` (the loss of every logged step) next to the checkpoints, once every process
        has finished its steps."""
        self.accelerator.wait_for_everyone()
        self.save_state()


# --- offline trace datasets -------------------------------------------------------------------------------------

#: how a trace's question becomes its training prompt (``prompt_format``): "chat" renders it with the tokenizer's chat
#: template and generation prompt (R1's ends ``<think>\n``); the others are LLaMA-Factory's templates of the same
#: name, which the paper's training configs use (after the tokenizer's BOS): ``deepseek`` for TrRa, ``deepseek3`` for InRa
PROMPT_FORMATS: dict[str, str | None] = {
    "chat": None,
    "deepseek": "User: {question}\n\nAssistant:",
    "deepseek3": "<｜User｜>{question}<｜Assistant｜>",
}


def training_prompt(tokenizer: Any, question: str, prompt_format: str = "chat") -> str:
    """The training prompt of ``question`` in ``prompt_format`` (see :data:`PROMPT_FORMATS`)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}")
    template = PROMPT_FORMATS[prompt_format]
    if template is None:
        return render_prompt(tokenizer, question)
    return (getattr(tokenizer, "bos_token", None) or "") + template.replace("{question}", question)


@dataclass
class TraceConfig:
    """An existing dataset of questions and responses to train on instead of generating (the paper's setting).

    ``prompt`` fields already rendered with a chat template are used verbatim; otherwise the question field is
    rendered in ``prompt_format``. Fields may hold text, one chat message (``{"from"|"role", "value"|"content"}``)
    or a conversation (a list of messages: its last user turn is the question, its last turn the response).
    Rows are read one at a time and only as many as the run consumes (:func:`load_traces`).
    """

    data: str | None = option(None, "trace dataset: hub name (e.g. wh-zhu/long_cot_calibration) or a local .jsonl/.json/.parquet")
    data_split: str = option("train", "its split (hub datasets)")
    data_limit: int | None = option(None, "use only its first N rows (default: as many as max_steps × the global batch consumes)")
    question_field: str = option("question", "field holding the question (rendered in prompt_format)")
    response_field: str = option("response", "field holding the response to train on")
    prompt_format: str = option(
        "chat", "training prompt of a question: chat (the model's chat template; R1's opens <think> in the prompt), "
                "deepseek ('User: …\\n\\nAssistant:', the paper's TrRa), deepseek3 (R1's '<｜User｜>…<｜Assistant｜>' "
                "without <think>, the paper's InRa)", choices=tuple(PROMPT_FORMATS))

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.data_limit is not None and self.data_limit < 1:
            raise ConfigError(f"data_limit must be ≥ 1 (leave it out for what the run consumes), got {self.data_limit}")

    def check(self) -> None:
        """Fail now, before any model loads or generates, when a local trace file is missing."""
        if self.data and _local(self.data) is not None and not _local(self.data).is_file():
            raise DataFormatError(f"trace dataset file does not exist: {_local(self.data)} (`data`)")

    def identity(self) -> dict[str, Any]:
        """What a run records of this dataset: the settings, and a fingerprint of a local file's content."""
        path = _local(self.data) if self.data else None
        return {**asdict(self), "file": file_fingerprint(path) if path is not None and path.is_file() else None}

    def load(self, tokenizer: Any, consumed: int | None = None) -> list[Trace]:
        """The first ``min(data_limit, consumed)`` traces of this dataset (see :func:`load_traces`)."""
        if not self.data:
            raise ConfigError("no trace dataset given (`data`)")
        limits = [n for n in (self.data_limit, consumed) if n is not None]
        return load_traces(self.data, tokenizer, self.data_split, min(limits) if limits else None, self.question_field,
                           self.response_field, self.prompt_format)


def consumed_rows(training: TrainerConfig, processes: int | None = None) -> int | None:
    """Training rows a run reads: ``max_steps × per-device batch × accumulation × processes`` (None: epochs)."""
    if training.max_steps < 1:
        return None
    n = processes if processes is not None else launched_processes()
    return training.max_steps * training.per_device_train_batch_size * training.gradient_accumulation_steps * n


@dataclass(frozen=True)
class Trace:
    """One rendered prompt and the response text to train on."""

    id: str
    prompt: str
    response: str


def _local(source: str) -> Path | None:
    """The local file a source names, or None for a hub name."""
    path = Path(source).expanduser()
    return path if path.suffix.lower() in LOCAL_SUFFIXES else None


def _rows(source: str, split: str) -> Iterator[dict[str, Any]]:
    """The raw rows of a local .jsonl/.json/.parquet file or of a hub dataset's ``split``, one at a time.

    JSONL is read line by line; the other kinds through ``datasets``, whose Arrow tables are memory-mapped, so
    memory does not grow with the rows a reader never reaches.
    """
    path = _local(source)
    if path is not None and path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise DataFormatError(f"trace dataset file does not exist: {path}")
        yield from iter_jsonl(path)
        return
    import datasets

    if path is not None:
        if not path.is_file():
            raise DataFormatError(f"trace dataset file does not exist: {path}")
        kind = path.suffix.lower().lstrip(".")
        try:
            table = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # datasets raises many types for a bad file; name the file instead
            raise DataFormatError(f"could not read {path} as {kind}: {e}") from None
    else:
        try:
            table = datasets.load_dataset(source, split=split)
        except Exception as e:  # offline machines raise many types; name the source instead
            raise DataFormatError(f"could not load the trace dataset {source!r} (split {split!r}): {e}") from None
    yield from table


def _message_text(value: Any, where: str, *, question: bool) -> str:
    """Text of a field that is a string, one chat message, or a conversation (see :class:`TraceConfig`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        text = value.get("value", value.get("content"))
        if isinstance(text, str):
            return text
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("from", m.get("role")) in ("human", "user")] if question else value
        if users:
            return _message_text(users[-1], where, question=question)
    raise DataFormatError(f"{where}: expected text, a chat message or a list of messages, got {str(value)[:80]!r}")


def leaves_thinking_open(prompt: str, response: str) -> bool:
    """True when the prompt and response together leave a think block open: trained on, the model learns to answer
    inside thinking that never closes (which evaluation grades as unfinished)."""
    text = prompt + response
    return text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def load_traces(source: str, tokenizer: Any, split: str = "train", limit: int | None = None,
                question_field: str = "question", response_field: str = "response", prompt_format: str = "chat") -> list[Trace]:
    """Prompts (rendered for ``tokenizer`` in ``prompt_format``) and responses of the first ``limit`` rows of a hub
    or local trace dataset; rows past ``limit`` are never read.

    When the prompt opens the think block (R1's chat template does) and a response opens it again, the response's
    ``<think>`` is dropped, so the model trains on the token sequence it generates itself. Two things are logged as
    warnings with their counts: traces that leave a think block open (the prompt opens one the response never
    closes: e.g. short answers that follow ``</think>`` in their source, trained under a template that opens
    thinking), and columns the traces do not use (e.g. alpaca's ``input``, which is not appended to the question).
    """
    traces: list[Trace] = []
    ignored: dict[str, int] = {}
    open_thinking = 0
    for i, row in enumerate(_rows(source, split)):
        if limit is not None and i >= limit:
            break
        where = f"{source}:{i + 1}"
        if response_field not in row or not ({"prompt", question_field} & set(row)):
            raise DataFormatError(f"{where}: need a `prompt` or `{question_field}` field and a `{response_field}` field "
                                  f"(set question_field/response_field); keys are {sorted(row)}")
        if "prompt" in row and isinstance(row["prompt"], str) and question_field not in row:
            prompt, used = row["prompt"], {"prompt", response_field, "id"}
        else:
            prompt = training_prompt(tokenizer, _message_text(row[question_field], where, question=True), prompt_format)
            used = {question_field, response_field, "id"}
        for column in row.keys() - used:
            ignored[column] = ignored.get(column, 0) + (row[column] not in (None, "", [], {}))
        response = _message_text(row[response_field], where, question=False)
        if prompt.rstrip().endswith(THINK_OPEN) and response.lstrip().startswith(THINK_OPEN):
            response = response.lstrip()[len(THINK_OPEN):].lstrip("\n")
        open_thinking += leaves_thinking_open(prompt, response)
        traces.append(Trace(str(row.get("id", i + 1)), prompt, response))
    if not traces:
        raise DataFormatError(f"the trace dataset {source!r} has no rows")
    if open_thinking:
        log.warning("%d of %d traces from %s leave a think block open (the prompt or response opens <think> and the "
                    "response never closes it): the model learns to answer inside unfinished thinking; check "
                    "prompt_format (deepseek3 keeps <think> out of the prompt)", open_thinking, len(traces), source)
    if ignored:
        columns = ", ".join(f"`{c}` ({n} of {len(traces)} rows non-empty)" for c, n in sorted(ignored.items()))
        log.warning("%s: columns not used for training: %s (question: `%s`, response: `%s`)", source, columns,
                    question_field, response_field)
    return traces
