"""``seqkv.engine``: a batch-invariant forward pass for Llama-family causal LMs.

Every token's result — its keys and values in every layer and its next-token logits — is
the same bits however the tokens are scheduled: one prefill, any chunking, single decode
steps, alone or batched with other sequences, and whichever instruction set the CPU
kernels use. It holds by construction (``docs/engine.md``): each floating-point reduction
has a fixed order per output element (matmul: one FMA chain over K; norms and dot
products: eight lanes and a fixed tree; attention: keys in tiles of 32 from position 0),
and nothing a kernel computes for one row depends on any other row.

So an ``lm`` stream can be encoded with one prefill and decoded with single steps, a KV
cache rebuilt under any schedule matches the stored one bit for bit, and many sessions
can be decoded in one batch.

>>> eng = Engine.from_hf(model, dtype="bf16")            # doctest: +SKIP
>>> seq = eng.new_sequence()                              # doctest: +SKIP
>>> logits = eng.prefill(seq, tokens)                     # float32 [n, V]   # doctest: +SKIP
>>> row = eng.step([seq], [next_token])[0]                # doctest: +SKIP
>>> cache = seq.kv_cache()                                # transformers DynamicCache  # doctest: +SKIP

Weights are taken from a loaded transformers model (nothing is downloaded) and stored in
bf16 (default; the model's weights rounded to nearest-even, as ``model.to(torch.bfloat16)``
does) or f32; activations and accumulations are f32. Only NumPy is needed to run it;
:meth:`Engine.from_hf` and :meth:`Sequence.kv_cache` import torch.

:class:`GpuEngine` runs the same definition on a CUDA GPU (``cuda_kernels/engine.cu``,
through CuPy) and gives the same bits as the CPU engine (measured on an H200; see
``docs/engine.md``). :class:`EngineLogitsSource` plugs the engine into the ``lm`` codec.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Any, Iterable, Iterator, Sequence as Seq

import numpy as np

from . import _native
from .codecs.lm import LogitsSource
from .errors import InvalidInputError

__all__ = [
    "Engine",
    "random_tensors",
    "supports",
    "unsupported_reason",
    "Sequence",
    "EngineLogitsSource",
    "KERNEL_DEFINITION",
    "cache_layer_hashes",
    "kv_layer_hashes",
    "read_bandwidth",
    "hf_tensors",
    "rope_table",
    "GpuEngine",
    "gpu_weight_arrays",
    "bf16_round_bits",
]

#: Version of the arithmetic the kernels define (bump when any result bit can change).
KERNEL_DEFINITION = 1

#: transformers ``model_type`` values whose forward pass the engine reproduces.
SUPPORTED_MODEL_TYPES = frozenset({"llama"})
_STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


def read_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Streaming read bandwidth of this machine in bytes/s, measured by the engine's threads."""
    return float(_native.engine_read_bandwidth(int(nbytes), int(repeats)))


def _as_token_array(tokens: Any, vocab: int, what: str = "tokens") -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab):
        bad = int(arr.max()) if int(arr.max()) >= vocab else int(arr.min())
        raise InvalidInputError(f"{what}: token id {bad} out of range for vocab size {vocab}")
    return np.ascontiguousarray(arr, dtype=np.uint32)


def kv_layer_hashes(layers: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Per-layer SHA-256 (hex) of ``keys.tobytes() + values.tobytes()``, each float32
    ``[kv_heads, len, head_dim]`` C-contiguous: the engine's and :func:`cache_layer_hashes`'s
    common definition."""
    out = []
    for k, v in layers:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(k, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
        out.append(h.hexdigest())
    return out


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))  # older transformers


def cache_layer_hashes(cache: Any, batch_index: int = 0) -> list[str]:
    """Per-layer hashes of a transformers cache (one batch row), as :meth:`Sequence.layer_hashes`
    defines them, so KV from any engine can be compared with the engine's."""
    arrays = []
    for k, v in _cache_layers(cache):
        kk = k[batch_index].detach().to("cpu").float().contiguous().numpy()
        vv = v[batch_index].detach().to("cpu").float().contiguous().numpy()
        arrays.append((kk, vv))
    return kv_layer_hashes(arrays)


def unsupported_reason(model: Any) -> str | None:
    """Why the engine cannot run ``model`` (a transformers causal LM), or ``None`` if it can:
    ``model_type`` in :data:`SUPPORTED_MODEL_TYPES`, SiLU MLP, no tensor-parallel split,
    a static RoPE table, the usual ``model.model.{embed_tokens, layers, norm, rotary_emb}``."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "not a transformers model (no .config)"
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (supported: {sorted(SUPPORTED_MODEL_TYPES)})"
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        return f"hidden_act {act!r} (needs 'silu')"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "unexpected module layout (needs model.model.embed_tokens/layers/norm/rotary_emb)"
    rope_type = getattr(inner.rotary_emb, "rope_type", "default")
    if rope_type not in _STATIC_ROPE_TYPES:
        return f"RoPE type {rope_type!r} (length-dependent)"
    return None


def supports(model: Any) -> bool:
    """Whether :meth:`Engine.from_hf` can take ``model`` (see :func:`unsupported_reason`)."""
    return unsupported_reason(model) is None


def hf_tensors(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, tensors)`` of a transformers Llama-family causal LM, in the engine's naming:
    ``embed`` ``[V, H]``, ``lm_head`` (only when untied), ``norm``, and per layer
    ``layers.{i}.`` + ``input_norm``, ``post_norm``, ``q``, ``k``, ``v``, ``o``, ``gate``,
    ``up``, ``down`` (``torch.nn.Linear`` layout ``[out, in]``) and ``*_bias`` where present.
    Arrays are float32 copies."""
    from .models import require_torch

    torch, _ = require_torch()
    why = unsupported_reason(model)
    if why is not None:
        raise InvalidInputError(f"seqkv.engine cannot run this model: {why}")
    cfg = model.config
    inner = model.model
    rotary = inner.rotary_emb
    attn0 = inner.layers[0].self_attn
    head_dim = int(getattr(attn0, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def arr(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())

    embed = arr(inner.embed_tokens.weight)
    tensors: dict[str, np.ndarray] = {"embed": embed, "norm": arr(inner.norm.weight)}
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and lm_head.weight.data_ptr() != inner.embed_tokens.weight.data_ptr():
        tensors["lm_head"] = arr(lm_head.weight)
        if getattr(lm_head, "bias", None) is not None:
            raise InvalidInputError("an lm_head bias is not supported")
    for i, layer in enumerate(inner.layers):
        a, m = layer.self_attn, layer.mlp
        p = f"layers.{i}."
        tensors[p + "input_norm"] = arr(layer.input_layernorm.weight)
        tensors[p + "post_norm"] = arr(layer.post_attention_layernorm.weight)
        for name, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj),
                          ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj)):
            tensors[p + name] = arr(lin.weight)
            if lin.bias is not None:
                tensors[p + name + "_bias"] = arr(lin.bias)
    config = {
        "vocab_size": int(embed.shape[0]),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_layers": len(inner.layers),
        "num_heads": int(cfg.num_attention_heads),
        "num_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(inner.norm.variance_epsilon),
        "rope_inv_freq": arr(rotary.inv_freq).astype(np.float32).tolist(),
        "rope_attention_scaling": float(getattr(rotary, "attention_scaling", 1.0)),
        "attention_scale": float(getattr(attn0, "scaling", head_dim**-0.5)),
    }
    return config, tensors


def random_tensors(
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    rope_theta: float = 10000.0,
    scale: float = 0.2,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A Llama-shaped config and seeded random float32 tensors (names as :func:`hf_tensors`):
    weights ``N(0, scale^2)``, norms ``1 + N(0, scale^2)``; for tests and for benches on machines
    without a model file. No torch needed."""
    rng = np.random.default_rng(seed)
    hd = head_dim
    inv = (1.0 / (np.float32(rope_theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))).astype(np.float32)
    config = {"vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
              "num_layers": num_layers, "num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": hd,
              "rms_norm_eps": 1e-5, "rope_inv_freq": inv.tolist(), "rope_attention_scaling": 1.0,
              "attention_scale": hd**-0.5}

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    H, I, nh, nkv = hidden_size, intermediate_size, num_heads, num_kv_heads
    t = {"embed": w(vocab_size, H), "norm": (1 + w(H)).astype(np.float32)}
    for i in range(num_layers):
        p = f"layers.{i}."
        t[p + "input_norm"] = (1 + w(H)).astype(np.float32)
        t[p + "post_norm"] = (1 + w(H)).astype(np.float32)
        t[p + "q"], t[p + "k"], t[p + "v"], t[p + "o"] = w(nh * hd, H), w(nkv * hd, H), w(nkv * hd, H), w(H, nh * hd)
        t[p + "gate"], t[p + "up"], t[p + "down"] = w(I, H), w(I, H), w(H, I)
    return config, t


class Sequence:
    """One token sequence's cached state in an :class:`Engine`: its KV pages, the tokens fed
    so far and the chunk sizes they were fed in (the latter only for the record: results do
    not depend on it). Not thread-safe; use one sequence from one thread at a time."""

    __slots__ = ("_core", "engine", "_tokens", "_schedule")

    def __init__(self, engine: "Engine", core: Any, tokens: list[int] | None = None, schedule: list[int] | None = None):
        self.engine = engine
        self._core = core
        self._tokens: list[int] = tokens if tokens is not None else []
        self._schedule: list[int] = schedule if schedule is not None else []

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return f"<seqkv.engine.Sequence len={len(self)}>"

    @property
    def tokens(self) -> np.ndarray:
        """The token ids cached so far (uint32)."""
        return np.asarray(self._tokens, dtype=np.uint32)

    @property
    def schedule(self) -> tuple[int, ...]:
        """Chunk sizes of the forward passes that fed this sequence (forks keep their prefix's)."""
        return tuple(self._schedule)

    def fork(self, n: int | None = None) -> "Sequence":
        """A new sequence holding the first ``n`` positions (default all). Pages are shared
        and copied on first write, so forking a long prefix is cheap."""
        n = len(self) if n is None else int(n)
        if not 0 <= n <= len(self):
            raise InvalidInputError(f"fork({n}) of a sequence of length {len(self)}")
        sched, left = [], n
        for c in self._schedule:
            if left <= 0:
                break
            sched.append(min(c, left))
            left -= c
        return Sequence(self.engine, self._core.fork(n), self._tokens[:n], sched)

    def truncate(self, n: int) -> None:
        """Forget positions ``n..``."""
        n = int(n)
        if n < 0:
            raise InvalidInputError("truncate: n must be >= 0")
        self._core.truncate(n)
        del self._tokens[n:]
        left, sched = n, []
        for c in self._schedule:
            if left <= 0:
                break
            sched.append(min(c, left))
            left -= c
        self._schedule = sched

    def kv_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer ``(keys, values)``, float32 ``[kv_heads, len, head_dim]`` (keys after RoPE)."""
        return [self._core.export_layer(i) for i in range(self.engine.num_layers)]

    def layer_hashes(self) -> list[str]:
        """Per-layer SHA-256 of this sequence's KV (see :func:`kv_layer_hashes`)."""
        return kv_layer_hashes(self.kv_arrays())

    def kv_cache(self, *, dtype: Any = None, device: Any = None, config: Any = None) -> Any:
        """The KV as a transformers ``DynamicCache`` (batch 1).

        ``model.generate(ids, past_key_values=cache)`` expects the cache of all of ``ids``
        but the last token (it feeds that one again): pass ``seq.fork(len(seq) - 1).kv_cache()``.

        ``dtype`` defaults to ``torch.float32``; ``config`` defaults to the config of the
        model the engine was built from (when built with :meth:`Engine.from_hf`).
        """
        from .models import require_torch

        torch, transformers = require_torch()
        config = config if config is not None else self.engine.hf_config
        try:
            cache = transformers.DynamicCache(config=config) if config is not None else transformers.DynamicCache()
        except TypeError:  # older transformers
            cache = transformers.DynamicCache()
        dtype = torch.float32 if dtype is None else dtype
        for i, (k, v) in enumerate(self.kv_arrays()):
            kt = torch.from_numpy(k)[None].to(dtype=dtype, device=device)
            vt = torch.from_numpy(v)[None].to(dtype=dtype, device=device)
            cache.update(kt, vt, i)
        return cache

    def page_stats(self) -> tuple[int, int]:
        """``(pages, shared_pages)``: KV pages held, and how many are shared with other sequences."""
        return tuple(self._core.page_stats())  # type: ignore[return-value]


_SHARED: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int], Engine]]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class Engine:
    """Weights of one model in the engine's layout; creates sequences and runs them.

    Build it with :meth:`from_hf`. Methods release the GIL while computing; one engine can
    serve several threads (each with its own sequences).
    """

    def __init__(self, core: Any, *, hf_config: Any = None, source_fingerprint: bytes | None = None, info: dict | None = None):
        self._core = core
        self.hf_config = hf_config
        self.source_fingerprint = source_fingerprint
        self.info = dict(info or {})

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_hf(
        cls,
        model: Any,
        dtype: str = "bf16",
        *,
        kv_dtype: str = "f32",
        page_tokens: int = 64,
        fingerprint: bool = True,
    ) -> "Engine":
        """Take the weights of a loaded transformers Llama-family causal LM.

        ``dtype``: ``"bf16"`` (weights rounded to bfloat16, half the bytes per step) or
        ``"f32"``. ``kv_dtype``: storage of cached keys/values (``"f32"`` or ``"bf16"``).
        ``page_tokens``: positions per KV page. ``fingerprint``: also record the model's
        :func:`seqkv.models.fingerprint` (used by :class:`EngineLogitsSource`).
        """
        config, tensors = hf_tensors(model)
        source_fp = None
        if fingerprint:
            from .models import fingerprint as model_fingerprint

            source_fp = model_fingerprint(model)
        eng = cls.from_tensors(config, tensors, dtype, kv_dtype=kv_dtype, page_tokens=page_tokens)
        eng.hf_config = model.config
        eng.source_fingerprint = source_fp
        return eng

    @classmethod
    def for_model(cls, model: Any, dtype: str = "bf16", *, kv_dtype: str = "f32", page_tokens: int = 64) -> "Engine":
        """A shared engine of ``model``: built once by :meth:`from_hf` and reused while the
        model lives and its :func:`seqkv.models.fingerprint` is unchanged (codecs and stores
        built for one model share its engine; thread-safe)."""
        from .models import fingerprint as model_fingerprint

        fp = model_fingerprint(model)
        key = (str(dtype), str(kv_dtype), int(page_tokens))
        with _SHARED_LOCK:
            per_model = _SHARED.get(model)
            if per_model is None:
                per_model = {}
                _SHARED[model] = per_model
            eng = per_model.get(key)
            if eng is None or eng.source_fingerprint != fp:
                eng = cls.from_hf(model, dtype, kv_dtype=kv_dtype, page_tokens=page_tokens)
                per_model[key] = eng
        return eng

    @classmethod
    def from_tensors(
        cls,
        config: dict[str, Any],
        tensors: dict[str, np.ndarray],
        dtype: str = "bf16",
        *,
        kv_dtype: str = "f32",
        page_tokens: int = 64,
    ) -> "Engine":
        """Build from a config dict and named float32 arrays (see :func:`hf_tensors` for the
        names and shapes); no torch needed."""
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        core = _native.EngineCore(dict(config), tensors, dtype=dtype, kv_dtype=kv_dtype, page_tokens=int(page_tokens))
        return cls(core, info=dict(config))

    def with_isa(self, isa: str) -> "Engine":
        """The same weights computing with another instruction set (``"scalar"`` or
        ``"avx2-fma"``): the bits are identical, only speed differs. Sequences are shared."""
        return Engine(self._core.with_isa(isa), hf_config=self.hf_config,
                      source_fingerprint=self.source_fingerprint, info=self.info)

    # -- properties ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self._core.vocab_size)

    @property
    def num_layers(self) -> int:
        return int(self._core.num_layers)

    @property
    def dtype(self) -> str:
        return str(self._core.dtype)

    @property
    def kv_dtype(self) -> str:
        return str(self._core.kv_dtype)

    @property
    def isa(self) -> str:
        return str(self._core.isa)

    @property
    def page_tokens(self) -> int:
        return int(self._core.page_tokens)

    @property
    def step_weight_bytes(self) -> int:
        """Bytes of weights one decode step reads."""
        return int(self._core.step_weight_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        return int(self._core.kv_bytes_per_token)

    def numerics_profile(self) -> dict[str, Any]:
        """What determines the engine's bits: the kernel definition, weight and KV dtypes.
        The ISA and thread count are recorded for information only — they do not change results."""
        return {
            "engine": "seqkv-engine",
            "kernel_definition": KERNEL_DEFINITION,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "isa": self.isa,
            "threads": int(_native.engine_threads()),
            "version": _native.__version__,
        }

    def fingerprint(self) -> bytes:
        """32 bytes naming the model *as the engine computes it*: the source model's
        fingerprint, the weight and KV dtypes and the kernel definition."""
        if self.source_fingerprint is None:
            raise InvalidInputError("this engine was built without a model fingerprint (fingerprint=False)")
        h = hashlib.blake2b(digest_size=32)
        h.update(b"seqkv-engine")
        h.update(bytes(self.source_fingerprint))
        h.update(f"|def={KERNEL_DEFINITION}|dtype={self.dtype}|kv={self.kv_dtype}".encode())
        return h.digest()

    # -- running ------------------------------------------------------------------

    def new_sequence(self) -> Sequence:
        return Sequence(self, self._core.new_sequence())

    def forward(self, seqs: Seq[Sequence], chunks: Seq[Any], *, logits: str = "all") -> np.ndarray:
        """Append ``chunks[i]`` to ``seqs[i]`` for every i, all in one batched pass.

        ``logits``: ``"all"`` (a row per input token, in input order), ``"last"`` (one row per
        sequence with a non-empty chunk) or ``"none"``. Returns float32 ``[rows, vocab]``.
        """
        seqs = list(seqs)
        if len(seqs) != len(chunks):
            raise InvalidInputError("forward: one chunk per sequence is required")
        if len({id(s) for s in seqs}) != len(seqs):
            raise InvalidInputError("forward: a sequence appears twice in one batch")
        vocab = self.vocab_size
        arrays = [_as_token_array(c, vocab) for c in chunks]
        for s in seqs:
            if not isinstance(s, Sequence) or s.engine._core.num_layers != self._core.num_layers:
                raise InvalidInputError("forward: seqs must be Sequences of this engine")
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
        out = self._core.forward([s._core for s in seqs], flat, [int(a.size) for a in arrays], logits)
        for s, a in zip(seqs, arrays):
            if a.size:
                s._tokens.extend(a.tolist())
                s._schedule.append(int(a.size))
        return out

    def prefill(self, seq: Sequence, tokens: Any, *, logits: str = "all") -> np.ndarray:
        """Append ``tokens`` to ``seq``; returns float32 ``[n, vocab]`` (``logits="all"``),
        ``[1, vocab]`` (``"last"``) or ``[0, vocab]`` (``"none"``)."""
        return self.forward([seq], [tokens], logits=logits)

    def step(self, seqs: Seq[Sequence], tokens: Seq[int]) -> np.ndarray:
        """One decode step for each sequence (multi-stream decode): appends ``tokens[i]`` to
        ``seqs[i]`` and returns float32 ``[len(seqs), vocab]``. A sequence's row is the same
        bits alone or in any batch."""
        seqs = list(seqs)
        if isinstance(tokens, (int, np.integer)):
            tokens = [int(tokens)]
        toks = _as_token_array(list(tokens), self.vocab_size)
        if toks.size != len(seqs):
            raise InvalidInputError("step: one token per sequence is required")
        return self.forward(seqs, [toks[i : i + 1] for i in range(len(seqs))], logits="all")

    def generate(self, seq: Sequence, n: int) -> list[int]:
        """Greedy continuation of ``seq`` by ``n`` tokens (argmax, ties to the lowest id);
        the tokens are appended to ``seq``. The last position's logits are recomputed on a
        fork — the same bits as when it was first computed."""
        if len(seq) == 0:
            raise InvalidInputError("generate needs a non-empty sequence")
        fork = seq.fork(len(seq) - 1)
        row = self.prefill(fork, [seq._tokens[-1]], logits="last")[0]
        out: list[int] = []
        for _ in range(int(n)):
            t = int(np.argmax(row))
            out.append(t)
            row = self.step([seq], [t])[0]
        return out


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

    def __init__(self, engine: Engine, *, chunk: int = 256):
        if int(chunk) < 1:
            raise InvalidInputError("chunk must be >= 1")
        self.eng = engine
        self.vocab_size = engine.vocab_size
        self.chunk = int(chunk)
        self.seq: Sequence | None = None

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

    def start_many(self, prefixes: Seq[Any]) -> tuple[list[Sequence], list[np.ndarray | None]]:
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

    def step_many(self, handles: Seq[Sequence], tokens: Seq[int]) -> np.ndarray:
        """One batched decode step: ``tokens[i]`` appended to ``handles[i]``."""
        return self.eng.step(handles, tokens)

    def rows_many(self, prefixes: Seq[Any], token_lists: Seq[Any]) -> Iterator[tuple[int, np.ndarray | None]]:
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


# ---- RoPE table (NumPy replica of rust/seqkv-engine Model::rope_row) -------------------------

_PIO2_1 = 1.5707963267341256e0
_PIO2_2 = 6.077100506303966e-11
_PIO2_3 = 2.0222662487111665e-21
_INV_PIO2 = 6.366197723675814e-1


def _kernel_sin(x: np.ndarray) -> np.ndarray:
    s1, s2, s3 = -1.6666666666666632e-1, 8.33333333332249e-3, -1.984126982985795e-4
    s4, s5, s6 = 2.755731370707007e-6, -2.5050760253406863e-8, 1.58969099521155e-10
    z = x * x
    v = z * x
    r = s2 + z * (s3 + z * (s4 + z * (s5 + z * s6)))
    return x + v * (s1 + z * r)


def _kernel_cos(x: np.ndarray) -> np.ndarray:
    c1, c2, c3 = 4.16666666666666e-2, -1.388888888887411e-3, 2.480158728947673e-5
    c4, c5, c6 = -2.7557314351390663e-7, 2.087572321298175e-9, -1.1359647557788195e-11
    z = x * x
    r = z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * c6)))))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + z * r)


def rope_table(inv_freq: Any, attention_scaling: float, positions: Any) -> tuple[np.ndarray, np.ndarray]:
    """The engine's RoPE ``(cos, sin)``, float32 ``[len(positions), head_dim / 2]``: the same bits
    as ``EngineCore.rope_table`` (IEEE f64 operations in the same order; tested)."""
    inv = np.asarray(inv_freq, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.float32).reshape(-1, 1)
    x = (pos * inv[None, :]).astype(np.float32).astype(np.float64)
    n = np.rint(x * _INV_PIO2)
    r = ((x - n * _PIO2_1) - n * _PIO2_2) - n * _PIO2_3
    s, c = _kernel_sin(r), _kernel_cos(r)
    q = np.mod(n.astype(np.int64), 4)
    sin = np.select([q == 0, q == 1, q == 2], [s, c, -s], -c)
    cos = np.select([q == 0, q == 1, q == 2], [c, -s, -c], s)
    scale = np.float32(attention_scaling)
    return cos.astype(np.float32) * scale, sin.astype(np.float32) * scale


def bf16_round_bits(a: Any) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), round to nearest even, as the engine and torch do."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_values(a: Any) -> np.ndarray:
    return (bf16_round_bits(a).astype(np.uint32) << 16).view(np.float32)


# ---- GPU port ---------------------------------------------------------------------------------


def gpu_weight_arrays(config: dict[str, Any], tensors: dict[str, Any], max_len: int) -> dict[str, np.ndarray]:
    """Host arrays of the GPU port: bf16 bit patterns ``[K][N]`` (fused ``qkv``; fused ``gu``
    with gate and up columns interleaved in groups of 4; ``o``, ``down``, ``lm_head``), ``embed``
    ``[V][H]`` bf16, norm weights as their bf16 values in float32, and the RoPE ``cos``/``sin``
    tables for positions ``0..max_len``. The intermediate size must be even."""
    if int(config["intermediate_size"]) % 2:
        raise InvalidInputError("the GPU port needs an even intermediate_size")
    t = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}

    def w_kn(*names: str) -> np.ndarray:  # [N][K] Linear weights -> bf16 [K][sum N]
        return bf16_round_bits(np.concatenate([t[n].T for n in names], axis=1))

    out = {
        "embed": bf16_round_bits(t["embed"]),
        "lm_head": bf16_round_bits(t.get("lm_head", t["embed"]).T),
        "norm": _bf16_values(t["norm"]),
    }
    for i in range(int(config["num_layers"])):
        p = f"layers.{i}."
        out[p + "in_norm"] = _bf16_values(t[p + "input_norm"])
        out[p + "post_norm"] = _bf16_values(t[p + "post_norm"])
        out[p + "qkv"] = w_kn(p + "q", p + "k", p + "v")
        out[p + "o"] = w_kn(p + "o")
        # gate and up columns interleaved in groups of 4: (g 2q, g 2q+1, u 2q, u 2q+1), so one
        # GEMM thread holds both inputs of its SiLU gate outputs (eng_gemm MODE 2)
        gu = w_kn(p + "gate", p + "up")
        I = gu.shape[1] // 2
        out[p + "gu"] = np.ascontiguousarray(
            np.stack([gu[:, :I].reshape(-1, I // 2, 2), gu[:, I:].reshape(-1, I // 2, 2)], axis=2).reshape(gu.shape))
        out[p + "down"] = w_kn(p + "down")
    out["cos"], out["sin"] = rope_table(config["rope_inv_freq"], config["rope_attention_scaling"], np.arange(max_len))
    return out



class GpuEngine:
    """The engine's forward pass on a CUDA GPU through CuPy (``cuda_kernels/engine.cu``), with
    the CPU engine's per-element arithmetic: logits and KV are meant to be the same bits as
    :class:`Engine` with ``dtype="bf16"``, ``kv_dtype="f32"`` (``benches/engine.py --gpu``
    checks it). KV lives in fixed slots ``[slot][layer][k|v][max_len][kv_heads][head_dim]``.

    Weights must have no biases. CuPy is the ``seqkv[cuda]`` extra.
    """

    #: register-blocked GEMM shapes ``(BM, BN, BK, TM, TN)`` (block tile, K tile, thread tile)
    #: compiled for every engine; all of them give the same bits (one fmaf chain per output).
    GEMM_SHAPES: tuple[tuple[int, int, int, int, int], ...] = (
        (128, 128, 8, 8, 8), (64, 64, 32, 4, 4), (32, 64, 16, 4, 4), (32, 64, 32, 4, 4),
        (32, 64, 16, 2, 4), (32, 64, 32, 2, 4), (32, 64, 64, 2, 4), (32, 64, 32, 2, 8),
        (32, 64, 16, 2, 2), (32, 64, 32, 2, 2), (32, 64, 64, 2, 2), (32, 64, 32, 1, 4),
        (32, 32, 32, 2, 2), (16, 64, 32, 2, 2),
        # one wave of 128 blocks on 132 SMs for the 256-row steps' narrow matmuls (N = 576)
        (16, 72, 32, 2, 2), (16, 72, 64, 2, 2),
        # one wave of 128 blocks for the gate/up matmul (N = 3,072) at 256 rows
        (64, 96, 32, 4, 4),
    )

    def __init__(self, config: dict[str, Any], tensors: dict[str, Any], *, max_slots: int = 256,
                 max_len: int = 512, max_rows: int | None = None):
        try:
            import cupy as cp
        except ImportError as exc:  # pragma: no cover - needs the cuda extra
            from .errors import MissingExtraError

            raise MissingExtraError("the GPU engine needs CuPy: pip install 'seqkv[cuda]'") from exc
        from .gpu import _allow_smem, kernel_dir

        self.cp = cp
        c = {k: config[k] for k in config}
        if any(k.endswith("_bias") for k in tensors):
            raise InvalidInputError("GpuEngine: biases are not supported")
        self.V, self.H, self.I = int(c["vocab_size"]), int(c["hidden_size"]), int(c["intermediate_size"])
        self.L, self.nh, self.nkv, self.hd = int(c["num_layers"]), int(c["num_heads"]), int(c["num_kv_heads"]), int(c["head_dim"])
        if self.nh % self.nkv or self.hd % 8:
            raise InvalidInputError("GpuEngine: needs num_heads % num_kv_heads == 0 and head_dim % 8 == 0")
        self.G = self.nh // self.nkv
        self.eps = np.float32(c["rms_norm_eps"])
        self.scale = np.float32(c["attention_scale"])
        self.max_slots, self.max_len = int(max_slots), int(max_len)
        self.max_rows = int(max_rows or max(self.max_slots, 256))
        host = gpu_weight_arrays(c, tensors, self.max_len)
        self.embed = cp.asarray(host["embed"])
        self.lm_head = cp.asarray(host["lm_head"])
        self.norm = cp.asarray(host["norm"])
        keys = ("in_norm", "post_norm", "qkv", "o", "gu", "down")
        self.layers = [{k: cp.asarray(host[f"layers.{i}.{k}"]) for k in keys} for i in range(self.L)]
        self.cos, self.sin = cp.asarray(host["cos"]), cp.asarray(host["sin"])
        self.kv = cp.zeros((self.max_slots, self.L, 2, self.max_len, self.nkv, self.hd), dtype=cp.float32)
        gemm_names = [self._gemm_name(shape, mode) for shape in self.GEMM_SHAPES for mode in self._modes(shape)]
        att_name = f"eng_attention<{self.G},{self.hd}>"
        src = (kernel_dir() / "engine.cu").read_text()
        self.mod = cp.RawModule(code=src, options=("-std=c++17",), name_expressions=gemm_names + [att_name])
        self.fn = {n: self.mod.get_function(n) for n in
                   ("eng_embed", "eng_rmsnorm", "eng_rope_kv", "eng_argmax", "eng_advance")}
        self.fn["eng_attention"] = self.mod.get_function(att_name)
        self.gemm_fn = {name: self.mod.get_function(name) for name in gemm_names}
        for shape in self.GEMM_SHAPES:
            if self._gemm_smem(shape) > 48 * 1024:
                for mode in self._modes(shape):
                    _allow_smem(self.gemm_fn[self._gemm_name(shape, mode)], self._gemm_smem(shape))
        R, W = self.max_rows, (self.nh + 2 * self.nkv) * self.hd
        f32 = cp.float32
        self.buf = {
            "x": cp.zeros((R, self.H), f32), "xn": cp.zeros((R, self.H), f32), "qkv": cp.zeros((R, W), f32),
            "att": cp.zeros((R, self.nh * self.hd), f32),
            "act": cp.zeros((R, self.I), f32), "logits": cp.zeros((R, self.V), f32),
            "tokens": cp.zeros(R, cp.uint32), "slot": cp.zeros(R, cp.int32), "pos": cp.zeros(R, cp.int32),
        }
        self.lens = [0] * self.max_slots
        # cuda_kernels/engine.cu att_smem_floats: q, scores, per-tile sums, then a round of 64
        # V rows (padded to hd + 4)
        ntiles = (self.max_len + 31) // 32
        sl = -(-self.max_len // 4) * 4
        head = -(-(self.G * (self.hd + sl + ntiles * (self.hd + 1))) // 4) * 4
        self.att_smem = 4 * (head + 64 * (self.hd + 4))
        self.norm_smem = 8 * self.H  # eng_rmsnorm stages the row and the weights
        for name, nbytes in (("eng_attention", self.att_smem), ("eng_rmsnorm", self.norm_smem)):
            if nbytes > 48 * 1024:
                _allow_smem(self.fn[name], nbytes)
        #: GEMM shape per matmul (``"qkv"``, ``"o"``, ``"gu"``, ``"down"``, ``"lm_head"``); see
        #: :meth:`tune_gemms`
        self.gemm_shapes = dict(self.DEFAULT_GEMM_SHAPES)

    #: default shape per matmul (measured on an H100 with SmolLM2's sizes at 256 rows,
    #: benches/results/engine_gpu.json)
    DEFAULT_GEMM_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
        "qkv": (32, 64, 16, 4, 4), "o": (16, 72, 64, 2, 2), "gu": (64, 96, 32, 4, 4),
        "down": (16, 72, 64, 2, 2), "lm_head": (128, 128, 8, 8, 8),
    }

    @staticmethod
    def _gemm_name(shape: tuple[int, int, int, int, int], mode: int) -> str:
        return "eng_gemm<{},{},{},{},{},{}>".format(*shape, mode)

    @staticmethod
    def _modes(shape: tuple[int, int, int, int, int]) -> tuple[int, ...]:
        """eng_gemm modes compiled for a shape (the SiLU epilogue needs column chunks of 4)."""
        return (0, 1, 2) if shape[4] % 4 == 0 else (0, 1)

    @staticmethod
    def _gemm_smem(shape: tuple[int, int, int, int, int]) -> int:
        """Dynamic shared memory of eng_gemm: two K tiles of both operands as f32."""
        bm, bn, bk = shape[:3]
        return 4 * 2 * bk * (bm + 4 + bn)

    # -- launches (all on the current stream, into preallocated buffers) ------------------------

    def _gemm(self, which: str, x: Any, w: Any, y: Any, M: int, K: int, N: int, mode: int,
              shape: tuple[int, int, int, int, int] | None = None) -> None:
        """``y = x @ w`` (mode 0), ``y += x @ w`` (1) or ``y = silu(gate) * up`` of the interleaved
        gate/up product (2), with the shape chosen for matmul ``which`` unless ``shape`` is given."""
        bm, bn, bk, tm, tn = shape or self.gemm_shapes[which]
        f = self.gemm_fn.get(self._gemm_name((bm, bn, bk, tm, tn), int(mode)))
        if f is None:
            raise InvalidInputError(f"GpuEngine: no GEMM {(bm, bn, bk, tm, tn)} in mode {mode} "
                                    "(shapes come from GEMM_SHAPES; the SiLU epilogue needs TN % 4 == 0)")
        vec = int(K % 4 == 0 and N % 8 == 0)
        grid = ((N + bn - 1) // bn, (M + bm - 1) // bm)
        f(grid, ((bn // tn) * (bm // tm),), (x, w, y, np.int32(M), np.int32(N), np.int32(K), np.int32(vec)),
          shared_mem=self._gemm_smem((bm, bn, bk, tm, tn)))

    def _gemm_args(self, which: str, R: int) -> tuple[Any, Any, Any, int, int, int, int]:
        """(x, w, y, M, K, N, mode) of one of the step's matmuls on ``R`` rows (layer 0)."""
        b, lw, W = self.buf, self.layers[0], (self.nh + 2 * self.nkv) * self.hd
        return {
            "qkv": (b["xn"], lw["qkv"], b["qkv"], R, self.H, W, 0),
            "o": (b["att"], lw["o"], b["x"], R, self.nh * self.hd, self.H, 1),
            "gu": (b["xn"], lw["gu"], b["act"], R, self.H, 2 * self.I, 2),
            "down": (b["act"], lw["down"], b["x"], R, self.I, self.H, 1),
            "lm_head": (b["xn"], self.lm_head, b["logits"], R, self.H, self.V, 0),
        }[which]

    def tune_gemms(self, rows: int | None = None, reps: int = 20) -> dict[str, dict[str, float]]:
        """Time every compiled GEMM shape on each matmul of a step over ``rows`` rows (default
        ``max_rows``; the best of three batches of ``reps`` launches), keep the fastest per matmul
        in :attr:`gemm_shapes` and return the microseconds per launch, ``{matmul: {"BMxBNxBK/TMxTN": us}}``. Numerics do not change
        (every shape gives the same bits); the buffers' contents are overwritten."""
        cp = self.cp
        R = int(rows or self.max_rows)
        if not 1 <= R <= self.max_rows:
            raise InvalidInputError(f"GpuEngine.tune_gemms: rows must be in 1..{self.max_rows}")
        out: dict[str, dict[str, float]] = {}
        for which in ("qkv", "o", "gu", "down", "lm_head"):
            args = self._gemm_args(which, R)
            times = {}
            for shape in self.GEMM_SHAPES:
                if args[-1] not in self._modes(shape):
                    continue
                self._gemm(which, *args, shape=shape)
                best = float("inf")
                for _ in range(3):  # the best of three batches: robust to a clock ramp or a neighbour
                    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                    e0.record()
                    for _ in range(reps):
                        self._gemm(which, *args, shape=shape)
                    e1.record()
                    e1.synchronize()
                    best = min(best, cp.cuda.get_elapsed_time(e0, e1) * 1e3 / reps)
                times[shape] = best
            self.gemm_shapes[which] = min(times, key=times.__getitem__)
            out[which] = {"{}x{}x{}/{}x{}".format(*s): t for s, t in times.items()}
        return out

    def _layers(self, R: int) -> None:
        b, fn, i32 = self.buf, self.fn, np.int32
        W = (self.nh + 2 * self.nkv) * self.hd
        null = np.uint64(0)
        fn["eng_embed"]((R,), (128,), (b["tokens"], self.embed, b["x"], i32(R), i32(self.H)))
        for li, lw in enumerate(self.layers):
            fn["eng_rmsnorm"]((R,), (128,), (b["x"], null, lw["in_norm"], self.eps, b["xn"], i32(self.H)), shared_mem=self.norm_smem)
            self._gemm("qkv", b["xn"], lw["qkv"], b["qkv"], R, self.H, W, 0)
            fn["eng_rope_kv"]((R,), (128,), (b["qkv"], self.cos, self.sin, b["slot"], b["pos"], self.kv, i32(li),
                                            i32(self.L), i32(self.max_len), i32(self.nh), i32(self.nkv), i32(self.hd)))
            fn["eng_attention"]((R * self.nkv,), (128,), (b["qkv"], self.kv, b["slot"], b["pos"], b["att"], i32(li),
                                                         i32(self.L), i32(self.max_len), i32(self.nh), i32(self.nkv),
                                                         self.scale), shared_mem=self.att_smem)
            self._gemm("o", b["att"], lw["o"], b["x"], R, self.nh * self.hd, self.H, 1)
            fn["eng_rmsnorm"]((R,), (128,), (b["x"], null, lw["post_norm"], self.eps, b["xn"], i32(self.H)), shared_mem=self.norm_smem)
            self._gemm("gu", b["xn"], lw["gu"], b["act"], R, self.H, 2 * self.I, 2)
            self._gemm("down", b["act"], lw["down"], b["x"], R, self.I, self.H, 1)
        fn["eng_rmsnorm"]((R,), (128,), (b["x"], null, self.norm, self.eps, b["xn"], i32(self.H)), shared_mem=self.norm_smem)
        self._gemm("lm_head", b["xn"], self.lm_head, b["logits"], R, self.H, self.V, 0)

    # -- host-driven passes ----------------------------------------------------------------------

    def forward(self, slots: Seq[int], chunks: Seq[Any]) -> Any:
        """Append ``chunks[i]`` to slot ``slots[i]``; returns the logits of every row (CuPy
        float32 ``[rows, V]``, a view of an internal buffer)."""
        cp = self.cp
        slot_l, pos_l, tok_l = [], [], []
        for s, ch in zip(slots, chunks):
            ch = _as_token_array(ch, self.V)
            if self.lens[s] + ch.size > self.max_len:
                raise InvalidInputError("GpuEngine: slot would exceed max_len")
            slot_l += [s] * ch.size
            pos_l += list(range(self.lens[s], self.lens[s] + ch.size))
            tok_l += ch.tolist()
            self.lens[s] += ch.size
        R = len(tok_l)
        if R > self.max_rows:
            raise InvalidInputError(f"GpuEngine: {R} rows exceed max_rows={self.max_rows}")
        b = self.buf
        b["slot"][:R] = cp.asarray(np.array(slot_l, np.int32))
        b["pos"][:R] = cp.asarray(np.array(pos_l, np.int32))
        b["tokens"][:R] = cp.asarray(np.array(tok_l, np.uint32))
        self._layers(R)
        return b["logits"][:R]

    def kv_layer(self, slot: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) of one slot and layer as float32 ``[kv_heads, len, head_dim]``."""
        n = self.lens[slot]
        k = self.cp.asnumpy(self.kv[slot, layer, 0, :n]).transpose(1, 0, 2)
        v = self.cp.asnumpy(self.kv[slot, layer, 1, :n]).transpose(1, 0, 2)
        return np.ascontiguousarray(k), np.ascontiguousarray(v)

    def greedy_decode_graph(self, slots: Seq[int], first_tokens: Seq[int]) -> Any:
        """Capture one greedy decode step of ``slots`` (distinct; next token = argmax, positions
        advance on the GPU) as a CUDA graph; returns a callable that replays it on its stream."""
        cp = self.cp
        R = len(slots)
        if len(set(slots)) != R:
            raise InvalidInputError("GpuEngine.greedy_decode_graph: slots must be distinct")
        b = self.buf
        b["slot"][:R] = cp.asarray(np.array(list(slots), np.int32))
        b["pos"][:R] = cp.asarray(np.array([self.lens[s] for s in slots], np.int32))
        b["tokens"][:R] = cp.asarray(np.array(list(first_tokens), np.uint32))
        cp.cuda.Device().synchronize()  # the buffer writes above ran on the default stream
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            self._layers(R)
            self.fn["eng_argmax"]((R,), (256,), (b["logits"], np.int32(self.V), b["tokens"]))
            self.fn["eng_advance"](((R + 255) // 256,), (256,), (b["pos"], np.int32(R)))
            graph = stream.end_capture()

        def replay(n: int = 1) -> None:
            for _ in range(n):
                graph.launch(stream)
            for s in slots:
                self.lens[s] += n

        replay.stream = stream  # type: ignore[attr-defined]
        return replay
