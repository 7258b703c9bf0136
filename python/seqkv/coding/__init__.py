"""Entropy coding: the range coder, the logits → integer-table quantizer and the ``SQKV`` container.

Only NumPy is needed. :mod:`seqkv.coding.coder` codes symbols under integer frequency tables
(static, one table per step, adaptive); :mod:`seqkv.coding.container` frames coded blocks with the
header every stream carries (``docs/format.md``).
"""

from . import coder, container
from .coder import AdaptiveModel, Decoder, Encoder, crc32c, decode, encode, quantize_logits

__all__ = ["coder", "container", "AdaptiveModel", "Decoder", "Encoder", "crc32c", "decode", "encode", "quantize_logits"]
