"""What identifies a model: its fingerprint (config, weights, tokenizer), the attributes
seqkv caches on model and tokenizer objects, and the lazy import of torch and transformers (the
``seqkv[torch]`` extra). A leaf module: :mod:`.models` and :mod:`.model_cache` both build on it."""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Any

from ..errors import MissingExtraError

__all__ = ["TOKENIZER_ATTR", "config_json", "fingerprint", "require_torch", "tokenizer_fingerprint", "weights_digest"]

#: attribute caching a model's (or tokenizer's) fingerprint on the object
_FP_ATTR = "_seqkv_fingerprint"
#: attribute :func:`seqkv.integrations.models.load_model` sets: the tokenizer loaded with the model
TOKENIZER_ATTR = "_seqkv_tokenizer"


def require_torch() -> tuple[Any, Any]:
    """Import and return ``(torch, transformers)``, or raise :class:`MissingExtraError`."""
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"this needs torch and transformers ({exc.name or exc} is missing): "
            "pip install 'seqkv[torch]'"
        ) from exc
    return torch, transformers


def config_json(model: Any) -> str:
    config = getattr(model, "config", None)
    if config is None:
        return "{}"
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, default=str)


def tokenizer_fingerprint(tokenizer: Any) -> bytes:
    """32-byte BLAKE2b of a tokenizer's vocabulary (token → id) and special tokens; cached."""
    cached = getattr(tokenizer, _FP_ATTR, None)
    if isinstance(cached, bytes):
        return cached
    h = hashlib.blake2b(digest_size=32, person=b"seqkv-tokenizer")
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])), ensure_ascii=False).encode())
    special = getattr(tokenizer, "all_special_tokens", [])
    h.update(json.dumps(sorted(str(t) for t in special)).encode())
    digest = h.digest()
    try:
        setattr(tokenizer, _FP_ATTR, digest)
    except AttributeError:  # pragma: no cover - slotted tokenizer classes
        pass
    return digest


def weights_digest(model: Any) -> bytes:
    torch, _ = require_torch()
    cached = getattr(model, _FP_ATTR, None)
    if isinstance(cached, bytes):
        return cached
    h = hashlib.blake2b(digest_size=32, person=b"seqkv-model")
    h.update(type(model).__name__.encode())
    h.update(config_json(model).encode())
    with torch.inference_mode():
        named = list(model.named_parameters()) + list(model.named_buffers())
        for name, tensor in named:
            t = tensor.detach()
            h.update(f"\x00{name}:{tuple(t.shape)}:{t.dtype}\x00".encode())
            if t.numel():
                flat = t.to("cpu").contiguous().reshape(-1).view(torch.uint8)
                h.update(memoryview(flat.numpy()))
    digest = h.digest()
    setattr(model, _FP_ATTR, digest)
    return digest


def fingerprint(model: Any, tokenizer: Any = None) -> bytes:
    """32-byte BLAKE2b of the model: config JSON, each parameter/buffer's name, shape, dtype
    and bytes, and the tokenizer's vocabulary.

    ``tokenizer`` defaults to the one :func:`load_model` attached to the model (if any), so
    ``fingerprint(model)`` is the same value at both ends of a stream. The weight digest
    reads every parameter's bytes, so it is cached on the model object; mutate the weights and
    you must ``del model._seqkv_fingerprint``.
    """
    if tokenizer is None:
        tokenizer = getattr(model, TOKENIZER_ATTR, None)
    weights = weights_digest(model)
    if tokenizer is None:
        return weights
    h = hashlib.blake2b(digest_size=32, person=b"seqkv-fp")
    h.update(weights)
    h.update(tokenizer_fingerprint(tokenizer))
    return h.digest()
