"""The exceptions seqkv raises: one hierarchy, rooted at :class:`SeqkvError`.

The native extension raises these same classes (it imports this module), so
``except seqkv.SeqkvError`` catches every failure of the library.
"""

from __future__ import annotations

__all__ = [
    "SeqkvError",
    "InvalidInputError",
    "CorruptStreamError",
    "FormatVersionError",
    "ModelMismatchError",
    "NumericsMismatchError",
    "CapacityError",
    "SessionNotFoundError",
    "StoreError",
    "MissingExtraError",
    "InternalError",
]


class SeqkvError(Exception):
    """Base class of every error raised by seqkv."""


class InvalidInputError(SeqkvError, ValueError):
    """An argument has the wrong type, dtype, shape or value (e.g. a token id >= vocab)."""


class CorruptStreamError(SeqkvError):
    """A container or coded stream is truncated, bit-flipped or otherwise not decodable."""


class FormatVersionError(SeqkvError):
    """A container was written by a format version this seqkv cannot read."""


class ModelMismatchError(SeqkvError):
    """A stream was coded under a different model (fingerprints differ)."""


class NumericsMismatchError(SeqkvError):
    """Decoded tokens or rebuilt KV fail their checksums: the logits or KV differ between the two ends."""


class CapacityError(SeqkvError):
    """A bounded structure is full and nothing can be evicted (everything is pinned)."""


class SessionNotFoundError(SeqkvError, KeyError):
    """No session is stored under the requested id."""


class StoreError(SeqkvError):
    """A storage backend failed (unreadable database, unreachable Redis, corrupt row)."""


class MissingExtraError(SeqkvError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class InternalError(SeqkvError, RuntimeError):
    """A broken invariant inside seqkv: a bug, never the caller's input. Please report it."""
