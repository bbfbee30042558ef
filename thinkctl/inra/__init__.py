"""InRa: inference-time realignment with one model, an identity-initialised layer adapter and a λ dial.

See :mod:`thinkctl.inra.model` for the dual-path model, :mod:`thinkctl.inra.checkpoint` for the
on-disk format and :mod:`thinkctl.inra.train` for training the adapter (SFT, TrRa-style distillation or DPO).
"""

from thinkctl.inra.checkpoint import (
    is_inra_checkpoint, load_inra, load_inra_tokenizer, make_inra_backend, open_inra_backend, save_inra, write_inra_card,
)
from thinkctl.inra.model import SUPPORTED_MODEL_TYPES, DualCache, InRaModel, check_supported

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "DualCache",
    "InRaModel",
    "check_supported",
    "is_inra_checkpoint",
    "load_inra",
    "load_inra_tokenizer",
    "make_inra_backend",
    "open_inra_backend",
    "save_inra",
    "write_inra_card",
]
