"""Storage backends for seqkv sessions: :func:`open_backend` picks one from a path or URL.

=====================================  ==============================================
``open_backend(...)``                  backend
=====================================  ==============================================
``"store.sqlite"``, any other path     :class:`SQLiteBackend` (created if absent)
``"sqlite:///abs/path?synchronous=normal"``  the same, with options
``":memory:"``, ``"memory://"``        :class:`MemoryBackend` (nothing persists)
``"redis://host:port/db"``             :class:`RedisBackend` (also ``rediss://``,
                                       ``unix://``, ``valkey://``; options
                                       ``?namespace=...&timeout=...``)
=====================================  ==============================================

The interface (:class:`Backend`, :class:`SessionRecord`) is in :mod:`seqkv.backends.base`;
the durability contract of each backend in ``docs/durability.md``.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from ..errors import InvalidInputError
from .base import Backend, BlobUpdate, CorruptRecordError, MetaScan, SessionRecord
from .memory import MemoryBackend
from .sqlite import SQLiteBackend

__all__ = [
    "Backend",
    "BlobUpdate",
    "CorruptRecordError",
    "MemoryBackend",
    "MetaScan",
    "RedisBackend",
    "SQLiteBackend",
    "SessionRecord",
    "open_backend",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")
_OPTIONS = {"memory": (), "sqlite": ("synchronous", "busy_timeout_s"), "redis": ("namespace", "timeout")}


def _check_options(kind: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise InvalidInputError(
            f"unknown {kind} store option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_OPTIONS[kind]) or 'none'}"
        )


def open_backend(url_or_path: str | os.PathLike[str] | Backend, **options: Any) -> Backend:
    """Open the backend named by ``url_or_path`` (see the module docstring); an already open
    :class:`Backend` is returned as is. ``options`` go to the backend's constructor."""
    if isinstance(url_or_path, Backend):
        return url_or_path
    if isinstance(url_or_path, os.PathLike):
        _check_options("sqlite", options)
        return SQLiteBackend(url_or_path, **options)
    if not isinstance(url_or_path, str) or not url_or_path:
        raise InvalidInputError(f"expected a path or URL of a store, got {url_or_path!r}")
    target = url_or_path
    if target in (":memory:", "memory:", "memory://"):
        _check_options("memory", options)
        return MemoryBackend()
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisBackend

        if scheme.startswith("valkey"):
            target = "redis" + target[len("valkey") :]
        _check_options("redis", options)
        return RedisBackend(target, **options)
    if scheme == "sqlite":
        parts = urllib.parse.urlsplit(target)
        path = urllib.parse.unquote((parts.netloc or "") + parts.path)
        for key, values in urllib.parse.parse_qs(parts.query).items():
            if key not in _OPTIONS["sqlite"]:
                raise InvalidInputError(f"unknown SQLite store option {key!r} in {url_or_path!r}")
            options.setdefault(key, _seconds(values[-1], key) if key == "busy_timeout_s" else values[-1])
        _check_options("sqlite", options)
        return SQLiteBackend(path, **options)
    if scheme:
        raise InvalidInputError(
            f"unknown store URL scheme {scheme!r} in {url_or_path!r}: use a file path, sqlite://, redis:// or memory://"
        )
    _check_options("sqlite", options)
    return SQLiteBackend(target, **options)


def _seconds(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(f"{key}={text!r} is not a number of seconds") from None


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module 'seqkv.backends' has no attribute {name!r}")
