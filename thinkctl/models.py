"""Loading models and model pairs by hub name or local path, with the checks fusion relies on.

Fusion adds two models' logits position by position, so both must index the same vocabulary: the
check here compares tokenizers token by token (not just sizes) and says where they first differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from thinkctl.errors import ModelLoadError, VocabMismatchError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(set(_DTYPES))}") from None


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()


def _check_source(name_or_path: str) -> None:
    """Fail early and clearly on a local path that does not exist (instead of a hub lookup error)."""
    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path) and not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model directory: it has no config.json")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer; pads on the left (generation) and falls back to EOS as the pad token."""
    _check_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name_or_path).expanduser()) if _looks_like_path(name_or_path) else name_or_path)
    except OSError as e:
        raise ModelLoadError(f"could not load a tokenizer from {name_or_path!r}: {e}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "cpu") -> PreTrainedModel:
    """Load a causal LM in eval mode; a config that is not a causal LM gets a clear error."""
    _check_source(name_or_path)
    source = str(Path(name_or_path).expanduser()) if _looks_like_path(name_or_path) else name_or_path
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read a model config from {name_or_path!r}: {e}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype))
    except ValueError as e:
        raise ModelLoadError(
            f"{name_or_path!r} (model_type={config.model_type!r}) is not a causal language model "
            f"that transformers can load with AutoModelForCausalLM: {e}"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"could not load model weights from {name_or_path!r}: {e}") from None
    return model.to(device).eval()


def check_same_vocab(
    tok_a: PreTrainedTokenizerBase,
    tok_b: PreTrainedTokenizerBase,
    model_a: PreTrainedModel | None = None,
    model_b: PreTrainedModel | None = None,
    names: tuple[str, str] = ("reference", "aligned"),
) -> None:
    """Raise :class:`VocabMismatchError` unless both tokenizers map every token to the same id.

    When models are given, their output (logit) widths must match too: checkpoints often pad the
    embedding matrix past the tokenizer's length, and fusing logits of different widths is undefined.
    """
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    if vocab_a != vocab_b:
        inv_a = {i: t for t, i in vocab_a.items()}
        inv_b = {i: t for t, i in vocab_b.items()}
        first = next(
            (i for i in range(max(len(inv_a), len(inv_b)) + 1) if inv_a.get(i) != inv_b.get(i)),
            None,
        )
        raise VocabMismatchError(
            f"the {names[0]} and {names[1]} tokenizers differ: {len(vocab_a)} vs {len(vocab_b)} tokens; "
            f"first difference at id {first}: {inv_a.get(first)!r} vs {inv_b.get(first)!r}. "
            "Fusion needs both models to share one tokenizer."
        )
    if model_a is not None and model_b is not None:
        size_a = model_a.get_output_embeddings().weight.shape[0]
        size_b = model_b.get_output_embeddings().weight.shape[0]
        if size_a != size_b:
            raise VocabMismatchError(
                f"the {names[0]} model has {size_a} output logits and the {names[1]} model {size_b}; "
                "fusion needs equal vocabulary sizes"
            )


@dataclass
class ModelPair:
    """A reference (slow thinker) and an aligned (fast thinker) model sharing one tokenizer."""

    reference: PreTrainedModel
    aligned: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_pair(reference: str, aligned: str, dtype: str | torch.dtype = "float32", device: str = "cpu") -> ModelPair:
    """Load both models and the shared tokenizer, checking that their vocabularies agree."""
    tok_ref, tok_al = load_tokenizer(reference), load_tokenizer(aligned)
    check_same_vocab(tok_ref, tok_al)
    ref_model = load_causal_lm(reference, dtype, device)
    al_model = load_causal_lm(aligned, dtype, device)
    check_same_vocab(tok_ref, tok_al, ref_model, al_model)
    log.info("loaded pair reference=%s aligned=%s (%s, %s)", reference, aligned, dtype, device)
    return ModelPair(ref_model, al_model, tok_ref)
