"""The default rollout backend: transformers models driven by :func:`thinkctl.decoding.fused_generate`.

Runs anywhere torch runs. Prompts are sorted by length and batched, so padding stays small; results
come back in input order. λ may differ per prompt: rows with different λ share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from thinkctl.batch import pad
import torch

from thinkctl.decoding import LambdaSchedule, LogitStream, ThinkingControl, fused_generate
from thinkctl.errors import ConfigError
from thinkctl.models import check_same_vocab, load_causal_lm, load_tokenizer
from thinkctl.rollout.base import Completion, GenerationInterrupted, RolloutBackend, broadcast_lambdas, prompt_seeds
from thinkctl.sampling import SamplingConfig
from thinkctl.thinking import prompt_opens_thinking, think_token_ids


class HFBackend(RolloutBackend):
    """Fused (or plain) generation from a reference stream and an optional aligned stream."""

    def __init__(
        self,
        reference: LogitStream,
        aligned: LogitStream | None,
        tokenizer: Any,
        batch_size: int = 16,
        device: str = "cpu",
        stop_token_ids: Sequence[int] | None = None,
        progress: bool = True,
    ) -> None:
        self.reference = reference
        self.aligned = aligned
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        if stop_token_ids is None:
            eos = tokenizer.eos_token_id
            stop_token_ids = eos if isinstance(eos, list) else [eos]
        self.stop_token_ids = list(stop_token_ids)

    @classmethod
    def from_paths(
        cls,
        reference: str,
        aligned: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 16,
    ) -> HFBackend:
        """Load the models by hub name or path; the aligned model is optional (plain decoding)."""
        tokenizer = load_tokenizer(reference)
        ref_model = load_causal_lm(reference, dtype, device)
        al_model = None
        if aligned is not None:
            check_same_vocab(tokenizer, load_tokenizer(aligned))
            al_model = load_causal_lm(aligned, dtype, device)
            check_same_vocab(tokenizer, tokenizer, ref_model, al_model)
        return cls(ref_model, al_model, tokenizer, batch_size=batch_size, device=device)

    def generate(
        self,
        prompts: Sequence[str],
        lam: float | Sequence[float],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        lams = broadcast_lambdas(lam, len(prompts))
        row_seeds = prompt_seeds(sampling, seeds, len(prompts))
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        markers = self._think_markers(sampling)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: dict[int, Completion] = {}
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        try:
            for idx in tqdm(batches, desc="generate", unit="batch", disable=not self.progress or len(batches) < 2):
                input_ids, mask = pad([encoded[i] for i in idx], self.tokenizer.pad_token_id, left=True)
                thinking = None
                if markers is not None:
                    inside = [prompt_opens_thinking(prompts[i]) for i in idx]
                    thinking = ThinkingControl(markers, inside, sampling.thinking_cap, sampling.thinking_floor,
                                               self.stop_token_ids, self.device, self._schedule(sampling, [lams[i] for i in idx]))
                out = fused_generate(
                    self.reference, self.aligned, input_ids.to(self.device), mask.to(self.device), [lams[i] for i in idx],
                    sampling, self.stop_token_ids, thinking, None if row_seeds is None else [row_seeds[i] for i in idx],
                )
                for row, i in enumerate(idx):
                    ids = out.token_ids[row]
                    meta: dict[str, object] = {}
                    if out.thinking_forced is not None:
                        meta = {"thinking_budget": sampling.max_thinking_tokens, "thinking_forced": out.thinking_forced[row]}
                    if sampling.control is not None:
                        trace = out.lambdas[row] if out.lambdas is not None else []
                        meta.update(control=sampling.control, final_lambda=trace[-1] if trace else lams[i],
                                    thinking_budget=sampling.schedule.thinking_target or sampling.max_thinking_tokens)
                    results[i] = Completion(
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        token_ids=ids,
                        finish_reason=out.finish_reasons[row],
                        lam=lams[i],
                        meta=meta,
                    )
        except KeyboardInterrupt:
            raise GenerationInterrupted(results) from None
        return [results[i] for i in range(len(prompts))]

    def _schedule(self, sampling: SamplingConfig, lams: Sequence[float]) -> LambdaSchedule | None:
        """The λ schedule of ``sampling``'s control for rows at ``lams`` (None for the hard cap or no control)."""
        schedule = sampling.schedule
        if schedule.control in (None, "hard"):
            return None
        if self.aligned is None and schedule.control != "bias" and any(lam != schedule.value("fast_lambda") for lam in lams):
            raise ConfigError(f"the {schedule.control} control moves λ towards fast_lambda={schedule.value('fast_lambda'):g} "
                              "and needs an aligned model (--aligned, or an --inra checkpoint)")
        budget = schedule.thinking_target if schedule.control == "target" else sampling.max_thinking_tokens
        assert budget is not None  # SamplingConfig checks that the control has its budget or target
        return LambdaSchedule(schedule, budget, torch.tensor(list(lams), dtype=torch.float32, device=self.device))

    def _think_markers(self, sampling: SamplingConfig) -> tuple[int, int] | None:
        """The think-marker ids when ``sampling`` bounds thinking (None when it does not)."""
        if not sampling.controls_thinking:
            return None
        markers = think_token_ids(self.tokenizer)
        if markers is None:
            raise ConfigError(
                "max_thinking_tokens/min_thinking_tokens/control need <think> and </think> as single tokens of the tokenizer, "
                "and this one has not: the model has no think block to bound"
            )
        return markers
