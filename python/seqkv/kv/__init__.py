"""KV tensors: per-vector quantizers (the warm tier), exact residuals between an original and a
recomputed cache, and the one per-layer KV hash that certifies a restore."""

from . import quantizers, residual
from .quantizers import KIVI, TurboQuant

__all__ = ["quantizers", "residual", "KIVI", "TurboQuant"]
