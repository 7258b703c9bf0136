"""A transformers ``DynamicCache`` that knows its tokens and the schedule that computed them.

A cache's bits depend on the chunks its tokens were evaluated in (a prefill, then one-token
generation steps), so a restore is exact only if it replays the same chunks. :class:`TrackedCache`
records both as the model runs: the model's forward pre-hook hands it each call's ``input_ids``,
and its :meth:`update` (layer 0) appends them with the chunk size. Then

>>> cache = TrackedCache(model)                                   # doctest: +SKIP
>>> out = model.generate(ids, past_key_values=cache, max_new_tokens=32)  # doctest: +SKIP
>>> put_cache(store, "chat-1", cache)                             # doctest: +SKIP
>>> restored = get_cache(store, "chat-1", model)                  # doctest: +SKIP
>>> model.generate(more_ids, past_key_values=restored)            # doctest: +SKIP

continues exactly as the uninterrupted run would (``get_cache`` asks the store for the exact KV).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .models import require_torch
from .transformers import cache_layers

__all__ = ["TrackedCache", "put_cache", "get_cache"]


def _tracked_class() -> type:
    _, transformers = require_torch()

    class _TrackedCache(transformers.DynamicCache):  # type: ignore[misc,name-defined]
        """See :class:`TrackedCache`."""

        def __init__(self, model: Any, *, token_ids: Any = (), schedule: Any = (), **kwargs: Any):
            super().__init__(config=model.config, **kwargs)
            self.token_ids: list[int] = [int(t) for t in np.asarray(token_ids).reshape(-1)]
            self.schedule: list[int] = [int(s) for s in schedule]
            if sum(self.schedule) != len(self.token_ids):
                raise InvalidInputError("a tracked cache's schedule must sum to its token count")
            self._pending: list[int] | None = None
            ref = weakref.ref(self)

            def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                cache = ref()
                # transformers 5 renamed the argument from past_key_values to cache
                if cache is not None and cache in (kwargs.get("cache"), kwargs.get("past_key_values")):
                    ids = kwargs.get("input_ids", args[0] if args else None)
                    if ids is None:
                        raise InvalidInputError("a TrackedCache needs input_ids (not inputs_embeds) to track tokens")
                    if ids.shape[0] != 1:
                        raise InvalidInputError("a TrackedCache tracks one sequence (batch size 1)")
                    cache._pending = [int(t) for t in ids[0].tolist()]

            handle = model.register_forward_pre_hook(capture, with_kwargs=True)
            weakref.finalize(self, handle.remove)

        def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
            if layer_idx == 0:
                n = int(key_states.shape[-2])
                if self._pending is None or len(self._pending) != n:
                    raise InvalidInputError(
                        f"the cache got {n} new positions but the model call passed "
                        f"{'no' if self._pending is None else len(self._pending)} input ids"
                    )
                self.token_ids.extend(self._pending)
                self.schedule.append(n)
                self._pending = None
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        def crop(self, max_length: int) -> None:
            super().crop(max_length)
            keep = self.get_seq_length()
            if keep < len(self.token_ids):
                del self.token_ids[keep:]
                while sum(self.schedule) > keep:
                    over = sum(self.schedule) - keep
                    if self.schedule[-1] <= over:
                        self.schedule.pop()
                    else:
                        self.schedule[-1] -= over

    return _TrackedCache


_CLASS: type | None = None


def TrackedCache(model: Any, *, token_ids: Any = (), schedule: Any = ()) -> Any:  # noqa: N802 (a class factory)
    """A ``DynamicCache`` subclass instance for ``model`` that records ``token_ids`` and
    ``schedule`` (chunk sizes) as the model fills it. (A factory, so that ``import seqkv`` stays
    free of transformers; ``isinstance(c, tracked_cache_type())`` checks one.)"""
    return tracked_cache_type()(model, token_ids=token_ids, schedule=schedule)


def tracked_cache_type() -> type:
    global _CLASS
    if _CLASS is None:
        _CLASS = _tracked_class()
    return _CLASS


def put_cache(store: Any, session_id: str, cache: Any, **options: Any) -> Any:
    """``store.put`` a tracked cache: its tokens, its schedule and the KV itself (checked against
    the store's exact recompute). The cache holds transformers KV, so the store must compute KV
    with transformers too (``SessionStore(model, engine=False)``); a store on the batch-invariant
    engine refuses it at ``put`` (:class:`~seqkv.errors.InvalidInputError`)."""
    if not isinstance(cache, tracked_cache_type()):
        raise InvalidInputError(f"put_cache needs a TrackedCache, not {type(cache).__name__}")
    tracked: Any = cache
    return store.put(session_id, np.asarray(tracked.token_ids, np.uint32), schedule=list(tracked.schedule), kv=cache,
                     **options)


def get_cache(store: Any, session_id: str, model: Any, schedule: Any = None) -> Any:
    """The session's exact KV as a :class:`TrackedCache` (``store.get(mode="exact")``), ready for
    ``model.generate(..., past_key_values=...)``. ``schedule``: the chunk sizes it was stored with,
    for later puts (default: one chunk, which only matters if it is put again)."""
    tokens, kv = store.get(session_id, mode="exact")
    restored = TrackedCache(model, token_ids=tokens, schedule=schedule if schedule is not None else
                            ([int(tokens.size)] if tokens.size else []))
    base: Any = super(tracked_cache_type(), restored)  # fill the layers without tracking
    for i, (k, v) in enumerate(cache_layers(kv)):
        base.update(k, v, i)
    return restored
