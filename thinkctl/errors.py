"""Exceptions a user can act on.

Every failure that is the user's to fix (a bad λ, a missing file, mismatched vocabularies, a malformed
data line) is raised as a :class:`ThinkctlError` subclass with a message that names the problem, so the
CLI can print it without a traceback from deep inside torch.
"""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) stopped a long job after it saved its completed work; the message says
    where and how to resume.

    A KeyboardInterrupt, so callers that stop on Ctrl-C still stop; the CLI prints the message as one
    line and exits with status 130 (SIGTERM 143, SIGHUP 129) instead of a traceback.
    """


class ThinkctlError(Exception):
    """Base class for errors the user can fix; the CLI prints the message and exits with status 2."""


class InvalidLambdaError(ThinkctlError, ValueError):
    """A fusion weight λ is not a finite real number."""


class VocabMismatchError(ThinkctlError):
    """Two models that must share a vocabulary do not."""


class ModelLoadError(ThinkctlError):
    """A model or tokenizer could not be found or is not the kind thinkctl needs."""


class DataFormatError(ThinkctlError, ValueError):
    """A data file is missing, empty or has a malformed record."""


class ConfigError(ThinkctlError, ValueError):
    """A recipe or option has an unknown key or an invalid value."""


class HubError(ThinkctlError):
    """The Hugging Face Hub could not be reached or refused a request (network, token, permissions)."""
