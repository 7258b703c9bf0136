"""Logits sources: where the ``lm`` codecs get next-token distributions from.

:class:`LogitsSource` is the interface; :class:`TransformersSource` steps a transformers model,
:class:`EngineLogitsSource` runs the batch-invariant engine, :class:`CallableSource` wraps a function.
:func:`default_source` turns an :data:`EngineChoice` into a source.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, Union

import numpy as np

from ..errors import InvalidInputError
from ..integrations.transformers import forward_with_cache

__all__ = ["LogitsSource", "CallableSource", "TransformersSource", "EngineLogitsSource", "GpuEngineLogitsSource",
           "default_source", "choose_engine", "EngineChoice", "LM_CPU_ENGINE_DTYPE"]

if TYPE_CHECKING:
    from ..engine.cpu import Engine, Sequence as EngineSequence
    from ..engine.gpu import GpuEngine

#: What computes a model's outputs, accepted alike by ``LMCodec`` and ``SessionStore``: ``"auto"``
#: (the batch-invariant engine on the model's device — the CPU engine for a model on the CPU, the GPU
#: engine for one on CUDA when CuPy is installed — when it supports the model, else transformers),
#: ``True`` or ``"seqkv"`` (that engine, an error when it cannot run), ``False`` or ``"transformers"``,
#: or an ``Engine`` / ``GpuEngine`` used as it is.
EngineChoice = Union[Literal["auto", "seqkv", "transformers"], bool, "Engine", "GpuEngine"]


class LogitsSource:
    """Next-token logits for one sequence at a time (the decoder's view of a model).

    Subclasses implement :meth:`start` and :meth:`step`, and set ``vocab_size``. Rows are
    1-D contiguous float32 NumPy arrays of length ``vocab_size``. A source is stateful and
    not thread-safe; codecs hold a lock while they drive it.
    """

    #: name recorded in the numerics profile
    engine = "abstract"
    #: True when logits do not depend on how the tokens were batched or chunked
    schedule_invariant = False
    #: True when the source runs several sequences at once (:meth:`start_many`,
    #: :meth:`step_many`, :meth:`rows_many`): ``LMCodec.encode_batch``/``decode_batch`` use them
    batched = False
    vocab_size: int

    def fingerprint(self) -> bytes:
        """32-byte identity of the model behind the logits."""
        raise NotImplementedError

    def numerics_profile(self) -> dict[str, Any]:
        return {"engine": self.engine}

    def start(self, prefix: np.ndarray) -> np.ndarray | None:
        """Reset, process ``prefix`` (one chunk) and return the row predicting the next token.

        Returns ``None`` (and only resets) when the prefix is empty.
        """
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        """Append one token and return the row predicting the token after it."""
        raise NotImplementedError

    def iter_rows(self, prefix: np.ndarray, tokens: np.ndarray) -> Iterator[np.ndarray | None]:
        """Yield, for each ``tokens[i]``, the row it is coded under (``None``: no prefix)."""
        row = self.start(prefix)
        n = len(tokens)
        for i in range(n):
            yield row
            if i + 1 < n:
                row = self.step(int(tokens[i]))

    def schedule(self, prefix_len: int, n_tokens: int) -> tuple[int, ...]:
        """Chunk sizes of the forward passes that produced the rows, in order (the container
        stores them run-length encoded): the prefix as one chunk, then one step for each
        coded token but the last."""
        return ((prefix_len,) if prefix_len else ()) + (1,) * max(n_tokens - 1, 0)

    # -- several sequences at once (sources with ``batched = True``) -------------------

    def start_many(self, prefixes: Sequence[np.ndarray]) -> tuple[list[Any], list[np.ndarray | None]]:
        """Start one new sequence per prefix, all in one pass; returns ``(handles, rows)``
        (a row is ``None`` for an empty prefix). Handles go to :meth:`step_many`."""
        raise NotImplementedError(f"{type(self).__name__} does not decode several sequences at once")

    def step_many(self, handles: Sequence[Any], tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens[i]`` to ``handles[i]`` for every i in one pass; float32 ``[len, vocab]``."""
        raise NotImplementedError(f"{type(self).__name__} does not decode several sequences at once")

    def rows_many(
        self, prefixes: Sequence[np.ndarray], token_lists: Sequence[np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """The encoder's rows of several streams: yields ``(stream, row)`` with each stream's
        rows in order (the rows :meth:`iter_rows` would give for it)."""
        raise NotImplementedError(f"{type(self).__name__} does not encode several sequences at once")


class CallableSource(LogitsSource):
    """Logits from a function of the sequence so far (``fn(tokens) -> row``): tests, tools."""

    engine = "callable"

    def __init__(self, fn: Callable[[list[int]], np.ndarray], vocab_size: int, fingerprint: bytes = b"\0" * 32):
        self.fn = fn
        self.vocab_size = int(vocab_size)
        self._fp = bytes(fingerprint)
        self.seq: list[int] = []

    def fingerprint(self) -> bytes:
        return self._fp

    def _row(self) -> np.ndarray:
        return np.ascontiguousarray(self.fn(list(self.seq)), dtype=np.float32)

    def start(self, prefix: np.ndarray) -> np.ndarray | None:
        self.seq = [int(t) for t in prefix]
        return self._row() if self.seq else None

    def step(self, token: int) -> np.ndarray:
        self.seq.append(int(token))
        return self._row()


_TORCH_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _fixed_torch_threads(torch: Any, threads: int) -> Iterator[None]:
    """Runs the block with torch's intra-op thread count at ``threads`` (restored after)."""
    with _TORCH_THREADS_LOCK:
        before = torch.get_num_threads()
        if before != threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if before != threads:
                torch.set_num_threads(before)


class TransformersSource(LogitsSource):
    """Logits from a transformers causal LM: one prefill for the prefix, then single steps
    with a ``DynamicCache`` at batch size 1, under ``torch.inference_mode``.

    ``encode_chunk=k`` makes :meth:`iter_rows` (the encoder's path) compute the rows in
    prefill chunks of ``k`` tokens instead of single steps: faster, but the rows differ from
    the decoder's single steps in the last bits (docs/engine.md gives the measured |Δlogit|),
    so only ``lm-robust`` streams decode from them.

    Every forward runs with torch's intra-op thread count set to ``threads`` (default 1),
    whatever the caller's setting, and the numerics profile records that count: a stream
    written by a process with 8 torch threads decodes in one with 2. The count is process-wide
    in torch, so forwards of all transformers sources are serialised while it is switched.
    """

    engine = "transformers"
    #: why the engine was not used (set by :func:`default_source` when ``"auto"`` fell back)
    fallback_reason: str | None = None

    def __init__(self, model: Any, *, encode_chunk: int | None = None, threads: int = 1):
        from ..integrations.models import require_torch, vocab_size

        self._torch, transformers = require_torch()
        self._dynamic_cache = transformers.DynamicCache
        self.model = model
        self.vocab_size = vocab_size(model)
        self.device = next(iter(model.parameters())).device
        self.cache: Any = None
        self._keep_arg = True
        if encode_chunk is not None and int(encode_chunk) < 1:
            raise InvalidInputError("encode_chunk must be >= 1")
        self.encode_chunk = None if encode_chunk is None else int(encode_chunk)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError(f"threads must be an int >= 1, got {threads!r}")
        self.threads = threads

    def fingerprint(self) -> bytes:
        from ..integrations.models import fingerprint

        return fingerprint(self.model)

    def numerics_profile(self) -> dict[str, Any]:
        from ..integrations.models import numerics_profile

        profile = numerics_profile(self.model)
        profile["engine"] = self.engine
        profile["threads"] = self.threads
        return profile

    def _forward(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        """Run ``ids`` as one chunk; return the last ``keep`` rows, shape (keep, V) (or (V,) when keep == 1)."""
        torch = self._torch
        with _fixed_torch_threads(torch, self.threads), torch.inference_mode():
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            if self._keep_arg:
                try:
                    out, self.cache = forward_with_cache(self.model, self.cache, input_ids=input_ids, logits_to_keep=keep)
                except TypeError:
                    self._keep_arg = False
                    out, self.cache = forward_with_cache(self.model, self.cache, input_ids=input_ids)
            else:
                out, self.cache = forward_with_cache(self.model, self.cache, input_ids=input_ids)
            rows = out.logits[0, -keep:, : self.vocab_size].to(device="cpu", dtype=torch.float32)
            rows = np.ascontiguousarray(rows.numpy())
            return rows[0] if keep == 1 else rows

    def start(self, prefix: np.ndarray) -> np.ndarray | None:
        self.cache = self._dynamic_cache(config=self.model.config)
        if len(prefix) == 0:
            return None
        return self._forward([int(t) for t in prefix])

    def step(self, token: int) -> np.ndarray:
        return self._forward([int(token)])

    def iter_rows(self, prefix: np.ndarray, tokens: np.ndarray) -> Iterator[np.ndarray | None]:
        if self.encode_chunk is None:
            yield from super().iter_rows(prefix, tokens)
            return
        n = len(tokens)
        row = self.start(prefix)
        if n == 0:
            return
        yield row
        fed = [int(t) for t in tokens[: n - 1]]
        for a in range(0, len(fed), self.encode_chunk):
            chunk = fed[a : a + self.encode_chunk]
            rows = self._forward(chunk, keep=len(chunk))
            rows = rows.reshape(len(chunk), -1)
            for r in rows:
                yield np.ascontiguousarray(r)

    def schedule(self, prefix_len: int, n_tokens: int) -> tuple[int, ...]:
        if self.encode_chunk is None:
            return super().schedule(prefix_len, n_tokens)
        fed = max(n_tokens - 1, 0)
        k = self.encode_chunk
        chunks = (k,) * (fed // k) + ((fed % k,) if fed % k else ())
        return ((prefix_len,) if prefix_len else ()) + chunks


def _device_type(model: Any) -> str:
    try:
        return str(next(iter(model.parameters())).device.type)
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


class EngineDecision:
    """What :func:`choose_engine` decided: ``engine`` (an ``Engine``, a ``GpuEngine``, or ``None``
    for transformers) and, when ``"auto"`` fell back to transformers, ``fallback_reason``."""

    __slots__ = ("engine", "fallback_reason")

    def __init__(self, engine: Any, fallback_reason: str | None = None):
        self.engine = engine
        self.fallback_reason = fallback_reason


#: The weights of the CPU engine an ``lm`` codec codes under when nothing else is asked for.
LM_CPU_ENGINE_DTYPE = "bf16"


def choose_engine(model: Any, engine: Any = "auto", *, cpu_dtype: str = LM_CPU_ENGINE_DTYPE) -> EngineDecision:
    """The batch-invariant engine for ``model`` under an :data:`EngineChoice`, on the model's device:
    the shared CPU ``Engine`` (weights in ``cpu_dtype``) for a model on the CPU, the shared
    ``GpuEngine`` for a model on CUDA (bf16 weights; needs CuPy). ``"auto"`` falls back to
    transformers (``engine=None``) with the reason; ``True``/``"seqkv"`` raise instead —
    :class:`InvalidInputError` for a model the engine cannot run, :class:`MissingExtraError`
    (naming ``seqkv[cuda]``) without CuPy or a GPU."""
    from ..engine import cpu as cpu_mod
    from ..engine import gpu as gpu_mod
    from ..errors import MissingExtraError

    if engine is False or engine == "transformers":
        return EngineDecision(None, None)
    if isinstance(engine, (cpu_mod.Engine, gpu_mod.GpuEngine)):
        return EngineDecision(engine)
    if not (engine is True or (isinstance(engine, str) and engine in ("auto", "seqkv"))):
        raise InvalidInputError(f"engine must be 'auto', 'seqkv', 'transformers', True, False, an Engine or a "
                                f"GpuEngine, got {engine!r}")
    device = _device_type(model)
    if device == "cpu":
        why = cpu_mod.unsupported_reason(model)
        if why is None:
            return EngineDecision(cpu_mod.Engine.for_model(model, dtype=cpu_dtype))
        where = "seqkv.engine.cpu"
    elif device == "cuda":
        why = gpu_mod.gpu_unsupported_reason(model)
        if why is None:
            try:
                return EngineDecision(gpu_mod.GpuEngine.for_model(model))
            except MissingExtraError as exc:
                if engine != "auto":
                    raise
                why = str(exc)
        where = "seqkv.engine.gpu"
    else:
        why, where = f"the model is on {device!r} (the engine runs on the CPU and on CUDA)", "seqkv.engine"
    if engine == "auto":
        return EngineDecision(None, f"{where}: {why}")
    raise InvalidInputError(f"engine={engine!r}: {where} cannot run this model ({why})")


def default_source(model: Any, engine: Any = "auto") -> LogitsSource:
    """The logits source :class:`LMCodec` builds for ``model`` (see its ``engine`` option and
    :func:`choose_engine`): the batch-invariant engine on the model's device when it runs the model
    (:class:`EngineLogitsSource` on the CPU, :class:`GpuEngineLogitsSource` on CUDA), else
    transformers steps, whose ``fallback_reason`` says why under ``"auto"``."""
    from ..engine.gpu import GpuEngine

    decision = choose_engine(model, engine)
    if decision.engine is None:
        source = TransformersSource(model)
        source.fallback_reason = decision.fallback_reason
        return source
    if isinstance(decision.engine, GpuEngine):
        return GpuEngineLogitsSource(decision.engine)
    return EngineLogitsSource(decision.engine)


class EngineLogitsSource(LogitsSource):
    """An ``lm``-codec logits source backed by the engine.

    Rows do not depend on the schedule (``schedule_invariant = True``), so the encoder
    computes every row with prefill chunks (:meth:`iter_rows`, ``chunk`` rows per pass) and
    the decoder with :meth:`start` + single :meth:`step` calls, and both get the same bits.
    ``LMCodec(model)`` uses it by default for models the engine supports (one shared
    :meth:`Engine.for_model` per model); explicitly: ``LMCodec(model, source=EngineLogitsSource(eng))``.
    It runs several streams at once (``batched = True``) for ``LMCodec.encode_batch`` and
    ``decode_batch``.
    Its :meth:`fingerprint` is :meth:`Engine.fingerprint` (model, dtypes, kernel definition),
    so a stream coded under the engine refuses to decode under plain transformers.
    """

    engine = "seqkv-engine"
    schedule_invariant = True
    batched = True

    def __init__(self, engine: "Engine", *, chunk: int = 256):
        if int(chunk) < 1:
            raise InvalidInputError("chunk must be >= 1")
        self.eng = engine
        self.vocab_size = engine.vocab_size
        self.chunk = int(chunk)
        self.seq: EngineSequence | None = None

    def fingerprint(self) -> bytes:
        return self.eng.fingerprint()

    def numerics_profile(self) -> dict[str, Any]:
        return self.eng.numerics_profile()

    def start(self, prefix: np.ndarray) -> np.ndarray | None:
        self.seq = self.eng.new_sequence()
        if len(prefix) == 0:
            return None
        return np.ascontiguousarray(self.eng.prefill(self.seq, prefix, logits="last")[0])

    def step(self, token: int) -> np.ndarray:
        if self.seq is None:
            self.seq = self.eng.new_sequence()
        return np.ascontiguousarray(self.eng.step([self.seq], [int(token)])[0])

    def prefill(self, tokens: Any) -> np.ndarray:
        """Append ``tokens`` to the current sequence; their rows, float32 ``[n, vocab]``."""
        if self.seq is None:
            self.seq = self.eng.new_sequence()
        return self.eng.prefill(self.seq, tokens)

    def iter_rows(self, prefix: np.ndarray, tokens: np.ndarray) -> Iterator[np.ndarray | None]:
        n = len(tokens)
        row = self.start(prefix)
        if n == 0:
            return
        yield row
        assert self.seq is not None
        fed = np.asarray(tokens[: n - 1])
        for a in range(0, fed.size, self.chunk):
            rows = self.eng.prefill(self.seq, fed[a : a + self.chunk])
            for r in rows:
                yield r

    def schedule(self, prefix_len: int, n_tokens: int) -> tuple[int, ...]:
        fed = max(n_tokens - 1, 0)
        k = self.chunk
        chunks = (k,) * (fed // k) + ((fed % k,) if fed % k else ())
        return ((prefix_len,) if prefix_len else ()) + chunks

    # -- several streams at once (LMCodec.encode_batch / decode_batch) ------------------

    def start_many(self, prefixes: Sequence[Any]) -> tuple[list[EngineSequence], list[np.ndarray | None]]:
        """New sequences fed their prefixes in one batched pass; each one's last row (``None``
        for an empty prefix)."""
        seqs = [self.eng.new_sequence() for _ in prefixes]
        arrays = [np.asarray(p) for p in prefixes]
        rows: list[np.ndarray | None] = [None] * len(arrays)
        if any(a.size for a in arrays):
            out = self.eng.forward(seqs, arrays, logits="last")
            j = 0
            for i, a in enumerate(arrays):
                if a.size:
                    rows[i] = out[j]
                    j += 1
        return seqs, rows

    def step_many(self, handles: Sequence[EngineSequence], tokens: Sequence[int]) -> np.ndarray:
        """One batched decode step: ``tokens[i]`` appended to ``handles[i]``."""
        return self.eng.step(handles, tokens)

    def rows_many(self, prefixes: Sequence[Any], token_lists: Sequence[Any]) -> Iterator[tuple[int, np.ndarray | None]]:
        """The encoder's rows of several streams: the prefixes in one pass, then passes of up
        to ``chunk`` rows taken from the streams in order (a pass may mix streams)."""
        seqs, first = self.start_many(prefixes)
        n = len(token_lists)
        for i in range(n):
            if len(token_lists[i]):
                yield i, first[i]
        fed = [np.asarray(t)[: max(len(t) - 1, 0)] for t in token_lists]
        at = [0] * n
        while True:
            budget = self.chunk
            idx: list[int] = []
            chunks: list[np.ndarray] = []
            for i in range(n):
                take = min(fed[i].size - at[i], budget)
                if take > 0:
                    idx.append(i)
                    chunks.append(fed[i][at[i] : at[i] + take])
                    at[i] += take
                    budget -= take
                if budget == 0:
                    break
            if not idx:
                return
            out = self.eng.forward([seqs[i] for i in idx], chunks, logits="all")
            r = 0
            for i, c in zip(idx, chunks):
                for j in range(c.size):
                    yield i, out[r + j]
                r += c.size



class GpuEngineLogitsSource(EngineLogitsSource):
    """:class:`EngineLogitsSource` on a :class:`seqkv.engine.gpu.GpuEngine`: the same rows, bit for
    bit, and the same fingerprint as the CPU engine's source for the same model, so a stream encoded
    on either device decodes on the other. Each sequence holds one of the engine's KV slots while
    it is coded (released when the next stream starts, or with the sequence); rows come to the host
    for the coder. ``chunk`` is capped at the engine's ``max_rows``."""

    def __init__(self, engine: "GpuEngine", *, chunk: int = 256):
        from ..engine.gpu import GpuEngine

        if not isinstance(engine, GpuEngine):
            raise InvalidInputError(f"GpuEngineLogitsSource needs a seqkv.engine.gpu.GpuEngine, got {type(engine).__name__}")
        super().__init__(engine, chunk=min(int(chunk), engine.max_rows))  # type: ignore[arg-type]

    def start(self, prefix: np.ndarray) -> np.ndarray | None:
        if self.seq is not None:
            self.seq.release()  # type: ignore[attr-defined]
            self.seq = None
        return super().start(prefix)
