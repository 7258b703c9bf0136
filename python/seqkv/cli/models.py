"""The model and tokenizer a command works with, and the check that a stream is theirs.

SmolLM2 is the default (its tokenizer is cached as ``tokenizer.json`` so that raw and plt need
no transformers); ``--model PATH`` picks another transformers model folder. A stream names the
model it needs by its header's vocabulary size and fingerprint: :func:`codec_for_stream`
refuses a stream of another model with a message naming it, instead of decoding garbage.

SmolLM2's ``lm`` codecs on the CPU under the seqkv engine are built from the model cache
(:func:`seqkv.engine.cpu.smollm2_engine`: no torch, no transformers) once a run has stored the
engine there; they write the same bytes as the codec built from the loaded model, whose
fingerprint the cached engine carries. Until then the model is loaded, which fills the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import MissingExtraError, SeqkvError

__all__ = ["ModelChoice", "ENGINES", "codec_for_stream", "stream_engine", "smollm2_tokenizer"]

EngineName = Literal["auto", "seqkv", "transformers"]
ENGINES: tuple[EngineName, ...] = ("auto", "seqkv", "transformers")
#: The ``engine=`` of LMCodec for each ``--engine`` (bools: accepted by every LMCodec version).
_CODEC_ENGINE: dict[str, Any] = {"auto": "auto", "seqkv": True, "transformers": False}
SMOLLM2 = "SmolLM2-135M-Instruct"


class ModelError(SeqkvError):
    """The stream needs another model than the one the command has."""


def _cache_dir() -> Path:
    base = os.environ.get("SEQKV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "seqkv"
    )
    return Path(base)


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer as a ``tokenizers.Tokenizer``: read from the GGUF through transformers
    once, then from a cached ``tokenizer.json`` keyed by the GGUF's path, size and mtime. Gives
    the same ids as ``load_smollm2()[1]``."""
    from ..integrations.models import SMOLLM2_GGUF, smollm2_folder

    gguf = Path(smollm2_folder()) / SMOLLM2_GGUF
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_dir() / f"smollm2-tokenizer-{key}.json"
    try:
        import tokenizers
    except ImportError:
        raise MissingExtraError("tokenising text needs the tokenizers package: pip install 'seqkv[torch]'") from None
    if not cached.is_file():
        from ..integrations.models import require_torch

        _, transformers = require_torch()
        hf = transformers.AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF, local_files_only=True)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tok.", dir=cached.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(hf.backend_tokenizer.to_str())
            os.replace(tmp, cached)
        except OSError:
            return hf.backend_tokenizer  # cache not writable: use it uncached
    return tokenizers.Tokenizer.from_file(str(cached))


def stream_engine(numerics_profile: str) -> EngineName | None:
    """The engine a stream's numerics profile names (``None`` when it does not say: a digest,
    or no profile)."""
    try:
        profile = json.loads(numerics_profile) if numerics_profile else None
    except ValueError:
        return None
    engine = profile.get("engine") if isinstance(profile, dict) else None
    return {"transformers": "transformers", "seqkv-engine": "seqkv"}.get(str(engine))  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelChoice:
    """``--model`` (``None``: SmolLM2), ``--engine`` (``None``: what the stream says, else auto) and
    ``--device`` (where the model runs: ``"cuda"`` puts it on the GPU, whose lm logits then come
    from the GPU engine, bit-identical to the CPU engine's). ``say(message, note=False)`` is told
    what loading is under way (a ``note`` is worth showing even when no one is watching)."""

    path: str | None = None
    engine: EngineName | None = None
    device: str = "cpu"
    say: Callable[..., None] | None = field(default=None, compare=False, repr=False)

    def _say(self, message: str, *, note: bool = False) -> None:
        if self.say is not None:
            self.say(message, note=note)

    @property
    def name(self) -> str:
        return SMOLLM2 if self.path is None else self.path

    def load(self) -> tuple[Any, Any]:
        from ..integrations.models import load_model, load_smollm2

        if self.path is None:
            return load_smollm2(self.device)
        return load_model(self.path, device=self.device)

    # -- text ---------------------------------------------------------------------------

    def encode_text(self, text: str) -> np.ndarray:
        tok = self._tokenizer()
        if self.path is None:
            ids = tok.encode(text, add_special_tokens=False).ids
        else:
            ids = tok(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def decode_text(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer().decode([int(i) for i in ids], skip_special_tokens=False))

    def text_vocab_size(self) -> int:
        """The vocabulary size raw and plt streams of this model's text record."""
        tok = self._tokenizer()
        return int(tok.get_vocab_size()) if self.path is None else len(tok)

    def _tokenizer(self) -> Any:
        if self.path is None:
            return smollm2_tokenizer()
        _, tokenizer = self.load()
        if tokenizer is None:
            raise ModelError(f"{self.path} has no tokenizer: pass --tokens to work with token ids")
        return tokenizer

    def check_text_vocab(self, vocab_size: int) -> None:
        """Refuse to turn ids of a ``vocab_size`` vocabulary into text with this tokenizer."""
        mine = self.text_vocab_size()
        if vocab_size != mine:
            raise ModelError(
                f"the stream's tokens come from a vocabulary of {vocab_size:,} ids; the tokenizer of "
                f"{self.name} has {mine:,}: pass --model PATH for the stream's model, or --tokens for the ids"
            )

    # -- lm codecs ------------------------------------------------------------------------

    def lm_codec(self, name: str, *, engine: EngineName | None = None, **options: Any) -> Any:
        from .. import codecs

        chosen = engine or self.engine or "auto"
        cached = self._cached_source(chosen)
        if cached is not None:
            source, start_token = cached
            return codecs.get(name, source=source, start_token=start_token, **options)
        self._say(f"loading {self.name} through transformers")
        model, tokenizer = self.load()
        return codecs.get(name, model=model, tokenizer=tokenizer, engine=_CODEC_ENGINE[chosen], **options)

    def _cached_source(self, engine: EngineName) -> tuple[Any, int] | None:
        """``(EngineLogitsSource, start token)`` of SmolLM2's engine from the model cache — what
        ``LMCodec(model, tokenizer=..., engine=engine)`` of ``load_smollm2()`` codes under — or
        ``None`` where that codec would not use the CPU engine or the cache lacks it."""
        if self.path is not None or self.device != "cpu" or engine not in ("auto", "seqkv"):
            return None
        # the <|endoftext|> that default_start_token finds in the transformers tokenizer
        start_token = smollm2_tokenizer().token_to_id("<|endoftext|>")
        if start_token is None:
            return None
        from ..codecs.sources import LM_CPU_ENGINE_DTYPE, EngineLogitsSource
        from ..engine.cpu import smollm2_engine

        self._say(f"loading {self.name}'s engine from the model cache")
        eng = smollm2_engine(LM_CPU_ENGINE_DTYPE)
        if eng is None:
            self._say(
                f"the model cache has no seqkv engine of {self.name} yet: loading the model through "
                "transformers (slow, this once; it fills the cache for the next run)",
                note=True,
            )
            return None
        return EngineLogitsSource(eng), int(start_token)


def codec_for_stream(header: Any, choice: ModelChoice, *, max_tokens: int) -> Any:
    """A codec that decodes the stream of ``header`` (a ``container.Header``), or
    :class:`ModelError` naming the model the stream needs."""
    from .. import codecs

    if header.codec not in ("lm", "lm-robust"):
        return codecs.get(header.codec, vocab_size=int(header.vocab_size), max_tokens=max_tokens)
    fingerprint = bytes(header.model_fingerprint)
    wanted = stream_engine(header.numerics_profile)
    needs = (
        f"this {header.codec} stream needs the model with vocab size {int(header.vocab_size):,} and fingerprint "
        f"{fingerprint.hex()} (logits from {wanted or 'an unrecorded engine'})"
    )
    if choice.path is None and int(header.vocab_size) != choice.text_vocab_size():
        raise ModelError(f"{needs}; {SMOLLM2} has vocab size {choice.text_vocab_size():,}: pass --model PATH")
    engines: list[EngineName | None] = [choice.engine] if choice.engine else [wanted] if wanted else ["auto", "transformers"]
    tried = []
    for engine in engines:
        codec = choice.lm_codec(header.codec, engine=engine, max_tokens=max_tokens)
        if codec.vocab_size == int(header.vocab_size) and codec.fingerprint == fingerprint:
            return codec
        tried.append(f"{codec.fingerprint.hex()} (vocab {codec.vocab_size:,}, {codec.source.engine})")
    hint = "pass --model PATH for the stream's model" + ("" if choice.engine is None else " or another --engine")
    raise ModelError(f"{needs}; {choice.name} gives {' and '.join(tried)}: {hint}")
