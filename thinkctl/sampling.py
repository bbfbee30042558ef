"""How each next token is picked: the one sampling config every job composes.

Sweeps, ``realign``, ``generate`` and InRa's training rollouts all hold a :class:`SamplingConfig`
(through :func:`thinkctl.config.group`), so a new sampling setting is one field here and every recipe
section and command that composes it gains the key and the flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from thinkctl.config import group, lambda_option, option
from thinkctl.errors import ConfigError
from thinkctl.schedules import CONTROLS, SCHEDULE_DEFAULTS



@dataclass(frozen=True)
class ScheduleConfig:
    """A control that acts while the model thinks, on top of the budget (:mod:`thinkctl.schedules` has the formulas).

    * ``hard``: the thinking budget ``max_thinking_tokens`` alone (``</think>`` forced at B);
    * ``soft``: λ ramps from the request's λ towards ``fast_lambda`` between ``ramp_start``·B and
      ``ramp_end``·B, so the model finishes its thought in its fast style; the hard cap at B stays;
    * ``bias``: the baseline other engines offer (vLLM PR #45727): over the last 30% of B a
      sigmoid-ramped bias pulls the ``</think>`` logit towards the winning logit less ``bias_margin``;
      λ stays; the hard cap at B stays;
    * ``target``: land near ``thinking_target`` = N thinking tokens: the request's λ is the start
      (callers pick it from a calibrated length model), λ is pushed towards ``fast_lambda`` in
      proportion to the tokens spent past (1 − tol)·N, ``</think>`` is held back below (1 − tol)·N and
      forced at (1 + tol)·N, tol = ``target_tolerance``.

    Every field defaults to None, which means the documented default (:data:`SCHEDULE_DEFAULTS`), so
    run directories recorded before these settings existed still resume (:mod:`thinkctl.runs`).
    """

    control: str | None = option(None, "control acting while the model thinks: hard (the budget alone), soft (λ ramps "
                                       "towards fast_lambda near the budget), bias (</think> bias ramp, vLLM PR #45727), "
                                       "target (land near thinking_target)", choices=CONTROLS)
    thinking_target: int | None = option(None, "target control: thinking tokens per response to land near")
    fast_lambda: float | None = lambda_option(None, "soft and target controls: the λ they move towards (default: the "
                                                    "effort table's `low` where one is given, else 1.0)")
    ramp_start: float | None = option(None, "soft control: fraction of the budget at which λ starts to move (default 0.3)")
    ramp_end: float | None = option(None, "soft control: fraction of the budget at which λ reaches fast_lambda (default 0.7)")
    bias_margin: float | None = option(None, "bias control: the ramp pulls </think> up to this far below the top logit "
                                             "(default 0.25 as in vLLM PR #45727: under greedy decoding it never wins "
                                             "before the hard cap; a negative margin lets it)")
    target_tolerance: float | None = option(None, "target control: the band ±this fraction of thinking_target between the "
                                                  "floor and the hard cap (default 0.15)")

    def value(self, name: str) -> float:
        """A numeric setting, its documented default when left at None."""
        value = getattr(self, name)
        return float(SCHEDULE_DEFAULTS[name] if value is None else value)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token; ``temperature == 0`` means greedy."""

    max_new_tokens: int = option(512, "most tokens generated per response (thinking and answer together)")
    temperature: float = option(0.0, "sampling temperature; 0 = greedy")
    top_p: float = option(1.0, "nucleus sampling: keep the most likely tokens up to this total probability")
    seed: int = option(0, "random seed of the sampling (in sweeps and realign also of generated benchmarks' problems)")
    max_thinking_tokens: int | None = option(
        None, "thinking budget: after this many thinking tokens </think> is forced and the answer follows (none: no cap)"
    )
    min_thinking_tokens: int | None = option(
        None, "thinking floor: </think> and end-of-text are held back until this many thinking tokens (s1-style)"
    )
    schedule: ScheduleConfig = group(ScheduleConfig)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("max_thinking_tokens", "min_thinking_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.max_thinking_tokens is not None and (self.min_thinking_tokens or 0) > self.max_thinking_tokens:
            raise ConfigError(
                f"min_thinking_tokens ({self.min_thinking_tokens}) is above max_thinking_tokens ({self.max_thinking_tokens})"
            )
        self._check_schedule()

    def _check_schedule(self) -> None:
        s = self.schedule
        if s.control in ("hard", "soft", "bias") and not self.max_thinking_tokens:
            raise ConfigError(f"control {s.control!r} acts against a thinking budget: set max_thinking_tokens (≥ 1)")
        if (s.control == "target") != (s.thinking_target is not None):
            raise ConfigError("thinking_target is the target control's setting: give both `control: target` and "
                              f"thinking_target (got control={s.control!r}, thinking_target={s.thinking_target!r})")
        if s.thinking_target is not None and (isinstance(s.thinking_target, bool) or not isinstance(s.thinking_target, int)
                                              or s.thinking_target < 1):
            raise ConfigError(f"thinking_target must be a positive integer, got {s.thinking_target!r}")
        if not 0 <= s.value("ramp_start") < s.value("ramp_end") <= 1:
            raise ConfigError(f"ramp_start and ramp_end must satisfy 0 ≤ ramp_start < ramp_end ≤ 1, got "
                              f"{s.value('ramp_start')} and {s.value('ramp_end')}")
        if not 0 < s.value("target_tolerance") < 1:
            raise ConfigError(f"target_tolerance must be in (0, 1), got {s.value('target_tolerance')}")
        cap, floor = self.thinking_cap, self.thinking_floor
        if cap is not None and floor is not None and floor > cap:
            raise ConfigError(f"the thinking floor ({floor}) is above the thinking cap ({cap}): lower min_thinking_tokens or "
                              "thinking_target, or raise max_thinking_tokens")
        if not math.isfinite(s.value("bias_margin")):
            raise ConfigError(f"bias_margin must be finite, got {s.bias_margin}")

    @property
    def controls_thinking(self) -> bool:
        """Whether decoding must track the think block (a budget, a floor or a control is set)."""
        return self.thinking_cap is not None or self.thinking_floor is not None

    @property
    def control(self) -> str | None:
        """The control acting while the model thinks: the schedule's, else ``hard`` when a budget is set."""
        return self.schedule.control or ("hard" if self.max_thinking_tokens is not None else None)

    @property
    def thinking_cap(self) -> int | None:
        """Thinking tokens after which ``</think>`` is forced: the budget, and target mode's (1 + tol)·N."""
        caps = [self.max_thinking_tokens]
        if self.schedule.thinking_target is not None:
            caps.append(math.ceil((1 + self.schedule.value("target_tolerance")) * self.schedule.thinking_target))
        return min((c for c in caps if c is not None), default=None)

    @property
    def thinking_floor(self) -> int | None:
        """Thinking tokens before which ``</think>`` is held back: the floor, and target mode's (1 − tol)·N."""
        floors = [self.min_thinking_tokens]
        if self.schedule.thinking_target is not None:
            floors.append(math.floor((1 - self.schedule.value("target_tolerance")) * self.schedule.thinking_target))
        return max((f for f in floors if f is not None), default=None)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def derive(self, offset: int) -> SamplingConfig:
        """The settings for the ``offset``-th independent draw (a chunk, a batch, a sample): seed + offset.

        Every place that splits work derives its seeds this way, so a run is reproducible under one
        seed and no two parts of it share a random stream. Greedy decoding uses no seed: unchanged.
        """
        return self if self.greedy or offset == 0 else dataclasses.replace(self, seed=self.seed + offset)

    def seed_for(self, *key: str | int | float) -> int:
        """The seed of the one sample that ``key`` names (in sweeps: benchmark, problem id, λ, sample index).

        A hash of this config's seed and the key, so a sample draws the same stream whatever else is
        generated with it, in whatever order: a resumed run, or one grown from n to 2n samples per
        problem, repeats no earlier draw and reproduces the uninterrupted run record for record. (A seed
        from a sample's position in the work list would restart at the first seeds after a resume.)
        """
        digest = hashlib.sha256(json.dumps([self.seed, *key]).encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: what torch and vLLM generators take
