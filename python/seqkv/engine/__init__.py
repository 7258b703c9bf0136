"""The batch-invariant engine: a Llama-family forward pass whose every result bit is the same
whatever the schedule, batch or instruction set (``docs/engine.md``). :class:`Engine` runs on the
CPU (NumPy + the Rust kernels), :class:`GpuEngine` on a CUDA GPU (CuPy) with the same bits."""

from .cpu import KERNEL_DEFINITION, Engine, Sequence, random_tensors, supports, unsupported_reason
from .gpu import GpuEngine

__all__ = ["KERNEL_DEFINITION", "Engine", "GpuEngine", "Sequence", "random_tensors", "supports", "unsupported_reason"]
