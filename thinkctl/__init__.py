"""thinkctl: control how long a reasoning model thinks, by logit fusion of a slow and a fast thinker."""

__version__ = "0.1.0"
