"""The warm tier's form of a KV cache: TurboQuant-like per-vector quantization
(:class:`WarmCodec`), and the immutable quantized cache it produces (:class:`WarmKV`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kv.quantizers import pack_codes, unpack_codes

__all__ = ["WarmCodec", "WarmKV", "QTensor", "DEFAULT_WARM_BITS"]

#: Bits per component of the warm codes unless the store says otherwise.
DEFAULT_WARM_BITS = 3


@dataclass(frozen=True)
class QTensor:
    """One K or V tensor in the warm tier: bit-packed codes, an f32 norm per vector and, for keys,
    the f32 per-channel mean over the positions that was subtracted before quantizing."""

    packed: np.ndarray
    norms: np.ndarray
    shape: tuple[int, ...]
    mean: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.norms.nbytes + (0 if self.mean is None else self.mean.nbytes))


@dataclass(frozen=True)
class WarmKV:
    """A session's KV in the warm tier (immutable: read without the tier lock)."""

    layers: tuple[tuple[QTensor, QTensor], ...]
    dtype: Any
    device: Any
    length: int

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


class WarmCodec:
    """TurboQuant-like per-vector (3 bits by default) quantization of whole caches (the warm tier's form).

    The quantizer is :class:`seqkv.kv.quantizers.TurboQuant` (seeded random signs, Walsh-Hadamard
    rotation, Lloyd-Max codebook of the Gaussian, an f32 norm per vector). A cache on a GPU is
    quantized by its CUDA kernel (:mod:`seqkv.kv.gpu`); on the CPU the rotation runs as a torch
    matmul with the ±1 Hadamard matrix (the same transform, in another summation order), which
    is faster than the butterfly reference. Codes are packed 8 to ``bits`` bytes.

    Keys are centred per channel first (the mean over the session's positions, kept in f32):
    keys carry large per-channel offsets (the outlier channels KIVI quantizes per channel), which
    a per-vector quantizer would otherwise spend its levels on. Values are left as they are.
    ``docs/durability.md`` ("The warm tier's codes") has the measured effect of both choices."""

    def __init__(self, head_dim: int, bits: int = DEFAULT_WARM_BITS):
        import torch

        from ..kv.quantizers import TurboQuant, fwht

        self.bits = int(bits)
        self.tq = TurboQuant(head_dim, bits=self.bits, seed=0)
        self.hadamard = torch.from_numpy(fwht(np.eye(head_dim, dtype=np.float32)))  # y @ H = fwht(y)
        self.signs = torch.from_numpy(self.tq.signs)
        self.boundaries = torch.from_numpy(self.tq.boundaries)
        self.centroids = torch.from_numpy(self.tq.centroids)
        self.out_scale = self.signs * float(self.tq.inv_d)

    def nbytes(self, n_vectors: int, dim: int, means: int = 0) -> int:
        """Bytes of one tensor of ``n_vectors`` vectors of ``dim`` in the warm form, with ``means``
        per-channel mean vectors (one per head for keys, none for values)."""
        return (n_vectors * dim + 7) // 8 * self.bits + 4 * n_vectors + 4 * dim * means

    def _quantize(self, t: Any, center: bool = False) -> QTensor:
        import torch

        from ..cuda import runtime as cuda_runtime

        mean = None
        if center:
            m = t.float().mean(dim=-2, keepdim=True)
            t = t.float() - m
            mean = np.ascontiguousarray(m.detach().cpu().numpy(), dtype=np.float32)
        if cuda_runtime.is_device_array(t):
            q = self.tq.quantize(t)  # the CUDA kernel; codes and norms to the host
            codes, norms = q.codes.get(), q.norms.get()
        else:
            with torch.inference_mode():
                y = (t.detach().float() * self.signs) @ self.hadamard
                r = torch.linalg.vector_norm(y, dim=-1)
                u = torch.where(r[..., None] > 0, y / r[..., None], torch.zeros((), dtype=y.dtype))
                codes = torch.bucketize(u, self.boundaries).to(torch.uint8).numpy()
                norms = r.numpy()
        return QTensor(pack_codes(codes, self.bits), np.ascontiguousarray(norms, dtype=np.float32), tuple(t.shape), mean)

    def quantize(self, cache: Any) -> WarmKV:
        from ..integrations import transformers as hf

        layers = hf.cache_layers(cache)
        k0 = layers[0][0]
        return WarmKV(
            tuple((self._quantize(k, center=True), self._quantize(v)) for k, v in layers),
            k0.dtype,
            k0.device,
            int(k0.shape[-2]),
        )

    def _dequantize(self, q: QTensor, n: int, dtype: Any, device: Any) -> Any:
        import torch

        count = int(np.prod(q.shape))
        codes = torch.from_numpy(unpack_codes(q.packed, self.bits, count).reshape(q.shape)[..., :n, :].astype(np.int64))
        norms = torch.from_numpy(q.norms[..., :n])
        with torch.inference_mode():
            y = self.centroids[codes] * norms[..., None]
            x = (y @ self.hadamard) * self.out_scale
            if q.mean is not None:
                x = x + torch.from_numpy(q.mean)
        return x.to(dtype=dtype, device=device)

    def dequantize(self, config: Any, warm: WarmKV, n: int | None = None) -> Any:
        """A ``DynamicCache`` (laid out for the model ``config``) of the first ``n`` positions
        (default all), in the original dtype."""
        from ..integrations import transformers as hf

        n = warm.length if n is None else n
        return hf.cache_from_config_layers(
            config,
            [(self._dequantize(k, n, warm.dtype, warm.device), self._dequantize(v, n, warm.dtype, warm.device))
             for k, v in warm.layers],
        )
