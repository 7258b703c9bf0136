"""``SessionStore``: KV caches stored as token sequences, deduplicated through a shared trie,
with hot / warm / cold storage tiers under a memory budget.

``put(session_id, tokens)`` looks the tokens up in the trie. The longest prefix another
stored session already holds is stored as a **reference** (0 bits: the owning session's
number and the prefix length; the trie node is pinned while referenced); only the tail is
coded, by the store's codec (``lm`` by default, conditioned on the prefix as context). The
tokens then go into the trie (values: per-token handles ``session_number << 32 | position``,
log-probabilities from the model when the codec computed them), so later sessions dedupe
against them.

Tiers
-----
Every session lives in the **cold** tier: its record (container, metadata, optional residual)
is written to the backend at ``put`` and stays there until the session is deleted. Above it,
within ``capacity_bytes`` of memory (placement decided by :class:`seqkv.store.tiers.Tiers`, LRU or the
``plt`` policy):

* **hot**: the KV itself, in fixed-size pages (``page_tokens`` positions, 16 by default) of a
  pool indexed by a radix trie over token ids (:class:`seqkv.store.pages.HotPrefixIndex`, as SGLang's
  ``RadixCache``): the full pages of a prefix several hot sessions share (a system prompt, the
  earlier turns of a chat) are stored **once** and refcounted through the trie's pins, and
  only when their bits equal the KV each session brought (always with ``engine=``; a session
  whose prefix KV differs in the last bits keeps its own pages from there on). A session's
  last partial page is its own. Each shared page is charged to one hot session using it (the
  most recently used), so the hot tier's bytes are the bytes really held;
* **warm**: the KV quantized per vector, TurboQuant-like 3 bits per component plus an f32 norm
  per vector (:class:`seqkv.kv.quantizers.TurboQuant`; quantized on the GPU through
  :mod:`seqkv.kv.gpu` when the cache lives there).

Demotion (hot → warm → cold) happens when the budget is exceeded; promotion on access (a
``get`` that found a session warm or cold keeps the restored KV hot when it fits). A session is
never lost by demotion: the worst case is a cold restore from its tokens.

``get(session_id)`` serves from the hottest tier present:

* ``mode="faithful"``: the hot copy, else the warm codes dequantized (lossy: about 3 bits per
  component), else one prefill over the decoded tokens;
* ``mode="exact"``: a hot copy only when it is the recorded KV itself (never warm KV); else the
  KV is recomputed, replaying the compute schedule recorded at ``put``, and checked against
  the per-layer hashes recorded then (BLAKE2b of each layer's K and V bytes). When they differ
  and ``put(..., residual=True)`` kept the residual between the original and the recomputed
  KV, it is applied and the result checked again; otherwise
  :class:`~seqkv.errors.NumericsMismatchError`.

With ``engine=`` (a :class:`seqkv.engine.cpu.Engine`, or ``"auto"`` for Llama-family models) every
KV the store computes comes from the batch-invariant engine: one prefill gives the same bits as
any schedule, so exact restores match with a zero residual.

``get_prefix(tokens)`` serves a new request: the longest prefix of ``tokens`` the hot tier holds
(one match in the hot index's trie), or a longer one a warm session holds, or else the longest
stored prefix restored from the cold tier; the caller prefills only the rest.

Records live in a :class:`~seqkv.backends.Backend` (in memory by default; SQLite or Redis
with ``backend="store.sqlite"`` / ``"redis://..."``): the container is the codec's stream, the
metadata (keys listed in :data:`META_KEYS`) carries the reference, schedule and hashes, the
attachment ``"residual"`` the exact-mode residual. With a persistent backend the trie snapshot
is written with every ``put`` (blob ``"trie"``), and a store opened on an existing backend picks
up its sessions (cold) and trie.

Thread safety: every method may be called from many threads at once. Locks, always taken in
this order: the bookkeeping lock (sessions, references), then the tier lock (placement and the
in-memory KV), then the hot index's own lock; model work runs outside all of them (under a
model lock for transformers; the engine needs none), and so do dequantizing warm KV, copying a
hot session's pages out (the pages are pinned while they are read) and writing a new
session's pages at ``put``.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codecs.base import TOKEN_DTYPE, as_tokens, common_prefix_length, run_lengths
from ..errors import InvalidInputError, NumericsMismatchError, SessionNotFoundError, StoreError
from .pages import DEFAULT_PAGE_TOKENS, HotPrefixIndex

__all__ = ["SessionStore", "META_KEYS", "TIER_NAMES"]

#: Metadata keys a SessionStore writes into each record.
META_KEYS = (
    "v",  # record layout version (1)
    "number",  # the session's number (trie handles, references)
    "tokens",  # token count
    "prefix",  # tokens taken from the parent by reference
    "parent",  # parent session number, or None
    "codec",  # codec name of the container
    "schedule",  # run-length compute schedule [[size, repeat], ...]
    "hashes",  # per-layer KV hashes, hex (empty if not recorded)
    "payload_bits",  # coded payload bits of the container
    "container_bytes",  # bytes of the container
    "residual_bytes",  # bytes of the "residual" attachment (0: none kept)
    "kv_source",  # what computed the recorded KV: "given", "transformers" or "seqkv-engine"
    "hidden",  # deleted but still referenced by other sessions
    "sid",  # the user's session id
    "tokens_crc32c",  # checksum of the session's tokens
)

#: The tier names a SessionStore knows, hottest first.
TIER_NAMES = ("hot", "warm", "cold")

_HIDDEN_PREFIX = "__seqkv_hidden__/"
_STORE_BLOB = "store"
_TRIE_BLOB = "trie"
_RESIDUAL = "residual"
_POS_BITS = 32
_WARM_BITS = 3


def _unrle(runs: list[list[int]]) -> tuple[int, ...]:
    out: list[int] = []
    for size, repeat in runs:
        out.extend([int(size)] * int(repeat))
    return tuple(out)


def _key(number: int) -> str:
    """The tier manager's key of a session number (numbers are never reused, ids may be)."""
    return f"#{number}"


@dataclass
class _Entry:
    sid: str
    number: int
    key: str
    n_tokens: int
    prefix: int
    parent: int | None
    codec: str
    schedule: tuple[int, ...]
    hashes: list[bytes]
    payload_bits: int
    container_bytes: int
    record_bytes: int
    residual_bytes: int = 0
    kv_source: str = ""
    hidden: bool = False
    refs: int = 0
    pin: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _QTensor:
    """One K or V tensor in the warm tier: bit-packed codes, an f32 norm per vector and, for keys,
    the f32 per-channel mean over the positions that was subtracted before quantizing."""

    packed: np.ndarray
    norms: np.ndarray
    shape: tuple[int, ...]
    mean: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.norms.nbytes + (0 if self.mean is None else self.mean.nbytes))


@dataclass(frozen=True)
class _WarmKV:
    """A session's KV in the warm tier (immutable: read without the tier lock)."""

    layers: tuple[tuple[_QTensor, _QTensor], ...]
    dtype: Any
    device: Any
    length: int

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


@dataclass
class _HotKV:
    """A session's KV in the hot tier: its :class:`~seqkv.store.pages.HotHandle` in the store's
    :class:`~seqkv.store.pages.HotPrefixIndex` (pages shared with other hot sessions, plus a private
    part). ``kind``: ``"exact"`` (the recorded KV: its hashes match), ``"faithful"`` (one prefill)
    or ``"quantized"`` (dequantized warm KV, never shared; ``codes`` keeps the warm form so that a
    later demotion does not quantize twice)."""

    handle: Any
    kind: str
    codes: _WarmKV | None = None

    @property
    def nbytes(self) -> int:
        """Bytes charged to the session in the hot tier: its handle's charge (its private part and
        the shared pages it pays for) plus the warm codes it keeps."""
        return self.handle.charge + (self.codes.nbytes if self.codes is not None else 0)


@dataclass
class _Built:
    """A cache built by a ``get`` and what it is, offered to the tier manager for promotion."""

    tokens: np.ndarray
    cache: Any
    kind: str
    codes: _WarmKV | None = None


def _slice_cache(model: Any, cache: Any, n: int) -> Any:
    """A copy of the first ``n`` positions of ``cache``."""
    from ..integrations import transformers as hf

    return hf.cache_from_layers(model, [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in hf.cache_layers(cache)])


class _WarmCodec:
    """TurboQuant-like per-vector (3 bits by default) quantization of whole caches (the warm tier's form).

    The quantizer is :class:`seqkv.kv.quantizers.TurboQuant` (seeded random signs, Walsh-Hadamard
    rotation, Lloyd-Max codebook of the Gaussian, an f32 norm per vector). A cache on a GPU is
    quantized by its CUDA kernel (:mod:`seqkv.kv.gpu`); on the CPU the rotation runs as a torch
    matmul with the ±1 Hadamard matrix (the same transform, in another summation order), which
    is much faster than the butterfly reference. Codes are packed 8 to ``bits`` bytes.

    Keys are centred per channel first (the mean over the session's positions, kept in f32):
    keys carry large per-channel offsets (the outlier channels KIVI quantizes per channel), which
    a per-vector quantizer would otherwise spend its levels on. On SmolLM2 this cuts the keys'
    relative error about 2.7× at 3 and 4 bits and lengthens the greedy continuations that match
    the unquantized cache's (4 bits: 40% → 64% of 16-token continuations' tokens before the first
    difference). Values are left as they are (centring them measured worse)."""

    def __init__(self, head_dim: int, bits: int = _WARM_BITS):
        import torch

        from ..kv.quantizers import TurboQuant, fwht

        self.bits = int(bits)
        self.tq = TurboQuant(head_dim, bits=self.bits, seed=0)
        self.hadamard = torch.from_numpy(fwht(np.eye(head_dim, dtype=np.float32)))  # y @ H = fwht(y)
        self.signs = torch.from_numpy(self.tq.signs)
        self.boundaries = torch.from_numpy(self.tq.boundaries)
        self.centroids = torch.from_numpy(self.tq.centroids)
        self.out_scale = self.signs * float(self.tq.inv_d)

    def nbytes(self, n_vectors: int, dim: int, means: int = 0) -> int:
        """Bytes of one tensor of ``n_vectors`` vectors of ``dim`` in the warm form, with ``means``
        per-channel mean vectors (one per head for keys, none for values)."""
        return (n_vectors * dim + 7) // 8 * self.bits + 4 * n_vectors + 4 * dim * means

    def _pack(self, codes: np.ndarray) -> np.ndarray:
        """Codes (< 2^bits) packed 8 to ``bits`` bytes (little-endian groups)."""
        b = self.bits
        c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
        pad = (-c.size) % 8
        if pad:
            c = np.concatenate([c, np.zeros(pad, np.uint8)])
        g = c.reshape(-1, 8).astype(np.uint32)
        v = np.zeros(g.shape[0], np.uint32)
        for j in range(8):
            v |= g[:, j] << np.uint32(b * j)
        return np.ascontiguousarray(v.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :b]).reshape(-1)

    def _unpack(self, packed: np.ndarray, count: int) -> np.ndarray:
        b = self.bits
        rows = packed.reshape(-1, b).astype(np.uint32)
        v = np.zeros(rows.shape[0], np.uint32)
        for i in range(b):
            v |= rows[:, i] << np.uint32(8 * i)
        out = np.empty((v.size, 8), np.uint8)
        mask = np.uint32((1 << b) - 1)
        for j in range(8):
            out[:, j] = (v >> np.uint32(b * j)) & mask
        return out.reshape(-1)[:count]

    def _quantize(self, t: Any, center: bool = False) -> _QTensor:
        import torch

        from ..cuda import runtime as cuda_runtime
        from ..kv import gpu as kvgpu

        mean = None
        if center:
            m = t.float().mean(dim=-2, keepdim=True)
            t = t.float() - m
            mean = np.ascontiguousarray(m.detach().cpu().numpy(), dtype=np.float32)
        if cuda_runtime.is_device_array(t):
            q = self.tq.quantize(t)  # the CUDA kernel; codes and norms to the host
            codes, norms = q.codes.get(), q.norms.get()
        else:
            with torch.inference_mode():
                y = (t.detach().float() * self.signs) @ self.hadamard
                r = torch.linalg.vector_norm(y, dim=-1)
                u = torch.where(r[..., None] > 0, y / r[..., None], torch.zeros((), dtype=y.dtype))
                codes = torch.bucketize(u, self.boundaries).to(torch.uint8).numpy()
                norms = r.numpy()
        return _QTensor(self._pack(codes), np.ascontiguousarray(norms, dtype=np.float32), tuple(t.shape), mean)

    def quantize(self, cache: Any) -> _WarmKV:
        from ..integrations import transformers as hf

        layers = hf.cache_layers(cache)
        k0 = layers[0][0]
        return _WarmKV(
            tuple((self._quantize(k, center=True), self._quantize(v)) for k, v in layers),
            k0.dtype,
            k0.device,
            int(k0.shape[-2]),
        )

    def _dequantize(self, q: _QTensor, n: int, dtype: Any, device: Any) -> Any:
        import torch

        count = int(np.prod(q.shape))
        codes = torch.from_numpy(self._unpack(q.packed, count).reshape(q.shape)[..., :n, :].astype(np.int64))
        norms = torch.from_numpy(q.norms[..., :n])
        with torch.inference_mode():
            y = self.centroids[codes] * norms[..., None]
            x = (y @ self.hadamard) * self.out_scale
            if q.mean is not None:
                x = x + torch.from_numpy(q.mean)
        return x.to(dtype=dtype, device=device)

    def dequantize(self, model: Any, warm: _WarmKV, n: int | None = None) -> Any:
        """A ``DynamicCache`` of the first ``n`` positions (default all), in the original dtype."""
        from ..integrations import transformers as hf

        n = warm.length if n is None else n
        return hf.cache_from_layers(
            model,
            [(self._dequantize(k, n, warm.dtype, warm.device), self._dequantize(v, n, warm.dtype, warm.device))
             for k, v in warm.layers],
        )


def _resolve_engine(model: Any, engine: Any) -> Any:
    if engine is None:
        return None
    if isinstance(engine, str):
        if engine != "auto":
            raise InvalidInputError(f"engine must be an Engine, 'auto' or None, not {engine!r}")
        from ..engine.cpu import Engine, unsupported_reason

        param = next(iter(model.parameters()))
        if unsupported_reason(model) is not None or param.device.type != "cpu":
            return None  # not a model the engine runs; or a GPU model, which computes its own KV
        import torch

        # f32 weights for an f32 model: the engine's KV then agrees with the model's to ~1e-4
        return Engine.for_model(model, dtype="f32" if param.dtype == torch.float32 else "bf16")
    if not (hasattr(engine, "new_sequence") and hasattr(engine, "prefill")):
        raise InvalidInputError(f"engine must be a seqkv.engine.cpu.Engine, not {type(engine).__name__}")
    return engine


class SessionStore:
    """Store sessions' KV caches as tokens, with in-memory tiers (see the module doc).

    Parameters
    ----------
    model:
        the transformers causal LM whose caches are stored (and, for ``lm``, the coding model).
    codec:
        ``"lm"`` (default), ``"lm-robust"``, ``"plt"``, ``"raw"``, or a codec instance.
    trie:
        a :class:`~seqkv.Trie` to share (a new one by default).
    tokenizer:
        passed to the codec (chooses ``lm``'s start token).
    backend:
        a :class:`~seqkv.backends.Backend`, or a path/URL for :func:`~seqkv.backends.open_backend`.
    namespace:
        the trie namespace of this store's sessions (kept in the backend; default: a new UUID).
    keep_kv:
        put each session's KV into memory (the first tier of ``tiers``) at ``put``; default: on
        when ``capacity_bytes`` is given. ``put(keep_kv=...)`` overrides per session.
    record_hashes:
        compute the session's KV at ``put`` (replaying its schedule) and record per-layer hashes
        for ``mode="exact"``.
    token_cache:
        decoded sessions kept in memory (prefix references are resolved through it).
    capacity_bytes:
        bytes of KV the in-memory tiers (hot and warm) may hold together; ``None``: unbounded
        (nothing is demoted).
    tiers:
        the tiers to use, hottest first: an ordered subset of ``("hot", "warm", "cold")`` ending
        with ``"cold"`` (e.g. ``("hot", "cold")`` for no quantized tier). Default: all three, or
        ``("hot", "cold")`` for a model whose head dimension the warm quantizer cannot take (not
        a power of two).
    policy:
        demotion policy of the tier manager: ``"lru"`` or ``"plt"`` (reuse-weighted, see
        :mod:`seqkv.store.tiers`).
    tier_limits:
        optional per-tier caps in bytes within ``capacity_bytes`` (e.g. ``{"hot": 1 << 30}``).
        Default with a warm tier and a capacity: hot may take at most 3/4 of the capacity, so
        that demoted sessions find room in the warm tier (a hot tier filling the whole budget
        would push every demoted session straight to cold).
    warm_bits:
        bits per component of the warm tier's codes: 2, 3 (default) or 4 (plus an f32 norm per
        vector either way).
    engine:
        a :class:`seqkv.engine.cpu.Engine` that computes every KV the store builds (hashes at put,
        restores), or ``"auto"``: one built from ``model`` when it is a Llama-family model on the
        CPU (f32 weights for an f32 model), else none.
    page_tokens:
        positions per page of the hot tier's KV pool (default 16): sessions share whole pages of
        a common prefix (see :mod:`seqkv.store.pages`); a session's last partial page is its own.
    codec_options:
        forwarded to ``seqkv.codecs.get``.

    Raises :class:`~seqkv.errors.InvalidInputError` for bad arguments (unknown tiers, a negative
    capacity, a warm tier for a head dimension that is not a power of two).
    """

    def __init__(
        self,
        model: Any,
        codec: Any = "lm",
        trie: Any = None,
        tokenizer: Any = None,
        *,
        backend: Any = None,
        namespace: str | None = None,
        keep_kv: bool | None = None,
        record_hashes: bool = True,
        token_cache: int = 64,
        capacity_bytes: int | None = None,
        tiers: Any = None,
        policy: str = "lru",
        tier_limits: Any = None,
        warm_bits: int = _WARM_BITS,
        engine: Any = None,
        page_tokens: int = DEFAULT_PAGE_TOKENS,
        **codec_options: Any,
    ):
        from .. import codecs
        from ..backends import MemoryBackend, open_backend
        from ..integrations.models import vocab_size
        from .tiers import Tiers

        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size(model)
        self._layout = self._kv_layout(model)
        head_dim = self._layout[2]
        warm_ok = 0 < head_dim <= 1024 and not head_dim & (head_dim - 1)
        if tiers is None:
            tiers = TIER_NAMES if warm_ok else ("hot", "cold")
        tiers = tuple(tiers) if isinstance(tiers, (tuple, list)) else tiers
        if (
            not isinstance(tiers, tuple)
            or len(tiers) < 2
            or tiers[-1] != "cold"
            or any(t not in TIER_NAMES for t in tiers)
            or list(tiers) != sorted(set(tiers), key=TIER_NAMES.index)
        ):
            raise InvalidInputError(
                f"tiers must be an ordered subset of {TIER_NAMES} ending with 'cold', got {tiers!r}"
            )
        if capacity_bytes is not None and (
            not isinstance(capacity_bytes, int) or isinstance(capacity_bytes, bool) or capacity_bytes < 0
        ):
            raise InvalidInputError(f"capacity_bytes must be an int >= 0 or None, not {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        if tier_limits is None and capacity_bytes is not None and "warm" in tiers and "hot" in tiers:
            tier_limits = {"hot": capacity_bytes * 3 // 4}
        self._tiers = Tiers(
            sys.maxsize if capacity_bytes is None else capacity_bytes, policy, tiers=tiers, limits=tier_limits
        )
        self._warm_codec: _WarmCodec | None = None
        if "warm" in tiers:
            if not warm_ok:
                raise InvalidInputError(
                    f"the warm tier quantizes vectors of a power-of-two length <= 1024; this model's head "
                    f"dim is {head_dim}: use tiers=('hot', 'cold')"
                )
            if warm_bits not in (2, 3, 4) or isinstance(warm_bits, bool):
                raise InvalidInputError(f"warm_bits must be 2, 3 or 4, not {warm_bits!r}")
            self._warm_codec = _WarmCodec(head_dim, warm_bits)
        self.engine = _resolve_engine(model, engine)
        self._codec_options = dict(codec_options)
        self.codec: Any = codecs.get(codec, **self._codec_kwargs(codec)) if isinstance(codec, str) else codec
        self._codecs: dict[str, Any] = {self.codec.name: self.codec}
        if trie is None:
            from ..trie import Trie

            trie = Trie()
        self.trie = trie
        self.backend = MemoryBackend() if backend is None else open_backend(backend)
        self._persist = not isinstance(self.backend, MemoryBackend)
        self.keep_kv = (capacity_bytes is not None) if keep_kv is None else bool(keep_kv)
        self.record_hashes = bool(record_hashes)
        self._lock = threading.RLock()
        self._tier_lock = threading.RLock()
        self._model_lock = threading.RLock()
        self._sessions: dict[str, _Entry] = {}
        self._by_number: dict[int, _Entry] = {}
        self._hot: dict[int, _HotKV] = {}
        self._hot_index: HotPrefixIndex | None = None
        if "hot" in tiers:
            if not isinstance(page_tokens, int) or isinstance(page_tokens, bool) or not 1 <= page_tokens <= 4096:
                raise InvalidInputError(f"page_tokens must be an int in 1..4096, not {page_tokens!r}")
            self._hot_index = HotPrefixIndex.for_model(model, page_tokens)
        self.page_tokens = page_tokens
        self._warm: dict[int, _WarmKV] = {}
        self._mem_tokens: dict[int, np.ndarray] = {}  # tokens of the sessions in hot/warm
        self._hits = dict.fromkeys(TIER_NAMES, 0)
        self._tokens: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._token_cache = max(0, int(token_cache))
        self._next_number = 1
        self.namespace = namespace
        self._load()

    # -- construction helpers -----------------------------------------------------------

    @staticmethod
    def _kv_layout(model: Any) -> tuple[int, int, int, int]:
        """``(layers, kv heads, head dim, bytes per component)`` of the model's KV cache."""
        config = model.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        param = next(iter(model.parameters()))
        return int(config.num_hidden_layers), heads, dim, int(param.element_size())

    def _tier_sizes(self, n_tokens: int, record_bytes: int) -> dict[str, int]:
        layers, heads, dim, elem = self._layout
        sizes = {"cold": int(record_bytes)}
        if "hot" in self._tiers.tiers:
            sizes["hot"] = n_tokens * layers * 2 * heads * dim * elem
        if self._warm_codec is not None:
            wc = self._warm_codec
            sizes["warm"] = layers * (wc.nbytes(heads * n_tokens, dim, means=heads) + wc.nbytes(heads * n_tokens, dim))
        return sizes

    def _codec_kwargs(self, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self._codec_options)
        kwargs.setdefault("model", self.model)
        if name in ("lm", "lm-robust"):
            kwargs.setdefault("tokenizer", self.tokenizer)
            kwargs.setdefault("profile", "digest")  # the full profile is kept once, in the "store" blob
        elif name in ("raw", "plt"):
            kwargs = {k: v for k, v in kwargs.items() if k in ("model", "vocab_size", "block_tokens", "order")}
        return kwargs

    def _codec_for(self, name: str) -> Any:
        from .. import codecs

        codec = self._codecs.get(name)
        if codec is None:
            codec = codecs.get(name, **self._codec_kwargs(name))
            self._codecs[name] = codec
        return codec

    def _load(self) -> None:
        """Pick up the sessions (and trie) of an existing backend; they start in the cold tier."""
        config = self.backend.get_blob(_STORE_BLOB)
        if config is not None:
            try:
                stored = json.loads(config)
            except ValueError as exc:
                raise StoreError(f"the backend's store config blob is unreadable: {exc}") from exc
            if self.namespace is not None and self.namespace != stored.get("namespace"):
                raise InvalidInputError(
                    f"the backend holds sessions of trie namespace {stored.get('namespace')!r}, not {self.namespace!r}"
                )
            self.namespace = stored.get("namespace")
        if self.namespace is None:
            self.namespace = f"seqkv-store:{uuid.uuid4()}"
        if config is None:
            from ..integrations.models import numerics_profile

            info = {"namespace": self.namespace, "v": 1, "numerics_profile": numerics_profile(self.model)}
            self.backend.put_blob(_STORE_BLOB, json.dumps(info, sort_keys=True).encode())
        ids = self.backend.ids()
        if not ids:
            return
        trie_blob = self.backend.get_blob(_TRIE_BLOB)
        if trie_blob is not None and len(self.trie) == 0:
            from ..trie import Trie

            self.trie = Trie.restore(trie_blob)
        for key in ids:
            meta = self.backend.get_meta(key)
            if meta.get("v") != 1 or "number" not in meta:
                continue
            entry = _Entry(
                sid=str(meta.get("sid", key)),
                number=int(meta["number"]),
                key=key,
                n_tokens=int(meta["tokens"]),
                prefix=int(meta["prefix"]),
                parent=None if meta.get("parent") is None else int(meta["parent"]),
                codec=str(meta["codec"]),
                schedule=_unrle(meta.get("schedule", [])),
                hashes=[bytes.fromhex(h) for h in meta.get("hashes", [])],
                payload_bits=int(meta.get("payload_bits", 0)),
                container_bytes=int(meta.get("container_bytes", 0)),
                record_bytes=int(meta.get("record_bytes", 0)) or self.backend.size(key),
                residual_bytes=int(meta.get("residual_bytes", 0)),
                kv_source=str(meta.get("kv_source", "")),
                hidden=bool(meta.get("hidden", False)),
            )
            self._by_number[entry.number] = entry
            if not entry.hidden:
                self._sessions[entry.sid] = entry
                self._tiers.add(_key(entry.number), "cold", sizes=self._tier_sizes(entry.n_tokens, entry.record_bytes))
            self._next_number = max(self._next_number, entry.number + 1)
        for entry in self._by_number.values():
            if entry.parent is not None and entry.parent in self._by_number:
                self._by_number[entry.parent].refs += 1

    # -- the mapping interface ----------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return isinstance(session_id, str) and session_id in self._sessions

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def _entry(self, session_id: str) -> _Entry:
        entry = self._sessions.get(session_id)
        if entry is None:
            raise SessionNotFoundError(f"no session {session_id!r} in this store")
        return entry

    @staticmethod
    def _check_id(session_id: Any) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session ids are non-empty strings, got {session_id!r}")
        if session_id.startswith(_HIDDEN_PREFIX):
            raise InvalidInputError(f"session ids may not start with {_HIDDEN_PREFIX!r}")
        return session_id

    # -- computing KV ---------------------------------------------------------------------

    @property
    def kv_source(self) -> str:
        """What computes the KV this store rebuilds: ``"seqkv-engine"`` or ``"transformers"``."""
        return "seqkv-engine" if self.engine is not None else "transformers"

    def _compute(self, toks: np.ndarray, schedule: Any) -> Any:
        """The KV of ``toks``: through the engine (one prefill: its bits do not depend on the
        schedule), else through the model chunk by chunk as ``schedule`` says (``None``: one
        prefill)."""
        from ..integrations import transformers as hf

        if self.engine is not None:
            seq = self.engine.new_sequence()
            self.engine.prefill(seq, toks, logits="none")
            param = next(iter(self.model.parameters()))
            return seq.kv_cache(dtype=param.dtype, device=param.device, config=self.model.config)
        with self._model_lock:
            cache, _ = hf.compute_cache(self.model, toks, schedule)
        return cache

    # -- put ------------------------------------------------------------------------------

    def _match(self, toks: np.ndarray) -> tuple[int, int | None]:
        """(prefix length, owner number) of the longest stored prefix whose owner is alive."""
        if toks.size == 0:
            return 0, None
        m = self.trie.match_prefix(toks, namespace=self.namespace)
        values = np.asarray(m.values, dtype=np.uint64)
        for length in range(int(m.length), 0, -1):
            owner = int(values[length - 1]) >> _POS_BITS
            if owner in self._by_number:
                return length, owner
        return 0, None

    def put(
        self,
        session_id: str,
        tokens: Any,
        *,
        schedule: Any = None,
        keep_kv: bool | None = None,
        kv: Any = None,
        residual: bool = False,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Store a session; returns a summary (tokens, prefix, coded tokens, bits, bytes, tier).

        ``schedule``: the chunk sizes the session's KV was computed with (default: one
        prefill), replayed by ``get(mode="exact")``. ``kv``: the session's own cache (it must
        hold exactly ``tokens``), hashed instead of recomputing it and, with ``keep_kv``, kept
        in memory (copied). ``residual=True`` (needs ``kv``): also store the residual between
        ``kv`` and the KV an exact restore recomputes, so that ``get(mode="exact")`` returns
        ``kv``'s bits even when the recompute differs (another schedule, engine or device).
        Replacing an existing id deletes the old session first. ``progress(n)`` is called as
        tokens are coded.

        Raises :class:`InvalidInputError` (bad id, tokens, schedule, kv, or ``residual``
        without ``kv``), :class:`StoreError` when the backend fails.
        """
        from ..coding import container
        from ..integrations import transformers as hf
        from ..kv import residual as residual_coding

        sid = self._check_id(session_id)
        toks = as_tokens(tokens, self.vocab_size)
        sched = hf.normalize_schedule(schedule, int(toks.size))
        keep = self.keep_kv if keep_kv is None else bool(keep_kv)
        if kv is not None and hf.cache_length(kv) != toks.size:
            raise InvalidInputError(f"kv holds {hf.cache_length(kv)} positions, tokens {toks.size}")
        if residual and kv is None:
            raise InvalidInputError("residual=True needs the session's original kv (put(..., kv=cache))")
        if residual and toks.size == 0:
            raise InvalidInputError("residual=True needs a non-empty session")
        t0 = time.perf_counter()
        with self._lock:
            if sid in self._sessions:
                self._delete_locked(sid)
            prefix_len, parent = self._match(toks)
            if parent is not None:
                self._by_number[parent].refs += 1  # reserved: the parent cannot go while we code
            number = self._next_number
            self._next_number += 1
        handle = None  # the KV kept hot (the index copies it into its pages)
        try:
            prefix = toks[:prefix_len]
            tail = toks[prefix_len:]
            with self._model_lock:
                data, stats = self.codec.encode_with_stats(tail, context=prefix, progress=progress)
            cache = kv
            kv_source = "given" if kv is not None else self.kv_source
            hashes: list[bytes] = []
            attachments: dict[str, bytes] = {}
            if (self.record_hashes or keep) and cache is None and toks.size:
                cache = self._compute(toks, sched)
            if (self.record_hashes or residual) and cache is not None:
                hashes = hf.layer_hashes(cache)
            if residual:
                recomputed = self._compute(toks, sched)
                pairs = [pair for layer in zip(hf.cache_layers(kv), hf.cache_layers(recomputed))
                         for pair in zip(*layer)]
                attachments[_RESIDUAL] = residual_coding.encode(pairs)
            log2p = stats.extra.get("token_log2p")
            kept = kv if kv is not None else cache
            if keep and toks.size and kept is not None and self._hot_index is not None and self._tiers.tiers[0] == "hot":
                handle = self._hot_index.insert(toks, kept, owner=number)
            with self._lock:
                if sid in self._sessions:  # another put of the same id finished while we coded
                    self._delete_locked(sid)
                values = (np.uint64(number) << np.uint64(_POS_BITS)) | np.arange(toks.size, dtype=np.uint64)
                logprobs = None
                if isinstance(log2p, np.ndarray) and log2p.size == tail.size:
                    logprobs = np.concatenate([np.zeros(prefix_len), log2p * np.log(2.0)])
                if toks.size:
                    self.trie.insert(toks, values=values, logprobs=logprobs, namespace=self.namespace)
                pin = None
                if prefix_len:
                    node = self.trie.match_prefix(prefix, namespace=self.namespace).node
                    pin = self.trie.pin(node)
                key = sid
                residual_bytes = len(attachments.get(_RESIDUAL, b""))
                meta = {
                    "v": 1,
                    "sid": sid,
                    "number": number,
                    "tokens": int(toks.size),
                    "prefix": int(prefix_len),
                    "parent": parent,
                    "codec": self.codec.name,
                    "schedule": run_lengths(sched),
                    "hashes": [h.hex() for h in hashes],
                    "payload_bits": int(stats.payload_bits),
                    "container_bytes": len(data),
                    "residual_bytes": residual_bytes,
                    "kv_source": kv_source,
                    "tokens_crc32c": container.tokens_checksum(toks),
                }
                from ..backends import SessionRecord

                record = SessionRecord(container=data, meta=meta, attachments=attachments)
                blobs = {_TRIE_BLOB: self.trie.snapshot()} if self._persist else None
                self.backend.put(key, record, blobs=blobs)
                entry = _Entry(
                    sid=sid,
                    number=number,
                    key=key,
                    n_tokens=int(toks.size),
                    prefix=int(prefix_len),
                    parent=parent,
                    codec=self.codec.name,
                    schedule=sched,
                    hashes=hashes,
                    payload_bits=int(stats.payload_bits),
                    container_bytes=len(data),
                    record_bytes=record.nbytes,
                    residual_bytes=residual_bytes,
                    kv_source=kv_source,
                    pin=pin,
                )
                self._sessions[sid] = entry
                self._by_number[number] = entry
                self._remember_tokens(number, toks)
                parent_entry = self._by_number.get(parent) if parent is not None else None
                with self._tier_lock:
                    self._place_new(entry, toks, kept if keep else None, handle)
                    handle = None  # placed: the tiers own it now
                    if parent_entry is not None and not parent_entry.hidden:
                        self._rescore(parent_entry)
                    tier = self._tiers.tier_of(_key(number))
        except BaseException:
            with self._lock:
                if parent is not None and parent in self._by_number:
                    self._release_ref(parent)
            if handle is not None:
                with self._tier_lock:
                    self._release_hot(handle)
            raise
        return {
            "session_id": sid,
            "tokens": int(toks.size),
            "prefix_tokens": int(prefix_len),
            "coded_tokens": int(tail.size),
            "payload_bits": int(stats.payload_bits),
            "container_bytes": len(data),
            "record_bytes": entry.record_bytes,
            "residual_bytes": entry.residual_bytes,
            "cross_entropy_bits": stats.cross_entropy_bits,
            "tier": tier,
            "seconds": time.perf_counter() - t0,
        }

    # -- tier placement (everything below runs under the tier lock) -----------------------

    def _place_new(self, entry: _Entry, toks: np.ndarray, cache: Any, handle: Any = None) -> None:
        """Track a new session: in the first tier with ``cache`` (hot: ``handle``, its KV in the
        hot index), or cold without it."""
        key = _key(entry.number)
        sizes = self._tier_sizes(entry.n_tokens, entry.record_bytes)
        first = self._tiers.tiers[0]
        if cache is None or first == "cold" or entry.n_tokens == 0:
            if handle is not None:
                self._release_hot(handle)
            self._apply(self._tiers.add(key, "cold", sizes=sizes))
            return
        self._mem_tokens[entry.number] = toks
        if first == "hot":
            assert handle is not None and self._hot_index is not None
            hot = _HotKV(handle, "exact")
            self._hot[entry.number] = hot
            for other in self._hot_index.touch(handle):  # the new session pays; the others pay less
                if other is not handle:
                    self._sync_size(other.owner, "hot", 0)
            sizes["hot"] = hot.nbytes
            self._apply(self._tiers.add(key, first, sizes=sizes))
            return
        else:
            assert self._warm_codec is not None
            warm = self._warm_codec.quantize(cache)
            sizes["warm"] = warm.nbytes
            self._warm[entry.number] = warm
        self._apply(self._tiers.add(key, first, sizes=sizes))

    def _rescore(self, entry: _Entry) -> None:
        """The ``plt`` policy's reuse estimate: tokens a restore of this session saves, times the
        sessions that reference it (plus one for itself)."""
        key = _key(entry.number)
        if key in self._tiers:
            self._tiers.set_score(key, float(entry.n_tokens * (1 + entry.refs)) / 1024.0)

    def _apply(self, moves: list[Any], built: _Built | None = None) -> None:
        """Carry out the tier manager's moves (demotions first, then the accessed entry's
        promotion, which installs ``built``), then report the real sizes of the entries that
        moved (which may demote others: carried out the same way)."""
        rank = TIER_NAMES.index
        sizes: list[tuple[int, str, int]] = []
        for move in moves:
            number = int(move.session_id[1:])
            if rank(move.to_tier) < rank(move.from_tier):
                sizes.extend(self._promote(number, move.from_tier, move.to_tier, built))
            else:
                sizes.extend(self._demote(number, move.from_tier, move.to_tier))
        for number, tier, nbytes in sizes:
            self._sync_size(number, tier, nbytes)

    def _demote(self, number: int, frm: str, to: str) -> list[tuple[int, str, int]]:
        codes: _WarmKV | None = None
        sizes: list[tuple[int, str, int]] = []
        if frm == "hot":
            assert self._hot_index is not None
            hot = self._hot.pop(number)
            if to == "warm":
                assert self._warm_codec is not None
                codes = hot.codes if hot.codes is not None else self._warm_codec.quantize(self._hot_index.gather(hot.handle))
            sizes = self._release_hot(hot.handle, sync=False)
            # its hot charge may have been small (others paid for its shared pages): estimate a
            # later promotion at a copy of all its KV, which it pays for once it is used again
            sizes.append((number, "hot", self._hot_index.pool.token_bytes * hot.handle.n))
        elif frm == "warm":
            self._warm.pop(number)
        if codes is not None:
            self._warm[number] = codes
            return [(number, "warm", codes.nbytes), *sizes]
        self._mem_tokens.pop(number, None)
        return sizes

    def _touch_hot(self, number: int) -> None:
        """Make a hot session the payer of the shared pages it uses (the most recently used
        session pays, see :mod:`seqkv.store.pages`) and report the charges that moved."""
        hot = self._hot.get(number)
        if hot is None or self._hot_index is None:
            return
        changed = self._hot_index.touch(hot.handle)
        for heir in sorted(changed, key=lambda h: h is hot.handle):  # decreases first
            self._sync_size(heir.owner, "hot", 0)

    def _release_hot(self, handle: Any, *, sync: bool = True) -> list[tuple[int, str, int]]:
        """Release a hot handle: the pages it alone used are freed, and the pages it paid for
        that other hot sessions still use are charged to one of them. Returns those sessions'
        new hot sizes (``sync``: reported to the tier manager right away)."""
        assert self._hot_index is not None
        sizes = []
        for heir in self._hot_index.release(handle):
            hot = self._hot.get(heir.owner)
            if hot is not None and hot.handle is heir:
                sizes.append((heir.owner, "hot", hot.nbytes))
        if sync:
            for number, tier, nbytes in sizes:
                self._sync_size(number, tier, nbytes)
        return sizes

    def _promote(self, number: int, frm: str, to: str, built: _Built | None) -> list[tuple[int, str, int]]:
        if built is None:  # pragma: no cover - only the accessed entry is promoted, with its cache
            self._apply(self._tiers.place(_key(number), frm))
            return []
        self._mem_tokens[number] = built.tokens
        if to == "hot":
            codes = self._warm.pop(number, None) if frm == "warm" else None
            if built.kind == "quantized":
                codes = built.codes or codes
            else:
                codes = None
            assert self._hot_index is not None
            handle = self._hot_index.insert(built.tokens, built.cache, owner=number, share=built.kind != "quantized")
            hot = _HotKV(handle, built.kind, codes)
            self._hot[number] = hot
            return [(number, "hot", hot.nbytes)]
        assert self._warm_codec is not None  # cold -> warm
        warm = built.codes if built.codes is not None else self._warm_codec.quantize(built.cache)
        self._warm[number] = warm
        return [(number, "warm", warm.nbytes)]

    def _sync_size(self, number: int, tier: str, nbytes: int) -> None:
        key = _key(number)
        if key not in self._tiers:
            return
        if tier == "hot":
            hot = self._hot.get(number)
            if hot is not None:  # a hot session's charge changes as others come and go: the current one
                nbytes = hot.nbytes
            elif self._tiers.tier_of(key) != "hot":  # left the hot tier: the estimate for a promotion
                self._apply(self._tiers.resize(key, nbytes, "hot"))
                return
            else:  # pragma: no cover - a hot entry whose KV is not installed yet
                return
        if self._tiers.tier_of(key) == tier:
            self._apply(self._tiers.resize(key, nbytes, tier))

    def _forget(self, number: int) -> None:
        """Drop a session from the tiers and memory (under the bookkeeping lock)."""
        with self._tier_lock:
            self._tiers.remove(_key(number))
            hot = self._hot.pop(number, None)
            if hot is not None:
                self._release_hot(hot.handle)
            self._warm.pop(number, None)
            self._mem_tokens.pop(number, None)

    def _snapshot_tier(self, number: int) -> tuple[str, _HotKV | None, _WarmKV | None]:
        with self._tier_lock:
            key = _key(number)
            tier = self._tiers.tier_of(key) if key in self._tiers else "cold"
            return tier, self._hot.get(number), self._warm.get(number)

    def _accessed(self, number: int, served: str, built: _Built | None, *, promote: bool = True) -> None:
        """Count a hit in ``served`` and let the tier manager promote the session with ``built``
        (``None``: a hit that cannot promote, e.g. a prefix served from shared hot pages)."""
        with self._tier_lock:
            self._hits[served] += 1
            key = _key(number)
            if key not in self._tiers:  # deleted meanwhile
                return
            self._apply(self._tiers.access(key, promote=promote and built is not None), built)
            self._touch_hot(number)
            if built is not None and self._tiers.tier_of(key) == "hot" and built.kind == "exact":
                hot = self._hot.get(number)
                if hot is not None and hot.kind != "exact":  # upgrade a faithful/quantized copy
                    assert self._hot_index is not None
                    handle = self._hot_index.insert(built.tokens, built.cache, owner=number)
                    self._hot[number] = _HotKV(handle, "exact")
                    self._mem_tokens[number] = built.tokens
                    self._release_hot(hot.handle)
                    self._sync_size(number, "hot", 0)

    # -- tokens -----------------------------------------------------------------------------

    def _remember_tokens(self, number: int, toks: np.ndarray) -> None:
        if self._token_cache == 0:
            return
        self._tokens[number] = toks
        self._tokens.move_to_end(number)
        while len(self._tokens) > self._token_cache:
            self._tokens.popitem(last=False)

    def _tokens_of(self, number: int, progress: Any = None) -> np.ndarray:
        """Decode one session's tokens, resolving its chain of prefix references."""
        chain: list[_Entry] = []
        with self._lock:
            n: int | None = number
            base: np.ndarray | None = None
            while n is not None:
                cached = self._tokens.get(n)
                if cached is not None:
                    base = cached
                    break
                entry = self._by_number.get(n)
                if entry is None:
                    raise StoreError(f"session number {n} is referenced but missing from the store")
                chain.append(entry)
                n = entry.parent
        toks = base if base is not None else np.empty(0, dtype=TOKEN_DTYPE)
        for entry in reversed(chain):
            record = self.backend.get(entry.key)
            prefix = toks[: entry.prefix]
            if prefix.size != entry.prefix:
                raise StoreError(f"session {entry.sid!r} references {entry.prefix} tokens its parent lacks")
            with self._model_lock:
                tail = self._codec_for(entry.codec).decode(record.container, context=prefix, progress=progress)
            toks = np.concatenate([prefix, tail]).astype(TOKEN_DTYPE)
            if toks.size != entry.n_tokens:
                raise StoreError(f"session {entry.sid!r} decoded to {toks.size} tokens, expected {entry.n_tokens}")
            with self._lock:
                self._remember_tokens(entry.number, toks)
        return toks

    def tokens(self, session_id: str) -> np.ndarray:
        """The session's tokens (decoded; no KV rebuilt)."""
        with self._lock:
            entry = self._entry(session_id)
        return self._tokens_of(entry.number).copy()

    # -- get ------------------------------------------------------------------------------

    def tier_of(self, session_id: str) -> str:
        """The hottest tier holding the session (``"hot"``, ``"warm"`` or ``"cold"``)."""
        with self._lock:
            entry = self._entry(session_id)
        return self._snapshot_tier(entry.number)[0]

    def get(
        self, session_id: str, mode: str = "faithful", *, promote: bool = True, progress: Any = None
    ) -> tuple[np.ndarray, Any]:
        """``(tokens, cache)``: the tokens and a transformers ``DynamicCache`` for them (a copy
        the caller owns), from the hottest tier present.

        ``mode="faithful"``: the hot copy, the dequantized warm KV, or one prefill;
        ``"exact"``: the recorded KV bit for bit — a hot copy of it, or a recompute replaying
        the recorded schedule, checked against the recorded hashes and corrected by the stored
        residual when they differ. ``promote``: let the tier manager move the session up
        (default). Raises :class:`SessionNotFoundError`, :class:`InvalidInputError` (bad mode;
        exact mode for a session stored without hashes), :class:`NumericsMismatchError` (exact
        mode: the KV differs and no residual was kept, or it does not repair it).
        """
        if mode not in ("faithful", "exact"):
            raise InvalidInputError(f"mode must be 'faithful' or 'exact', got {mode!r}")
        with self._lock:
            entry = self._entry(session_id)
        if mode == "exact" and not entry.hashes:
            raise InvalidInputError(f"session {session_id!r} was stored without KV hashes; exact mode needs them")
        toks = self._tokens_of(entry.number, progress)
        hot_cache, hot, warm = self._read_hot(entry.number, mode)
        if hot is not None:
            built = _Built(toks, hot_cache, hot.kind, hot.codes)
            served = "hot"
        elif warm is not None and mode == "faithful":
            assert self._warm_codec is not None
            built = _Built(toks, self._warm_codec.dequantize(self.model, warm), "quantized", warm)
            served = "warm"
        elif mode == "faithful":
            cache = self._compute(toks, None) if toks.size else self._empty_cache()
            built = _Built(toks, cache, "faithful")
            served = "cold"
        else:
            built = _Built(toks, self._exact_restore(entry, toks), "exact")
            served = "cold"
        self._accessed(entry.number, served, built, promote=promote and toks.size > 0)
        return toks.copy(), built.cache

    def _read_hot(self, number: int, mode: str) -> tuple[Any, _HotKV | None, _WarmKV | None]:
        """``(cache, hot, warm)``: a copy of the session's hot KV when it is hot (and, for
        ``mode="exact"``, the recorded KV), else ``(None, None, warm)`` with its warm KV if any. A
        session demoted while its pages are read is looked up again."""
        from .pages import ReleasedHandleError

        while True:
            _, hot, warm = self._snapshot_tier(number)
            if hot is None or not (mode == "faithful" or hot.kind == "exact"):
                return None, None, warm
            assert self._hot_index is not None
            try:
                return self._hot_index.gather(hot.handle), hot, warm
            except ReleasedHandleError:
                continue

    def _empty_cache(self) -> Any:
        from ..integrations import transformers as hf

        return hf.new_cache(self.model)

    def _exact_restore(self, entry: _Entry, toks: np.ndarray) -> Any:
        from ..integrations import transformers as hf

        cache = self._compute(toks, entry.schedule)
        digest = len(entry.hashes[0])
        bad = self._bad_layers(hf.layer_hashes(cache, digest), entry.hashes)
        if not bad:
            return cache
        from ..integrations.models import numerics_profile_json

        how = (
            "recomputed by the seqkv engine"
            if self.engine is not None
            else f"replayed schedule of {len(entry.schedule)} chunks on {numerics_profile_json(self.model)}"
        )
        if not entry.residual_bytes:
            raise NumericsMismatchError(
                f"exact restore of {entry.sid!r}: layers {bad} differ from the hashes recorded at put "
                f"({how}; KV recorded from {entry.kv_source or 'an unknown source'}) and no residual was kept "
                f"(put(..., kv=cache, residual=True) keeps one)"
            )
        from ..kv import residual as residual_coding

        data = self.backend.get(entry.key).attachments.get(_RESIDUAL)
        if data is None:
            raise StoreError(f"session {entry.sid!r} records a residual but its record has no attachment")
        flat = [t for pair in hf.cache_layers(cache) for t in pair]
        fixed = residual_coding.decode(data, flat)
        cache = hf.cache_from_layers(self.model, list(zip(fixed[0::2], fixed[1::2])))
        bad = self._bad_layers(hf.layer_hashes(cache, digest), entry.hashes)
        if bad:
            raise NumericsMismatchError(
                f"exact restore of {entry.sid!r}: the stored residual does not reproduce layers {bad} "
                f"(the recompute differs from the one at put: {how})"
            )
        return cache

    @staticmethod
    def _bad_layers(got: list[bytes], want: list[bytes]) -> list[int]:
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        if len(got) != len(want):
            bad.extend(range(min(len(got), len(want)), max(len(got), len(want))))
        return bad

    def get_prefix(self, tokens: Any) -> tuple[int, Any]:
        """``(n, cache)``: KV for the longest prefix ``tokens[:n]`` this store can serve, for a
        new request whose first ``n`` tokens need no prefill (``(0, None)`` when nothing
        matches). Looks first at the hot tier (one match in the hot index's trie: shared pages,
        then the private positions of a session ending there), then at warm sessions holding a
        longer prefix (dequantized), else restores the longest stored prefix (the session trie's
        match) from the cold tier by one prefill.
        Faithful quality; the cache is the caller's. Counts a hit and promotes as ``get`` does.
        Raises :class:`InvalidInputError` for bad tokens."""
        toks = as_tokens(tokens, self.vocab_size)
        if toks.size == 0:
            return 0, None
        n_hot, hot_cache, owner = self._hot_index.lookup(toks) if self._hot_index is not None else (0, None, None)
        best: tuple[int, int, _WarmKV, np.ndarray] | None = None  # a warm session holding more
        with self._tier_lock:
            for number, warm in self._warm.items():
                held = self._mem_tokens.get(number)
                if held is None:
                    continue
                n = common_prefix_length(held, toks)
                if n > n_hot and (best is None or n > best[0]):
                    best = (n, number, warm, held)
        if best is not None:
            n, number, warm, held = best
            assert self._warm_codec is not None
            full = self._warm_codec.dequantize(self.model, warm)
            out = _slice_cache(self.model, full, n) if n < warm.length else full
            self._accessed(number, "warm", _Built(held, full, "quantized", warm))  # promotion copies `full`
            return n, out
        if n_hot:
            if owner is not None:
                self._accessed(owner, "hot", None, promote=False)
            else:  # pragma: no cover - pages whose last user left while they were read
                with self._tier_lock:
                    self._hits["hot"] += 1
            return n_hot, hot_cache
        with self._lock:
            n, owner = self._match(toks)
            entry = self._by_number.get(owner) if owner is not None else None
        if entry is None or n == 0:
            return 0, None
        cache = self._compute(toks[:n], None)
        if n == entry.n_tokens and not entry.hidden:
            self._accessed(entry.number, "cold", _Built(toks[:n].copy(), cache, "faithful"))
            return n, cache
        with self._tier_lock:
            self._hits["cold"] += 1
        return n, cache

    def demote(self, session_id: str, tier: str = "cold") -> str:
        """Move a session down to ``tier`` now (``"warm"``: quantize its hot KV; ``"cold"``: drop
        its in-memory KV), e.g. before a known idle period; a session already there or lower
        stays. Returns the tier it is in afterwards. Raises :class:`SessionNotFoundError`, and
        :class:`InvalidInputError` for a tier this store does not have (or its first tier)."""
        if tier not in self._tiers.tiers or tier == self._tiers.tiers[0]:
            raise InvalidInputError(f"demote to one of {self._tiers.tiers[1:]}, not {tier!r}")
        with self._lock:
            entry = self._entry(session_id)
        rank = TIER_NAMES.index
        with self._tier_lock:
            key = _key(entry.number)
            current = self._tiers.tier_of(key)
            if rank(tier) <= rank(current):
                return current
            sizes = self._demote(entry.number, current, tier)
            self._apply(self._tiers.place(key, tier))
            for number, t, nbytes in sizes:
                self._sync_size(number, t, nbytes)
            return self._tiers.tier_of(key)

    def drop_caches(self) -> None:
        """Forget decoded tokens and every in-memory KV (all sessions go cold; the next ``get``
        decodes from the records)."""
        with self._lock, self._tier_lock:
            self._tokens.clear()
            for number in list(self._hot) + list(self._warm):
                self._tiers.place(_key(number), "cold")
            for hot in self._hot.values():
                self._release_hot(hot.handle, sync=False)
            self._hot.clear()
            self._warm.clear()
            self._mem_tokens.clear()

    # -- delete ---------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        """Remove a session; ``False`` if absent. A session other sessions reference is kept
        (hidden, its record only) until the last of them goes."""
        with self._lock:
            if session_id not in self._sessions:
                return False
            self._delete_locked(session_id)
            return True

    def _delete_locked(self, sid: str) -> None:
        entry = self._sessions.pop(sid)
        self._forget(entry.number)
        if entry.refs > 0:
            hidden_key = f"{_HIDDEN_PREFIX}{entry.number}"
            record = self.backend.get(entry.key)
            meta = dict(record.meta)
            meta["hidden"] = True
            from ..backends import SessionRecord

            self.backend.put(
                hidden_key, SessionRecord(container=record.container, meta=meta, attachments=record.attachments)
            )
            self.backend.delete(entry.key)
            entry.key = hidden_key
            entry.hidden = True
            return
        self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        self.backend.delete(entry.key)
        self._by_number.pop(entry.number, None)
        self._tokens.pop(entry.number, None)
        if entry.pin is not None:
            try:
                self.trie.unpin(entry.pin)
            except Exception:  # pragma: no cover - the pin may already be gone
                pass
        if entry.parent is not None:
            self._release_ref(entry.parent)

    def _release_ref(self, number: int) -> None:
        parent = self._by_number.get(number)
        if parent is None:
            return
        parent.refs -= 1
        if parent.refs <= 0 and parent.hidden:
            self._drop(parent)

    # -- stats ----------------------------------------------------------------------------

    def tier_stats(self) -> dict[str, Any]:
        """Per tier: ``count`` (sessions whose hottest tier it is), ``bytes`` (hot/warm: memory
        held; cold: backend bytes of every record, since the cold tier holds every session),
        ``hits`` (restores served from it), ``promotions_in``, ``demotions_out``; plus
        ``capacity_bytes`` (``None``: unbounded), ``used_bytes`` and ``policy``.

        The hot tier's ``bytes`` count shared KV pages once (each is charged to one of the hot
        sessions using it); it also has ``kv_bytes`` (KV held: pool pages in use + private
        parts), ``codes_bytes`` (warm codes kept by hot sessions promoted from warm; ``bytes`` =
        ``kv_bytes`` + ``codes_bytes``), ``logical_bytes`` (what a KV copy per hot session would
        take), ``pages``, ``pages_shared`` (pages used by two sessions or more) and
        ``page_tokens``; ``hot_index`` is :meth:`seqkv.store.pages.HotPrefixIndex.stats`."""
        with self._lock:
            record_bytes = sum(e.record_bytes for e in self._by_number.values())
        with self._tier_lock:
            st = self._tiers.stats()
            out: dict[str, Any] = {}
            for name in TIER_NAMES:
                t = st["tiers"].get(name)
                if t is None:
                    continue
                out[name] = {
                    "count": t["entries"],
                    "bytes": record_bytes if name == "cold" else t["bytes"],
                    "hits": self._hits[name],
                    "promotions_in": t["promotions_in"],
                    "demotions_out": t["demotions_out"],
                }
            index = self._hot_index.stats() if self._hot_index is not None else None
            if index is not None and "hot" in out:
                out["hot"].update(
                    kv_bytes=index["unique_bytes"],
                    codes_bytes=sum(h.codes.nbytes for h in self._hot.values() if h.codes is not None),
                    logical_bytes=index["logical_bytes"],
                    pages=index["pages"],
                    pages_shared=index["pages_shared"],
                    page_tokens=index["page_tokens"],
                )
            return {
                "hot_index": index,
                "tiers": out,
                "capacity_bytes": self.capacity_bytes,
                "limits": {t: v["limit"] for t, v in st["tiers"].items() if t != "cold"}
                if self.capacity_bytes is not None
                else {},
                "used_bytes": st["used_bytes"],
                "policy": st["policy"],
            }

    def stats(self) -> dict[str, Any]:
        """Sizes and ratios over the stored sessions, and the tiers.

        ``tokens``: token positions of the visible sessions; ``coded_tokens``: tokens actually
        coded in all stored records (hidden ones included); ``dedup_ratio``: tokens /
        coded_tokens; ``bits_per_token``: container bits / tokens (headers included,
        amortized over every position); ``payload_bits_per_token``: coded payload only;
        ``ratio_vs_bf16``: bf16 KV bits of the same positions / container bits;
        ``residual_bytes``: exact-mode residuals kept; ``tiers`` etc.: see :meth:`tier_stats`.
        """
        from ..integrations.transformers import kv_bits_per_token

        tiers = self.tier_stats()
        with self._lock:
            visible = list(self._sessions.values())
            records = list(self._by_number.values())
            tokens = sum(e.n_tokens for e in visible)
            coded = sum(e.n_tokens - e.prefix for e in records)
            payload = sum(e.payload_bits for e in records)
            container_bytes = sum(e.container_bytes for e in records)
            record_bytes = sum(e.record_bytes for e in records)
            kv_bits = kv_bits_per_token(self.model) * tokens
            return {
                "sessions": len(visible),
                "hidden_sessions": len(records) - len(visible),
                "tokens": tokens,
                "coded_tokens": coded,
                "referenced_tokens": sum(e.prefix for e in visible),
                "dedup_ratio": tokens / coded if coded else (float("inf") if tokens else 1.0),
                "payload_bits": payload,
                "container_bytes": container_bytes,
                "record_bytes": record_bytes,
                "residual_bytes": sum(e.residual_bytes for e in records),
                "bits_per_token": 8 * container_bytes / tokens if tokens else 0.0,
                "payload_bits_per_token": payload / tokens if tokens else 0.0,
                "payload_bits_per_coded_token": payload / coded if coded else 0.0,
                "ratio_vs_bf16": kv_bits / (8 * container_bytes) if container_bytes else float("inf"),
                "kept_kv_sessions": tiers["tiers"].get("hot", {}).get("count", 0),
                "codec": self.codec.name,
                "kv_source": self.kv_source,
                "trie": self.trie.stats(),
                **tiers,
            }

    def close(self) -> None:
        """Release pins, drop the in-memory tiers and close the backend."""
        with self._lock:
            for entry in self._by_number.values():
                if entry.pin is not None:
                    try:
                        self.trie.unpin(entry.pin)
                    except Exception:  # pragma: no cover
                        pass
                    entry.pin = None
            with self._tier_lock:
                for hot in self._hot.values():
                    self._release_hot(hot.handle, sync=False)
                self._hot.clear()
                self._warm.clear()
                self._mem_tokens.clear()
            self.backend.close()

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
