"""Loading models and model pairs by hub name or local path, with the checks fusion relies on.

Fusion adds two models' logits position by position, so both must index the same vocabulary: the
check here compares tokenizers token by token (not just sizes) and says where they first differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Whether ``name_or_path`` means a local path rather than a hub repo id (``name`` or ``org/name``).

    Anything a hub id cannot be is a path: an explicit ``.``/``/``/``~`` start, more than one ``/``,
    a backslash, or an ``org/`` part that is a local directory (``runs/refernce`` when ``runs/`` exists).
    So a mistyped local path is reported as missing at once instead of after a minute of hub retries.
    """
    if name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path or Path(name_or_path).exists():
        return True
    parts = name_or_path.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _check_source(name_or_path: str) -> None:
    """Fail early and clearly on a local path that does not exist (instead of a hub lookup error)."""
    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path) and not path.exists():
        parent = next((p for p in path.parents if p.is_dir()), Path("."))
        shown = parent not in (Path("."), Path(parent.anchor))
        where = f" ({parent} holds {sorted(c.name for c in parent.iterdir())[:12]})" if shown else ""
        raise ModelLoadError(f"model path does not exist: {path}{where}")
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


# ---------------------------------------------------------------- identity (what a run directory records)

#: files that make a checkpoint what it is: configs, tokenizer, chat template, weights
IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt", ".tiktoken")
#: files up to this size are hashed whole; larger ones (weights) by size, head and tail
WHOLE_FILE_BYTES = 4 << 20
SAMPLE_BYTES = 1 << 20


def file_fingerprint(path: Path) -> str:
    """``size:sha256-prefix`` of a file: of all of it when small, else of its first and last MiB.

    A safetensors file starts with its tensor header followed by the first tensor's data, so head and
    tail change when weights are retrained while a 16 GB checkpoint costs 2 MiB of reading per shard.
    Content only: a copied checkpoint keeps its fingerprint (its mtime does not).
    """
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= WHOLE_FILE_BYTES:
            digest.update(f.read())
        else:
            digest.update(f.read(SAMPLE_BYTES))
            f.seek(size - SAMPLE_BYTES)
            digest.update(f.read(SAMPLE_BYTES))
    return f"{size}:{digest.hexdigest()[:16]}"


def _hub_snapshot(name: str) -> Path | None:
    """The local snapshot directory of a hub model in the HF cache (no network), or None when not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id, or no hub library: nothing to resolve
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_identity(name_or_path: str) -> dict[str, Any]:
    """What a run records to recognise a model again: fingerprints of its files (see :func:`file_fingerprint`).

    A hub name resolves offline to its cached snapshot (and records the snapshot's commit); an
    uncached hub name can only be recorded by name. An InRa checkpoint that points at its base model
    records the base too, since the adapter alone does not make the model.
    """
    path = Path(name_or_path).expanduser()
    identity: dict[str, Any] = {}
    if not path.is_dir():
        snapshot = _hub_snapshot(name_or_path)
        if snapshot is None:
            return {"name": name_or_path}
        path, identity["revision"] = snapshot, snapshot.name
    identity["files"] = {
        f.name: file_fingerprint(f) for f in sorted(path.iterdir()) if f.is_file() and f.suffix in IDENTITY_SUFFIXES
    }
    config = path / "config.json"
    base = (json.loads(config.read_text(encoding="utf-8")).get("inra") or {}).get("base_model") if config.is_file() else None
    if base:
        identity["base"] = model_identity(base)
    return identity
