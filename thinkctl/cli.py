"""The ``thinkctl`` command line: each command builds its job's config and calls one function.

A command's settings are the fields of its job's config dataclass: :func:`thinkctl.config.add_flags`
generates the flags from them, and :func:`thinkctl.config.load_section` merges a ``--recipe`` section
with the flags given. User errors (:class:`thinkctl.errors.ThinkctlError`) are printed as one line
and exit with status 2; Ctrl-C prints one line (where the saved work is) and exits with 130, and SIGTERM and
SIGHUP do the same with 143 and 129 (128 + the signal's number, as the shell reports a process killed by
it); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thinkctl.config import add_flags, build, flag_values, group, lambda_option, load_section, option, recipe_values
from thinkctl.errors import ConfigError, Interrupted, ThinkctlError
from thinkctl.prompts import PromptConfig
from thinkctl.rollout import BackendConfig
from thinkctl.sampling import SamplingConfig

if TYPE_CHECKING:
    from thinkctl.rollout.base import RolloutBackend
    from thinkctl.sweep import SweepConfig

log = logging.getLogger("thinkctl")

DESCRIPTION = """\
Control how long a reasoning model thinks.

thinkctl fuses the next-token logits of a slow-thinking reference model and a fast-thinking aligned
model, fused = λ·aligned + (1−λ)·reference, which turns λ into a dial for thinking length. Sweep λ
on benchmarks, distil a student that thinks like a chosen λ (TrRa), give one model its own λ dial
(InRa), pick λ per query (route), and serve any of these with vLLM.

New here? `thinkctl demo` builds a tiny model pair on CPU and sweeps λ end to end."""


@dataclass
class GenerateConfig:
    """The settings of ``thinkctl generate``."""

    lambda_: float = lambda_option(
        0.0, "fusion weight λ: 0 = the reference (an InRa checkpoint's base) as it is, the one λ every model source has; "
             "1 = the aligned model (the adapter path)"
    )
    control_effort: str | None = option(None, "effort table for --control (level=λ pairs, .json, or a sweep run dir): "
                                              "its `low` is the default --fast-lambda, its calibrated curve picks target "
                                              "mode's start λ (else --lambda)")
    sampling: SamplingConfig = group(SamplingConfig)
    prompt: PromptConfig = group(PromptConfig)
    backend: BackendConfig = group(BackendConfig)


#: what ``thinkctl demo`` sweeps unless its recipe or flags say otherwise (``recipes/tiny.yaml`` spells it out)
DEMO_DEFAULTS = {"split": "test", "limit": 300, "lambdas": [-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5], "max_new_tokens": 640, "batch_size": 64}


@dataclass(frozen=True)
class Models:
    """The models the flags name: how to open the backend over them, and what records and run settings carry."""

    open: Callable[[], RolloutBackend]
    method: str  # fused | plain | inra | student
    model: str  # the records' `model` field
    sources: dict[str, str]  # role (reference, aligned, inra) → hub name or path, identified in run.json
    base: str | None = None  # the records' `base`: the model λ = 0 stands for, or a student's reference


def _add_models(p: argparse.ArgumentParser) -> None:
    """The two ways to name the models: a reference (and aligned) model, or an InRa checkpoint."""
    p.add_argument("--ref", help="reference (slow thinker) model: hub name or path")
    p.add_argument("--aligned", help="aligned (fast thinker) model; without it only λ = 0 (the reference alone) is defined")
    p.add_argument("--inra", help="InRa checkpoint (one model with its own λ dial) instead of --ref/--aligned")


def _models(args: argparse.Namespace, backend: BackendConfig, lambdas: Sequence[float]) -> Models:
    """The models the flags name (see :class:`Models`)."""
    if bool(args.ref) == bool(args.inra):
        raise ConfigError("give either --ref (and optionally --aligned) or --inra CHECKPOINT")
    if args.inra:
        if args.aligned:
            raise ConfigError("--aligned fuses two models; an --inra checkpoint carries its own fast path")
        from thinkctl.inra import open_inra_backend

        return Models(lambda: open_inra_backend(args.inra, backend), "inra", args.inra, {"inra": args.inra})
    if args.aligned is None:
        if any(lam != 0 for lam in lambdas):
            raise ConfigError(f"λ {list(lambdas)} needs an aligned model (--aligned); without one only λ=0 is defined")
        from thinkctl.trra.trainer import student_reference

        reference = student_reference(args.ref)  # a TrRa student is measured against the model it was distilled from
        return Models(lambda: backend.open(args.ref), "student" if reference else "plain", args.ref,
                      {"reference": args.ref}, reference or args.ref)
    return Models(lambda: backend.open(args.ref, args.aligned), "fused", f"{args.ref} + {args.aligned}",
                  {"reference": args.ref, "aligned": args.aligned}, args.ref)


def _sweep(cfg: SweepConfig, out: str, models: Models, overwrite: bool) -> None:
    from thinkctl.controls import run_control_sweep
    from thinkctl.sweep import run_sweep_config

    out_dir = Path(out)
    if cfg.controls:
        run_control_sweep(cfg, models.open, out_dir, method=models.method, model=models.model, models=models.sources,
                          overwrite=overwrite, base=models.base)
        print((out_dir / "summary.md").read_text(encoding="utf-8"))
        print(f"summary: {out_dir / 'summary.csv'} (one run directory per control and budget under {out_dir})")
        return
    run_sweep_config(cfg, models.open, out_dir, method=models.method, model=models.model, models=models.sources,
                     overwrite=overwrite, base=models.base)
    print((out_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"results: {out_dir / 'results.jsonl'}")
    print(f"plot:    {out_dir / 'sweep.png'}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from thinkctl.sweep import SweepConfig

    cfg = load_section(SweepConfig, args.recipe, "sweep", flag_values(args, SweepConfig))
    lambdas = cfg.lambdas if not cfg.controls or "fixed" in cfg.controls else []
    _sweep(cfg, args.out, _models(args, cfg.backend, [*lambdas, *([cfg.control_lambda] if cfg.controls else [])]), args.overwrite)


def _tiny_pair(recipe: str | None, out: str | None, force: bool = False):
    from thinkctl.tiny import TinyBuildConfig, build_tiny_pair, default_tiny_dir

    config = load_section(TinyBuildConfig, recipe, "tiny")
    return build_tiny_pair(Path(out) if out else default_tiny_dir(), config, force=force)


def cmd_tiny_build(args: argparse.Namespace) -> None:
    pair = _tiny_pair(args.recipe, args.out, args.force)
    print(f"reference: {pair.reference}\naligned:   {pair.aligned}")


def cmd_demo(args: argparse.Namespace) -> None:
    from thinkctl.sweep import SweepConfig

    pair = _tiny_pair(args.recipe, args.tiny_dir)
    values = {**DEMO_DEFAULTS, **recipe_values(SweepConfig, args.recipe, "sweep"), **flag_values(args, SweepConfig)}
    cfg = build(SweepConfig, values, where=f"{args.recipe or 'options'} [sweep]")
    ref, aligned = str(pair.reference), str(pair.aligned)
    models = Models(lambda: cfg.backend.open(ref, aligned), "fused", f"{ref} + {aligned}", {"reference": ref, "aligned": aligned}, ref)
    _sweep(cfg, args.out, models, args.overwrite)
    _print_shape(Path(args.out))


def _print_shape(out_dir: Path) -> None:
    """End the demo with the shape check of the user's own build (``thinkctl.tiny.shape``), saved as shape.json."""
    from dataclasses import asdict

    from thinkctl.io import atomic_write_json
    from thinkctl.records import load_records
    from thinkctl.tiny.shape import check_shape, format_shape, missing_lambdas

    records = load_records([out_dir / "results.jsonl"])
    missing = missing_lambdas(records)
    if missing:
        print(f"(shape check skipped: the sweep lacks λ {missing})")
        return
    checks = check_shape(records)
    atomic_write_json(out_dir / "shape.json", {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]})
    print(format_shape(checks))


def cmd_generate(args: argparse.Namespace) -> None:
    from thinkctl.data import render_prompt

    from thinkctl.controls import LengthModel, resolve_control

    cfg = load_section(GenerateConfig, None, "generate", flag_values(args, GenerateConfig))
    sampling, lam = resolve_control(cfg.sampling, cfg.lambda_, LengthModel.load(cfg.control_effort))
    backend = _models(args, cfg.backend, [lam]).open()
    try:
        prompts = [render_prompt(backend.tokenizer, q, cfg.prompt) for q in args.question]
        for question, prompt, completion in zip(args.question, prompts, backend.generate(prompts, lam, sampling)):
            control = ""
            if "control" in completion.meta:
                control = f", {completion.meta['control']} control, λ {lam:g} → {completion.meta['final_lambda']:.3g}"
            # the prompt as the model sees it (what a sweep with these settings asks), then the response that
            # continues it: a response starting with `</think>` closes the block the prompt opened
            print(f"## {question}\n--- prompt\n{prompt}\n--- response\n{completion.text}\n"
                  f"[{completion.num_tokens} tokens, {completion.finish_reason}{control}]\n")
    finally:
        backend.close()


# realign sets the student's output directory and λ itself; TrRa's own seed and device stay recipe keys,
# since realign's --seed and --device are those of its generation
_REALIGN_SETS = ("output_dir", "lambda_", "seed", "device")


def cmd_realign(args: argparse.Namespace) -> None:
    from thinkctl.trra.realign import RealignConfig, load_realign_configs, run_realign
    from thinkctl.trra.trainer import TrRaConfig

    realign_cfg, trra_cfg = load_realign_configs(
        args.recipe, flag_values(args, RealignConfig), flag_values(args, TrRaConfig, exclude=_REALIGN_SETS)
    )
    if run_realign(realign_cfg, trra_cfg, args.out, args.stage, overwrite=args.overwrite) is not None:
        print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    else:
        print(f"realign --stage {args.stage}: done in {args.out}")


def cmd_inra_train(args: argparse.Namespace) -> None:
    from thinkctl.inra.train import InRaTrainConfig, train_inra

    cfg = load_section(InRaTrainConfig, args.recipe, "inra", flag_values(args, InRaTrainConfig))
    print(f"InRa checkpoint: {train_inra(cfg, overwrite=args.overwrite)}")


def cmd_report(args: argparse.Namespace) -> None:
    from thinkctl.report import build_report

    path = build_report(args.runs, args.out, title=args.title)
    print(f"report: {path}\nhtml:   {path.with_suffix('.html')}")


def _route_questions(args: argparse.Namespace) -> dict[str, str] | None:
    from thinkctl.router.run import load_questions

    return load_questions(args.questions, args.split, args.limit, args.seed) if args.questions else None


def cmd_route_fit(args: argparse.Namespace) -> None:
    from thinkctl.router.run import route_fit

    router = route_fit(
        args.sweep, args.out, estimator=args.estimator, threshold=args.threshold, method=args.method,
        benchmark=args.benchmark, questions=_route_questions(args), entropy_model=args.entropy_model,
        entropy_tokens=args.entropy_tokens, features=args.features.split(",") if args.features else None,
    )
    print(f"{router.estimator.kind} router over λ {router.lambdas} on features {router.estimator.features} "
          f"({router.meta['n_problems']} problems) -> {args.out}")


def cmd_route_apply(args: argparse.Namespace) -> None:
    from thinkctl.router.run import route_apply

    rows, summary = route_apply(args.policy, args.input, args.out, budget=args.budget, entropy_model=args.entropy_model)
    if args.out is None:
        for row in rows:
            print(f"{row['id']}\tλ={row['lam']:g}\tP(correct)={row['p_correct']:.3f}\tthinking≈{row['predicted_thinking_tokens']:.0f}")
    print(summary)


def cmd_route_eval(args: argparse.Namespace) -> None:
    from thinkctl.router.run import route_eval

    result = route_eval(args.policy, args.sweep, args.out, questions=_route_questions(args), method=args.method,
                        benchmark=args.benchmark)
    print(result.to_markdown())
    print(f"routed records: {Path(args.out) / 'routed.jsonl'} (pass the run directories to `thinkctl report`)")


def cmd_serve(args: argparse.Namespace) -> None:
    from thinkctl.serve import ServeConfig, serve

    cfg = ServeConfig(
        model=args.model, aligned=args.aligned, host=args.host, port=args.port, dtype=args.dtype,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        served_model_name=args.served_model_name, effort=args.effort, policy=args.policy,
        allow_unauthenticated=args.allow_unauthenticated, vllm_args=args.passthrough,
    )
    code = serve(cfg)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------- parsers
#
# A command's flags come from its config dataclass, whose module may import torch, transformers or trl.
# Each ``_args_*`` function adds one command's arguments; :func:`build_parser` calls only the one of the
# command being run, so ``thinkctl report`` or ``thinkctl --help`` does not import the training stack.


def _args_demo(p: argparse.ArgumentParser) -> None:
    from thinkctl.sweep import SweepConfig

    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--tiny-dir", dest="tiny_dir", help="tiny pair directory (default $THINKCTL_HOME/tiny)")
    p.add_argument("--recipe", help="YAML recipe whose `tiny:` and `sweep:` sections set the defaults")
    _add_overwrite(p)
    add_flags(p, SweepConfig, defaults=DEMO_DEFAULTS)
    p.set_defaults(func=cmd_demo)


def _args_sweep(p: argparse.ArgumentParser) -> None:
    from thinkctl.sweep import SweepConfig

    _add_models(p)
    p.add_argument("--out", required=True, help="run directory (run.json, results.jsonl, summary.csv/md, sweep.png)")
    p.add_argument("--recipe", help="YAML recipe whose `sweep:` section sets the defaults")
    _add_overwrite(p)
    add_flags(p, SweepConfig)
    p.set_defaults(func=cmd_sweep)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="start the run directory afresh: its earlier results (results.jsonl, run.json, summaries, "
                        "plot) move into OUT/replaced-<time>/; without it a rerun under other settings is refused")


def _args_generate(p: argparse.ArgumentParser) -> None:
    _add_models(p)
    add_flags(p, GenerateConfig)
    p.add_argument("question", nargs="+", help="one or more questions, each answered on its own")
    p.set_defaults(func=cmd_generate)


def _args_realign(p: argparse.ArgumentParser) -> None:
    from thinkctl.trra.realign import STAGES, RealignConfig
    from thinkctl.trra.trainer import TrRaConfig

    p.add_argument("--recipe", help="YAML recipe with `realign:` and `trra:` sections (e.g. recipes/tiny-trra.yaml)")
    p.add_argument("--out", required=True, help="run directory (resumable): calibration, data, student/, eval/, report.md")
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="all (default) in one process; or data (calibrate, teacher data), train (distil: the stage to run "
                        "under `accelerate launch`), eval (evaluate, report) apart")
    p.add_argument("--overwrite", action="store_true",
                   help="a rerun under other settings than OUT/run.json (per round) records is refused; with this the "
                        "work those settings invalidate (from the first differing stage on) moves into "
                        "OUT/replaced-<time>/ instead")
    add_flags(p, RealignConfig)
    add_flags(p, TrRaConfig, exclude=_REALIGN_SETS)
    p.epilog = ("--seed and --device are the generation's (sampling seed, rollout device); the student's training "
                "seed and device are the recipe's `trra:` keys seed and device (default 0 and auto).")
    p.set_defaults(func=cmd_realign)


def _args_inra(p: argparse.ArgumentParser) -> None:
    from thinkctl.inra.train import InRaTrainConfig

    text = "train an InRa adapter on a base model (SFT on short traces, fused distillation or DPO)"
    train = p.add_subparsers(dest="inra_command", required=True).add_parser("train", help=text, description=text)
    train.add_argument("--recipe", help="YAML recipe whose `inra:` section sets the defaults")
    train.add_argument("--overwrite", action="store_true",
                       help="a rerun under other settings than OUTPUT_DIR/run.json records is refused; with this the "
                            "work they invalidate (rollouts, checkpoints, final) moves into OUTPUT_DIR/replaced-<time>/")
    add_flags(train, InRaTrainConfig)
    train.set_defaults(func=cmd_inra_train)


def _args_route(p: argparse.ArgumentParser) -> None:
    route_sub = p.add_subparsers(dest="route_command", required=True)

    def add_questions(q: argparse.ArgumentParser) -> None:
        q.add_argument("--questions", help="benchmark the sweep ran on (tiny | path), for text features: records hold only ids")
        q.add_argument("--split", help="its split (tiny: train|test)")
        q.add_argument("--limit", type=int, help="its problem count, as in the sweep")
        q.add_argument("--seed", type=int, default=0, help="its seed, as in the sweep")
        q.add_argument("--method", help="method of the sweep records to use (default: the only one)")
        q.add_argument("--benchmark", help="benchmark of the sweep records to use (default: the only one)")

    def add_parser(name: str, text: str) -> argparse.ArgumentParser:
        return route_sub.add_parser(name, help=text, description=text)

    q = add_parser("fit", "calibrate a router on a λ sweep and save its policy")
    q.add_argument("--sweep", nargs="+", required=True, help="results.jsonl file(s) or run directories")
    q.add_argument("--out", required=True, help="policy file (.json, or .yaml)")
    q.add_argument("--estimator", choices=["logistic", "bins"], default="logistic",
                   help="how P(correct) and thinking length per λ are predicted: logistic (a regression per λ on the features, the default) or bins (smoothed accuracy per difficulty bin and λ, counted from the sweep)")
    q.add_argument("--threshold", type=float, default=0.5, help="route to the cheapest λ with P(correct) ≥ this")
    q.add_argument("--features", help="comma-separated subset of level,n_chars,n_numbers,n_op_words,entropy")
    q.add_argument("--entropy-model", dest="entropy_model", help="model whose next-token entropy is a feature")
    q.add_argument("--entropy-tokens", dest="entropy_tokens", type=int, default=0,
                   help="average entropy over this many generated tokens (0: over the prompt)")
    add_questions(q)
    q.set_defaults(func=cmd_route_fit)

    q = add_parser("apply", "λ per query of a JSONL file (question, optional id/level)")
    q.add_argument("--policy", required=True, help="router policy file written by `thinkctl route fit`")
    q.add_argument("--input", required=True, help="JSONL with question/problem/prompt per line")
    q.add_argument("--out", help="write JSONL rows (id, lam, p_correct, predicted_thinking_tokens) here")
    q.add_argument("--budget", type=float, help="mean thinking tokens per query to spend (budget mode)")
    q.add_argument("--entropy-model", dest="entropy_model", help="override the policy's entropy model path")
    q.set_defaults(func=cmd_route_apply)

    q = add_parser("eval", "compare routing with every fixed λ on a held-out sweep (by lookup)")
    q.add_argument("--policy", required=True, help="router policy file written by `thinkctl route fit`")
    q.add_argument("--sweep", nargs="+", required=True, help="held-out sweep: every λ of the policy on the same queries")
    q.add_argument("--out", required=True, help="directory for routed.jsonl, route_eval.md/csv")
    add_questions(q)
    q.set_defaults(func=cmd_route_eval)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (results.jsonl, routed.jsonl) or JSONL files")
    p.add_argument("--out", required=True, help="output directory (report.md, report.html, *.png)")
    p.add_argument("--title", default="thinkctl report", help="the report's heading (default: thinkctl report)")
    p.set_defaults(func=cmd_report)


def _args_serve(p: argparse.ArgumentParser) -> None:
    p.usage = "thinkctl serve MODEL [options] [-- VLLM_SERVE_OPTIONS ...]"
    p.epilog = ("Options after `--` go to vLLM's server unchanged, e.g. `-- --api-key KEY --max-num-seqs 64 "
                "--tensor-parallel-size 2`; they win over the options above.")
    p.add_argument("model", help="model dir: plain, InRa checkpoint, or the reference when --aligned is given")
    p.add_argument("--aligned", help="aligned model: serve the pair fused (λ per request)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; other hosts need an API key (-- --api-key K)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--dtype", help="default: float32 on CPU, vLLM's choice on GPU")
    p.add_argument("--max-model-len", type=int, dest="max_model_len", help="longest prompt + response in tokens (default: vLLM's)")
    p.add_argument("--gpu-memory-utilization", type=float, dest="gpu_memory_utilization", help="default 0.3 on CPU")
    p.add_argument("--served-model-name", dest="served_model_name", help="default: the MODEL argument")
    p.add_argument("--effort", help="reasoning_effort → λ: low=1.0,medium=0.5,high=0, an effort table (.json) or a "
                                    "sweep run dir to calibrate on (default: MODEL/thinkctl_effort.json)")
    p.add_argument("--policy", help="router policy (thinkctl route fit): λ for requests without λ or effort, or 'auto'")
    p.add_argument("--allow-unauthenticated", action="store_true", dest="allow_unauthenticated",
                   help="allow a non-loopback --host without an API key (anyone reaching the port can use it)")
    p.set_defaults(func=cmd_serve, passthrough=[])


def _args_tiny(p: argparse.ArgumentParser) -> None:
    text = "generate the arithmetic task and train the tiny reference/aligned pair"
    build = p.add_subparsers(dest="tiny_command", required=True).add_parser("build", help=text, description=text)
    build.add_argument("--out", help="output directory (default $THINKCTL_HOME/tiny)")
    build.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    build.add_argument("--recipe", help="YAML recipe whose `tiny:` section sets sizes and schedule")
    build.set_defaults(func=cmd_tiny_build)


#: command → (one-line help, function adding its arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "demo": ("build the tiny pair if needed and run a small λ sweep end to end", _args_demo),
    "sweep": ("graded λ sweep of a model pair or an InRa checkpoint on a benchmark (resumable)", _args_sweep),
    "generate": ("answer questions at a fusion weight λ (a model pair, or --inra CHECKPOINT)", _args_generate),
    "realign": ("TrRa: distil a student that thinks like the fused pair at λ (or at a target length)", _args_realign),
    "inra": ("InRa: train one model's identity-initialised adapter (sweep and generate take --inra)", _args_inra),
    "route": ("pick λ per query by predicted difficulty, or under a thinking-token budget", _args_route),
    "report": ("Markdown/HTML report with Pareto, length and per-level plots from several runs", _args_report),
    "serve": ("OpenAI-compatible vLLM server: λ per request, effort levels, routing, thinking budgets", _args_serve),
    "tiny": ("the self-built tiny default model pair: `thinkctl tiny build`", _args_tiny),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``command`` given, only that command gets its arguments (see above)."""
    parser = argparse.ArgumentParser(prog="thinkctl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if command is None or command == name:
            add_arguments(p)
    return parser


#: signals that stop a job like Ctrl-C (cluster schedulers preempt with SIGTERM; a closed terminal sends SIGHUP)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _signals_as_ctrl_c(received: list[int]) -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise KeyboardInterrupt (recording the signal in ``received``), so
    jobs save their finished work exactly as on Ctrl-C; the previous handlers come back after."""

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: a negative number, or a comma-separated list of numbers starting with one: `-0.33,-0.25,0,0.5` (a λ grid)
_NEGATIVE_VALUE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*,?$")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--lambdas -0.33,-0.25,0`` as ``--lambdas=-0.33,-0.25,0``.

    argparse takes a word that starts with ``-`` for an option unless it is one plain negative number, so a
    λ grid that starts below zero (the README's ``--lambdas -0.33,-0.25,0,0.5,1,1.25``) failed with
    "expected one argument". A long option followed by such a word takes it as its value; thinkctl has no
    option spelled like a number, so nothing else changes.
    """
    out: list[str] = []
    for word in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUE.match(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after a bare `--` is for the program a command wraps (serve: vLLM's server)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else None
    own = attach_negative_values(argv if passthrough is None else argv[: argv.index("--")])
    command = next((a for a in own if not a.startswith("-")), "")
    parser = build_parser(command)
    args = parser.parse_args(own)
    if passthrough is not None:
        if not hasattr(args, "passthrough"):
            parser.error(f"`thinkctl {args.command}` takes no options after `--` (only `thinkctl serve` does)")
        args.passthrough = passthrough
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    received: list[int] = []
    try:
        with _signals_as_ctrl_c(received):
            args.func(args)
    except ThinkctlError as e:
        print(f"thinkctl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: jobs save what they finished (Interrupted says where)
        stopped = f"{signal.Signals(received[0]).name} received; " if received else ""
        print(f"thinkctl: {stopped}{e if isinstance(e, Interrupted) else 'interrupted'}", file=sys.stderr)
        return 128 + received[0] if received else 130  # the shell's status for death by that signal (Ctrl-C: SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
