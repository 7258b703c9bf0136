"""transformers KV-cache helpers: build, clone, hash, compare and (de)serialise ``DynamicCache``.

A cache here is a transformers ``DynamicCache`` (or anything with ``.layers[i].keys/.values``,
or a legacy tuple of ``(k, v)`` pairs) for **batch size 1**; tensors are
``[1, kv_heads, seq, head_dim]``.

* :func:`compute_cache` runs tokens through a model with an explicit compute schedule
  (prefill chunk sizes, then single steps): the same schedule on the same machine and
  software gives the same bits, which :func:`layer_hashes` proves.
* :func:`kv_to_bf16_bytes` / :func:`kv_from_bf16_bytes` are the "store the KV itself"
  baseline the demo compares against (bf16, 16 bits per component).
"""

from __future__ import annotations

import functools
import inspect
import struct
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError
from ..kv import hashing as kv_hashing
from ..kv.hashing import HASH_BYTES
from .models import require_torch

__all__ = [
    "new_cache",
    "cache_layers",
    "cache_from_layers",
    "clone_cache",
    "cache_length",
    "compute_cache",
    "cache_argument",
    "forward_with_cache",
    "normalize_schedule",
    "layer_hashes",
    "max_abs_diff",
    "caches_equal",
    "kv_to_bf16_bytes",
    "kv_from_bf16_bytes",
    "kv_bits_per_token",
    "greedy_continuation",
]

_BF16_MAGIC = b"SKVB"
_BF16_HEAD = struct.Struct("<4sIIII")  # magic, layers, kv heads, seq, head_dim


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` laid out for ``model``."""
    _, transformers = require_torch()
    return transformers.DynamicCache(config=model.config)


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """``[(keys, values), ...]`` per layer (the cache's own tensors, not copies)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        out = []
        for layer in layers:
            k = getattr(layer, "keys", None)
            v = getattr(layer, "values", None)
            if k is None or v is None:
                raise InvalidInputError("cache has an uninitialised layer")
            out.append((k, v))
        return out
    if isinstance(cache, (list, tuple)):
        return [(k, v) for k, v in cache]
    raise InvalidInputError(f"not a KV cache: {type(cache).__name__}")


def cache_from_layers(model: Any, layers: Iterable[tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` holding the given per-layer ``(keys, values)`` tensors."""
    return cache_from_config_layers(model.config, layers)


def cache_from_config_layers(config: Any, layers: Iterable[tuple[Any, Any]]) -> Any:
    """:func:`cache_from_layers` for a model config (callers that keep the config, not the model)."""
    _, transformers = require_torch()
    return transformers.DynamicCache(ddp_cache_data=list(layers), config=config)


def clone_cache(model: Any, cache: Any) -> Any:
    """A deep copy of ``cache`` (generation appends to a cache in place)."""
    return cache_from_layers(model, [(k.clone(), v.clone()) for k, v in cache_layers(cache)])


def cache_length(cache: Any) -> int:
    layers = cache_layers(cache)
    return int(layers[0][0].shape[-2]) if layers else 0


def normalize_schedule(schedule: Sequence[int] | None, n_tokens: int) -> tuple[int, ...]:
    """Validate a compute schedule (chunk sizes ≥ 1 summing to ``n_tokens``); ``None`` is one
    prefill of everything."""
    if schedule is None:
        return (n_tokens,) if n_tokens else ()
    out = tuple(int(s) for s in schedule)
    if any(s < 1 for s in out) or sum(out) != n_tokens:
        raise InvalidInputError(f"schedule must be chunk sizes >= 1 summing to {n_tokens}, got sum {sum(out)}")
    return out


def cache_argument(model: Any) -> str:
    """The keyword ``model``'s forward and ``generate`` take a KV cache by: ``"cache"`` since
    transformers 5 (``past_key_values`` is deprecated there), ``"past_key_values"`` before."""
    return _cache_argument_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(model_class: type) -> str:
    # read once per model class: every forward of a logits source asks
    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def forward_with_cache(model: Any, cache: Any, **inputs: Any) -> tuple[Any, Any]:
    """``model(**inputs)`` appending to ``cache``; returns ``(output, cache after)``, on any
    transformers version the package supports."""
    name = cache_argument(model)
    out = model(**inputs, use_cache=True, **{name: cache})
    return out, getattr(out, name)


def compute_cache(model: Any, tokens: Any, schedule: Sequence[int] | None = None) -> tuple[Any, Any]:
    """Run ``tokens`` through ``model`` chunk by chunk; returns ``(cache, last_logits)``.

    ``schedule`` is the list of chunk sizes (``None``: one prefill). ``last_logits`` is the
    float32 logits row after the last token (a torch tensor), or ``None`` for no tokens.
    """
    torch, _ = require_torch()
    ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
    sched = normalize_schedule(schedule, len(ids))
    device = next(iter(model.parameters())).device
    cache = new_cache(model)
    last = None
    pos = 0
    with torch.inference_mode():
        for size in sched:
            chunk = torch.tensor([ids[pos : pos + size]], dtype=torch.long, device=device)
            out, cache = forward_with_cache(model, cache, input_ids=chunk, logits_to_keep=1)
            last = out.logits[0, -1].float()
            pos += size
    return cache, last


def _tensor_bytes(t: Any) -> memoryview:
    torch, _ = require_torch()
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy())


def layer_hashes(cache: Any, digest_size: int = HASH_BYTES) -> list[bytes]:
    """Per-layer digests of a cache (:func:`seqkv.kv.hashing.layer_hashes`, the one definition)."""
    return kv_hashing.layer_hashes(cache_layers(cache), digest_size)


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over every K and V component (float64); ``inf`` if the shapes differ."""
    la, lb = cache_layers(a), cache_layers(b)
    if len(la) != len(lb):
        return float("inf")
    worst = 0.0
    for (ka, va), (kb, vb) in zip(la, lb):
        if ka.shape != kb.shape or va.shape != vb.shape:
            return float("inf")
        worst = max(worst, float((ka.double() - kb.double()).abs().max()), float((va.double() - vb.double()).abs().max()))
    return worst


def caches_equal(a: Any, b: Any) -> bool:
    """Bit-identical K and V in every layer."""
    torch, _ = require_torch()
    la, lb = cache_layers(a), cache_layers(b)
    return len(la) == len(lb) and all(
        ka.shape == kb.shape and torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(la, lb)
    )


def kv_to_bf16_bytes(cache: Any) -> bytes:
    """The cache as bf16 bytes (a 20-byte header, then each layer's K then V)."""
    torch, _ = require_torch()
    layers = cache_layers(cache)
    if not layers:
        raise InvalidInputError("empty cache")
    b, heads, seq, dim = layers[0][0].shape
    if b != 1:
        raise InvalidInputError("kv_to_bf16_bytes handles batch size 1")
    parts = [_BF16_HEAD.pack(_BF16_MAGIC, len(layers), heads, seq, dim)]
    for k, v in layers:
        for t in (k, v):
            parts.append(bytes(_tensor_bytes(t.to(torch.bfloat16))))
    return b"".join(parts)


def kv_from_bf16_bytes(model: Any, data: bytes, dtype: Any = None) -> Any:
    """Inverse of :func:`kv_to_bf16_bytes`: a ``DynamicCache`` in ``dtype`` (default: the model's)."""
    torch, _ = require_torch()
    if len(data) < _BF16_HEAD.size:
        raise CorruptStreamError("bf16 KV blob is truncated")
    magic, n_layers, heads, seq, dim = _BF16_HEAD.unpack_from(data)
    if magic != _BF16_MAGIC:
        raise CorruptStreamError("not a bf16 KV blob")
    per = heads * seq * dim * 2
    if len(data) != _BF16_HEAD.size + 2 * n_layers * per:
        raise CorruptStreamError("bf16 KV blob has the wrong length")
    param = next(iter(model.parameters()))
    dtype = param.dtype if dtype is None else dtype
    flat = torch.frombuffer(bytearray(data[_BF16_HEAD.size :]), dtype=torch.bfloat16)
    flat = flat.view(n_layers, 2, 1, heads, seq, dim).to(device=param.device, dtype=dtype)
    return cache_from_layers(model, [(flat[i, 0], flat[i, 1]) for i in range(n_layers)])


def kv_bits_per_token(model: Any, bits_per_component: float = 16.0) -> float:
    """KV bits per token position: layers × 2 × kv heads × head dim × bits (SmolLM2 bf16: 184,320)."""
    config = model.config
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return float(layers * 2 * heads * dim * bits_per_component)


def greedy_continuation(model: Any, tokens: Any, cache: Any = None, max_new_tokens: int = 8) -> list[int]:
    """``model.generate(..., do_sample=False)`` from ``tokens`` (reusing a copy of ``cache`` if
    given); returns only the new token ids.

    ``generate`` feeds the last prompt token again, so a cache holding all of ``tokens`` is cut
    to ``tokens[:-1]`` first (feeding a position twice would change the continuation)."""
    torch, _ = require_torch()
    ids = torch.tensor([[int(t) for t in np.asarray(tokens).reshape(-1)]], dtype=torch.long,
                       device=next(iter(model.parameters())).device)
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": False}
    if cache is not None:
        keep = min(cache_length(cache), ids.shape[1] - 1)
        kwargs[cache_argument(model)] = cache_from_layers(
            model, [(k[..., :keep, :].clone(), v[..., :keep, :].clone()) for k, v in cache_layers(cache)]
        )
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        kwargs["pad_token_id"] = getattr(model.config, "eos_token_id", None) or 0
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return [int(t) for t in out[0, ids.shape[1] :].tolist()]
