"""CUDA paths through CuPy (extra ``seqkv[cuda]``): the logits → table quantizer, CDF gather and
search for the coder, residual pack/unpack and the KV quantizers on the device. The ``.cu`` sources
ship in ``seqkv/cuda/kernels/``; each has a CPU reference that the tests compare against bit for bit.
CuPy is imported on first use."""

from .runtime import available, kernel_dir

__all__ = ["available", "kernel_dir"]
