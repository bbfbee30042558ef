"""The fusion math against a float64 reference, and λ validation."""

import math

import pytest
import torch

from thinkctl.errors import InvalidLambdaError
from thinkctl.fusion import fuse_logits, fused_log_probs, parse_lambda, parse_lambda_grid, validate_lambda, validate_lambda_grid

LAMBDAS = [0.0, 1.0, 0.5, 1.5, -0.5]


def reference_fused_log_probs(z_al: list[float], z_ref: list[float], lam: float) -> list[float]:
    """Plain-Python float64: log softmax of λ·z_al + (1−λ)·z_ref."""
    fused = [lam * a + (1 - lam) * r for a, r in zip(z_al, z_ref)]
    m = max(fused)
    lse = m + math.log(sum(math.exp(x - m) for x in fused))
    return [x - lse for x in fused]


@pytest.mark.parametrize("lam", LAMBDAS)
def test_fused_log_probs_match_float64_reference(lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    z_al, z_ref = torch.randn(3, 7, 50, generator=g) * 4, torch.randn(3, 7, 50, generator=g) * 4
    got = fused_log_probs(z_al.double(), z_ref.double(), lam)
    for b in range(3):
        for t in range(7):
            want = reference_fused_log_probs(z_al[b, t].tolist(), z_ref[b, t].tolist(), lam)
            assert torch.allclose(got[b, t], torch.tensor(want, dtype=torch.float64), atol=1e-12)
    got32 = fused_log_probs(z_al, z_ref, lam)
    assert torch.allclose(got32.double(), got, atol=1e-4)


def test_endpoints_are_exactly_the_models() -> None:
    z_al, z_ref = torch.randn(2, 10), torch.randn(2, 10)
    z_ref[0, 3] = float("-inf")
    assert torch.equal(fuse_logits(z_al, z_ref, 0.0), z_ref)
    assert torch.equal(fuse_logits(z_al, z_ref, 1.0), z_al)


def test_per_row_lambda_equals_rowwise_scalar_fusion() -> None:
    z_al, z_ref = torch.randn(3, 4, 9), torch.randn(3, 4, 9)
    lams = [0.0, 0.7, 1.5]
    fused = fuse_logits(z_al, z_ref, torch.tensor(lams))
    for i, lam in enumerate(lams):
        assert torch.allclose(fused[i], fuse_logits(z_al[i], z_ref[i], lam))
    with pytest.raises(InvalidLambdaError, match="one value per batch row"):
        fuse_logits(z_al, z_ref, torch.tensor([0.1, 0.2]))
    with pytest.raises(InvalidLambdaError, match="finite"):
        fuse_logits(z_al, z_ref, torch.tensor([0.1, float("nan"), 0.2]))


def test_shape_mismatch_names_the_vocab_problem() -> None:
    with pytest.raises(ValueError, match="share a vocabulary"):
        fuse_logits(torch.randn(2, 10), torch.randn(2, 11), 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "0.5", None, True, [0.5]])
def test_validate_lambda_rejects_non_finite_and_non_numbers(bad: object) -> None:
    with pytest.raises(InvalidLambdaError):
        validate_lambda(bad)


def test_validate_lambda_accepts_numbers_of_any_kind() -> None:
    assert validate_lambda(1) == 1.0
    assert validate_lambda(torch.tensor(0.25)) == 0.25
    assert validate_lambda(-0.5) == -0.5


def test_grids() -> None:
    assert parse_lambda_grid("0, 0.5,1,1.5") == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(InvalidLambdaError, match="twice"):
        validate_lambda_grid([0, 0.5, 0])
    with pytest.raises(InvalidLambdaError, match="empty"):
        parse_lambda_grid(" , ")
    with pytest.raises(InvalidLambdaError, match="'abc'"):
        parse_lambda_grid("0,abc")
    with pytest.raises(InvalidLambdaError, match="finite"):
        parse_lambda("nan")


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_logits_are_fused_within_float32_tolerance_of_float64(half: torch.dtype) -> None:
    """vLLM serves logits in bf16: λ = 0.3 must not become 0.30078, nor the sum round to 8 bits."""
    g = torch.Generator().manual_seed(0)
    z_al, z_ref = (torch.randn(16, 151_936, generator=g) * 8).to(half), (torch.randn(16, 151_936, generator=g) * 8).to(half)
    lams = torch.tensor([0.3, 0.7, 1.5, -0.5] * 4)
    want = lams.double()[:, None] * z_al.double() + (1 - lams.double()[:, None]) * z_ref.double()
    for lam in (0.3, lams):
        got = fuse_logits(z_al, z_ref, lam)
        assert got.dtype == torch.float32
        expected = want if lam is lams else 0.3 * z_al.double() + 0.7 * z_ref.double()
        assert (got.double() - expected).abs().max() < 1e-4  # bf16 fusion is off by 0.03-0.09 here
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert torch.equal(fuse_logits(z_al, z_ref, 0.0), z_ref.float()), "λ = 0 is still the reference exactly"


def test_device_lambda_tensors_are_not_read_back_to_the_host() -> None:
    """A per-row λ already on a device (the vLLM λ table's) is trusted: checking it would sync every step.
    Meta tensors have no values, so any host read of λ raises."""
    z = torch.empty(4, 10, device="meta")
    fused = fuse_logits(z, z, torch.empty(4, device="meta"))
    assert fused.device.type == "meta" and fused.shape == (4, 10)
