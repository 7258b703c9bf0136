"""What the per-vector quantizers produce: plain containers of codes and their scales, on the
host (NumPy) or the device (CuPy), shared by :mod:`seqkv.kv.quantizers` and :mod:`seqkv.kv.gpu`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TurboCodes", "KiviCodes"]


@dataclass
class TurboCodes:
    """``codes`` (uint8, ``[..., d]``, values < 2^bits) and ``norms`` (f32, ``[...]``); NumPy or CuPy."""

    codes: Any
    norms: Any
    bits: int

    @property
    def nbytes(self) -> int:
        """Storage size with the codes bit-packed."""
        return (int(self.codes.size) * self.bits + 7) // 8 + int(self.norms.size) * 4


@dataclass
class KiviCodes:
    """KIVI codes of one tensor ``[..., T, d]``: ``codes`` uint8 (shape of the quantized part),
    ``scales``/``mins`` f32 per group, ``tail`` the unquantized tokens (keys only; f32)."""

    codes: Any
    scales: Any
    mins: Any
    tail: Any
    bits: int
    axis: str  # "channel" (keys) or "token" (values)

    @property
    def nbytes(self) -> int:
        tail = 0 if self.tail is None else int(self.tail.size) * 2  # kept as bf16/f16
        return (int(self.codes.size) * self.bits + 7) // 8 + (int(self.scales.size) + int(self.mins.size)) * 4 + tail
