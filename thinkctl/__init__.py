"""thinkctl: control how long a reasoning model thinks, by logit fusion of a slow and a fast thinker."""

# Built-in benchmarks that live in subpackages register themselves on import; importing them here makes
# ``load_benchmark("tiny")`` work wherever thinkctl is used (the module is light: no torch, no models).
import thinkctl.tiny.benchmark  # noqa: F401

__version__ = "0.1.0"
