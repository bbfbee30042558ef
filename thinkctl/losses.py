"""Distillation towards the fused teacher: the loss TrRa and InRa both train with.

On every response token the target is ``softmax(λ·z_aligned + (1−λ)·z_ref)`` (built by
:mod:`thinkctl.fusion`, never here) and the student pays a divergence to it, as in TRL's GKD:

* ``forward_kl``  KL(teacher ‖ student), mass-covering (the default: plain distillation);
* ``reverse_kl``  KL(student ‖ teacher), mode-seeking;
* ``jsd``         generalized JSD with mixture ``β·p_teacher + (1−β)·p_student`` (β=0 is forward KL,
  β=1 reverse KL, exactly as ``GKDTrainer.generalized_jsd_loss``).

The loss is a mean over response tokens (prompt and padding are masked out), or with ``reduction="sum"`` their
sum, which a Trainer divides by the tokens of a whole optimizer step (all micro-batches and processes, see
:class:`thinkctl.training.SummedLossTrainer`). It comes in two forms
that compute the same number (the float64 tests check loss and gradients):

* :func:`fused_kd_loss` from logits, for callers that have the three logits anyway (InRa's two paths
  and its teacher);
* :func:`chunked_fused_kd_loss` from final hidden states and lm_head weights, for large vocabularies
  (TrRa). With Qwen2.5's 151,936-token vocabulary the float32 logits of three models on a 2×8k batch
  are ~30 GB before softmax buffers; the chunked form keeps only the response positions and walks them
  in chunks: for each chunk it computes the three logits, fuses, takes the divergence and — in the same
  pass — the gradient with respect to the student's chunk logits, which it folds straight into the
  gradients of the hidden states and the head weight. Only one chunk of logits is alive at any time and
  nothing is recomputed in backward: the "fused linear + loss" pattern of Liger-Kernel's cross entropy,
  applied to KD.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from thinkctl.config import option
from thinkctl.errors import ConfigError
from thinkctl.fusion import LambdaLike, fused_log_probs

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def divergence_option(**kwargs: Any) -> Any:
    """The ``divergence`` config field, declared once for every method that distils."""
    return option("forward_kl", "divergence to the fused teacher: forward_kl (distillation), reverse_kl (mode-seeking) "
                  "or jsd (generalized JSD, see jsd_beta)", choices=DIVERGENCES, **kwargs)


def jsd_beta_option() -> Any:
    """The ``jsd_beta`` config field that goes with :func:`divergence_option`."""
    return option(0.5, "JSD mixture weight of the teacher: 0 = forward KL, 1 = reverse KL")


def _reduce(total: torch.Tensor, n: torch.Tensor, reduction: str) -> torch.Tensor:
    """The sum over selected tokens as it is, or divided by their number (at least 1)."""
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return total / n.clamp(min=1).to(total.dtype)


def validate_divergence(kind: str, beta: float = 0.5) -> None:
    """Raise :class:`ConfigError` for an unknown divergence or a JSD β outside [0, 1]."""
    if kind not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {kind!r}; use one of {list(DIVERGENCES)}")
    if kind == "jsd" and not 0.0 <= beta <= 1.0:
        raise ConfigError(f"jsd_beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast to float32 for softmax; float32/float64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str = "forward_kl", beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence between two log-distributions over the last dim (shape ``[...]``)."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True).sum(-1)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return F.kl_div(teacher_logp, student_logp, reduction="none", log_target=True).sum(-1)
    if kind != "jsd":
        validate_divergence(kind, beta)
    mixture = torch.logsumexp(torch.stack([student_logp + math.log(1 - beta), teacher_logp + math.log(beta)]), dim=0)
    kl_teacher = F.kl_div(mixture, teacher_logp, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mixture, student_logp, reduction="none", log_target=True).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def fused_kd_loss(
    student_logits: torch.Tensor, ref_logits: torch.Tensor, aligned_logits: torch.Tensor,
    mask: torch.Tensor, lam: LambdaLike, kind: str = "forward_kl", beta: float = 0.5, reduction: str = "mean",
) -> torch.Tensor:
    """Mean divergence to the fused teacher over positions where ``mask`` is true, from logits.

    All logits are ``[batch, seq, vocab]`` already aligned with their targets (position t predicts
    token t+1), ``mask`` is ``[batch, seq]``; ``lam`` is a float or one value per batch row. The
    teacher is a constant target: no gradient flows into the reference or aligned logits.
    """
    validate_divergence(kind, beta)
    with torch.no_grad():
        teacher = fused_log_probs(aligned_logits, ref_logits, lam)
    student = torch.log_softmax(_wide(student_logits), dim=-1)
    per_token = token_divergence(student, teacher.to(student.dtype), kind, beta)
    return _reduce((per_token * mask.to(per_token.dtype)).sum(), mask.sum(), reduction)


def _per_token_lambda(lam: LambdaLike, mask: torch.Tensor) -> torch.Tensor | float:
    """A scalar λ as is; one λ per batch row expanded to one per selected (response) position."""
    if isinstance(lam, (int, float)) and not isinstance(lam, bool):
        return float(lam)
    rows = torch.as_tensor(lam, dtype=torch.float64, device=mask.device)
    if rows.dim() == 0:
        return float(rows)
    return rows.view(-1, *([1] * (mask.dim() - 1))).expand(mask.shape)[mask]


def _head_logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``hidden @ headᵀ`` in the head's precision, as autocast computes it on a GPU: a model in bfloat16 whose
    final norm hands back float32 states (transformers' Qwen2 under the Trainer's bf16 on CPU) still multiplies."""
    return hidden.to(head.dtype) @ head.T


class _ChunkedFusedKD(torch.autograd.Function):
    """Sum of per-token divergences over flat response positions; gradients are computed in forward."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_r, w_r, h_a, w_a, lam, kind, beta, chunk_size):  # type: ignore[override]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h_s) if need_h else None
        grad_w = torch.zeros_like(w_s, dtype=torch.float32 if w_s.dtype in (torch.float16, torch.bfloat16) else w_s.dtype) if need_w else None
        total = torch.zeros((), dtype=_wide(h_s[:0]).dtype, device=h_s.device)
        for start in range(0, h_s.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            lam_c = lam if isinstance(lam, float) else lam[sl]
            teacher = fused_log_probs(_head_logits(h_a[sl], w_a), _head_logits(h_r[sl], w_r), lam_c)
            with torch.enable_grad():
                z = _head_logits(h_s[sl], w_s).detach().requires_grad_(need_h or need_w)
                student = torch.log_softmax(_wide(z), dim=-1)
                loss = token_divergence(student, teacher.to(student.dtype), kind, beta).sum()
            if need_h or need_w:
                (g_z,) = torch.autograd.grad(loss, z)
                if need_h:
                    grad_h[sl] = g_z @ w_s
                if need_w:
                    grad_w += (g_z.T @ h_s[sl].to(g_z.dtype)).to(grad_w.dtype)
            total += loss.detach()
        # The gradients are kept on ctx rather than saved tensors: backward hands them out (scaled in place)
        # exactly once, so no second weight-sized buffer is ever allocated.
        ctx.grads = (grad_h, grad_w)
        ctx.w_dtype = w_s.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.grads
        ctx.grads = (None, None)
        if grad_h is not None:
            grad_h.mul_(grad_out.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out.to(grad_w.dtype)).to(ctx.w_dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None, None


def chunked_fused_kd_loss(
    student_hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    aligned_hidden: torch.Tensor,
    student_head: torch.Tensor,
    ref_head: torch.Tensor,
    aligned_head: torch.Tensor,
    mask: torch.Tensor,
    lam: LambdaLike,
    kind: str = "forward_kl",
    beta: float = 0.5,
    chunk_size: int = 1024,
    reduction: str = "mean",
) -> torch.Tensor:
    """:func:`fused_kd_loss` from final hidden states and lm_head weights, one chunk of tokens at a time.

    Hidden states are ``[batch, seq, hidden]`` (after the final norm, aligned with their targets like
    the logits of :func:`fused_kd_loss`); heads are ``[vocab, hidden]`` lm_head weights (logits = h @ Wᵀ,
    no bias: Qwen2/Llama/R1-distill heads). ``chunk_size`` response tokens are processed at once: peak
    extra memory is about ``4 × chunk_size × vocab`` floats whatever the sequence length.
    """
    validate_divergence(kind, beta)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be ≥ 1, got {chunk_size}")
    if not (student_head.shape == ref_head.shape == aligned_head.shape):
        raise ValueError(
            f"lm_head shapes differ: student {tuple(student_head.shape)}, reference {tuple(ref_head.shape)}, "
            f"aligned {tuple(aligned_head.shape)}; the three models must share one vocabulary"
        )
    mask = mask.bool()
    n = mask.sum()
    lam_tok = _per_token_lambda(lam, mask)
    total = _ChunkedFusedKD.apply(
        student_hidden[mask], student_head, ref_hidden[mask].detach(), ref_head.detach(),
        aligned_hidden[mask].detach(), aligned_head.detach(), lam_tok, kind, beta, chunk_size,
    )
    return _reduce(total, n, reduction)
