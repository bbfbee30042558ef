"""Fused decoding with KV caches: equivalence with transformers' own generation and batching."""

import pytest
import torch

from thinkctl.decoding import fused_generate, sample_next
from thinkctl.sampling import SamplingConfig

STOP = [0]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]


def hf_greedy(model, ids, mask, n: int) -> list[list[int]]:
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=STOP)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[: row.index(0) + 1] if 0 in row else row)
    return rows


def test_lambda_zero_is_token_identical_to_reference_greedy(random_pair) -> None:
    ref, aligned = random_pair
    ids, mask = left_padded(PROMPTS)
    want = hf_greedy(ref, ids, mask, 24)
    got = fused_generate(ref, aligned, ids, mask, 0.0, SamplingConfig(max_new_tokens=24), STOP)
    assert got.token_ids == want


def test_lambda_one_is_token_identical_to_aligned_greedy(random_pair) -> None:
    ref, aligned = random_pair
    ids, mask = left_padded(PROMPTS)
    got = fused_generate(ref, aligned, ids, mask, 1.0, SamplingConfig(max_new_tokens=24), STOP)
    assert got.token_ids == hf_greedy(aligned, ids, mask, 24)


def test_fused_step_uses_the_fused_distribution(random_pair) -> None:
    """First generated token at λ=0.6 is the argmax of the fused full-sequence logits."""
    from thinkctl.fusion import fuse_logits

    ref, aligned = random_pair
    ids, mask = left_padded(PROMPTS)
    got = fused_generate(ref, aligned, ids, mask, 0.6, SamplingConfig(max_new_tokens=1), STOP)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        z_ref = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        z_al = aligned(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert [r[0] for r in got.token_ids] == fuse_logits(z_al, z_ref, 0.6).argmax(-1).tolist()


def test_per_row_lambda_equals_each_row_alone(random_pair) -> None:
    ref, aligned = random_pair
    lams = [0.0, 0.5, 1.5]
    ids, mask = left_padded(PROMPTS)
    batched = fused_generate(ref, aligned, ids, mask, lams, SamplingConfig(max_new_tokens=20), STOP)
    for i, lam in enumerate(lams):
        one_ids, one_mask = left_padded([PROMPTS[i]])
        alone = fused_generate(ref, aligned, one_ids, one_mask, lam, SamplingConfig(max_new_tokens=20), STOP)
        assert batched.token_ids[i] == alone.token_ids[0]
        assert batched.finish_reasons[i] == alone.finish_reasons[0]


def test_finish_reasons_and_stop_tokens(random_pair) -> None:
    ref, aligned = random_pair
    ids, mask = left_padded(PROMPTS)
    free = fused_generate(ref, aligned, ids, mask, 0.5, SamplingConfig(max_new_tokens=6), STOP)
    first = free.token_ids[1][0]
    stopped = fused_generate(ref, aligned, ids, mask, 0.5, SamplingConfig(max_new_tokens=6), [first])
    assert stopped.token_ids[1] == [first] and stopped.finish_reasons[1] == "stop"
    assert all(len(t) == 6 for t, r in zip(free.token_ids, free.finish_reasons) if r == "length")


def test_reference_only_rejects_nonzero_lambda(random_pair) -> None:
    ref, _ = random_pair
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="aligned stream"):
        fused_generate(ref, None, ids, mask, 0.5, SamplingConfig(max_new_tokens=2), STOP)


def test_sampling_is_seeded_and_top_p_truncates(random_pair) -> None:
    ref, aligned = random_pair
    ids, mask = left_padded(PROMPTS)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    a = fused_generate(ref, aligned, ids, mask, 0.5, cfg, STOP)
    b = fused_generate(ref, aligned, ids, mask, 0.5, cfg, STOP)
    assert a.token_ids == b.token_ids
    logits = torch.tensor([[3.0, 2.9, -5.0, -6.0]])
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.5), [torch.Generator().manual_seed(s)]).item() for s in range(50)}
    assert draws == {0}
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.9), [torch.Generator().manual_seed(s)]).item() for s in range(50)}
    assert draws == {0, 1}
