"""Logit fusion: the single place where the reference and aligned models' logits are combined.

    fused = λ · z_aligned + (1 − λ) · z_ref

λ = 0 is the reference (slow thinker), λ = 1 the aligned model (fast thinker), λ in (0, 1) interpolates
and λ > 1 (or < 0) extrapolates past either model. Everything else in thinkctl (fused decoding, the TrRa
target, the InRa dual path, the vLLM plugin) calls these functions rather than re-deriving the formula.

:func:`validate_lambda` is the one λ validator. It runs where a λ enters thinkctl (command-line flags
through :func:`parse_lambda`, recipe keys, a rollout backend's ``generate`` call, a server request,
a checkpoint's ``default_lambda``); code behind those boundaries trusts the value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from thinkctl.errors import InvalidLambdaError

LambdaLike = float | Sequence[float] | torch.Tensor


def validate_lambda(value: object) -> float:
    """Return ``value`` as a finite float, or raise :class:`InvalidLambdaError` saying why it is not.

    Strings and booleans are rejected on purpose: a λ that arrives as ``"0.5"`` in a JSON request is a
    client bug worth reporting, not something to coerce silently. The CLI parses its text first.
    """
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise InvalidLambdaError(f"λ must be a finite real number, got {value!r} ({type(value).__name__})")
    try:
        lam = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidLambdaError(f"λ must be a finite real number, got {value!r}") from None
    if not math.isfinite(lam):
        raise InvalidLambdaError(f"λ must be finite, got {lam}: NaN and ±inf have no meaning as fusion weights")
    return lam


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidLambdaError(f"λ must be a number, got {text!r}") from None


def parse_lambda(text: str) -> float:
    """Parse one λ from text (a CLI argument), naming the text when it is not a number."""
    return validate_lambda(_number(text))


def validate_lambda_grid(values: Iterable[object]) -> list[float]:
    """Validate a λ grid: non-empty, every value finite, no duplicates; order is kept."""
    grid = [validate_lambda(v) for v in values]
    if not grid:
        raise InvalidLambdaError("the λ grid is empty: give at least one value, e.g. 0,0.5,1")
    seen: set[float] = set()
    for lam in grid:
        if lam in seen:
            raise InvalidLambdaError(f"the λ grid lists {lam} twice")
        seen.add(lam)
    return grid


def parse_lambda_grid(text: str) -> list[float]:
    """Parse a comma-separated λ grid such as ``"0,0.5,1,1.5"`` (the CLI form)."""
    return validate_lambda_grid(_number(p) for p in text.split(",") if p.strip())


#: half-precision logits are fused in float32: λ·z in bf16 rounds λ itself (0.3 → 0.30078) and the sum to
#: 8 mantissa bits, enough to change a greedy token on a 150k vocabulary
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype fusion runs in for logits of ``dtype``: float32 for half precision, else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def _as_weight(lam: LambdaLike, like: torch.Tensor) -> torch.Tensor | float:
    """λ as a scalar, or as a per-sequence tensor shaped to broadcast over ``like``'s trailing dims.

    A scalar was validated where it entered (a flag, a recipe, a request) and is trusted here. Per-row
    values that arrive as a Python sequence or a host tensor are checked for finiteness (cheap, on the
    host); a tensor already on an accelerator is not: reading its values back would synchronise the
    host with the device on every decoding step (the vLLM plugin's λ table lives there and holds
    values validated at request admission). Shapes are checked always (no device read).
    """
    if isinstance(lam, (int, float)) and not isinstance(lam, bool):
        return float(lam)
    weights = torch.as_tensor(lam)
    if weights.device.type == "cpu" and not torch.isfinite(weights).all():
        raise InvalidLambdaError(f"every λ must be finite, got {weights.tolist()}")
    weights = weights.to(device=like.device, dtype=like.dtype, non_blocking=True)
    if weights.dim() == 0:
        return weights
    if weights.dim() != 1 or weights.shape[0] != like.shape[0]:
        raise InvalidLambdaError(
            f"per-sequence λ must have one value per batch row: got shape {tuple(weights.shape)} "
            f"for logits of batch size {like.shape[0]}"
        )
    return weights.view(-1, *([1] * (like.dim() - 1)))


def fuse_logits(z_aligned: torch.Tensor, z_ref: torch.Tensor, lam: LambdaLike) -> torch.Tensor:
    """``λ·z_aligned + (1−λ)·z_ref``; ``lam`` is a float or one value per batch row (dim 0).

    Written as ``z_ref + λ·(z_aligned − z_ref)`` would lose exactness at λ = 0 when logits hold −inf,
    so the two-term form is kept: λ = 0 returns ``z_ref`` bit for bit, λ = 1 returns ``z_aligned``.
    Half-precision logits (vLLM's, in bf16 serving) are fused in float32 and returned in float32, so
    neither λ nor the sum is rounded to 8 bits; every caller (HF decoding, TrRa targets, InRa, the vLLM
    models) gets this from here. Float32 and float64 logits are fused in their own dtype.
    """
    if z_aligned.shape != z_ref.shape:
        raise ValueError(
            f"cannot fuse logits of different shapes {tuple(z_aligned.shape)} and {tuple(z_ref.shape)}: "
            "the two models must share a vocabulary (see thinkctl.models.check_same_vocab)"
        )
    dtype = compute_dtype(torch.promote_types(z_aligned.dtype, z_ref.dtype))
    z_aligned, z_ref = z_aligned.to(dtype), z_ref.to(dtype)
    w = _as_weight(lam, z_aligned)
    if isinstance(w, float):
        if w == 0.0:
            return z_ref
        if w == 1.0:
            return z_aligned
    return w * z_aligned + (1 - w) * z_ref


def fused_log_probs(
    z_aligned: torch.Tensor, z_ref: torch.Tensor, lam: LambdaLike, temperature: float = 1.0
) -> torch.Tensor:
    """Log-softmax of the fused logits over the last dim, in float32 or wider (see :func:`fuse_logits`)."""
    return torch.log_softmax(fuse_logits(z_aligned, z_ref, lam) / temperature, dim=-1)
