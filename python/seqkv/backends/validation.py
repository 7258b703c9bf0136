"""Argument checks shared by every backend: each bad input raises
:class:`~seqkv.errors.InvalidInputError` before anything is written, never a ``TypeError``,
``OverflowError`` or ``UnicodeEncodeError`` from further down."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidInputError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_META_DEPTH",
    "MAX_NUMBER",
    "check_session_id",
    "check_blob_name",
    "check_counter_name",
    "check_reason",
    "check_blob_data",
    "check_blobs",
    "check_changes",
    "check_callable",
    "check_after",
    "check_positive_int",
    "check_timeout",
    "encode_meta",
]

#: Longest session id, blob name or counter name accepted (in UTF-8 bytes).
MAX_NAME_BYTES = 1024
#: Deepest nesting of lists and dicts accepted in session metadata.
MAX_META_DEPTH = 64
#: Largest number a counter hands out (exactly representable as a double: Redis scripts use them).
MAX_NUMBER = 2**53 - 1


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {value!r} is not valid Unicode text (a lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise InvalidInputError(f"{what} is {size} bytes long; the limit is {MAX_NAME_BYTES}")
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value!r} contains a NUL character")
    return value


def check_session_id(session_id: object) -> str:
    return _check_name(session_id, "session id")


def check_blob_name(name: object) -> str:
    return _check_name(name, "blob name")


def check_counter_name(name: object) -> str:
    return _check_name(name, "counter name")


def check_reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise InvalidInputError(f"a quarantine reason must be a str, not {type(reason).__name__}")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"quarantine reason {reason!r} is not valid Unicode text") from None
    return reason


def check_blob_data(data: object, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"blob {name!r} must be bytes, not {type(data).__name__}")
    return bytes(data)


def check_blobs(blobs: object) -> dict[str, bytes]:
    """``put``'s ``blobs=`` argument as a checked dict (``None``: no blobs)."""
    if blobs is None:
        return {}
    if not isinstance(blobs, Mapping):
        raise InvalidInputError(f"blobs must be a dict of name -> bytes, not {type(blobs).__name__}")
    return {check_blob_name(name): check_blob_data(data, name) for name, data in blobs.items()}


def check_changes(changes: object) -> Mapping[str, Any]:
    if not isinstance(changes, Mapping):
        raise InvalidInputError(f"metadata changes must be a dict, not {type(changes).__name__}")
    for key in changes:
        if not isinstance(key, str):
            raise InvalidInputError(f"metadata keys must be str, not {type(key).__name__}")
    return changes


def check_callable(fn: object, what: str) -> Callable[..., Any]:
    if not callable(fn):
        raise InvalidInputError(f"{what} must be callable, not {type(fn).__name__}")
    return fn


def check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be a positive int, not {value!r}")
    return value


def check_after(after: object) -> int:
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < MAX_NUMBER:
        raise InvalidInputError(f"after must be an int in [0, {MAX_NUMBER}), not {after!r}")
    return after


def check_timeout(value: object, what: str) -> float:
    """A finite, positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{what} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 86400:
        raise InvalidInputError(f"{what} must be a number of seconds in (0, 86400], not {value!r}")
    return seconds


def _check_json(value: object, depth: int) -> None:
    """JSON types only, dict keys only str (``json.dumps`` would turn ``{1: x}`` into ``{"1": x}``
    silently), strings valid Unicode, bounded nesting."""
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"session metadata is not JSON-serialisable: {value!r} is not a finite number")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"session metadata is not JSON-serialisable: {value!r} is not valid Unicode text"
            ) from None
        return
    if depth >= MAX_META_DEPTH:
        raise InvalidInputError(f"session metadata is nested deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"session metadata is not JSON-serialisable: key {key!r} is a {type(key).__name__}, not a str"
                )
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
        return
    raise InvalidInputError(f"session metadata is not JSON-serialisable: {type(value).__name__} {value!r:.80}")


#: The first byte of stored binary metadata (never the start of JSON text).
BINARY_META_TAG = b"\x00"


def encode_meta(meta: object) -> bytes:
    """The stored encoding of metadata: for a dict its canonical JSON (sorted keys, compact,
    UTF-8); for non-empty ``bytes`` (binary metadata, opaque to the backend) the bytes after
    :data:`BINARY_META_TAG`."""
    if isinstance(meta, (bytes, bytearray)):
        if not meta:
            raise InvalidInputError("binary session metadata must not be empty")
        return BINARY_META_TAG + bytes(meta)
    if not isinstance(meta, Mapping):
        raise InvalidInputError(f"session metadata must be a dict or bytes, not {type(meta).__name__}")
    _check_json(meta, 0)
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # e.g. an int too long to print
        raise InvalidInputError(f"session metadata is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")
