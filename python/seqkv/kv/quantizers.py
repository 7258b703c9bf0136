"""Per-vector KV quantizers for the warm tier and for comparison tables.

* :class:`TurboQuant` (TurboQuant-like, MSE variant): a seeded randomized Hadamard rotation
  ``y = H(s ⊙ x)`` spreads every vector's energy evenly over its ``d`` coordinates, so each
  coordinate of ``y / |y|`` is close to ``N(0, 1/d)``; each is quantized on its own to ``b`` bits
  (b ∈ {2, 3, 4}) with the Lloyd-Max codebook of the Gaussian, and the norm ``|y|`` is kept in
  f32. About ``b + 32/d`` bits per component.
* :class:`KIVI` (KIVI-like): asymmetric ``b``-bit (default 2) min/max quantization in groups of
  ``group`` elements: keys per channel (a group is ``group`` consecutive tokens of one channel),
  values per token (``group`` consecutive channels of one token). Tokens past the last full
  key group stay in full precision, as in KIVI.

Both are defined with single correctly-rounded f32 operations in a fixed order (the Hadamard
butterflies h = 1, 2, 4, ...; the norm as a pairwise tree), so the NumPy code here and the CUDA
kernels in ``seqkv/cuda/kernels/quantizers.cu`` (used when the input is on a GPU) give the same bits.

:func:`mse` and :func:`attention_score_error` measure what the quantization costs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..coding.coder import pack_bits, unpack_bits
from .codes import KiviCodes, TurboCodes

__all__ = [
    "lloyd_max_gaussian",
    "fwht",
    "TurboQuant",
    "TurboCodes",
    "KIVI",
    "KiviCodes",
    "pack_codes",
    "unpack_codes",
    "to_f32",
    "mse",
    "attention_score_error",
]


def lloyd_max_gaussian(bits: int, iters: int = 500) -> np.ndarray:
    """The ``2^bits`` Lloyd-Max centroids of N(0, 1) (float64, ascending), by Lloyd's iteration on
    the exact density; deterministic."""
    n = 1 << bits
    c = np.array([-2.5 + 5.0 * (i + 0.5) / n for i in range(n)])
    sq2 = math.sqrt(2.0)
    sq2pi = math.sqrt(2.0 * math.pi)
    for _ in range(iters):
        edges = [-math.inf, *((c[:-1] + c[1:]) / 2).tolist(), math.inf]
        new = []
        for a, b in zip(edges[:-1], edges[1:]):
            pa = 0.0 if a == -math.inf else math.exp(-a * a / 2) / sq2pi
            pb = 0.0 if b == math.inf else math.exp(-b * b / 2) / sq2pi
            mass = 0.5 * (math.erf(b / sq2) - math.erf(a / sq2))
            new.append((pa - pb) / mass)
        c = np.array(new)
    return c


def to_f32(x: Any) -> np.ndarray:
    """``x`` (NumPy or torch; f32, f16 or bf16) as a float32 NumPy array (exact widening)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.name == "bfloat16":
        return (a.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    if a.dtype not in (np.float32, np.float16, np.float64):
        raise InvalidInputError(f"KV must be a float array, got {a.dtype}")
    if a.dtype == np.float64:
        raise InvalidInputError("KV must be float32, float16 or bfloat16 (float64 would be rounded)")
    return a.astype(np.float32)


def fwht(y: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform over the last axis (power of two) in float32, the
    butterflies in the kernels' order: for h = 1, 2, 4, ...: (a, b) -> (a + b, a - b)."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    d = y.shape[-1]
    lead = y.shape[:-1]
    h = 1
    while h < d:
        v = y.reshape(*lead, d // (2 * h), 2, h)
        a = v[..., 0, :]
        b = v[..., 1, :]
        y = np.stack([a + b, a - b], axis=-2).reshape(*lead, d)
        h *= 2
    return y


def _tree_sum(v: np.ndarray) -> np.ndarray:
    while v.shape[-1] > 1:
        v = v[..., 0::2] + v[..., 1::2]
    return v[..., 0]


def _is_gpu(x: Any) -> bool:
    from ..cuda.runtime import is_device_array

    return is_device_array(x)


class TurboQuant:
    """TurboQuant-like quantizer for vectors of ``dim`` (a power of two) coordinates at ``bits``."""

    def __init__(self, dim: int, bits: int = 3, seed: int = 0) -> None:
        if bits not in (2, 3, 4):
            raise InvalidInputError(f"bits must be 2, 3 or 4, got {bits}")
        if dim < 1 or dim & (dim - 1) or dim > 1024:
            raise InvalidInputError(f"dim must be a power of two <= 1024, got {dim}")
        self.dim, self.bits, self.seed = dim, bits, seed
        rng = np.random.default_rng(seed)
        self.signs = np.where(rng.integers(0, 2, dim) == 1, 1.0, -1.0).astype(np.float32)
        c = lloyd_max_gaussian(bits)
        # In units of the unit vector y/|y| (coordinates ~ N(0, 1/d)).
        self.centroids = (c / math.sqrt(dim)).astype(np.float32)
        self.boundaries = ((c[:-1] + c[1:]) / 2 / math.sqrt(dim)).astype(np.float32)
        self.inv_d = np.float32(1.0 / dim)

    def quantize(self, x: Any) -> TurboCodes:
        """Codes for ``x`` (``[..., dim]``); a CUDA input (torch/CuPy) runs on the GPU."""
        if _is_gpu(x):
            from . import gpu

            return gpu.turbo_quantize(self, x)
        xf = to_f32(x)
        if xf.shape[-1] != self.dim:
            raise InvalidInputError(f"last axis must be {self.dim}, got {xf.shape}")
        y = fwht(xf * self.signs)
        r = np.sqrt(_tree_sum(y * y))
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(r[..., None] > 0, y / r[..., None], np.float32(0))
        codes = np.searchsorted(self.boundaries, u, side="left").astype(np.uint8)
        return TurboCodes(codes, r.astype(np.float32), self.bits)

    def dequantize(self, q: TurboCodes) -> Any:
        """f32 reconstruction (NumPy, or CuPy for codes made on the GPU)."""
        if _is_gpu(q.codes):
            from . import gpu

            return gpu.turbo_dequantize(self, q)
        y = self.centroids[q.codes] * q.norms[..., None]
        return (fwht(y) * self.inv_d) * self.signs


class KIVI:
    """KIVI-like quantizer: keys per channel, values per token, ``bits`` bits, groups of ``group``."""

    def __init__(self, bits: int = 2, group: int = 32) -> None:
        if not 1 <= bits <= 8:
            raise InvalidInputError(f"bits must be in 1..8, got {bits}")
        if group < 1:
            raise InvalidInputError("group must be >= 1")
        self.bits, self.group = bits, group
        self.qmax = (1 << bits) - 1

    def _quant_groups(self, g: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mn = g.min(axis=axis, keepdims=True) + np.float32(0)
        mx = g.max(axis=axis, keepdims=True) + np.float32(0)
        scale = (mx - mn) / np.float32(self.qmax)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.rint((g - mn) / scale)
        q = np.where(scale > 0, np.clip(q, 0, self.qmax), 0).astype(np.uint8)
        return q, np.squeeze(scale, axis), np.squeeze(mn, axis)

    def quantize_keys(self, k: Any) -> KiviCodes:
        """Keys ``[..., T, d]``: groups of ``group`` tokens per channel; leftover tokens kept."""
        if _is_gpu(k):
            from . import gpu

            return gpu.kivi_quantize(self, k, "channel")
        kf = to_f32(k)
        *lead, T, d = kf.shape
        tq = T - T % self.group
        g = kf[..., :tq, :].reshape(*lead, tq // self.group, self.group, d)
        q, scale, mn = self._quant_groups(g, -2)
        return KiviCodes(q.reshape(*lead, tq, d), scale, mn, kf[..., tq:, :], self.bits, "channel")

    def quantize_values(self, v: Any) -> KiviCodes:
        """Values ``[..., T, d]``: groups of ``group`` channels per token (``d % group == 0``)."""
        if _is_gpu(v):
            from . import gpu

            return gpu.kivi_quantize(self, v, "token")
        vf = to_f32(v)
        *lead, T, d = vf.shape
        if d % self.group:
            raise InvalidInputError(f"head dim {d} is not a multiple of the group {self.group}")
        g = vf.reshape(*lead, T, d // self.group, self.group)
        q, scale, mn = self._quant_groups(g, -1)
        return KiviCodes(q.reshape(*lead, T, d), scale, mn, None, self.bits, "token")

    def dequantize(self, c: KiviCodes) -> Any:
        """f32 reconstruction ``[..., T, d]`` (tail tokens appended for keys)."""
        if _is_gpu(c.codes):
            from . import gpu

            return gpu.kivi_dequantize(self, c)
        q = c.codes.astype(np.float32)
        *lead, T, d = q.shape
        if c.axis == "channel":
            g = q.reshape(*lead, T // self.group, self.group, d)
            x = g * c.scales[..., None, :] + c.mins[..., None, :]
            return np.concatenate([x.reshape(*lead, T, d), c.tail], axis=-2)
        g = q.reshape(*lead, T, d // self.group, self.group)
        return (g * c.scales[..., None] + c.mins[..., None]).reshape(*lead, T, d)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Bit-pack uint8 codes (< 2^bits), LSB first, to bytes (the one bit packer, in Rust)."""
    return np.frombuffer(pack_bits(np.asarray(codes, np.uint8).ravel(), bits, order="lsb"), np.uint8)


def unpack_codes(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`."""
    return unpack_bits(np.asarray(data, np.uint8).tobytes(), count, bits, order="lsb").astype(np.uint8)


def mse(x: Any, x_hat: Any) -> dict[str, float]:
    """``mse`` and ``relative_mse`` (mse over the mean square of ``x``) in float64."""
    a = to_f32(x).astype(np.float64)
    b = np.asarray(x_hat.get() if hasattr(x_hat, "get") else to_f32(x_hat), dtype=np.float64)
    err = float(np.mean((a - b) ** 2))
    return {"mse": err, "relative_mse": err / max(float(np.mean(a * a)), 1e-300)}


def attention_score_error(queries: Any, keys: Any, keys_hat: Any) -> dict[str, float]:
    """Error of the attention logits ``q·kᵀ/√d`` and of their softmax when ``keys`` are replaced by
    ``keys_hat``. ``queries`` ``[..., Tq, d]`` and keys ``[..., Tk, d]`` share leading dims (repeat
    KV heads for GQA first). Returns mean/max absolute logit error, the mean KL divergence
    (nats) of the attention distribution and its mean total variation."""
    q = to_f32(queries).astype(np.float64)
    k = to_f32(keys).astype(np.float64)
    kh = np.asarray(keys_hat.get() if hasattr(keys_hat, "get") else to_f32(keys_hat), dtype=np.float64)
    d = q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    sh = q @ np.swapaxes(kh, -1, -2) / math.sqrt(d)
    diff = np.abs(s - sh)
    ls = s - s.max(-1, keepdims=True)
    lsh = sh - sh.max(-1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
    lsh -= np.log(np.exp(lsh).sum(-1, keepdims=True))
    p = np.exp(ls)
    kl = (p * (ls - lsh)).sum(-1)
    tv = 0.5 * np.abs(p - np.exp(lsh)).sum(-1)
    return {
        "logit_mean_abs_err": float(diff.mean()),
        "logit_max_abs_err": float(diff.max()),
        "softmax_kl_mean": float(kl.mean()),
        "softmax_tv_mean": float(tv.mean()),
    }
