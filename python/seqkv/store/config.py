"""``StoreConfig``: every option of a :class:`~seqkv.store.SessionStore`, validated once.

``SessionStore(model, **options)`` builds one with :meth:`StoreConfig.from_options`: an option
that is neither a store option nor a parameter of the chosen codec is an error naming the
closest known option, never silently dropped.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

from ..codecs.sources import EngineChoice
from ..errors import InvalidInputError
from .pages import DEFAULT_PAGE_TOKENS
from .warm import DEFAULT_WARM_BITS

__all__ = ["StoreConfig", "CodecName", "TierName", "Policy", "WarmBits", "TIER_NAMES", "DEFAULT_CAPACITY_BYTES"]

CodecName = Literal["lm", "lm-robust", "plt", "raw"]
TierName = Literal["hot", "warm", "cold"]
Policy = Literal["lru", "plt"]
WarmBits = Literal[2, 3, 4]

#: The tier names a SessionStore knows, hottest first.
TIER_NAMES: tuple[TierName, ...] = get_args(TierName)

#: Memory the in-memory tiers (hot + warm) of a default store may hold: a store is bounded unless
#: its caller passes ``capacity_bytes=None`` on purpose.
DEFAULT_CAPACITY_BYTES = 256 << 20

_ENGINE_WORDS = ("auto", "seqkv", "transformers")
#: Options the store sets on the codecs it builds itself (the caller may override them).
_STORE_SET_CODEC_OPTIONS = ("model", "tokenizer", "profile")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def codec_parameters(name: str) -> tuple[str, ...]:
    """Keyword parameters the named codec's constructor takes, including those a ``**options``
    catch-all forwards to its base class's constructor."""
    from ..codecs import _factory

    names: list[str] = []
    for klass in inspect.getmro(_factory(name)):
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD and p.name == "options" for p in params):
            break
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class StoreConfig:
    """A SessionStore's options (documented on :class:`~seqkv.store.SessionStore`). Frozen and
    validated at construction: a bad value raises :class:`~seqkv.errors.InvalidInputError`.
    ``tiers=None`` means all three, or hot and cold for a model whose head dimension the warm
    quantizer cannot take (:meth:`tiers_for`)."""

    codec: CodecName | Any = "lm"
    namespace: str | None = None
    keep_kv: bool | None = None
    record_hashes: bool | Literal["layers"] = True
    token_cache: int = 64
    capacity_bytes: int | None = DEFAULT_CAPACITY_BYTES
    tiers: tuple[TierName, ...] | None = None
    policy: Policy = "lru"
    tier_limits: Mapping[str, int] | None = None
    warm_bits: WarmBits = DEFAULT_WARM_BITS
    #: What computes the KV the store builds (restores, hashes at put): the same default as
    #: :class:`~seqkv.codecs.lm.LMCodec`'s — ``"auto"``, the batch-invariant engine on the model's
    #: device when it supports the model (a Llama-family model on the CPU), else transformers.
    engine: EngineChoice = "auto"
    page_tokens: int = DEFAULT_PAGE_TOKENS
    codec_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.codec, str):
            if self.codec not in get_args(CodecName):
                raise InvalidInputError(f"codec must be one of {get_args(CodecName)} or a codec instance, not {self.codec!r}")
        elif not all(hasattr(self.codec, a) for a in ("name", "encode_with_stats", "decode")):
            raise InvalidInputError(
                f"codec {type(self.codec).__name__} lacks the Codec protocol (name, encode_with_stats, decode)"
            )
        if self.namespace is not None and not isinstance(self.namespace, str):
            raise InvalidInputError(f"namespace must be a str or None, not {self.namespace!r}")
        for name in ("keep_kv",):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise InvalidInputError(f"{name} must be True, False or None, not {value!r}")
        if not isinstance(self.record_hashes, bool) and self.record_hashes != "layers":
            raise InvalidInputError(f"record_hashes must be True, False or 'layers', not {self.record_hashes!r}")
        if not _is_int(self.token_cache) or self.token_cache < 0:
            raise InvalidInputError(f"token_cache must be an int >= 0, not {self.token_cache!r}")
        if self.capacity_bytes is not None and (not _is_int(self.capacity_bytes) or self.capacity_bytes < 0):
            raise InvalidInputError(f"capacity_bytes must be an int >= 0 or None, not {self.capacity_bytes!r}")
        if self.tiers is not None:
            tiers = tuple(self.tiers) if isinstance(self.tiers, (tuple, list)) else self.tiers
            if (
                not isinstance(tiers, tuple)
                or len(tiers) < 2
                or tiers[-1] != "cold"
                or any(t not in TIER_NAMES for t in tiers)
                or list(tiers) != sorted(set(tiers), key=TIER_NAMES.index)
            ):
                raise InvalidInputError(
                    f"tiers must be an ordered subset of {TIER_NAMES} ending with 'cold', got {self.tiers!r}"
                )
            object.__setattr__(self, "tiers", tiers)
        if self.policy not in get_args(Policy):
            raise InvalidInputError(f"policy must be one of {get_args(Policy)}, not {self.policy!r}")
        if self.tier_limits is not None:
            if not isinstance(self.tier_limits, Mapping) or any(
                t not in TIER_NAMES[:2] or not _is_int(v) or v < 0 for t, v in self.tier_limits.items()
            ):
                raise InvalidInputError(f"tier_limits maps 'hot'/'warm' to ints >= 0, not {self.tier_limits!r}")
            object.__setattr__(self, "tier_limits", MappingProxyType(dict(self.tier_limits)))
        if self.warm_bits not in get_args(WarmBits) or isinstance(self.warm_bits, bool):
            raise InvalidInputError(f"warm_bits must be 2, 3 or 4, not {self.warm_bits!r}")
        engine = self.engine
        if not (isinstance(engine, bool) or engine in _ENGINE_WORDS or hasattr(engine, "new_sequence")):
            raise InvalidInputError(
                f"engine must be 'auto', 'seqkv', 'transformers', True, False or a seqkv.engine.cpu.Engine, not {engine!r}"
            )
        if not _is_int(self.page_tokens) or not 1 <= self.page_tokens <= 4096:
            raise InvalidInputError(f"page_tokens must be an int in 1..4096, not {self.page_tokens!r}")
        if not isinstance(self.codec_options, Mapping):
            raise InvalidInputError(f"codec_options must be a dict, not {type(self.codec_options).__name__}")
        if isinstance(self.codec, str):
            accepted = codec_parameters(self.codec)
            for name in self.codec_options:
                if name not in accepted:
                    raise _unknown_option(name, accepted + tuple(f.name for f in fields(StoreConfig)))
        object.__setattr__(self, "codec_options", MappingProxyType(dict(self.codec_options)))

    @classmethod
    def from_options(cls, **options: Any) -> StoreConfig:
        """A config from keyword options: store options by name, anything else a parameter of the
        codec (``codec_options``); an option that is neither raises, naming the closest match."""
        known = {f.name for f in fields(cls)}
        store = {k: v for k, v in options.items() if k in known}
        if store.get("keep_kv") is None:  # a budget the caller chose is meant to be used at put
            store["keep_kv"] = store.get("capacity_bytes") is not None
        codec_options = dict(store.pop("codec_options", None) or {})
        codec_options.update({k: v for k, v in options.items() if k not in known})
        return cls(**store, codec_options=codec_options)

    def tiers_for(self, head_dim: int) -> tuple[TierName, ...]:
        """The tiers a model of this head dimension gets (the warm quantizer takes power-of-two
        head dimensions up to 1024)."""
        warm_ok = 0 < head_dim <= 1024 and not head_dim & (head_dim - 1)
        if self.tiers is None:
            return TIER_NAMES if warm_ok else ("hot", "cold")
        if "warm" in self.tiers and not warm_ok:
            raise InvalidInputError(
                f"the warm tier quantizes vectors of a power-of-two length <= 1024; this model's head "
                f"dim is {head_dim}: use tiers=('hot', 'cold')"
            )
        return self.tiers

    def resolved_keep_kv(self) -> bool:
        """Whether ``put`` keeps a session's KV in memory by default (``None``: no;
        :meth:`from_options` turns it on when the caller passes a ``capacity_bytes``)."""
        return bool(self.keep_kv)

    def codec_kwargs(self, name: str, model: Any, tokenizer: Any) -> dict[str, Any]:
        """Constructor arguments of the named codec: the caller's codec options it takes, plus the
        store's model (and, for ``lm``, tokenizer and the ``digest`` profile: the full numerics
        profile is kept once per store)."""
        accepted = codec_parameters(name)
        kwargs = {k: v for k, v in self.codec_options.items() if k in accepted}
        defaults = {"model": model, "tokenizer": tokenizer, "profile": "digest"}
        for key in _STORE_SET_CODEC_OPTIONS:
            if key in accepted:
                kwargs.setdefault(key, defaults[key])
        return kwargs


def _unknown_option(name: str, known: tuple[str, ...]) -> InvalidInputError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(sorted(set(known)))}"
    return InvalidInputError(f"unknown SessionStore option {name!r}{hint}")
