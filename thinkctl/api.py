"""thinkctl's public Python API: what the commands do, as functions with promised signatures.

Everything here is re-exported from the package (``import thinkctl; thinkctl.load_pair(...)``) and is
a thin layer over the modules the commands use, so the Python API and the command line never drift
apart: a setting's name is its recipe key (``max_new_tokens``, ``max_thinking_tokens``, ``limit``, …)
in both. Names not exported by ``thinkctl.__all__`` are internal and may change.

The examples run as tests (``tests/test_api.py``) on small random models: ``REFERENCE``, ``ALIGNED``
and ``INRA`` name model directories (a reference/aligned pair and an InRa checkpoint), ``tmp`` is a
scratch directory, ``SWEEP`` a finished sweep run directory. With the tiny pair they read::

    from thinkctl.tiny import build_tiny_pair, default_tiny_dir   # `thinkctl tiny build`, about 10 minutes on CPU
    pair = build_tiny_pair(default_tiny_dir())
    REFERENCE, ALIGNED = pair.reference, pair.aligned
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thinkctl.config import build
from thinkctl.data import render_prompt
from thinkctl.errors import ConfigError
from thinkctl.fusion import validate_lambda
from thinkctl.prompts import PromptConfig
from thinkctl.rollout import BackendConfig, Completion, RolloutBackend
from thinkctl.sampling import SamplingConfig

PathLike = str | os.PathLike[str]


class FusedModel:
    """A slow thinker and a fast thinker behind one tokenizer: text in, completions at a fusion weight λ out.

    ``fused = λ·logits_aligned + (1−λ)·logits_reference`` at every step, each model with its own KV
    cache; λ = 0 is the reference as it is, λ = 1 the aligned model, λ in between interpolates and
    λ > 1 or < 0 extrapolates. Get one from :func:`load_pair` (two models), :func:`load_inra` (one
    InRa checkpoint: its original and adapter paths) or :func:`from_models` (models already in memory).
    Close it (or use ``with``) to release a vLLM engine; the transformers engine holds nothing to release.

    Examples:
        >>> import thinkctl
        >>> with thinkctl.load_pair(REFERENCE, ALIGNED) as model:
        ...     print(model.kind, model.sources["reference"] == str(REFERENCE))
        fused True
    """

    def __init__(self, backend: RolloutBackend, kind: str, sources: Mapping[str, str], engine: BackendConfig) -> None:
        self.backend = backend
        self.kind = kind  # fused | plain | inra: the `method` field of the records it produces
        self.sources = dict(sources)
        self.engine = engine

    @property
    def tokenizer(self) -> Any:
        """The tokenizer every model behind this one shares."""
        return self.backend.tokenizer

    @property
    def name(self) -> str:
        """What records name this model by (the ``model`` field): its path(s) or hub name(s)."""
        return " + ".join(self.sources.values())

    def generate(
        self,
        questions: str | Sequence[str],
        lam: float | Sequence[float] = 0.0,
        *,
        raw: bool = False,
        prompt_template: str = "plain",
        system_prompt: str | None = None,
        **sampling: Any,
    ) -> list[Completion]:
        """Answer ``questions`` at ``lam`` (one λ, or one per question); returns one :class:`Completion` each.

        ``sampling`` takes the sampling keys of a recipe: ``max_new_tokens`` (512), ``temperature`` (0:
        greedy), ``top_p``, ``seed``, and the thinking controls ``max_thinking_tokens`` (a budget after which
        ``</think>`` is forced, so the answer still follows) and ``min_thinking_tokens`` (a floor below which
        ``</think>`` is held back). Questions go through the chat template with ``prompt_template`` (a preset,
        ``plain`` or ``r1-math``, or a text containing ``{question}``); ``raw=True`` sends them as they are.

        Examples:
            >>> model = thinkctl.load_pair(REFERENCE, ALIGNED)
            >>> out = model.generate(["1 + 2 = ?", "3 + 4 = ?"], lam=0.5, max_new_tokens=8)
            >>> [c.lam for c in out], all(c.num_tokens <= 8 for c in out)
            ([0.5, 0.5], True)
            >>> capped = model.generate("1 + 2 = ?", lam=[1.0], max_new_tokens=12, max_thinking_tokens=2)
            >>> capped[0].meta["thinking_budget"]
            2
        """
        items = [questions] if isinstance(questions, str) else list(questions)
        cfg = build(SamplingConfig, dict(sampling), where="generate(...) sampling")
        prompt = PromptConfig(prompt_template=prompt_template, system_prompt=system_prompt)
        prompts = items if raw else [render_prompt(self.tokenizer, q, prompt) for q in items]
        return self.backend.generate(prompts, lam, cfg)

    def close(self) -> None:
        """Release the engine (vLLM frees its GPU memory); the model is unusable afterwards."""
        self.backend.close()

    def __enter__(self) -> FusedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _engine(engine: str, dtype: str, device: str, batch_size: int, parallel: Mapping[str, Any]) -> BackendConfig:
    return BackendConfig(engine=engine, dtype=dtype, device=device, batch_size=batch_size, **parallel)


def load_pair(
    reference: PathLike,
    aligned: PathLike | None = None,
    *,
    engine: str = "hf",
    dtype: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    **parallel: Any,
) -> FusedModel:
    """Load a reference (slow thinker) and an aligned (fast thinker) model as one :class:`FusedModel`.

    Both are hub names or local directories sharing one tokenizer (checked token by token). Without
    ``aligned`` only λ = 0 (the reference alone) is defined. ``engine="vllm"`` serves both from one vLLM
    engine (``parallel`` takes its ``tensor_parallel_size``, ``data_parallel_size``, …); ``auto`` dtype and
    device pick bfloat16 on a GPU, float32 on CPU.

    Examples:
        >>> model = thinkctl.load_pair(REFERENCE, ALIGNED, batch_size=4)
        >>> model.generate("2 + 2 = ?", lam=1.0, max_new_tokens=4)[0].finish_reason in {"stop", "length"}
        True
    """
    cfg = _engine(engine, dtype, device, batch_size, parallel)
    sources = {"reference": str(reference), **({"aligned": str(aligned)} if aligned is not None else {})}
    backend = cfg.open(str(reference), str(aligned) if aligned is not None else None)
    return FusedModel(backend, "fused" if aligned is not None else "plain", sources, cfg)


def load_inra(
    path: PathLike, *, engine: str = "hf", dtype: str = "auto", device: str = "auto", batch_size: int = 16, **parallel: Any,
) -> FusedModel:
    """Load an InRa checkpoint (one model with its own λ dial) as a :class:`FusedModel`.

    λ = 0 is the frozen base bit for bit, λ = 1 the adapter path. The same directory also loads without
    thinkctl: ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).generate(...,
    thinkctl_lambda=λ)`` (see the InRa page of the documentation).

    Examples:
        >>> model = thinkctl.load_inra(INRA)
        >>> model.kind, len(model.generate(["1 + 1 = ?"], lam=0.5, max_new_tokens=4))
        ('inra', 1)
    """
    from thinkctl.inra import open_inra_backend

    cfg = _engine(engine, dtype, device, batch_size, parallel)
    return FusedModel(open_inra_backend(str(path), cfg), "inra", {"inra": str(path)}, cfg)


def from_models(reference: Any, aligned: Any, tokenizer: Any, *, batch_size: int = 16, names: Sequence[str] = ("reference", "aligned")) -> FusedModel:
    """A :class:`FusedModel` over transformers models already in memory (on the device they are on).

    ``aligned`` may be None (λ = 0 only). Any object called like a causal LM works as either model, which
    is how an :class:`thinkctl.inra.InRaModel`'s two paths are fused (``model.original_stream()``,
    ``model.adapter_stream()``). ``names`` are what records call the two models.

    Examples:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> ref, al = (AutoModelForCausalLM.from_pretrained(p) for p in (REFERENCE, ALIGNED))
        >>> model = thinkctl.from_models(ref, al, AutoTokenizer.from_pretrained(REFERENCE))
        >>> model.generate("1 + 2 = ?", lam=0.25, max_new_tokens=3)[0].num_tokens <= 3
        True
    """
    from thinkctl.models import check_same_vocab
    from thinkctl.rollout.hf import HFBackend

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if aligned is not None and hasattr(aligned, "get_output_embeddings") and hasattr(reference, "get_output_embeddings"):
        check_same_vocab(tokenizer, tokenizer, reference, aligned)
    device = str(getattr(reference, "device", "cpu"))
    backend = HFBackend(reference, aligned, tokenizer, batch_size=batch_size, device=device)
    sources = {"reference": names[0], **({"aligned": names[1]} if aligned is not None else {})}
    return FusedModel(backend, "fused" if aligned is not None else "plain", sources, BackendConfig(device=device, batch_size=batch_size))


class _Borrowed(RolloutBackend):
    """A model's backend lent to a job that closes what it opens: the caller's model stays open."""

    def __init__(self, backend: RolloutBackend) -> None:
        self.inner = backend
        self.tokenizer = backend.tokenizer

    def generate(self, prompts: Sequence[str], lam: float | Sequence[float], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        return self.inner.generate(prompts, lam, sampling, seeds)


def _with_engine(model: FusedModel, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe values with the model's engine settings, which the run records (the model is already loaded)."""
    clash = sorted({"engine", "dtype", "device", "batch_size"} & set(settings))
    if clash:
        raise ConfigError(f"{clash} are fixed when the model is loaded (load_pair/load_inra); drop them here")
    engine = model.engine
    return {**settings, "engine": engine.engine, "dtype": engine.dtype, "device": engine.device, "batch_size": engine.batch_size}


def run_sweep(
    model: FusedModel, out: PathLike, *, benchmark: str | Sequence[str] = "tiny",
    lambdas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), overwrite: bool = False, **settings: Any,
) -> Path:
    """Graded λ sweep of ``model`` into the run directory ``out`` (resumable); returns ``out``.

    ``out`` gets what ``thinkctl sweep`` writes: ``run.json``, ``results.jsonl`` (one graded record per
    problem, λ and sample), ``summary.csv``/``summary.md`` and ``sweep.png``. ``settings`` are the keys of a
    recipe's ``sweep:`` section (``split``, ``limit``, ``n_samples``, ``max_new_tokens``, ``temperature``,
    ``max_thinking_tokens``, ``prompt_template``, …). A rerun with the same settings resumes; other settings
    are refused unless ``overwrite``.

    Examples:
        >>> import pandas as pd
        >>> run = thinkctl.run_sweep(thinkctl.load_pair(REFERENCE, ALIGNED), tmp / "sweep", lambdas=[0, 1],
        ...                          limit=3, max_new_tokens=6)
        >>> summary = pd.read_csv(run / "summary.csv")
        >>> sorted(summary["lam"]), sorted(p.name for p in run.iterdir())
        ([0.0, 1.0], ['results.jsonl', 'run.json', 'summary.csv', 'summary.md', 'sweep.png'])
    """
    from thinkctl.sweep import SweepConfig, run_sweep_config

    values = {**_with_engine(model, settings), "benchmark": benchmark, "lambdas": list(lambdas)}
    cfg = build(SweepConfig, values, where="sweep(...)")
    run_sweep_config(cfg, lambda: _Borrowed(model.backend), out, method=model.kind, model=model.name,
                     models=model.sources, overwrite=overwrite)
    return Path(out)


def calibrate_lambda(
    model: FusedModel, target_tokens: float, out: PathLike, *, benchmark: str = "tiny", split: str | None = "train",
    limit: int | None = 64, grid: Sequence[float] = (0.0, 0.5, 1.0, 1.5), max_refinements: int = 6,
    rel_tol: float | None = None,
    n_samples: int = 1, **sampling: Any,
) -> Any:
    """The λ at which ``model`` thinks ``target_tokens`` tokens on average on ``benchmark`` (a ``CalibrationResult``).

    Measures ``grid``, then refines inside the first interval whose lengths straddle the target until a
    point is within ``rel_tol`` of it (5% when None), then walks down towards λ 0 while the length stays within it: the
    answer is the smallest λ found that meets the target, the least realignment (what ``thinkctl realign
    --target-tokens`` does). Every measurement is a
    resumable sweep in ``out``. A target outside what the grid reaches raises ``CalibrationError``, whose
    ``result`` holds the closest λ measured. ``sampling`` as in :meth:`FusedModel.generate`.

    Examples:
        >>> from thinkctl import CalibrationError
        >>> model = thinkctl.load_pair(REFERENCE, ALIGNED)
        >>> try:
        ...     result = thinkctl.calibrate_lambda(model, 3, tmp / "calib", limit=3, grid=[0, 1], max_new_tokens=8)
        ... except CalibrationError as e:  # the target is out of the grid's reach: the closest λ is still reported
        ...     result = e.result
        >>> result.lam in {p.lam for p in result.points}, result.target_tokens
        (True, 3)
    """
    from thinkctl.data import benchmark_name, load_benchmark
    from thinkctl.trra.calibrate import DEFAULT_TOLERANCE, backend_measure, calibrate_lambda as search

    cfg = build(SamplingConfig, dict(sampling), where="calibrate_lambda(...) sampling")
    problems = load_benchmark(benchmark, split=split, limit=limit, seed=cfg.seed)
    measure = backend_measure(model.backend, problems, cfg, out, benchmark_name(benchmark), n_samples=n_samples)
    return search(measure, target_tokens, grid=grid, max_refinements=max_refinements,
                  rel_tol=DEFAULT_TOLERANCE if rel_tol is None else rel_tol)


def effort_from_sweep(sweep: PathLike, fractions: Mapping[str, float] | None = None, *, method: str | None = None,
                      benchmark: str | None = None) -> Any:
    """Effort levels (low/medium/high → λ) calibrated on a sweep: the λ whose thinking is a fraction of λ = 0's.

    ``fractions`` default to low 0.25, medium 0.5, high 1.0 of the reference's thinking. The table is what
    ``thinkctl serve --effort`` reads (``table.save(path)``) and maps ``reasoning_effort`` requests through.

    Examples:
        >>> table = thinkctl.effort_from_sweep(SWEEP, {"low": 0.5, "high": 1.0})
        >>> sorted(table.levels), table.levels["high"]
        (['high', 'low'], 0.0)
    """
    from thinkctl.effort import DEFAULT_FRACTIONS, effort_from_sweep as from_sweep

    return from_sweep(sweep, DEFAULT_FRACTIONS if fractions is None else fractions, method=method, benchmark=benchmark)


def realign(
    reference: PathLike, aligned: PathLike, out: PathLike, *, lam: float | None = None, target_tokens: float | None = None,
    stage: str = "all", trra: Mapping[str, Any] | None = None, **settings: Any,
) -> dict[str, Any] | None:
    """TrRa: distil a student that thinks like the fused pair at ``lam`` (or at ``target_tokens`` thinking tokens).

    Runs (or resumes) what ``thinkctl realign`` does into ``out``: calibrate λ when a target is given, generate
    the teacher's responses, train the student (``out/student/final``, an ordinary checkpoint with a model card),
    evaluate reference, teacher and student on the held-out split; returns the report (also ``report.json``/
    ``report.md``), or None for a ``stage`` that ends before evaluation. ``settings`` are the keys of a recipe's
    ``realign:`` section (``train_limit``, ``eval_limit``, ``max_new_tokens``, ``only_correct``, …) and ``trra``
    those of its ``trra:`` section (``max_steps``, ``learning_rate``, ``use_lora``, …).

    Examples:
        >>> report = thinkctl.realign(REFERENCE, ALIGNED, tmp / "trra", lam=0.5, train_limit=2, eval_limit=2,
        ...                           calib_limit=2, max_new_tokens=4, only_correct=False,
        ...                           trra={"max_steps": 1, "per_device_train_batch_size": 2, "device": "cpu"})
        {'train_runtime': ...}
        >>> [row["model"] for row in report["rows"]]
        ['reference (λ=0)', 'fused teacher (λ=0.5)', 'TrRa student']
        >>> (tmp / "trra" / "student" / "final" / "README.md").is_file()
        True
    """
    from thinkctl.trra.realign import load_realign_configs, run_realign

    goal = {"lambda_": lam, "target_tokens": target_tokens}
    realign_cfg, trra_cfg = load_realign_configs(
        None, {**settings, "reference": str(reference), "aligned": str(aligned), **goal}, dict(trra or {}))
    return run_realign(realign_cfg, trra_cfg, out, stage)


def train_inra(base: PathLike, out: PathLike, *, method: str = "distill", teacher: PathLike | None = None,
               callbacks: Sequence[Any] | None = None, **settings: Any) -> Path:
    """InRa: train an identity-initialised adapter on ``base``; returns the checkpoint ``out/final``.

    ``method`` is ``sft`` (short traces: a ``data`` trace set, or ``teacher``'s verified-correct rollouts),
    ``distill`` (towards the fused base/``teacher`` pair) or ``dpo`` (preferring shorter correct thinking).
    ``settings`` are the keys of a recipe's ``inra:`` section (``num_adapter_layers``, ``max_steps``, ``limit``,
    ``rollout_max_new_tokens``, …). Resumes from the latest ``out/checkpoint-N``. The checkpoint has a model
    card and loads with :func:`load_inra`, ``thinkctl serve`` and plain transformers (``trust_remote_code=True``).

    Examples:
        >>> final = thinkctl.train_inra(REFERENCE, tmp / "inra", teacher=ALIGNED, limit=2, rollout_max_new_tokens=4,
        ...                             max_steps=1, per_device_train_batch_size=2, device="cpu")
        {'train_runtime': ...}
        >>> sorted(p.name for p in final.iterdir() if p.suffix in {".json", ".py", ".md", ".safetensors"})[:4]
        ['README.md', 'adapter.safetensors', 'config.json', 'modeling_inra.py']
    """
    from thinkctl.inra.train import InRaTrainConfig, train_inra as train

    values = {**settings, "base": str(base), "method": method, "output_dir": str(out)}
    if teacher is not None:
        values["teacher"] = str(teacher)
    return train(build(InRaTrainConfig, values, where="train_inra(...)"), list(callbacks) if callbacks else None)


def make_trra_trainer(
    model: Any,
    aligned_model: Any,
    args: Any = None,
    train_dataset: Any = None,
    processing_class: Any = None,
    *,
    reference_model: Any = None,
    lambda_: float = 0.5,
    callbacks: Sequence[Any] | None = None,
    **trra: Any,
) -> Any:
    """TrRa's trainer the TRL way: a ``transformers.Trainer`` distilling ``model`` towards the fused pair at ``lambda_``.

    Like TRL's ``GKDTrainer(model, teacher_model, args, train_dataset, processing_class)``: ``train_dataset``
    is a ``datasets.Dataset`` (or a list of dicts) in TRL's prompt-completion format (``prompt`` and
    ``completion`` columns, the prompt already rendered with the chat template); ``args`` are
    ``TrainingArguments`` (default: the ``trra`` keys' ``output_dir``, ``max_steps``, …). The fused target is
    ``λ·aligned + (1−λ)·reference`` with ``reference_model`` frozen; without one it is a frozen copy of
    ``model`` as it starts (the student starts as the reference), or, for a PEFT model, ``model`` with its
    adapters off. A ``lam`` column gives each row its own λ instead (adaptive TrRa: long thinking only where a
    problem needs it). ``trra`` takes the other keys of a recipe's ``trra:`` section (``divergence``,
    ``max_length``, ``chunk_size``, …). Call ``.train()``, then ``save_model``.

    Examples:
        >>> from datasets import Dataset
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
        >>> student, aligned = (AutoModelForCausalLM.from_pretrained(p) for p in (REFERENCE, ALIGNED))
        >>> data = Dataset.from_dict({"prompt": ["1 + 2 = ?", "2 + 2 = ?"], "completion": ["3", "4"]})
        >>> args = TrainingArguments(tmp / "gkd", max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True)
        >>> trainer = thinkctl.make_trra_trainer(student, aligned, args, data, AutoTokenizer.from_pretrained(REFERENCE))
        >>> trainer.train().global_step
        {'train_runtime': ...}
        1
    """
    from thinkctl.trra.data import DistillExample
    from thinkctl.trra.trainer import TrRaConfig, make_trainer

    if train_dataset is None or processing_class is None:
        raise ConfigError("make_trra_trainer needs a train_dataset (prompt/completion rows) and a processing_class (the tokenizer)")
    rows = list(train_dataset)
    missing = [i for i, row in enumerate(rows) if "prompt" not in row or not ({"completion", "response"} & set(row))]
    if missing:
        raise ConfigError(f"train_dataset row {missing[0]} lacks a `prompt` or `completion` column (TRL's prompt-completion format)")
    with_lam = sum("lam" in r for r in rows)
    if with_lam not in (0, len(rows)):
        raise ConfigError(f"train_dataset: {with_lam} of {len(rows)} rows have a `lam` column; give every row its λ "
                          "(adaptive TrRa) or none (one lambda_ for all)")
    try:
        lams = [validate_lambda(r["lam"]) if with_lam else None for r in rows]
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"train_dataset: a `lam` value is not a finite number ({e})") from None
    examples = [DistillExample(prompt=str(r["prompt"]), response=str(r.get("completion", r.get("response"))), lam=lam)
                for r, lam in zip(rows, lams)]
    use_lora = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
    cfg = build(TrRaConfig, {**trra, "lambda_": lambda_, "use_lora": use_lora, "lambda_per_example": bool(with_lam)},
                where="make_trra_trainer(...)")
    if reference_model is None and not use_lora:
        reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    if processing_class.pad_token_id is None:
        processing_class.pad_token = processing_class.eos_token
    return make_trainer(cfg, model.train(), reference_model, aligned_model, processing_class, examples,
                        list(callbacks) if callbacks else None, args)


def fit_router(sweep: PathLike | Sequence[PathLike], out: PathLike, *, questions: str | None = None, split: str | None = None,
               limit: int | None = None, seed: int = 0, **options: Any) -> Any:
    """Calibrate a router (λ per query by predicted difficulty) on a λ sweep and save its policy to ``out``.

    ``sweep`` is one or more run directories or ``results.jsonl`` files; ``questions`` the benchmark the sweep
    ran on (with its ``split``, ``limit``, ``seed``) when text features are wanted, since records hold only ids.
    ``options``: ``estimator`` (logistic | bins), ``threshold`` (route to the cheapest λ with P(correct) ≥ it),
    ``features``, ``entropy_model``, ``method``, ``benchmark``. Returns the ``Router``; apply it with :func:`route`.

    Examples:
        >>> router = thinkctl.fit_router(SWEEP, tmp / "policy.json", questions="tiny", split="test", limit=6)
        >>> router.lambdas
        [0.0, 0.5, 1.0]
    """
    from thinkctl.router.run import load_questions, route_fit

    paths = [sweep] if isinstance(sweep, (str, os.PathLike)) else list(sweep)
    texts = load_questions(questions, split, limit, seed) if questions else None
    return route_fit(paths, out, questions=texts, **options)


def route(policy: PathLike | Any, questions: Sequence[str] | Mapping[str, str], *, budget: float | None = None,
          levels: Sequence[int | None] | None = None) -> list[dict[str, Any]]:
    """λ for each question under a router policy (a file from :func:`fit_router`, or the ``Router`` itself).

    Without ``budget`` each question gets the cheapest λ the router predicts is likely right (its threshold);
    with one, λ values are spread so the mean predicted thinking stays within ``budget`` tokens per question.
    ``questions`` is a list, or a mapping id → text; ``levels`` optional difficulty levels. Returns rows with
    ``id``, ``lam``, ``p_correct`` and ``predicted_thinking_tokens``, which :meth:`FusedModel.generate` takes
    as ``lam=[r["lam"] for r in rows]``.

    Examples:
        >>> router = thinkctl.fit_router(SWEEP, tmp / "policy.json")
        >>> rows = thinkctl.route(tmp / "policy.json", ["1 + 2 = ?", "what is 17 * 23 - 5 ?"])
        >>> [sorted(r) for r in rows][0], all(r["lam"] in (0.0, 0.5, 1.0) for r in rows)
        (['id', 'lam', 'p_correct', 'predicted_thinking_tokens'], True)
    """
    from thinkctl.router.policy import Router
    from thinkctl.router.run import route_queries

    router = policy if isinstance(policy, Router) else Router.load(policy)
    items = list(questions.items()) if isinstance(questions, Mapping) else [(str(i), q) for i, q in enumerate(questions)]
    levels = list(levels) if levels is not None else [None] * len(items)
    if len(levels) != len(items):
        raise ConfigError(f"route: {len(levels)} levels for {len(items)} questions")
    queries = [{"id": i, "question": q, "level": lvl} for (i, q), lvl in zip(items, levels)]
    return route_queries(router, queries, budget=budget)[0]


def push_to_hub(path: PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Publish a checkpoint thinkctl wrote (an InRa checkpoint, a TrRa student) to the Hugging Face Hub.

    The directory is uploaded as it is, with its model card (``README.md``: base model, what λ means, the
    measured dial or reduction table), into ``repo_id`` (created if missing; ``private`` as the Hub's
    ``create_repo`` takes it, None keeps the Hub's default). ``token`` defaults to the logged-in one
    (``hf auth login`` or ``HF_TOKEN``). Returns the commit's URL. A directory without a card is refused
    (:class:`thinkctl.errors.ModelLoadError`); a Hub that cannot be reached or refuses the upload raises
    :class:`thinkctl.errors.HubError` naming the repository and the cause.

    Examples:
        >>> thinkctl.push_to_hub(tmp, "me/nothing-here")
        Traceback (most recent call last):
        ...
        thinkctl.errors.ModelLoadError: push_to_hub: ... has no model card (README.md); ...
        >>> # with the network: thinkctl.push_to_hub(INRA, "me/my-inra", private=True) → "https://huggingface.co/..."
    """
    from thinkctl.cards import upload_checkpoint

    return upload_checkpoint(path, repo_id, token=token, private=private, commit_message=commit_message)


#: the names ``thinkctl`` re-exports, in the order the API reference lists them
PUBLIC: tuple[str, ...] = (
    "load_pair", "load_inra", "from_models", "FusedModel", "run_sweep", "calibrate_lambda", "effort_from_sweep",
    "realign", "make_trra_trainer", "train_inra", "fit_router", "route", "push_to_hub",
)

__all__ = list(PUBLIC)

