"""The ``thinkctl`` command line: parse, call one function, print.

User errors (:class:`thinkctl.errors.ThinkctlError`) are printed as one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from thinkctl.errors import ConfigError, ThinkctlError
from thinkctl.fusion import parse_lambda, parse_lambda_grid

if TYPE_CHECKING:
    from thinkctl.rollout.base import RolloutBackend

log = logging.getLogger("thinkctl")


def arg_type(parse):
    """Wrap a parser so argparse shows its ThinkctlError message (argparse hides other exceptions)."""

    def wrapped(text: str):
        try:
            return parse(text)
        except ThinkctlError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


LAMBDA = arg_type(parse_lambda)
LAMBDA_GRID = arg_type(parse_lambda_grid)


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML recipe whose `sweep:` section sets the defaults")
    p.add_argument("--benchmark", help="tiny | math500 | gsm8k | aime | path to a .jsonl/.json/.parquet file")
    p.add_argument("--split", help="dataset split (hub benchmarks; tiny: train|test)")
    p.add_argument("--limit", type=int, help="number of problems (a fixed prefix)")
    p.add_argument("--lambdas", type=LAMBDA_GRID, help="comma-separated λ grid, e.g. 0,0.5,1,1.5")
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-p", type=float, dest="top_p")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-samples", type=int, dest="n_samples", help="samples per problem and λ")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--engine", choices=["hf", "vllm"], help="rollout backend (default hf)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, cuda:1, …")


def _sweep_config(args: argparse.Namespace):
    from thinkctl.config import load_section
    from thinkctl.sweep import SweepConfig

    keys = ("benchmark", "split", "limit", "lambdas", "max_new_tokens", "temperature", "top_p", "seed",
            "n_samples", "batch_size", "engine", "dtype", "device")
    return load_section(SweepConfig, args.recipe, "sweep", {k: getattr(args, k) for k in keys})


def _print_summary(out_dir: Path) -> None:
    print((out_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"results: {out_dir / 'results.jsonl'}")
    print(f"plot:    {out_dir / 'sweep.png'}")


def _tiny_pair(recipe: str | None, out: str | None, force: bool = False):
    from thinkctl.config import load_section
    from thinkctl.tiny import TinyBuildConfig, build_tiny_pair, default_tiny_dir

    config = load_section(TinyBuildConfig, recipe, "tiny")
    return build_tiny_pair(Path(out) if out else default_tiny_dir(), config, force=force)


def cmd_tiny_build(args: argparse.Namespace) -> None:
    pair = _tiny_pair(args.recipe, args.out, args.force)
    print(f"reference: {pair.reference}\naligned:   {pair.aligned}")


def _model_source(args: argparse.Namespace) -> None:
    """``--ref`` (with an optional ``--aligned``) and ``--inra`` are the two ways to name the models."""
    if bool(args.ref) == bool(args.inra):
        raise ConfigError("give either --ref (and optionally --aligned) or --inra CHECKPOINT")
    if args.inra and args.aligned:
        raise ConfigError("--aligned fuses two models; an --inra checkpoint carries its own fast path")


def cmd_sweep(args: argparse.Namespace) -> None:
    from thinkctl.inra.dial import run_inra_sweep
    from thinkctl.sweep import run_sweep_config

    _model_source(args)
    cfg = _sweep_config(args)
    out_dir = Path(args.out)
    if args.inra:
        run_inra_sweep(cfg, args.inra, out_dir)
    else:
        run_sweep_config(cfg, args.ref, args.aligned, out_dir)
    _print_summary(out_dir)


def cmd_demo(args: argparse.Namespace) -> None:
    from thinkctl.sweep import run_sweep_config

    pair = _tiny_pair(args.recipe, args.tiny_dir)
    cfg = _sweep_config(args)
    out_dir = Path(args.out)
    run_sweep_config(cfg, str(pair.reference), str(pair.aligned), out_dir)
    _print_summary(out_dir)


def _print_answers(backend: RolloutBackend, args: argparse.Namespace) -> None:
    """Answer ``args.question`` at ``args.lam`` with ``backend`` and print each answer with its token count."""
    from thinkctl.data import render_prompt
    from thinkctl.rollout.base import SamplingConfig

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    prompts = [render_prompt(backend.tokenizer, q) for q in args.question]
    for question, completion in zip(args.question, backend.generate(prompts, args.lam, sampling)):
        print(f"## {question}\n{completion.text}\n[{completion.num_tokens} tokens, {completion.finish_reason}]\n")


def cmd_generate(args: argparse.Namespace) -> None:
    from thinkctl.rollout import make_backend

    _model_source(args)
    if args.inra:
        from thinkctl.inra import make_inra_backend

        backend = make_inra_backend(args.inra, args.dtype, args.device)
    else:
        backend = make_backend(args.engine, args.ref, args.aligned, dtype=args.dtype, device=args.device)
    _print_answers(backend, args)


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


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="OpenAI-compatible vLLM server: λ per request, effort levels, routing, thinking budgets",
        usage="thinkctl serve MODEL [options] [-- VLLM_SERVE_OPTIONS ...]",
        epilog="Options after `--` go to vLLM's server unchanged, e.g. `-- --api-key KEY --max-num-seqs 64 "
               "--tensor-parallel-size 2`; they win over the options above.",
    )
    p.add_argument("model", help="model dir: plain, InRa checkpoint, or the reference when --aligned is given")
    p.add_argument("--aligned", help="aligned model: serve the pair fused (λ per request)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; other hosts need an API key (-- --api-key K)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", help="default: float32 on CPU, vLLM's choice on GPU")
    p.add_argument("--max-model-len", type=int, dest="max_model_len")
    p.add_argument("--gpu-memory-utilization", type=float, dest="gpu_memory_utilization", help="default 0.3 on CPU")
    p.add_argument("--served-model-name", dest="served_model_name", help="default: the MODEL argument")
    p.add_argument("--effort", help="reasoning_effort → λ: low=1.0,medium=0.5,high=0, an effort table (.json) or a "
                                    "sweep run dir to calibrate on (default: MODEL/thinkctl_effort.json)")
    p.add_argument("--policy", help="router policy (thinkctl route fit): λ for requests without λ or effort, or 'auto'")
    p.add_argument("--allow-unauthenticated", action="store_true", dest="allow_unauthenticated",
                   help="allow a non-loopback --host without an API key (anyone reaching the port can use it)")
    p.set_defaults(func=cmd_serve, passthrough=[])


def cmd_inra_train(args: argparse.Namespace) -> None:
    from thinkctl.config import load_section
    from thinkctl.inra.train import InRaTrainConfig, train_inra

    keys = ("base", "output_dir", "method", "teacher", "teacher_lambda", "max_steps", "learning_rate", "device", "dtype")
    cfg = load_section(InRaTrainConfig, args.recipe, "inra", {k: getattr(args, k) for k in keys})
    print(f"InRa checkpoint: {train_inra(cfg)}")


def cmd_inra_sweep(args: argparse.Namespace) -> None:
    from thinkctl.inra.dial import run_inra_sweep

    out_dir = Path(args.out)
    run_inra_sweep(_sweep_config(args), args.checkpoint, out_dir)
    _print_summary(out_dir)


def cmd_inra_generate(args: argparse.Namespace) -> None:
    from thinkctl.inra import make_inra_backend

    _print_answers(make_inra_backend(args.checkpoint, args.dtype, args.device), args)


def _add_inra_parser(sub: argparse._SubParsersAction) -> None:
    inra = sub.add_parser("inra", help="one model + identity-initialised adapter: train it, sweep or use its λ dial")
    inra_sub = inra.add_subparsers(dest="inra_command", required=True)
    p = inra_sub.add_parser("train", help="train an InRa adapter on a base model (DPO or fused distillation)")
    p.add_argument("--recipe", help="YAML recipe whose `inra:` section sets the defaults")
    p.add_argument("--base", help="base (reference) model: hub name or path")
    p.add_argument("--output-dir", dest="output_dir", help="run directory; the checkpoint lands in OUTPUT_DIR/final")
    p.add_argument("--method", choices=["dpo", "distill"])
    p.add_argument("--teacher", help="aligned model for distillation")
    p.add_argument("--teacher-lambda", type=LAMBDA, dest="teacher_lambda", help="λ of the fused distillation target")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--learning-rate", type=float, dest="learning_rate")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device")
    p.set_defaults(func=cmd_inra_train)

    p = inra_sub.add_parser("sweep", help="graded λ sweep of an InRa checkpoint (resumable; method 'inra')")
    p.add_argument("checkpoint", help="InRa checkpoint directory")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, summary.csv/md, sweep.png)")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_inra_sweep)

    p = inra_sub.add_parser("generate", help="answer questions with an InRa checkpoint at a λ")
    p.add_argument("checkpoint", help="InRa checkpoint directory")
    p.add_argument("--lambda", dest="lam", type=LAMBDA, default=1.0, help="fusion weight λ (default 1: the adapter path)")
    p.add_argument("--max-new-tokens", type=int, default=512, dest="max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0, dest="top_p")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("question", nargs="+")
    p.set_defaults(func=cmd_inra_generate)


def _route_questions(args: argparse.Namespace) -> dict[str, str] | None:
    from thinkctl.router.run import load_questions

    return load_questions(args.questions, args.split, args.limit, args.seed) if args.questions else None


def cmd_report(args: argparse.Namespace) -> None:
    from thinkctl.report import build_report

    path = build_report(args.runs, args.out, title=args.title)
    print(f"report: {path}\nhtml:   {path.with_suffix('.html')}")


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


def _add_route_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown/HTML report with Pareto, length and per-level plots from several runs")
    p.add_argument("runs", nargs="+", help="run directories (results.jsonl, routed.jsonl) or JSONL files")
    p.add_argument("--out", required=True, help="output directory (report.md, report.html, *.png)")
    p.add_argument("--title", default="thinkctl report")
    p.set_defaults(func=cmd_report)

    route = sub.add_parser("route", help="pick λ per query by predicted difficulty, or under a thinking-token budget")
    route_sub = route.add_subparsers(dest="route_command", required=True)

    def add_questions(q: argparse.ArgumentParser) -> None:
        q.add_argument("--questions", help="benchmark the sweep ran on (tiny | path), for text features: records hold only ids")
        q.add_argument("--split", help="its split (tiny: train|test)")
        q.add_argument("--limit", type=int, help="its problem count, as in the sweep")
        q.add_argument("--seed", type=int, default=0, help="its seed, as in the sweep")
        q.add_argument("--method", help="method of the sweep records to use (default: the only one)")
        q.add_argument("--benchmark", help="benchmark of the sweep records to use (default: the only one)")

    p = route_sub.add_parser("fit", help="calibrate a router on a λ sweep and save its policy")
    p.add_argument("--sweep", nargs="+", required=True, help="results.jsonl file(s) or run directories")
    p.add_argument("--out", required=True, help="policy file (.json, or .yaml)")
    p.add_argument("--estimator", choices=["logistic", "bins"], default="logistic")
    p.add_argument("--threshold", type=float, default=0.5, help="route to the cheapest λ with P(correct) ≥ this")
    p.add_argument("--features", help="comma-separated subset of level,n_chars,n_numbers,n_op_words,entropy")
    p.add_argument("--entropy-model", dest="entropy_model", help="model whose next-token entropy is a feature")
    p.add_argument("--entropy-tokens", dest="entropy_tokens", type=int, default=0,
                   help="average entropy over this many generated tokens (0: over the prompt)")
    add_questions(p)
    p.set_defaults(func=cmd_route_fit)

    p = route_sub.add_parser("apply", help="λ per query of a JSONL file (question, optional id/level)")
    p.add_argument("--policy", required=True)
    p.add_argument("--input", required=True, help="JSONL with question/problem/prompt per line")
    p.add_argument("--out", help="write JSONL rows (id, lam, p_correct, predicted_thinking_tokens) here")
    p.add_argument("--budget", type=float, help="mean thinking tokens per query to spend (budget mode)")
    p.add_argument("--entropy-model", dest="entropy_model", help="override the policy's entropy model path")
    p.set_defaults(func=cmd_route_apply)

    p = route_sub.add_parser("eval", help="compare routing with every fixed λ on a held-out sweep (by lookup)")
    p.add_argument("--policy", required=True)
    p.add_argument("--sweep", nargs="+", required=True, help="held-out sweep: every λ of the policy on the same queries")
    p.add_argument("--out", required=True, help="directory for routed.jsonl, route_eval.md/csv")
    add_questions(p)
    p.set_defaults(func=cmd_route_eval)


def cmd_realign(args: argparse.Namespace) -> None:
    from thinkctl.trra.realign import load_realign_configs, run_realign

    realign_keys = ("lambda_grid", "train_limit", "calib_limit", "eval_limit", "max_new_tokens", "engine", "dtype", "device", "batch_size")
    realign = {k: getattr(args, k) for k in realign_keys}
    realign.update(reference=args.ref, aligned=args.aligned, lambda_=args.lam, target_tokens=args.target_tokens, data_path=args.data)
    trra = {k: getattr(args, k) for k in ("max_steps", "learning_rate", "divergence", "use_lora")}
    realign_cfg, trra_cfg = load_realign_configs(args.recipe, realign, trra)
    run_realign(realign_cfg, trra_cfg, args.out)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))


def _add_realign_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("realign", help="TrRa: distil a student that thinks like the fused pair at λ (or at a target length)")
    p.add_argument("--ref", help="reference (slow thinker); omit with --aligned for the tiny default pair")
    p.add_argument("--aligned", help="aligned (fast thinker) model")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--lambda", dest="lam", type=LAMBDA, help="fusion weight λ of the teacher")
    goal.add_argument("--target-tokens", dest="target_tokens", type=float, help="calibrate λ to this mean thinking length")
    p.add_argument("--recipe", help="YAML recipe with `realign:` and `trra:` sections (e.g. recipes/tiny-trra.yaml)")
    p.add_argument("--out", required=True, help="run directory (resumable): calibration, data, student/, eval/, report.md")
    p.add_argument("--data", help="distil on this JSONL of {prompt|question, response} instead of teacher rollouts")
    p.add_argument("--lambda-grid", dest="lambda_grid", type=LAMBDA_GRID, help="calibration grid, e.g. 0,0.5,1,1.5")
    p.add_argument("--train-limit", dest="train_limit", type=int, help="problems to generate distillation data on")
    p.add_argument("--calib-limit", dest="calib_limit", type=int, help="problems in the calibration split")
    p.add_argument("--eval-limit", dest="eval_limit", type=int, help="held-out problems to evaluate on")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--divergence", choices=["forward_kl", "reverse_kl", "jsd"])
    p.add_argument("--use-lora", dest="use_lora", action="store_true", default=None, help="train LoRA adapters (merged on save)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="generation batch size")
    p.add_argument("--engine", choices=["hf", "vllm"])
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", help="generation device: cpu, cuda, …")
    p.set_defaults(func=cmd_realign)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkctl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="the self-built tiny default model pair").add_subparsers(dest="tiny_command", required=True)
    p = tiny.add_parser("build", help="generate the arithmetic task and train the tiny reference/aligned pair")
    p.add_argument("--out", help="output directory (default $THINKCTL_HOME/tiny)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    p.add_argument("--recipe", help="YAML recipe whose `tiny:` section sets sizes and schedule")
    p.set_defaults(func=cmd_tiny_build)

    p = sub.add_parser("sweep", help="graded λ sweep of a model pair or an InRa checkpoint on a benchmark (resumable)")
    p.add_argument("--ref", help="reference (slow thinker) model: hub name or path")
    p.add_argument("--aligned", help="aligned (fast thinker) model; omit for plain decoding at λ=0")
    p.add_argument("--inra", help="InRa checkpoint (one model with its own λ dial) instead of --ref/--aligned")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, summary.csv/md, sweep.png)")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="build the tiny pair if needed and run a small λ sweep end to end")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--tiny-dir", dest="tiny_dir", help="tiny pair directory (default $THINKCTL_HOME/tiny)")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="answer questions at a fusion weight λ")
    p.add_argument("--ref", help="reference (slow thinker) model: hub name or path")
    p.add_argument("--aligned", help="aligned (fast thinker) model")
    p.add_argument("--inra", help="InRa checkpoint instead of --ref/--aligned (hf engine)")
    p.add_argument("--lambda", dest="lam", type=LAMBDA, default=0.0, help="fusion weight λ (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=512, dest="max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0, dest="top_p")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("question", nargs="+")
    p.set_defaults(func=cmd_generate)
    _add_serve_parser(sub)
    _add_inra_parser(sub)
    _add_route_parser(sub)
    _add_realign_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after a bare `--` is for the program a command wraps (serve: vLLM's server)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else None
    parser = build_parser()
    args = parser.parse_args(argv if passthrough is None else argv[: argv.index("--")])
    if passthrough is not None:
        if not hasattr(args, "passthrough"):
            parser.error(f"`thinkctl {args.command}` takes no options after `--` (only `thinkctl serve` does)")
        args.passthrough = passthrough
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except ThinkctlError as e:
        print(f"thinkctl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
