"""``plt``: a deterministic integer context model over token ids, no neural model.

The model (Rust, ``rust/seqkv-ppm``) blends hashed contexts of the previous 1..``order``
tokens Kneser-Ney style, refines its escape decisions with adaptive probability maps,
codes tokens not predicted by any context under order-0 counts with a recency bonus,
and new tokens under a static table ``∝ 1/(id + C)`` (BPE vocabularies number tokens
roughly by frequency). Only integers touch the coded path, so streams decode
bit-identically on every machine.

**Priming.** Both ends may share tokens already — the trie-matched prefix of a
session, other sessions, a system prompt. ``PLTCodec(vocab_size, primer=tokens)``
feeds them to the model once; ``encode(tokens, context=more)`` adds per-message
context on top. The stream records the primer's token count and CRC-32C: decoding
with a different primer raises :class:`~seqkv.errors.ModelMismatchError`.

Stream: a seqkv container (codec ``plt``), params = ``seqkv_ppm::Params`` (16 bytes:
profile, order, primer count and checksum), one block per ``block_tokens`` tokens.
The model state carries across blocks; the range coder restarts at each.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import _native
from ..errors import CorruptStreamError, FormatVersionError, InvalidInputError, ModelMismatchError
from .base import (
    DEFAULT_MAX_TOKENS,
    TOKEN_DTYPE,
    CodingStats,
    ProgressFn,
    as_tokens,
    check_block_tokens,
    check_int_option,
    check_max_tokens,
    check_vocab_size,
    split_blocks,
    unpack_stream,
)

__all__ = ["PLTCodec", "DEFAULT_ORDER", "MAX_ORDER"]

DEFAULT_ORDER: int = _native.PPM_DEFAULT_ORDER
MAX_ORDER: int = _native.PPM_MAX_ORDER
#: The header's precision field (unused by plt: its tables carry their own totals).
_PRECISION = 16


class PLTCodec:
    """Integer PPM-family codec over token ids.

    ``vocab_size`` defaults to the model's (pass ``model=``) or must be given. ``order``
    is the longest context (tokens); ``primer`` tokens both ends already share.
    """

    name = "plt"

    def __init__(
        self,
        vocab_size: int | None = None,
        *,
        order: int = DEFAULT_ORDER,
        primer: Any = None,
        model: Any = None,
        block_tokens: int = 1 << 16,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ):
        if vocab_size is None:
            if model is None:
                raise InvalidInputError("plt codec needs vocab_size= or model=")
            from ..integrations.models import vocab_size as model_vocab

            vocab_size = model_vocab(model)
        self.vocab_size = check_vocab_size(vocab_size)
        self.order = check_int_option("order", order, 0, MAX_ORDER)
        self.block_tokens = check_block_tokens(block_tokens)
        self.max_tokens = check_max_tokens(max_tokens)
        self._model = _native.PpmModel(self.vocab_size, self.order)
        self._primer: list[np.ndarray] = []
        self.last_stats: CodingStats | None = None
        if primer is not None:
            self.prime(primer)

    # -- priming -------------------------------------------------------------------------

    def prime(self, tokens: Any) -> None:
        """Add shared tokens to the model (the decoder must be primed the same way)."""
        toks = as_tokens(tokens, self.vocab_size, what="primer")
        if toks.size:
            self._model.prime(toks)
            self._primer.append(toks)

    @property
    def primer_tokens(self) -> int:
        """Number of tokens the model was primed with."""
        return int(self._model.seen_tokens)

    def _model_for(self, context: Any, order: int | None = None) -> Any:
        """The base model (or one of another order, rebuilt from the primer), plus ``context``."""
        ctx = as_tokens(context, self.vocab_size, what="context")
        if order is None or order == self.order:
            if not ctx.size:
                return self._model
            m = self._model.copy()
        else:
            m = _native.PpmModel(self.vocab_size, order)
            for p in self._primer:
                m.prime(p)
        if ctx.size:
            m.prime(ctx)
        return m

    # -- coding --------------------------------------------------------------------------

    def encode(self, tokens: Any, *, context: Any = None) -> bytes:
        """Code ``tokens`` (after the primer and ``context``) into a seqkv container."""
        return self.encode_with_stats(tokens, context=context)[0]

    def encode_with_stats(
        self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None
    ) -> tuple[bytes, CodingStats]:
        """Like :meth:`encode`, and also return a :class:`CodingStats`; ``progress(n)`` is called
        once with the token count when the stream is coded."""
        from ..coding import container

        t0 = time.perf_counter()
        toks = as_tokens(tokens, self.vocab_size)
        model = self._model_for(context)
        payloads = model.encode(toks, self.block_tokens)
        spans = split_blocks(toks.size, self.block_tokens)
        blocks = [
            container.Block(n_tokens=b - a, payload=p, tokens_crc32c=container.tokens_checksum(toks[a:b]))
            for (a, b), p in zip(spans, payloads)
        ]
        header = container.Header(
            codec=self.name,
            precision=_PRECISION,
            token_count=int(toks.size),
            vocab_size=self.vocab_size,
            params=model.params(),
        )
        data = container.pack(header, blocks)
        stats = CodingStats(
            codec=self.name,
            tokens=int(toks.size),
            payload_bits=8 * sum(len(p) for p in payloads),
            container_bits=8 * len(data),
            seconds=time.perf_counter() - t0,
            extra={"order": self.order, "primer_tokens": int(model.seen_tokens)},
        )
        self.last_stats = stats
        if progress is not None and toks.size:
            progress(int(toks.size))
        return data, stats

    def decode(self, data: bytes, *, context: Any = None, progress: ProgressFn | None = None) -> np.ndarray:
        """Decode a stream written by :meth:`encode` with the same primer and ``context``.
        A block whose payload is too short for its token count (``seqkv_ppm``'s bound: every
        token costs at least -log2(65504/65536) bits) is refused before any decoding."""
        from ..coding import container

        c = unpack_stream(data, self.name, self.vocab_size, self.max_tokens)
        h = c.header
        try:
            _profile, order, primer_tokens, primer_crc = _native.ppm_parse_params(bytes(h.params), self.vocab_size)
        except InvalidInputError as exc:  # well-formed (the header's CRC holds) but not ours to read
            raise FormatVersionError(f"plt stream: {exc}") from exc
        model = self._model_for(context, order)
        if (model.seen_tokens, model.history_crc32c) != (primer_tokens, primer_crc):
            raise ModelMismatchError(
                f"plt stream was coded after {primer_tokens} primer/context tokens (crc32c {primer_crc:#010x}); "
                f"this decoder has {model.seen_tokens} (crc32c {model.history_crc32c:#010x})"
            )
        out = model.decode([b.payload for b in c.blocks], [b.n_tokens for b in c.blocks])
        start = 0
        for b in c.blocks:
            if container.tokens_checksum(out[start : start + b.n_tokens]) != b.tokens_crc32c:
                raise CorruptStreamError("plt block fails its token checksum")
            start += b.n_tokens
        if out.size != h.token_count:
            raise CorruptStreamError(f"stream holds {out.size} tokens, header says {h.token_count}")
        if progress is not None and out.size:
            progress(int(out.size))
        return out.astype(TOKEN_DTYPE, copy=False)

    def cost_bits(self, tokens: Any, *, context: Any = None) -> float:
        """The model's ideal code length of ``tokens`` in bits, without coding them."""
        toks = as_tokens(tokens, self.vocab_size)
        return float(self._model_for(context).cost_bits(toks))

    def __repr__(self) -> str:
        return f"PLTCodec(vocab_size={self.vocab_size}, order={self.order}, primer_tokens={self.primer_tokens})"
