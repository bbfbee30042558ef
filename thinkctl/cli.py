"""The ``thinkctl`` command line: parse, call one function, print.

User errors (:class:`thinkctl.errors.ThinkctlError`) are printed as one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from thinkctl.errors import ThinkctlError
from thinkctl.fusion import parse_lambda, parse_lambda_grid

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


def cmd_tiny_build(args: argparse.Namespace) -> None:
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    pair = build_tiny_pair(Path(args.out) if args.out else default_tiny_dir(), force=args.force)
    print(f"reference: {pair.reference}\naligned:   {pair.aligned}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from thinkctl.sweep import run_sweep_config

    cfg = _sweep_config(args)
    out_dir = Path(args.out)
    run_sweep_config(cfg, args.ref, args.aligned, out_dir)
    _print_summary(out_dir)


def cmd_demo(args: argparse.Namespace) -> None:
    from thinkctl.sweep import run_sweep_config
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    pair = build_tiny_pair(Path(args.tiny_dir) if args.tiny_dir else default_tiny_dir())
    cfg = _sweep_config(args)
    out_dir = Path(args.out)
    run_sweep_config(cfg, str(pair.reference), str(pair.aligned), out_dir)
    _print_summary(out_dir)


def cmd_generate(args: argparse.Namespace) -> None:
    from thinkctl.data import render_prompt
    from thinkctl.rollout import make_backend
    from thinkctl.rollout.base import SamplingConfig

    backend = make_backend(args.engine, args.ref, args.aligned, dtype=args.dtype, device=args.device)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    prompts = [render_prompt(backend.tokenizer, q) for q in args.question]
    for question, completion in zip(args.question, backend.generate(prompts, args.lam, sampling)):
        print(f"## {question}\n{completion.text}\n[{completion.num_tokens} tokens, {completion.finish_reason}]\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkctl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="the self-built tiny default model pair").add_subparsers(dest="tiny_command", required=True)
    p = tiny.add_parser("build", help="generate the arithmetic task and train the tiny reference/aligned pair")
    p.add_argument("--out", help="output directory (default $THINKCTL_HOME/tiny)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    p.set_defaults(func=cmd_tiny_build)

    p = sub.add_parser("sweep", help="graded λ sweep of a model pair on a benchmark (resumable)")
    p.add_argument("--ref", required=True, help="reference (slow thinker) model: hub name or path")
    p.add_argument("--aligned", help="aligned (fast thinker) model; omit for plain decoding at λ=0")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, summary.csv/md, sweep.png)")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="build the tiny pair if needed and run a small λ sweep end to end")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--tiny-dir", dest="tiny_dir", help="tiny pair directory (default $THINKCTL_HOME/tiny)")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="answer questions at a fusion weight λ")
    p.add_argument("--ref", required=True)
    p.add_argument("--aligned")
    p.add_argument("--lambda", dest="lam", type=LAMBDA, default=0.0, help="fusion weight λ (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=256, dest="max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0, dest="top_p")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("question", nargs="+")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except ThinkctlError as e:
        print(f"thinkctl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
