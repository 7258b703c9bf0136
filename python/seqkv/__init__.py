"""seqkv: store and move transformer KV caches as token sequences.

Two layers: a concurrent prefix trie shared by every session (:class:`Trie`),
and predictive coding of the tokens not already in it (:mod:`seqkv.codecs`).
``import seqkv`` needs only NumPy; the parts that need torch, CuPy or redis
import them when first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import errors as _errors
from .errors import (
    CapacityError,
    CorruptStreamError,
    FormatVersionError,
    InternalError,
    InvalidInputError,
    MissingExtraError,
    ModelMismatchError,
    NumericsMismatchError,
    SeqkvError,
    SessionNotFoundError,
    StoreError,
)

__version__ = "0.1.0"

# Public names resolved on first use, so that `import seqkv` stays light.
_LAZY = {
    "Trie": "seqkv.trie",
    "Match": "seqkv.trie",
    "SessionStore": "seqkv.store",
    "Tiers": "seqkv.store",
    "open_backend": "seqkv.backends",
    "backends": "seqkv.backends",
    "codecs": "seqkv.codecs",
    "coding": "seqkv.coding",
    "cuda": "seqkv.cuda",
    "engine": "seqkv.engine",
    "integrations": "seqkv.integrations",
    "kv": "seqkv.kv",
    "store": "seqkv.store",
    "testing": "seqkv.testing",
}

__all__ = [*_errors.__all__, *_LAZY]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'seqkv' has no attribute {name!r}")
    module = import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value
