"""The CuPy runtime every GPU path goes through: finding and compiling the ``.cu`` sources shipped
in ``seqkv/cuda/kernels/`` (NVRTC, once per process and device), and taking torch/CuPy device
arrays as they are (DLPack, on torch's current stream; f32, bf16 or f16). CuPy is the
``seqkv[cuda]`` extra, imported on first use."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


from ..errors import InvalidInputError, MissingExtraError, SeqkvError

__all__ = ["available", "kernel_dir", "is_device_array"]

_lock = threading.Lock()
_modules: dict[tuple[str, tuple[str, ...]], Any] = {}
#: kernel handles by (source, name, device): looked up without the lock on every call
_functions: dict[tuple[str, str, int], Any] = {}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise MissingExtraError("the GPU paths need CuPy: pip install 'seqkv[cuda]'") from exc
    return cupy


def available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = _cupy()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def kernel_dir() -> Path:
    """Folder of the ``.cu`` sources: ``$SEQKV_CUDA_KERNELS`` when set, else the package's own
    ``seqkv/cuda/kernels/`` (shipped in the wheel)."""
    env = os.environ.get("SEQKV_CUDA_KERNELS")
    folder = Path(env) if env else Path(__file__).resolve().parent / "kernels"
    if not (folder / "quantize.cu").is_file():
        raise SeqkvError(f"CUDA kernel sources not found in {folder}; set SEQKV_CUDA_KERNELS or reinstall seqkv")
    return folder


def _function(source: str, name: str) -> Any:
    """The kernel ``name`` (a template instantiation expression) of ``seqkv/cuda/kernels/<source>``,
    loaded on the current device (compiled once per process, then a dictionary lookup)."""
    cp = _cupy()
    fkey = (source, name, cp.cuda.runtime.getDevice())
    fn = _functions.get(fkey)
    if fn is not None:
        return fn
    key = (source, (name,))
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            code = (kernel_dir() / source).read_text()
            mod = cp.RawModule(code=code, options=("-std=c++17",), name_expressions=(name,))
            _modules[key] = mod
        fn = _functions[fkey] = mod.get_function(name)
    return fn


# --- input handling ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_cuda")


def is_device_array(x: Any) -> bool:
    """True for a torch CUDA tensor, a CuPy array or an object with ``__cuda_array_interface__``."""
    if _is_torch(x):
        return bool(x.is_cuda)
    return hasattr(x, "__cuda_array_interface__")


@contextlib.contextmanager
def _on_stream_of(x: Any) -> Iterator[None]:
    """Run CuPy work on the device of ``x`` and, for a torch tensor, on torch's current stream."""
    cp = _cupy()
    if _is_torch(x):
        import torch

        dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
        with cp.cuda.Device(dev):
            with cp.cuda.ExternalStream(torch.cuda.current_stream(dev).cuda_stream, dev):
                yield
    elif type(x) is cp.ndarray and x.data.device_id == cp.cuda.runtime.getDevice():
        yield  # already on its device (the common case: no context switch)
    else:
        dev = x.device.id if hasattr(x, "device") and hasattr(x.device, "id") else cp.cuda.Device().id
        with cp.cuda.Device(dev):
            yield


_TORCH_KINDS = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16"}


def _device_view(x: Any, kind: str | None, allowed: tuple[str, ...] = ("f32", "bf16", "f16")) -> tuple[Any, str]:
    """``(cupy array, kind)`` sharing memory with ``x``; bf16 comes back as uint16 bits."""
    cp = _cupy()
    if _is_torch(x):
        import torch

        k = _TORCH_KINDS.get(str(x.dtype))
        if k is None or k not in allowed:
            raise InvalidInputError(f"expected a {'/'.join(allowed)} tensor, got {x.dtype}")
        t = x.detach()
        if k == "bf16":
            t = t.view(torch.int16)
        arr = cp.from_dlpack(t)
        return (arr.view(cp.uint16) if k == "bf16" else arr), k
    if not hasattr(x, "__cuda_array_interface__"):
        raise InvalidInputError(f"expected a CUDA array (torch, CuPy or __cuda_array_interface__), got {type(x).__name__}")
    arr = x if isinstance(x, cp.ndarray) else cp.asarray(x)
    if arr.dtype == cp.float32:
        k = "f32"
    elif arr.dtype == cp.float16:
        k = "f16"
    elif arr.dtype == cp.uint16 and kind in ("bf16", "f16"):
        k = kind
    elif arr.dtype == cp.uint32 and kind == "f32":
        k = "f32"
    else:
        raise InvalidInputError(f"cannot read {arr.dtype} as {'/'.join(allowed)} (pass kind= for raw bits)")
    if k not in allowed:
        raise InvalidInputError(f"expected {'/'.join(allowed)}, got {k}")
    return arr, k


_CTYPE = {"f32": "float", "bf16": "bf16_t", "f16": "f16_t"}


def _max_dyn_smem() -> int:
    cp = _cupy()
    return int(cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]) - 8192  # static part


def _allow_smem(fn: Any, nbytes: int) -> None:
    """Raise a kernel's dynamic shared-memory limit above the default 48 KiB."""
    try:
        fn.max_dynamic_shared_size_bytes = nbytes
    except AttributeError:  # older CuPy: through the driver
        cp = _cupy()
        cp.cuda.driver.funcSetAttribute(
            fn.ptr, cp.cuda.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)


#: shared-memory cache of the quantize kernels: 0 none, 1 u (2 bytes per entry), 2 the row
#: itself then its weights (4 bytes per entry; the row is read from device memory once)
def _cc_major() -> int:
    cp = _cupy()
    return int(cp.cuda.Device().compute_capability) // 10


#: 16-byte loads per thread of the cluster kernels that get compiled (the count needed is rounded
#: up to one of these, so few template instances serve all vocabulary sizes)
