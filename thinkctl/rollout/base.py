"""The engine-agnostic rollout interface.

A backend turns rendered prompts into completions at a fusion weight λ. It hides where the logits come
from (two models, one InRa model, transformers or vLLM) and reports token counts and finish reasons with
one meaning across engines:

* ``token_ids`` are the generated tokens, without the prompt, including the stop token when one was hit;
* ``finish_reason`` is ``"stop"`` when a stop token ended the completion and ``"length"`` when
  ``max_new_tokens`` did.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thinkctl.errors import ConfigError
from thinkctl.fusion import validate_lambda
from thinkctl.sampling import SamplingConfig


@dataclass
class Completion:
    """One generated continuation of one prompt."""

    text: str
    token_ids: list[int]
    finish_reason: str
    lam: float
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def broadcast_lambdas(lam: float | Sequence[float], n: int) -> list[float]:
    """One validated λ per prompt, from a single λ or a list of exactly ``n``.

    Backends call this first in ``generate``: a backend call is where a λ from Python code enters, so
    it is validated here once and trusted by decoding and fusion behind it.
    """
    if isinstance(lam, (int, float)) and not isinstance(lam, bool):
        return [validate_lambda(lam)] * n
    lams = [validate_lambda(x) for x in lam]
    if len(lams) != n:
        raise ConfigError(f"got {len(lams)} λ values for {n} prompts: give one λ or one per prompt")
    return lams


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C inside :meth:`RolloutBackend.generate`, carrying what was finished before it.

    ``completed`` maps the index of a prompt in the interrupted call to its completion, so a sweep can
    save the samples of the chunk in flight instead of losing them with the interrupt.
    """

    def __init__(self, completed: dict[int, Completion]) -> None:
        super().__init__(f"interrupted during generation ({len(completed)} completions finished)")
        self.completed = completed


def prompt_seeds(sampling: SamplingConfig, seeds: Sequence[int] | None, n: int) -> list[int] | None:
    """One sampling seed per prompt: ``seeds`` as given, else the prompt's index in the call added to
    ``sampling.seed``; None when decoding is greedy (no randomness to seed)."""
    if sampling.greedy:
        return None
    if seeds is None:
        return [sampling.derive(i).seed for i in range(n)]
    if len(seeds) != n:
        raise ConfigError(f"got {len(seeds)} seeds for {n} prompts: give one per prompt")
    return [int(s) for s in seeds]


class RolloutBackend(abc.ABC):
    """Generates completions at a fusion weight λ (one per call, or one per prompt)."""

    #: the tokenizer shared by every model behind the backend
    tokenizer: object

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        lam: float | Sequence[float],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Complete each prompt (already rendered with the chat template) at its λ.

        When sampling, prompt ``i`` is drawn from its own random stream seeded with ``seeds[i]``
        (default: ``sampling.seed + i``, see :func:`prompt_seeds`): the same prompt, λ and seed give
        the same completion whatever else the call holds, which is what lets a sweep seed each sample
        by its record key (:meth:`thinkctl.sampling.SamplingConfig.seed_for`).
        """

    def close(self) -> None:
        """Release engines and memory; the default has nothing to release."""


#: engine name → ``factory(reference, aligned, **kwargs)``; see :func:`thinkctl.rollout.make_backend`
ENGINES: dict[str, Callable[..., RolloutBackend]] = {}


def register_engine(name: str, factory: Callable[..., RolloutBackend]) -> None:
    """Make ``make_backend(name, ...)`` call ``factory(reference, aligned, **kwargs)``."""
    ENGINES[name] = factory
