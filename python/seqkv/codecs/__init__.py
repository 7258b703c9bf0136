"""Token codecs behind one interface: ``seqkv.codecs.get(name, **options)``.

Every codec has ``.name``, ``.encode(tokens) -> bytes`` and ``.decode(data) -> np.ndarray``
(``uint32`` ids), and every stream it writes is a seqkv container (``seqkv.coding.container``).

==============  ======================================================================
``raw``         ⌈log2 V⌉ bits per token (:class:`~seqkv.codecs.raw.RawCodec`)
``plt``         integer context model over the trie's counts, no model (``seqkv.codecs.plt``)
``lm``          range coding under a causal LM (:class:`~seqkv.codecs.lm.LMCodec`)
``lm-robust``   ``lm`` that tolerates logits differing by up to ε between the two ends
                (:class:`~seqkv.codecs.robust.RobustLMCodec`)
==============  ======================================================================

Codec modules are imported on first use, so ``import seqkv.codecs`` needs only NumPy.
"""

from __future__ import annotations

import dataclasses
import inspect
from importlib import import_module
from typing import Any, Callable

from ..errors import InvalidInputError
from .base import Codec, CodingStats, PerTokenBits, as_tokens

__all__ = ["Codec", "CodingStats", "StreamInfo", "as_tokens", "available", "get", "register", "stream_info"]

_REGISTRY: dict[str, tuple[str, str] | Callable[..., Codec]] = {
    "raw": ("seqkv.codecs.raw", "RawCodec"),
    "plt": ("seqkv.codecs.plt", "PLTCodec"),
    "lm": ("seqkv.codecs.lm", "LMCodec"),
    "lm-robust": ("seqkv.codecs.robust", "RobustLMCodec"),
}


def register(name: str, factory: Callable[..., Codec]) -> None:
    """Add (or replace) a codec factory under ``name``."""
    _REGISTRY[name] = factory


def _factory(name: str) -> Callable[..., Codec]:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise InvalidInputError(f"unknown codec {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    if isinstance(entry, tuple):
        module_name, attr = entry
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise InvalidInputError(f"codec {name!r} is not available in this build ({module_name} is missing)") from exc
            raise
        return getattr(module, attr)
    return entry


def get(name: str, **options: Any) -> Codec:
    """A codec instance: ``get("raw", vocab_size=49152)``, ``get("lm", model=m)``,
    ``get("plt", **opts)``, ``get("lm-robust", model=m, epsilon=1e-3)``. An option the codec
    does not take raises :class:`InvalidInputError`."""
    if not isinstance(name, str):
        raise InvalidInputError(f"codec name must be a str, got {type(name).__name__}")
    factory = _factory(name)
    unknown = _unknown_options(factory, options)
    if unknown:
        raise InvalidInputError(f"unknown {name} codec option(s): {', '.join(unknown)}")
    return factory(**options)


def _unknown_options(factory: Callable[..., Codec], options: dict[str, Any]) -> list[str]:
    """The options ``factory`` does not take. A constructor's ``**kwargs`` passed on to its base
    class's count as the base's parameters; a factory that takes any keyword takes them all."""
    if isinstance(factory, type):
        fns = [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__ and c is not object]
    else:
        fns = [factory]
    names: set[str] = set()
    for fn in fns:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # no signature to read (a builtin): the factory judges
            return []
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return sorted(set(options) - names)
    return []


def available() -> list[str]:
    """Names of the codecs whose modules import in this installation."""
    names = []
    for name in sorted(_REGISTRY):
        try:
            _factory(name)
        except (InvalidInputError, ImportError):
            continue
        names.append(name)
    return names


@dataclasses.dataclass(frozen=True)
class StreamInfo(PerTokenBits):
    """What a stream's container says about it, without decoding it."""

    codec: str
    tokens: int
    vocab_size: int
    precision: int
    blocks: int
    payload_bits: int
    container_bits: int
    model_fingerprint: bytes
    numerics_profile: str
    schedule: tuple[int, ...]



def stream_info(data: bytes) -> StreamInfo:
    """Parse (and checksum) a stream's container and summarise it."""
    from ..coding import container

    c = container.unpack(data)
    h = c.header
    return StreamInfo(
        codec=h.codec,
        tokens=int(h.token_count),
        vocab_size=int(h.vocab_size),
        precision=int(h.precision),
        blocks=len(c.blocks),
        payload_bits=8 * sum(len(b.payload) for b in c.blocks),
        container_bits=8 * len(data),
        model_fingerprint=bytes(h.model_fingerprint),
        numerics_profile=h.numerics_profile,
        schedule=tuple(h.schedule),
    )
