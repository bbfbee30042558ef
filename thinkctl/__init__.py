"""thinkctl: control how long a reasoning model thinks, by logit fusion of a slow and a fast thinker.

``fused = λ·logits_aligned + (1−λ)·logits_reference``: λ = 0 thinks like the reference (slow, long),
λ = 1 like the aligned model (fast, short), and λ in between or beyond sets the length in between or
beyond. The public API (each name documented with an example, see ``help(thinkctl.load_pair)``)::

    model = thinkctl.load_pair("reference-model", "aligned-model")   # or thinkctl.load_inra(checkpoint)
    model.generate("What is 17 * 23?", lam=0.5, max_thinking_tokens=256)
    thinkctl.run_sweep(model, "runs/sweep", benchmark="math500", lambdas=[0, 0.5, 1])
    thinkctl.calibrate_lambda(model, target_tokens=400, out="runs/calib")
    thinkctl.realign(reference, aligned, "runs/trra", lam=0.5)         # TrRa: distil a student at λ
    thinkctl.train_inra(base, "runs/inra", teacher=aligned)           # InRa: one model with a λ dial
    thinkctl.fit_router("runs/sweep", "policy.json"); thinkctl.route("policy.json", questions)
    thinkctl.push_to_hub("runs/inra/final", "me/my-inra")               # a checkpoint and its model card, to the Hub

The names load lazily: ``import thinkctl`` imports neither torch nor transformers, so the command
line starts fast; the first use of a name imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

# Built-in benchmarks that live in subpackages register themselves on import; importing them here makes
# ``load_benchmark("tiny")`` work wherever thinkctl is used (the module is light: no torch, no models).
import thinkctl.tiny.benchmark  # noqa: F401

__version__ = "0.1.0"

#: public name → the module defining it (imported on first access)
_EXPORTS: dict[str, str] = {
    **{name: "thinkctl.api" for name in (
        "load_pair", "load_inra", "from_models", "FusedModel", "run_sweep", "calibrate_lambda", "effort_from_sweep",
        "realign", "make_trra_trainer", "train_inra", "fit_router", "route", "push_to_hub",
    )},
    "Completion": "thinkctl.rollout.base",
    "CalibrationResult": "thinkctl.trra.calibrate",
    "CalibrationError": "thinkctl.trra.calibrate",
    "ThinkctlError": "thinkctl.errors",
    "HubError": "thinkctl.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'thinkctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
