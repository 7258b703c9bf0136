"""``raw``: token ids bit-packed at ⌈log2 V⌉ bits each, the baseline every other codec beats.

Payload of each block: the ids of the block, most significant bit first, packed
back to back and zero-padded to a whole byte. Vectorised NumPy both ways.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..coding.coder import pack_bits, unpack_bits
from ..errors import CorruptStreamError, InvalidInputError
from .base import (
    DEFAULT_MAX_TOKENS,
    TOKEN_DTYPE,
    CodingStats,
    ProgressFn,
    as_tokens,
    check_block_tokens,
    check_max_tokens,
    check_vocab_size,
    split_blocks,
    unpack_stream,
)

__all__ = ["RawCodec", "bits_per_token"]


def bits_per_token(vocab_size: int) -> int:
    """⌈log2 V⌉, at least 1."""
    if vocab_size < 1:
        raise InvalidInputError("vocab_size must be >= 1")
    return max(1, int(vocab_size - 1).bit_length())


class RawCodec:
    """Fixed-width codec: ``⌈log2 vocab_size⌉`` bits per token.

    ``vocab_size`` defaults to the model's (pass ``model=``) or must be given.
    """

    name = "raw"

    def __init__(
        self,
        vocab_size: int | None = None,
        *,
        model: Any = None,
        block_tokens: int = 4096,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ):
        if vocab_size is None:
            if model is None:
                raise InvalidInputError("raw codec needs vocab_size= or model=")
            from ..integrations.models import vocab_size as model_vocab

            vocab_size = model_vocab(model)
        self.vocab_size = check_vocab_size(vocab_size)
        self.bits = bits_per_token(self.vocab_size)
        self.block_tokens = check_block_tokens(block_tokens)
        self.max_tokens = check_max_tokens(max_tokens)
        self.last_stats: CodingStats | None = None

    def encode(self, tokens: Any, *, context: Any = None) -> bytes:
        return self.encode_with_stats(tokens, context=context)[0]

    def encode_with_stats(
        self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None
    ) -> tuple[bytes, CodingStats]:
        """Code ``tokens``; ``context`` is validated and otherwise unused (raw models nothing)."""
        from ..coding import container

        t0 = time.perf_counter()
        toks = as_tokens(tokens, self.vocab_size)
        as_tokens(context, self.vocab_size, what="context")
        blocks = [
            container.Block(
                n_tokens=b - a,
                payload=pack_bits(toks[a:b], self.bits),
                tokens_crc32c=container.tokens_checksum(toks[a:b]),
            )
            for a, b in split_blocks(toks.size, self.block_tokens)
        ]
        header = container.Header(
            codec=self.name, precision=self.bits, token_count=int(toks.size), vocab_size=self.vocab_size
        )
        data = container.pack(header, blocks)
        stats = CodingStats(
            codec=self.name,
            tokens=int(toks.size),
            payload_bits=8 * sum(len(b.payload) for b in blocks),
            container_bits=8 * len(data),
            seconds=time.perf_counter() - t0,
        )
        self.last_stats = stats
        if progress is not None and toks.size:
            progress(int(toks.size))
        return data, stats

    def decode(self, data: bytes, *, context: Any = None, progress: ProgressFn | None = None) -> np.ndarray:
        """The ids of a raw stream; ``context`` is validated and otherwise unused."""
        from ..coding import container

        as_tokens(context, self.vocab_size, what="context")
        c = unpack_stream(data, self.name, self.vocab_size, self.max_tokens)
        h = c.header
        if h.precision != self.bits:
            raise CorruptStreamError(f"raw stream packs {h.precision} bits per token, vocab size {self.vocab_size} {self.bits}")
        parts = []
        for block in c.blocks:
            toks = unpack_bits(block.payload, block.n_tokens, self.bits)
            if toks.size and int(toks.max()) >= self.vocab_size:
                raise CorruptStreamError("raw block holds a token id >= vocab size")
            if container.tokens_checksum(toks) != block.tokens_crc32c:
                raise CorruptStreamError("raw block fails its token checksum")
            parts.append(toks)
            if progress is not None and toks.size:
                progress(int(toks.size))
        out = np.concatenate(parts) if parts else np.empty(0, dtype=TOKEN_DTYPE)
        if out.size != h.token_count:
            raise CorruptStreamError(f"stream holds {out.size} tokens, header says {h.token_count}")
        return out
