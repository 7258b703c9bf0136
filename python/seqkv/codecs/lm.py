"""``lm``: range coding of tokens under a language model's own next-token distributions.

How a stream is made (and must be remade by the decoder)
--------------------------------------------------------
* The **coding prefix** is ``[start_token] + context``: ``start_token`` is a fixed token
  recorded in the stream (default: the tokenizer's ``<|endoftext|>`` if it has one, else the
  config's BOS; ``None`` means none), ``context`` the tokens both ends already know (e.g.
  the prefix a :class:`~seqkv.Trie` matched). With an empty prefix the first token is coded
  under the uniform distribution (all-zero logits).
* Logits come from a :class:`LogitsSource`. For a Llama-family model on the CPU the default
  (``engine="auto"``) is the batch-invariant engine (:class:`seqkv.engine.cpu.EngineLogitsSource`):
  its rows are the same bits under any schedule, so the encoder computes them with prefill
  passes and the decoder with single steps — or many streams at once
  (:meth:`LMCodec.encode_batch`, :meth:`LMCodec.decode_batch`). Otherwise (or with
  ``engine=False``) :class:`TransformersSource` runs the prefix as one prefill chunk, then
  **single-token steps with the KV cache at batch size 1**, in float32, at both ends: the
  same schedule, which on one machine and software stack gives bit-identical logits. The
  header's ``schedule`` records the chunk sizes of the encoder's forward passes.
* Each logits row becomes an integer table through ``seqkv.coding.coder.quantize_logits`` (the
  quantizer of ``docs/numerics.md``, precision 24 by default) and the token is range-coded
  under it. Tokens are cut into blocks of ``block_tokens`` (4096); each block is its own
  range-coder payload with a CRC32C of its token ids. Decoding checks every block as it
  goes: a failed token checksum means the decoder's logits differ from the encoder's and
  raises :class:`NumericsMismatchError` (the container's own payload checksums report
  corruption as :class:`CorruptStreamError` first).
* The header records the coding model's fingerprint (a different model raises
  :class:`ModelMismatchError` naming both), its numerics profile, the schedule, and
  ``params``: start token, context length and checksum, and with ``draft=`` the
  fingerprint of the target model.

``LogitsSource`` is the seam for other engines: the batch-invariant engine subclasses it,
sets ``schedule_invariant = True`` and ``batched = True``, overrides
:meth:`LogitsSource.iter_rows` to compute the rows in prefill passes, and implements the
several-sequences methods (:meth:`LogitsSource.start_many`, ``step_many``, ``rows_many``).
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
from typing import Any, Sequence

import numpy as np

from ..errors import CorruptStreamError, FormatVersionError, InvalidInputError, ModelMismatchError, NumericsMismatchError
from .base import (
    DEFAULT_MAX_TOKENS,
    TOKEN_DTYPE,
    CodingStats,
    ProgressFn,
    as_tokens,
    check_block_tokens,
    check_int_option,
    check_max_tokens,
    check_stream_size,
    describe_schedule,
    split_blocks,
)
from .sources import LogitsSource, default_source

__all__ = [
    "LMCodec",
    "default_start_token",
    "decode_params",
    "log2_softmax_at",
    "max_block_tokens",
    "profile_digest",
]

_PARAMS_VERSION = 1
_PARAMS = struct.Struct("<BiIIB")  # version, start token (-1: none), context length, context crc32c, flags
_FLAG_TARGET = 1

#: A block of an ``lm`` or ``lm-robust`` stream holds at most this many tokens plus
#: ``_BLOCK_TOKENS_PER_BYTE`` per payload byte (:func:`max_block_tokens`).
_FREE_BLOCK_TOKENS = 64
_BLOCK_TOKENS_PER_BYTE = 128


def max_block_tokens(payload_bytes: int) -> int:
    """The most tokens a block with a payload of ``payload_bytes`` may hold: 64, plus 128 per
    payload byte (on average at least 1/16 bit per token beyond the first 64).

    A token can cost almost nothing under a confident model, so the range coder alone does not
    bound a block's token count by its payload; this rule does. The encoder keeps to it by
    cutting a block that breaks it into smaller ones; the decoder refuses a block that breaks
    it before computing any logits, which bounds the model forwards a stream can ask for by
    its size."""
    return _FREE_BLOCK_TOKENS + _BLOCK_TOKENS_PER_BYTE * int(payload_bytes)


def default_start_token(model: Any = None, tokenizer: Any = None) -> int | None:
    """The start token ``start_token="auto"`` picks: the tokenizer's ``<|endoftext|>`` (the
    document separator most LMs were trained with), else the config's ``bos_token_id``, else
    ``None`` (uniform first token). Measured on SmolLM2 over the first 64 tokens of six
    license texts and a chat prompt (float cross-entropy, first token included):
    ``<|endoftext|>`` cost less than a uniform first token on 5 of 7 (by 1-28 bits; 16 bits
    more on Apache-2.0) and less than ``<|im_start|>`` or ``<|im_end|>`` on 6 of 7."""
    if tokenizer is None and model is not None:
        tokenizer = getattr(model, "_seqkv_tokenizer", None)
    if tokenizer is not None:
        try:
            tid = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        except (KeyError, ValueError, TypeError):
            tid = None
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and tid >= 0 and (tid != unk or tokenizer.convert_ids_to_tokens(tid) == "<|endoftext|>"):
            return tid
    config = getattr(model, "config", None)
    bos = getattr(config, "bos_token_id", None)
    if isinstance(bos, int) and bos >= 0:
        return bos
    return None


def profile_digest(profile_json: str) -> str:
    """The short form of a numerics profile a stream may record instead of the JSON
    (``profile="digest"``): ``"blake2b:"`` and 16 hex digits."""
    import hashlib

    return "blake2b:" + hashlib.blake2b(profile_json.encode(), digest_size=8).hexdigest()


def log2_softmax_at(row: np.ndarray, symbol: int) -> float:
    """log2 p(symbol) under softmax(row), in float64 (the model's own cost of a token)."""
    x = row.astype(np.float64)
    m = x.max()
    if not math.isfinite(m):
        return -math.log2(row.size)
    lse = m + math.log(float(np.exp(x - m).sum()))
    return (float(x[symbol]) - lse) / math.log(2.0)


def encode_params(start_token: int | None, context: np.ndarray, target_fingerprint: bytes | None) -> bytes:
    from ..coding import container

    flags = _FLAG_TARGET if target_fingerprint else 0
    out = _PARAMS.pack(
        _PARAMS_VERSION,
        -1 if start_token is None else int(start_token),
        int(context.size),
        container.tokens_checksum(context),
        flags,
    )
    if target_fingerprint:
        out += bytes(target_fingerprint)
    return out


def decode_params(params: bytes) -> tuple[dict[str, Any], bytes]:
    """Parse the ``lm`` params; returns (fields, the remaining bytes for subclasses)."""
    if len(params) < _PARAMS.size:
        raise CorruptStreamError("lm stream parameters are truncated")
    version, start, ctx_len, ctx_crc, flags = _PARAMS.unpack_from(params)
    if version != _PARAMS_VERSION:
        raise FormatVersionError(f"lm parameters version {version} (this seqkv reads {_PARAMS_VERSION})")
    rest = params[_PARAMS.size :]
    target = None
    if flags & _FLAG_TARGET:
        if len(rest) < 32:
            raise CorruptStreamError("lm stream parameters are truncated")
        target, rest = rest[:32], rest[32:]
    fields = {
        "start_token": None if start < 0 else start,
        "context_len": ctx_len,
        "context_crc": ctx_crc,
        "target_fingerprint": target,
    }
    return fields, rest


class _PlainScheme:
    """One V-ary table per token: ``quantize_logits(row)`` then the range coder.

    A scheme codes a token in two steps: :meth:`plan` (what the row says about the token, the
    costly part) and :meth:`emit` (the coder calls), so that the encoder can re-emit a block's
    tokens cheaply when it has to cut the block (:func:`max_block_tokens`)."""

    def __init__(self, precision: int):
        self.precision = precision

    def new_state(self) -> Any:
        return None

    def plan(self, symbol: int, row: np.ndarray) -> tuple[int, int]:
        """The token's slice of its table: ``(cum_low, freq)``."""
        from ..coding import coder

        freqs = coder.quantize_logits(row, self.precision)
        return int(freqs[:symbol].sum(dtype=np.uint64)), int(freqs[symbol])

    def emit(self, enc: Any, state: Any, plan: tuple[int, int]) -> float:
        cum_low, freq = plan
        enc.push_slice(cum_low, freq, 1 << self.precision)
        return self.precision - math.log2(freq)

    def pop(self, dec: Any, state: Any, row: np.ndarray) -> int:
        return int(dec.pop_logits(row))


class _StreamEncoder:
    """Codes one stream, one row at a time (the rows may come from any driver)."""

    def __init__(self, codec: "LMCodec", toks: np.ndarray, ctx: np.ndarray):
        from ..coding import coder

        self._coder = coder
        self.codec = codec
        self.toks = toks
        self.ctx = ctx
        self.prefix = codec._prefix(codec.start_token, ctx)
        self.scheme = codec._scheme(codec.precision)
        self.spans = list(split_blocks(toks.size, codec.block_tokens))
        self.blocks: list[Any] = []
        self.i = 0
        self.bi = 0
        self.ce_bits = 0.0
        self.table_bits = 0.0
        self.token_log2p = np.zeros(toks.size, dtype=np.float64)
        self.token_bits = np.zeros(toks.size, dtype=np.float64)
        self.enc: Any = None
        self.state: Any = None
        self._open()

    @property
    def done(self) -> bool:
        return self.i >= self.toks.size

    def _open(self) -> None:
        if self.bi < len(self.spans):
            self.enc = self._coder.Encoder(self.codec.precision)
            self.state = self.scheme.new_state()
            self.plans: list[Any] = []

    def push(self, row: np.ndarray | None) -> None:
        """Code the next token under ``row`` (``None``: the uniform distribution)."""
        if row is None:
            row = self.codec._uniform()
        i = self.i
        sym = int(self.toks[i])
        plan = self.scheme.plan(sym, row)
        tb = self.scheme.emit(self.enc, self.state, plan)
        self.plans.append(plan)
        self.table_bits += tb
        self.token_bits[i] = tb
        lp = log2_softmax_at(row, sym)
        self.token_log2p[i] = lp
        self.ce_bits -= lp
        self.i = i + 1
        a, b = self.spans[self.bi]
        if self.i == b:
            self.blocks.extend(self._fitted_blocks(a, b, self.enc.finish()))
            self.bi += 1
            self._open()

    def _fitted_blocks(self, a: int, b: int, payload: bytes) -> list[Any]:
        """The block of tokens ``a:b`` coded as ``payload``, cut in halves (recoded from the
        block's plans) until each part keeps to :func:`max_block_tokens`."""
        from ..coding import container

        if b - a <= max_block_tokens(len(payload)):
            return [container.Block(n_tokens=b - a, payload=payload, tokens_crc32c=container.tokens_checksum(self.toks[a:b]))]
        mid = (a + b) // 2
        return self._fitted_blocks(a, mid, self._recode(a, mid)) + self._fitted_blocks(mid, b, self._recode(mid, b))

    def _recode(self, a: int, b: int) -> bytes:
        """The payload of tokens ``a:b`` of the current block coded as a block of their own."""
        first = self.spans[self.bi][0]
        enc = self._coder.Encoder(self.codec.precision)
        state = self.scheme.new_state()
        for plan in self.plans[a - first : b - first]:
            self.scheme.emit(enc, state, plan)
        return enc.finish()

    def finish(self, seconds: float) -> tuple[bytes, CodingStats]:
        from ..coding import container

        codec = self.codec
        header = container.Header(
            codec=codec.name,
            precision=codec.precision,
            token_count=int(self.toks.size),
            vocab_size=codec.vocab_size,
            model_fingerprint=codec.fingerprint,
            numerics_profile=codec._header_profile(),
            schedule=tuple(codec.source.schedule(int(self.prefix.size), int(self.toks.size))),
            params=encode_params(codec.start_token, self.ctx, codec.target_fingerprint) + codec._extra_params(),
        )
        data = container.pack(header, self.blocks)
        stats = CodingStats(
            codec=codec.name,
            tokens=int(self.toks.size),
            payload_bits=8 * sum(len(blk.payload) for blk in self.blocks),
            container_bits=8 * len(data),
            seconds=seconds,
            cross_entropy_bits=float(self.ce_bits),
            table_bits=float(self.table_bits),
            extra={"token_log2p": self.token_log2p, "token_bits": self.token_bits},
        )
        return data, stats


class _StreamDecoder:
    """Decodes one stream, one row at a time: header checks at construction, then
    :meth:`feed` per token (block checksums checked as each block ends)."""

    def __init__(self, codec: "LMCodec", data: bytes, ctx: np.ndarray):
        from ..coding import container

        c, fields, extra = codec.read_header(data)
        h = c.header
        if ctx.size != fields["context_len"] or container.tokens_checksum(ctx) != fields["context_crc"]:
            raise InvalidInputError(
                f"stream was coded with a context of {fields['context_len']} tokens "
                f"(crc32c {fields['context_crc']:#010x}); got {ctx.size} tokens "
                f"(crc32c {container.tokens_checksum(ctx):#010x})"
            )
        check_stream_size(c, codec.max_tokens)
        for i, block in enumerate(c.blocks):
            if block.n_tokens > max_block_tokens(len(block.payload)):
                raise CorruptStreamError(
                    f"block {i} claims {block.n_tokens:,} tokens in a {len(block.payload):,}-byte payload "
                    f"(at most {max_block_tokens(len(block.payload)):,})"
                )
        start = fields["start_token"]
        if start is not None and start >= codec.vocab_size:
            raise CorruptStreamError("stream start token is out of range")
        self.codec = codec
        self.header = h
        self.blocks = c.blocks
        self.scheme = codec._scheme(h.precision, extra)
        self.prefix = codec._prefix(start, ctx)
        self.n = int(h.token_count)
        self.out = np.empty(self.n, dtype=TOKEN_DTYPE)
        self.k = 0
        self.bi = -1
        self.left = 0
        self.dec: Any = None
        self.state: Any = None
        self._next_block()

    @property
    def done(self) -> bool:
        return self.k >= self.n

    def _next_block(self) -> None:
        """Close the current block (token checksum, end of payload), open the next non-empty one."""
        from ..coding import coder, container

        while True:
            if self.dec is not None:
                block = self.blocks[self.bi]
                got = container.tokens_checksum(self.out[self.k - block.n_tokens : self.k])
                if got != block.tokens_crc32c:
                    codec, h = self.codec, self.header
                    prof = codec._profile_json()
                    raise NumericsMismatchError(
                        f"block {self.bi} of {len(self.blocks)} fails its token checksum: this machine's logits differ "
                        f"from the encoder's. Encoded with {h.numerics_profile} schedule {describe_schedule(h.schedule)}; "
                        f"decoding with {prof} ({profile_digest(prof)}) schedule "
                        f"{describe_schedule(LogitsSource.schedule(codec.source, int(self.prefix.size), self.n))}"
                    )
                # checked after the tokens: with another machine's tables the coder may also
                # stop at the wrong place, and that is a numerics mismatch, not corruption
                self.dec.finish()
                self.dec = None
            self.bi += 1
            if self.bi >= len(self.blocks):
                return
            block = self.blocks[self.bi]
            self.dec = coder.Decoder(block.payload, self.header.precision)
            self.state = self.scheme.new_state()
            self.left = block.n_tokens
            if self.left:
                return

    def feed(self, row: np.ndarray | None) -> int:
        """Decode the next token under ``row`` (``None``: uniform) and return it."""
        if row is None:
            row = self.codec._uniform()
        try:
            sym = self.scheme.pop(self.dec, self.state, row)
        except CorruptStreamError as exc:
            # the payload passed its CRC, so the bytes are the encoder's: our tables are not
            raise NumericsMismatchError(
                f"block {self.bi}: the coder ran off its payload ({exc}); this machine's logits "
                f"differ from the encoder's ({self.header.numerics_profile})"
            ) from exc
        if not 0 <= sym < self.codec.vocab_size:
            raise NumericsMismatchError(f"decoded token id {sym} is out of range in block {self.bi}")
        self.out[self.k] = sym
        self.k += 1
        self.left -= 1
        if self.left == 0:
            self._next_block()
        return sym


def _in_stream(i: int, exc: Exception) -> Exception:
    """The same error, naming the stream of a batch it came from."""
    return type(exc)(f"stream {i}: {exc}")


class LMCodec:
    """Range coding under a causal LM's next-token distributions (see the module doc).

    Parameters
    ----------
    model:
        transformers causal LM whose cache the tokens stand for (also the coding model
        unless ``draft`` or ``source`` is given).
    source:
        a :class:`LogitsSource` to code under instead of ``model`` (another engine, tests).
    engine:
        how logits are computed from ``model`` (or ``draft``) when no ``source`` is given:
        ``"auto"`` (default) uses the batch-invariant :mod:`seqkv.engine.cpu` (bf16 weights, f32
        activations; :class:`seqkv.engine.cpu.EngineLogitsSource`) when it supports the model
        (Llama family, model on the CPU; see :func:`seqkv.engine.cpu.supports`) and transformers
        single steps (:class:`TransformersSource`) otherwise; ``True`` requires the engine
        (:class:`InvalidInputError` if unsupported); ``False`` forces transformers; an
        :class:`seqkv.engine.cpu.Engine` is used as it is. The two compute different bits, so
        each records its own fingerprint and a stream decodes only under the same choice.
    draft:
        a smaller causal LM with the same vocabulary to code under; the stream records the
        draft's fingerprint as the coding model and ``model``'s as the target.
    tokenizer:
        used only to choose the default start token.
    precision:
        quantizer precision P (tables sum to 2**P), 1..24.
    block_tokens:
        tokens per checked block.
    start_token:
        ``"auto"`` (see :func:`default_start_token`), an id, or ``None``.
    context:
        default context for :meth:`encode`/:meth:`decode` (overridable per call).
    verify:
        decode every stream right after encoding it and compare.
    max_tokens:
        the most tokens :meth:`decode` accepts from one stream (:class:`InvalidInputError`
        beyond, before any logits are computed).
    profile:
        ``"full"`` records the numerics profile JSON in the header;
        ``"digest"`` only its 8-byte BLAKE2b (:func:`profile_digest`), for stores of many
        short streams that keep the full profile once elsewhere.

    With the engine (or any source with ``batched = True``), :meth:`encode_batch` and
    :meth:`decode_batch` code many streams at once: every forward pass carries rows of all
    of them, and each stream's bits are those of coding it alone (batch invariance).
    """

    name = "lm"

    def __init__(
        self,
        model: Any = None,
        *,
        source: LogitsSource | None = None,
        engine: Any = "auto",
        draft: Any = None,
        tokenizer: Any = None,
        precision: int = 24,
        block_tokens: int = 4096,
        start_token: int | str | None = "auto",
        context: Any = None,
        verify: bool = False,
        profile: str = "full",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        **unknown: Any,
    ):
        if unknown:
            raise InvalidInputError(f"unknown {self.name} codec option(s): {', '.join(sorted(unknown))}")
        if source is None:
            coding_model = draft if draft is not None else model
            if coding_model is None:
                raise InvalidInputError(f"the {self.name} codec needs model= (or source=)")
            source = default_source(coding_model, engine)
        self.source = source
        self.model = model
        self.vocab_size = int(source.vocab_size)
        self.target_fingerprint: bytes | None = None
        if draft is not None and model is not None:
            from ..integrations.models import fingerprint, vocab_size

            if vocab_size(model) != self.vocab_size:
                raise InvalidInputError(
                    f"draft vocab size {self.vocab_size} differs from the model's {vocab_size(model)}"
                )
            self.target_fingerprint = fingerprint(model)
        self.precision = check_int_option("precision", precision, 1, 24)
        if self.vocab_size > (1 << self.precision):
            raise InvalidInputError(f"precision {precision} cannot hold vocab size {self.vocab_size}")
        self.block_tokens = check_block_tokens(block_tokens)
        self.max_tokens = check_max_tokens(max_tokens)
        if start_token == "auto":
            start_token = default_start_token(draft if draft is not None else model, tokenizer)
        if start_token is not None:
            start_token = check_int_option("start_token", start_token, 0, self.vocab_size - 1)
        self.start_token = start_token
        self.context = as_tokens(context, self.vocab_size, what="context")
        self.verify = bool(verify)
        if profile not in ("full", "digest"):
            raise InvalidInputError(f"profile must be 'full' or 'digest', got {profile!r}")
        self.profile = profile
        self.last_stats: CodingStats | None = None
        self._lock = threading.RLock()
        self._fingerprint: bytes | None = None

    # -- pieces subclasses change -------------------------------------------------

    def _scheme(self, precision: int, extra: bytes = b"") -> Any:
        return _PlainScheme(precision)

    def _extra_params(self) -> bytes:
        return b""

    # -- helpers ------------------------------------------------------------------

    @property
    def fingerprint(self) -> bytes:
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint()
        return self._fingerprint

    def _profile_json(self) -> str:
        return json.dumps(self.source.numerics_profile(), sort_keys=True, separators=(",", ":"))

    def _header_profile(self) -> str:
        full = self._profile_json()
        if self.profile == "full":
            return full
        return profile_digest(full)

    def _prefix(self, start_token: int | None, context: np.ndarray) -> np.ndarray:
        head = np.array([] if start_token is None else [start_token], dtype=TOKEN_DTYPE)
        return np.concatenate([head, context]).astype(TOKEN_DTYPE)

    def _uniform(self) -> np.ndarray:
        return np.zeros(self.vocab_size, dtype=np.float32)

    def _context(self, context: Any) -> np.ndarray:
        return self.context if context is None else as_tokens(context, self.vocab_size, what="context")

    def _contexts(self, n: int, contexts: Any) -> list[np.ndarray]:
        if contexts is None:
            return [self.context] * n
        contexts = list(contexts)
        if len(contexts) != n:
            raise InvalidInputError(f"{len(contexts)} contexts for {n} streams")
        return [self._context(c) for c in contexts]

    # -- encode -------------------------------------------------------------------

    def encode(self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None) -> bytes:
        """Code ``tokens`` (conditioned on ``context``) into a seqkv container."""
        return self.encode_with_stats(tokens, context=context, progress=progress)[0]

    def encode_with_stats(
        self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None
    ) -> tuple[bytes, CodingStats]:
        """Like :meth:`encode`, and also return a :class:`CodingStats`."""
        toks = as_tokens(tokens, self.vocab_size)
        ctx = self._context(context)
        with self._lock:
            t0 = time.perf_counter()
            se = _StreamEncoder(self, toks, ctx)
            for row in self.source.iter_rows(se.prefix, toks):
                se.push(row)
                if progress is not None:
                    progress(1)
                if se.done:
                    break
            data, stats = se.finish(time.perf_counter() - t0)
            if self.verify:
                t1 = time.perf_counter()
                back = self.decode(data, context=ctx)
                stats.extra["verify_seconds"] = time.perf_counter() - t1
                if back.shape != toks.shape or not np.array_equal(back, toks):
                    raise NumericsMismatchError("verify: decoding the fresh stream did not give the tokens back")
            self.last_stats = stats
        return data, stats

    def encode_batch(
        self, token_lists: Sequence[Any], *, contexts: Sequence[Any] | None = None, progress: ProgressFn | None = None
    ) -> list[bytes]:
        """Code several token sequences (``contexts[i]`` conditions ``token_lists[i]``); each
        stream is the bytes :meth:`encode` would give for it. See :meth:`encode_batch_with_stats`."""
        return [data for data, _ in self.encode_batch_with_stats(token_lists, contexts=contexts, progress=progress)]

    def encode_batch_with_stats(
        self, token_lists: Sequence[Any], *, contexts: Sequence[Any] | None = None, progress: ProgressFn | None = None
    ) -> list[tuple[bytes, CodingStats]]:
        """Like :meth:`encode_batch`, with a :class:`CodingStats` per stream (``seconds`` is
        the whole batch's wall time). With a batched source (the engine) the rows of all
        streams are computed together (``source.rows_many``); otherwise one after another.
        ``progress(1)`` is called per coded token."""
        toks_list = [as_tokens(t, self.vocab_size) for t in token_lists]
        ctxs = self._contexts(len(toks_list), contexts)
        if not getattr(self.source, "batched", False):
            return [self.encode_with_stats(t, context=c, progress=progress) for t, c in zip(toks_list, ctxs)]
        with self._lock:
            t0 = time.perf_counter()
            encs = [_StreamEncoder(self, t, c) for t, c in zip(toks_list, ctxs)]
            for i, row in self.source.rows_many([e.prefix for e in encs], toks_list):
                if encs[i].done:
                    continue
                encs[i].push(row)
                if progress is not None:
                    progress(1)
            if not all(e.done for e in encs):
                raise NumericsMismatchError("the logits source gave too few rows")  # pragma: no cover - source bug
            seconds = time.perf_counter() - t0
            out = [e.finish(seconds) for e in encs]
            if self.verify:
                t1 = time.perf_counter()
                back = self.decode_batch([d for d, _ in out], contexts=ctxs)
                for (_, stats), b, t in zip(out, back, toks_list):
                    stats.extra["verify_seconds"] = time.perf_counter() - t1
                    if b.shape != t.shape or not np.array_equal(b, t):
                        raise NumericsMismatchError("verify: decoding the fresh streams did not give the tokens back")
            if out:
                self.last_stats = out[-1][1]
        return out

    # -- decode -------------------------------------------------------------------

    def read_header(self, data: bytes) -> tuple[Any, dict[str, Any], bytes]:
        """Unpack and validate a stream against this codec; returns (container, params, extra)."""
        from ..coding import container

        c = container.unpack(data)
        h = c.header
        if h.codec != self.name:
            raise InvalidInputError(f"stream was written by codec {h.codec!r}, not {self.name!r}")
        if getattr(h, "quantizer_version", 1) != 1:
            raise FormatVersionError(f"stream uses quantizer version {h.quantizer_version}; this seqkv has 1")
        if bytes(h.model_fingerprint) != self.fingerprint or h.vocab_size != self.vocab_size:
            raise ModelMismatchError(
                "stream was coded under a different model: stream fingerprint "
                f"{bytes(h.model_fingerprint).hex()} (vocab {h.vocab_size}), this model "
                f"{self.fingerprint.hex()} (vocab {self.vocab_size})"
            )
        fields, extra = decode_params(bytes(h.params))
        target = fields["target_fingerprint"]
        if target is not None and self.target_fingerprint is not None and target != self.target_fingerprint:
            raise ModelMismatchError(
                f"stream was coded for target model {target.hex()}, this codec's target is "
                f"{self.target_fingerprint.hex()}"
            )
        if not 1 <= h.precision <= 24:
            raise CorruptStreamError(f"stream precision {h.precision} is out of range")
        return c, fields, extra

    def decode(self, data: bytes, *, context: Any = None, progress: ProgressFn | None = None) -> np.ndarray:
        """Decode a stream made by :meth:`encode` (with the same ``context``)."""
        sd = _StreamDecoder(self, data, self._context(context))
        with self._lock:
            row = self.source.start(sd.prefix)
            while not sd.done:
                sym = sd.feed(row)
                if progress is not None:
                    progress(1)
                if not sd.done:
                    row = self.source.step(sym)
        return sd.out

    def decode_batch(
        self, streams: Sequence[bytes], *, contexts: Sequence[Any] | None = None, progress: ProgressFn | None = None
    ) -> list[np.ndarray]:
        """Decode several streams (``contexts[i]`` for ``streams[i]``) at once: every step of
        the source appends one token to each unfinished stream (multi-stream decode through
        the engine's batched step), so N streams cost about as many passes as the longest
        one. Each stream's tokens are those :meth:`decode` gives it alone. Every header is
        checked before any logits are computed; an error while decoding names its stream
        (``"stream i: ..."``) and ends the whole batch. Without a batched source the streams
        are decoded one after another. ``progress(1)`` is called per decoded token."""
        ctxs = self._contexts(len(streams), contexts)
        decs = []
        for i, (data, ctx) in enumerate(zip(streams, ctxs)):
            try:
                decs.append(_StreamDecoder(self, data, ctx))
            except (CorruptStreamError, FormatVersionError, InvalidInputError, ModelMismatchError) as exc:
                raise _in_stream(i, exc) from exc
        if not getattr(self.source, "batched", False):
            return [self.decode(data, context=ctx, progress=progress) for data, ctx in zip(streams, ctxs)]
        with self._lock:
            handles, rows = self.source.start_many([d.prefix for d in decs])
            active = [i for i, d in enumerate(decs) if not d.done]
            while active:
                syms = {}
                for i in active:
                    try:
                        syms[i] = decs[i].feed(rows[i])
                    except NumericsMismatchError as exc:
                        raise _in_stream(i, exc) from exc
                    if progress is not None:
                        progress(1)
                active = [i for i in active if not decs[i].done]
                if active:
                    out = self.source.step_many([handles[i] for i in active], [syms[i] for i in active])
                    for j, i in enumerate(active):
                        rows[i] = out[j]
        return [d.out for d in decs]
