"""thinkctl's vLLM plugin: InRa and two-model fusion as out-of-tree vLLM models, λ per request.

Also registered: the ``thinkctl`` reasoning parser (``<think>`` blocks, reasoning tokens counted as
thinkctl's grader counts them). The request-level controls of ``thinkctl serve`` (λ from effort levels
or a router policy) sit above this package, in :mod:`thinkctl.serve.middleware`.

vLLM calls :func:`register` in every process it starts, through the ``vllm.general_plugins`` entry
point declared in ``pyproject.toml``. On CPU vLLM always *spawns* its workers, so registering in the
parent process is not enough: the entry point must be visible. thinkctl's launchers call
:func:`ensure_registered`, which registers here and, when the installed metadata predates the entry
point (an old ``pip install -e .``), publishes the same entry point from a small dist-info directory
put on ``sys.path``/``PYTHONPATH`` for the child processes. Importing this package does not import
vLLM; :func:`register` only names the model classes, which vLLM imports lazily.

Per-request λ needs :data:`PROCESSOR_FQCN` among the engine's logits processors
(``LLM(..., logits_processors=[PROCESSOR_FQCN])`` or ``vllm serve --logits-processors PROCESSOR_FQCN``);
without it every request gets the checkpoint's ``default_lambda``.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger(__name__)

#: the entry-point group vLLM loads in every process, and thinkctl's entry in it
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_ENTRY = "thinkctl = thinkctl.vllm_plugin:register"

#: ``SamplingParams.extra_args`` / ``vllm_xargs`` key carrying a request's λ (see thinkctl.vllm_plugin.lam)
LAMBDA_KEY = "thinkctl_lambda"
#: ``extra_args`` / ``vllm_xargs`` key carrying a request's λ schedule (see thinkctl.vllm_plugin.schedule)
SCHEDULE_KEY = "thinkctl_schedule"
#: the logits processor that routes each request's λ to the model
PROCESSOR_FQCN = "thinkctl.vllm_plugin.lam:ThinkctlLambdaProcessor"

ARCHITECTURES = {
    "InRaForCausalLM": "thinkctl.vllm_plugin.inra:InRaForCausalLM",
    "FusedPairForCausalLM": "thinkctl.vllm_plugin.fused:FusedPairForCausalLM",
}

#: vLLM reasoning-parser name of thinkctl's ``<think>`` parser (see thinkctl.vllm_plugin.reasoning)
REASONING_PARSER = "thinkctl"


def register() -> None:
    """Register thinkctl's model classes and reasoning parser with vLLM (idempotent)."""
    from vllm import ModelRegistry
    from vllm.reasoning import ReasoningParserManager

    supported = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, target)
    ReasoningParserManager.register_lazy_module(REASONING_PARSER, "thinkctl.vllm_plugin.reasoning", "ThinkctlReasoningParser")


def _entry_point_installed() -> bool:
    return any(ep.value == "thinkctl.vllm_plugin:register" for ep in entry_points(group=PLUGIN_GROUP))


def _publish_entry_point(root: Path) -> None:
    """Write a minimal dist-info declaring :data:`PLUGIN_ENTRY` under ``root`` and put ``root`` on the path."""
    info = root / "thinkctl_vllm_plugin-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thinkctl-vllm-plugin\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\n{PLUGIN_ENTRY}\n")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *paths])


def ensure_registered() -> None:
    """Register here, and make sure the processes vLLM spawns register too (see the module docstring)."""
    register()
    if not _entry_point_installed():
        home = Path(os.environ.get("THINKCTL_HOME", Path.home() / ".cache" / "thinkctl")).expanduser()
        log.warning(
            "thinkctl's vLLM plugin entry point is not in the installed metadata; publishing it from %s. "
            "Reinstall thinkctl (pip install -e .) to make this unnecessary.", home / "vllm_entry_point"
        )
        _publish_entry_point(home / "vllm_entry_point")
