"""The KV builder: computes the KV caches a store needs (through the batch-invariant engine or
transformers), the per-layer hashes and residual recorded at ``put``, and exact restores checked
against them."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..codecs.sources import EngineChoice
from ..errors import InvalidInputError, NumericsMismatchError, StoreError
from ..kv.hashing import combined_hash

__all__ = ["KVBuilder", "RecordedKV", "resolve_engine", "RESIDUAL", "ENGINE_SOURCE", "TRANSFORMERS_SOURCE"]

#: The record attachment holding an exact-mode residual.
RESIDUAL = "residual"
#: The kinds of KV source a record names (``"<kind>:<first 4 bytes of its digest, hex>"``): the
#: batch-invariant engine (digest: its fingerprint) or transformers (digest: of the numerics profile).
ENGINE_SOURCE = "seqkv-engine"
TRANSFORMERS_SOURCE = "transformers"


def _source_id(kind: str, digest: bytes) -> str:
    return f"{kind}:{digest[:4].hex()}"


def resolve_engine(model: Any, engine: EngineChoice) -> Any:
    """The engine that computes the store's KV for an :data:`~seqkv.codecs.sources.EngineChoice`,
    or ``None`` for transformers (:func:`~seqkv.codecs.sources.choose_engine`): ``"auto"`` takes the
    engine on the model's device — the CPU engine for a Llama-family model on the CPU (f32 weights
    for an f32 model; ``docs/engine.md``, "Agreement with transformers", has how closely its
    numbers follow the model's), the GPU engine for one on CUDA,
    whose KV goes straight into a cache on the model's GPU; ``True`` / ``"seqkv"`` require it."""
    import torch

    from ..codecs.sources import choose_engine

    param = next(iter(model.parameters()))
    return choose_engine(model, engine, cpu_dtype="f32" if param.dtype == torch.float32 else "bf16").engine


class RecordedKV:
    """What ``put`` records about a session's KV: the cache (given or computed), its per-layer
    hashes and the record's attachments (the residual)."""

    def __init__(self, cache: Any, hashes: tuple[bytes, ...], attachments: dict[str, bytes]):
        self.cache = cache
        self.hashes = hashes
        self.attachments = attachments


class KVBuilder:
    """Computes KV for ``model`` (``engine``: an engine from :func:`resolve_engine`, or ``None``).
    Model work runs under ``model_lock`` (the engine needs none)."""

    def __init__(self, model: Any, engine: Any, model_lock: threading.RLock):
        self.model = model
        self.engine = engine
        self._model_lock = model_lock
        self._record_engine: Any = None  # an engine built for records the engine wrote, when ``engine`` is None
        self._engine_lock = threading.Lock()
        if engine is not None:
            try:
                fingerprint = bytes(engine.fingerprint())
            except InvalidInputError:  # an engine built with fingerprint=False: named by its kind only
                fingerprint = b""
            self.source_id = _source_id(ENGINE_SOURCE, fingerprint)
        else:
            from ..integrations.models import numerics_profile_json

            profile = hashlib.blake2b(numerics_profile_json(model).encode(), digest_size=4).digest()
            self.source_id = _source_id(TRANSFORMERS_SOURCE, profile)

    @property
    def kv_source(self) -> str:
        """What computes the KV this store rebuilds: ``"seqkv-engine"`` or ``"transformers"``."""
        return ENGINE_SOURCE if self.engine is not None else TRANSFORMERS_SOURCE

    def compute(self, toks: np.ndarray, schedule: Any) -> Any:
        """The KV of ``toks``: through the engine (one prefill: its bits do not depend on the
        schedule), else through the model chunk by chunk as ``schedule`` says (``None``: one
        prefill)."""
        return self._compute(toks, schedule, self.engine)

    def _engine_for(self, source: str) -> Any:
        """The engine (or ``None``: transformers) that recomputes KV recorded from ``source``;
        :class:`NumericsMismatchError` naming the source when this machine cannot run it. A
        record of the layout before sources were named (``"given"``) takes the store's own."""
        kind = source.split(":", 1)[0]
        if kind == TRANSFORMERS_SOURCE:
            return None
        if kind != ENGINE_SOURCE or self.engine is not None:
            return self.engine
        with self._engine_lock:
            if self._record_engine is None:
                from ..errors import SeqkvError

                try:
                    self._record_engine = resolve_engine(self.model, True)
                except SeqkvError as exc:
                    raise NumericsMismatchError(
                        f"this record's KV was computed by {source} (the batch-invariant engine), which "
                        f"cannot run here: {exc}"
                    ) from exc
            return self._record_engine

    def _compute(self, toks: np.ndarray, schedule: Any, engine: Any) -> Any:
        from ..integrations import transformers as hf

        if not toks.size:
            return hf.new_cache(self.model)
        if engine is not None:
            seq = engine.new_sequence()
            engine.prefill(seq, toks, logits="none")
            param = next(iter(self.model.parameters()))
            return seq.kv_cache(dtype=param.dtype, device=param.device, config=self.model.config)
        with self._model_lock:
            cache, _ = hf.compute_cache(self.model, toks, schedule)
        return cache

    def check_given(self, kv: Any, n_tokens: int) -> None:
        """Refuse a caller's cache that a later ``get`` could not serve: the wrong length or a batch
        of several sequences."""
        from ..integrations import transformers as hf

        length = hf.cache_length(kv)
        if length != n_tokens:
            raise InvalidInputError(f"kv holds {length} positions, tokens {n_tokens}")
        layers = hf.cache_layers(kv)
        batch = int(layers[0][0].shape[0]) if layers else 1
        if batch != 1:
            raise InvalidInputError(
                f"kv holds a batch of {batch} sequences; a session is one: put each row "
                f"(cache_from_layers(model, [(k[i:i+1], v[i:i+1]) ...])) under its own id"
            )

    def record(
        self, toks: np.ndarray, schedule: tuple[int, ...], kv: Any, *, hashes: bool, keep: bool, residual: bool
    ) -> RecordedKV:
        """The KV ``put`` records: ``kv`` or the recompute, its hashes (``hashes``) and, with
        ``residual``, the residual between ``kv`` and the recompute an exact restore does."""
        from ..integrations import transformers as hf
        from ..kv import residual as residual_coding

        cache = kv
        if (hashes or keep) and cache is None and toks.size:
            cache = self.compute(toks, schedule)
        layer_hashes = tuple(hf.layer_hashes(cache)) if (hashes or residual) and cache is not None else ()
        attachments: dict[str, bytes] = {}
        if residual:
            recomputed = self.compute(toks, schedule)
            pairs = [pair for layer in zip(hf.cache_layers(kv), hf.cache_layers(recomputed)) for pair in zip(*layer)]
            attachments[RESIDUAL] = residual_coding.encode(pairs)
        elif kv is not None and layer_hashes:
            self._refuse_unrestorable(toks, schedule, layer_hashes)
        return RecordedKV(cache, layer_hashes, attachments)

    def _refuse_unrestorable(self, toks: np.ndarray, schedule: tuple[int, ...], hashes: tuple[bytes, ...]) -> None:
        """A caller's cache that the exact restore's recompute cannot reproduce (the engine's KV
        is not transformers'; transformers' KV depends on the chunk schedule, and a cache from
        ``generate`` was computed as the prompt then one token at a time) would make a later
        ``get(mode="exact")`` fail: refuse it now, with the fix. Costs one recompute at put."""
        from ..integrations import transformers as hf

        bad = _bad_layers(hf.layer_hashes(self.compute(toks, schedule), len(hashes[0])), list(hashes))
        if not bad:
            return
        if self.engine is not None:
            raise InvalidInputError(
                f"kv layers {bad} differ from the KV this store recomputes with the seqkv engine, so an "
                f"exact restore could not reproduce them: pass residual=True to keep the difference, leave "
                f"kv out (the store computes it), or open the store with engine=False"
            )
        raise InvalidInputError(
            f"kv layers {bad} differ from the KV transformers computes for these tokens with the schedule "
            f"{'given' if len(schedule) > 1 else 'of one prefill'} ({len(schedule)} chunk(s)), so an exact "
            f"restore could not reproduce them: pass schedule= with the chunk sizes the cache was computed "
            f"with (a cache from model.generate: [prompt length] + [1] * the positions after it), residual=True to "
            f"keep the difference, or open the store with record_hashes=False when exact restores are not needed"
        )

    def exact_restore(
        self, meta: Any, toks: np.ndarray, load_residual: Callable[[], bytes | None]
    ) -> Any:
        """The recorded KV bit for bit: the recompute by the source the record names (the
        engine, or transformers replaying the recorded schedule), checked against the recorded
        hashes and corrected by the residual when they differ."""
        from ..integrations import transformers as hf

        engine = self._engine_for(meta.kv_source)
        cache = self._compute(toks, meta.schedule, engine)
        bad = _mismatch(cache, meta)
        if bad is None:
            return cache
        from ..integrations.models import numerics_profile_json

        how = (
            "recomputed by the seqkv engine"
            if engine is not None
            else f"replayed schedule of {len(meta.schedule)} chunks on {numerics_profile_json(self.model)}"
        )
        if not meta.residual_bytes:
            raise NumericsMismatchError(
                f"exact restore of {meta.sid!r}: {bad} differ from the hashes recorded at put "
                f"({how}; KV recorded from {meta.kv_source or 'an unknown source'}) and no residual was kept "
                f"(put(..., kv=cache, residual=True) keeps one)"
            )
        from ..kv import residual as residual_coding

        data = load_residual()
        if data is None:
            raise StoreError(f"session {meta.sid!r} records a residual but its record has no attachment")
        flat = [t for pair in hf.cache_layers(cache) for t in pair]
        fixed = residual_coding.decode(data, flat)
        cache = hf.cache_from_layers(self.model, list(zip(fixed[0::2], fixed[1::2])))
        bad = _mismatch(cache, meta)
        if bad is not None:
            raise NumericsMismatchError(
                f"exact restore of {meta.sid!r}: the stored residual does not reproduce {bad} "
                f"(the recompute differs from the one at put: {how})"
            )
        return cache


def _mismatch(cache: Any, meta: Any) -> str | None:
    """What of ``cache`` differs from the hashes ``meta`` records (``None``: nothing): the layers,
    or the whole KV when the record keeps one combined hash."""
    from ..integrations import transformers as hf

    if meta.hashes_combined:
        got = combined_hash(hf.layer_hashes(cache))
        return None if (got,) == meta.hashes else "the KV's layers (one combined hash recorded, so not which)"
    bad = _bad_layers(hf.layer_hashes(cache, len(meta.hashes[0])), list(meta.hashes))
    return f"layers {bad}" if bad else None


def _bad_layers(got: list[bytes], want: list[bytes]) -> list[int]:
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    if len(got) != len(want):
        bad.extend(range(min(len(got), len(want)), max(len(got), len(want))))
    return bad
