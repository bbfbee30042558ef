"""How each next token is picked: the one sampling config every job composes.

Sweeps, ``realign``, ``generate`` and InRa's training rollouts all hold a :class:`SamplingConfig`
(through :func:`thinkctl.config.group`), so a new sampling setting is one field here and every recipe
section and command that composes it gains the key and the flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from thinkctl.config import option
from thinkctl.errors import ConfigError


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

    @property
    def controls_thinking(self) -> bool:
        """Whether decoding must track the think block (a budget or a floor is set)."""
        return self.max_thinking_tokens is not None or self.min_thinking_tokens is not None

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
