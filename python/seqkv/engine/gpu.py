"""``seqkv.engine.gpu``: the batch-invariant engine on a CUDA GPU (``seqkv/cuda/kernels/engine.cu``
through CuPy), giving the same bits as :class:`seqkv.engine.cpu.Engine` for the same weights."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Sequence as Seq

import numpy as np

from ..errors import CapacityError, InvalidInputError, MissingExtraError
from ..kv.hashing import layer_hashes
from .cpu import KERNEL_DEFINITION, _as_token_array, engine_fingerprint, hf_config, hf_tensors, unsupported_reason

__all__ = ["GpuEngine", "GpuSequence", "gpu_unsupported_reason", "gpu_weight_arrays", "rope_table", "bf16_round_bits"]


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



#: config keys of the Llama core the GPU port implements (``engine.cu``); the CPU engine's others
#: (per-layer RoPE tables, sliding windows, other activations, Gemma's scales, logit soft-capping)
#: are not implemented there
GPU_CONFIG_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "rms_norm_eps", "rope_inv_freq", "rope_attention_scaling", "attention_scale",
})
#: per-layer tensors of the Llama core (no biases, no q/k norms, no Gemma output norms)
GPU_LAYER_TENSORS = frozenset({"input_norm", "post_norm", "q", "k", "v", "o", "gate", "up", "down"})


def gpu_unsupported_config(config: dict[str, Any], tensor_names: Any) -> str | None:
    """Why the GPU port cannot compute a model given as :func:`seqkv.engine.cpu.hf_tensors` gives it
    (``config`` and the tensors' names), or ``None``: only the Llama core runs there."""
    extra = sorted(set(config) - GPU_CONFIG_KEYS)
    if extra:
        return f"features the GPU kernels do not implement ({', '.join(extra)})"
    names = {n.split(".", 2)[2] for n in tensor_names if n.startswith("layers.")}
    extra = sorted(names - GPU_LAYER_TENSORS)
    if extra:
        return f"layer tensors the GPU kernels do not implement ({', '.join(extra)})"
    if int(config["intermediate_size"]) % 2:
        return f"odd intermediate_size {config['intermediate_size']}"
    nh, nkv, hd = int(config["num_heads"]), int(config["num_kv_heads"]), int(config["head_dim"])
    if nh % nkv or hd % 8:
        return f"num_heads {nh} / num_kv_heads {nkv} / head_dim {hd} (needs whole groups and head_dim % 8 == 0)"
    return None


def gpu_unsupported_reason(model: Any) -> str | None:
    """Why :class:`GpuEngine` cannot run ``model``, or ``None`` if it can: what the CPU engine
    needs (:func:`seqkv.engine.cpu.unsupported_reason`), and only the Llama core (no biases, q/k
    norms, sliding windows, per-layer RoPE, other activations), an even intermediate size,
    ``head_dim % 8 == 0`` and whole query-head groups. Says nothing about CuPy or a GPU being there."""
    why = unsupported_reason(model)
    if why is not None:
        return why
    names = []
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        names += [f"layers.{i}.{n}_bias" for n, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj),
                  ("o", a.o_proj), ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj))
                  if lin.bias is not None]
        names += [f"layers.{i}.{n}" for n in ("q_norm", "k_norm") if getattr(a, n, None) is not None]
    return gpu_unsupported_config(hf_config(model), names)


def _require_cupy() -> Any:
    try:
        import cupy as cp
    except ImportError as exc:
        raise MissingExtraError("the GPU engine needs CuPy: pip install 'seqkv[cuda]'") from exc
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise MissingExtraError("the GPU engine needs a CUDA GPU: CuPy sees none ('seqkv[cuda]')")
    except cp.cuda.runtime.CUDARuntimeError as exc:
        raise MissingExtraError(f"the GPU engine needs a CUDA GPU ('seqkv[cuda]'): {exc}") from exc
    return cp


class GpuSequence:
    """One token sequence held in a :class:`GpuEngine` KV slot: the GPU twin of
    :class:`seqkv.engine.cpu.Sequence` (same methods, same bits). The slot goes back to the engine
    with :meth:`release` or when the sequence is garbage-collected. Not thread-safe."""

    __slots__ = ("engine", "slot", "_tokens", "_schedule", "__weakref__")

    def __init__(self, engine: "GpuEngine", slot: int):
        self.engine = engine
        self.slot = slot
        self._tokens: list[int] = []
        self._schedule: list[int] = []

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"<seqkv.engine.gpu.GpuSequence slot={self.slot} len={len(self)}>"

    def __del__(self) -> None:
        self.release()

    @property
    def tokens(self) -> np.ndarray:
        return np.asarray(self._tokens, dtype=np.uint32)

    @property
    def schedule(self) -> tuple[int, ...]:
        return tuple(self._schedule)

    def release(self) -> None:
        """Give the KV slot back to the engine (the sequence is unusable afterwards)."""
        if self.slot >= 0:
            self.engine._release_slot(self.slot)
            self.slot = -1

    def _live_slot(self) -> int:
        if self.slot < 0:
            raise InvalidInputError("this GpuSequence was released")
        return self.slot

    def fork(self, n: int | None = None) -> "GpuSequence":
        """A new sequence holding a copy of the first ``n`` positions (default all), in another slot."""
        n = len(self) if n is None else int(n)
        if not 0 <= n <= len(self):
            raise InvalidInputError(f"fork({n}) of a sequence of length {len(self)}")
        child = self.engine.new_sequence()
        self.engine._copy_positions(self._live_slot(), child.slot, n)
        child._tokens = self._tokens[:n]
        child._schedule = _cut_schedule(self._schedule, n)
        return child

    def truncate(self, n: int) -> None:
        """Forget positions ``n..``."""
        n = int(n)
        if not 0 <= n:
            raise InvalidInputError("truncate: n must be >= 0")
        del self._tokens[n:]
        self._schedule = _cut_schedule(self._schedule, n)
        self.engine.lens[self._live_slot()] = len(self._tokens)

    def kv_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer ``(keys, values)``, float32 ``[kv_heads, len, head_dim]`` on the host."""
        slot = self._live_slot()
        return [self.engine.kv_layer(slot, layer) for layer in range(self.engine.L)]

    def layer_hashes(self) -> list[bytes]:
        """Per-layer digests of this sequence's KV (:func:`seqkv.kv.hashing.layer_hashes`): equal to
        the CPU engine's for the same tokens."""
        return layer_hashes(self.kv_arrays())

    def kv_cache(self, *, dtype: Any = None, device: Any = None, config: Any = None) -> Any:
        """The KV as a transformers ``DynamicCache`` (batch 1) of torch tensors on the GPU (``device``
        defaults to the engine's), copied device to device through DLPack: no host round trip.
        ``dtype`` defaults to ``torch.float32``; the tensors own their memory (the slot may be reused)."""
        from ..integrations.models import require_torch

        torch, transformers = require_torch()
        eng = self.engine
        slot, n = self._live_slot(), len(self)
        config = config if config is not None else eng.hf_config
        try:
            cache = transformers.DynamicCache(config=config) if config is not None else transformers.DynamicCache()
        except TypeError:  # older transformers
            cache = transformers.DynamicCache()
        dtype = torch.float32 if dtype is None else dtype
        device = torch.device("cuda", eng.device_id) if device is None else torch.device(device)
        with eng.cp.cuda.Device(eng.device_id):
            eng.cp.cuda.get_current_stream().synchronize()  # the engine's writes, before torch reads
            for layer in range(eng.L):
                kv = torch.from_dlpack(eng.kv[slot, layer, :, :n])  # [2, n, kv_heads, head_dim], a view
                k = torch.empty((1, eng.nkv, n, eng.hd), dtype=dtype, device=device)
                v = torch.empty((1, eng.nkv, n, eng.hd), dtype=dtype, device=device)
                k[0].copy_(kv[0].permute(1, 0, 2))
                v[0].copy_(kv[1].permute(1, 0, 2))
                cache.update(k, v, layer)
        return cache


def _cut_schedule(schedule: list[int], n: int) -> list[int]:
    out, left = [], n
    for c in schedule:
        if left <= 0:
            break
        out.append(min(c, left))
        left -= c
    return out


def _passes(sizes: list[int], max_rows: int) -> list[list[tuple[int, int, int]]]:
    """The rows of chunks of ``sizes`` in input order, cut into passes of at most ``max_rows``:
    per pass ``(chunk, start, end)`` pieces (a chunk appears at most once per pass)."""
    passes: list[list[tuple[int, int, int]]] = [[]]
    room = max_rows
    for i, n in enumerate(sizes):
        at = 0
        while at < n:
            if room == 0:
                passes.append([])
                room = max_rows
            take = min(n - at, room)
            passes[-1].append((i, at, at + take))
            at += take
            room -= take
    return [p for p in passes if p]


def _chunk_end_rows(pieces: list[tuple[int, int, int]], sizes: list[int]) -> list[int]:
    """Rows of a pass (as :func:`_passes` cut it) holding the last token of their chunk."""
    rows, r = [], 0
    for i, start, end in pieces:
        r += end - start
        if end == sizes[i]:
            rows.append(r - 1)
    return rows


def _shared_sizes(cp: Any, model: Any, sizes: dict[str, int]) -> dict[str, int]:
    """:meth:`GpuEngine.for_model`'s sizes: the caller's, else the defaults, with as many slots as
    the KV memory share of the current GPU holds."""
    out = {k: int(v) for k, v in sizes.items()}
    out.setdefault("max_len", GpuEngine.DEFAULT_MAX_LEN)
    if "max_slots" not in out:
        cfg = model.config
        nh = int(cfg.num_attention_heads)
        nkv = int(getattr(cfg, "num_key_value_heads", None) or nh)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // nh)
        slot_bytes = int(cfg.num_hidden_layers) * 2 * nkv * head_dim * 4 * out["max_len"]
        free = int(cp.cuda.runtime.memGetInfo()[0])
        out["max_slots"] = max(1, min(GpuEngine.MAX_SHARED_SLOTS, int(free * GpuEngine.KV_MEMORY_SHARE) // slot_bytes))
    return out


_SHARED: "weakref.WeakKeyDictionary[Any, GpuEngine]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class GpuEngine:
    """The engine's forward pass on a CUDA GPU through CuPy (``seqkv/cuda/kernels/engine.cu``), with
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
                 max_len: int = 512, max_rows: int | None = None, source_fingerprint: bytes | None = None,
                 hf_config: Any = None):
        cp = _require_cupy()
        from ..cuda.runtime import _allow_smem, kernel_dir

        self.cp = cp
        self.device_id = int(cp.cuda.runtime.getDevice())
        self.source_fingerprint = source_fingerprint
        self.hf_config = hf_config
        #: guards the shared pass buffers: a host-level pass (:meth:`forward`) holds it to its copy-out
        self._lock = threading.RLock()
        self._free_slots = list(range(int(max_slots) - 1, -1, -1))
        c = {k: config[k] for k in config}
        why = gpu_unsupported_config(c, tensors)
        if why is not None:
            raise InvalidInputError(f"GpuEngine: {why}")
        self.V, self.H, self.I = int(c["vocab_size"]), int(c["hidden_size"]), int(c["intermediate_size"])
        self.L, self.nh, self.nkv, self.hd = int(c["num_layers"]), int(c["num_heads"]), int(c["num_kv_heads"]), int(c["head_dim"])
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
            "head_x": cp.zeros((R, self.H), f32),  # the rows whose logits a pass keeps
            "tokens": cp.zeros(R, cp.uint32), "slot": cp.zeros(R, cp.int32), "pos": cp.zeros(R, cp.int32),
        }
        self.lens = [0] * self.max_slots
        # seqkv/cuda/kernels/engine.cu att_smem_floats: q, scores, per-tile sums, then a round of 64
        # V rows (padded to hd + 4)
        ntiles = (self.max_len + 31) // 32
        sl = -(-self.max_len // 4) * 4
        head = -(-(self.G * (self.hd + sl + ntiles * (self.hd + 1))) // 4) * 4
        self.att_smem = 4 * (head + 64 * (self.hd + 4))
        self.norm_smem = 8 * self.H  # eng_rmsnorm stages the row and the weights
        limit = int(cp.cuda.runtime.getDeviceProperties(self.device_id)["sharedMemPerBlockOptin"])
        if self.att_smem > limit:
            raise InvalidInputError(
                f"GpuEngine: max_len={self.max_len} needs {self.att_smem} bytes of shared memory per attention "
                f"block (scores of every position are kept there), this GPU allows {limit}: use a smaller max_len")
        for name, nbytes in (("eng_attention", self.att_smem), ("eng_rmsnorm", self.norm_smem)):
            if nbytes > 48 * 1024:
                _allow_smem(self.fn[name], nbytes)
        #: GEMM shape per matmul (``"qkv"``, ``"o"``, ``"gu"``, ``"down"``, ``"lm_head"``); see
        #: :meth:`tune_gemms`
        self.gemm_shapes = dict(self.DEFAULT_GEMM_SHAPES)

    #: default shape per matmul: the fastest of :meth:`tune_gemms`' candidates at SmolLM2's sizes
    #: and 256 rows (timings in benches/results/engine_gpu.json, ``gemm_us_per_shape_256_rows``)
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

    def _layers(self, R: int, head_rows: Any = None) -> int:
        """One pass over the ``R`` rows staged in the buffers; logits of every row (``head_rows``
        ``None``) or of the rows a device index array names, in its order, into ``logits[:n]``.
        Returns the number of logits rows."""
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
        if head_rows is None:
            self._gemm("lm_head", b["xn"], self.lm_head, b["logits"], R, self.H, self.V, 0)
            return R
        n = int(head_rows.size)
        if n:  # rows are independent: the logits of a subset are the same bits
            self.cp.take(b["xn"][:R], head_rows, axis=0, out=b["head_x"][:n])
            self._gemm("lm_head", b["head_x"], self.lm_head, b["logits"], n, self.H, self.V, 0)
        return n

    # -- construction from a model, identity ------------------------------------------------------

    #: positions per sequence of a shared engine (:meth:`for_model`)
    DEFAULT_MAX_LEN = 5120
    #: share of the GPU's free memory a shared engine's KV slots may take, and the most slots
    KV_MEMORY_SHARE, MAX_SHARED_SLOTS = 0.125, 64

    @classmethod
    def from_hf(cls, model: Any, *, max_slots: int = 32, max_len: int = 4096, max_rows: int = 256) -> "GpuEngine":
        """The engine of a loaded transformers model (bf16 weights, f32 KV: the numerics of
        ``Engine.from_hf(model, "bf16")``), on the current CuPy device. ``max_slots`` sequences of
        up to ``max_len`` positions; KV is allocated up front (SmolLM2-135M: 46 KB a position)."""
        _require_cupy()
        why = gpu_unsupported_reason(model)
        if why is not None:
            raise InvalidInputError(f"seqkv.engine.gpu cannot run this model: {why}")
        from ..integrations.models import fingerprint as model_fingerprint

        config, tensors = hf_tensors(model)
        return cls(config, tensors, max_slots=max_slots, max_len=max_len, max_rows=max_rows,
                   source_fingerprint=model_fingerprint(model), hf_config=model.config)

    @classmethod
    def for_model(cls, model: Any, **sizes: int) -> "GpuEngine":
        """A shared engine of ``model`` (built once by :meth:`from_hf` on the model's GPU, reused while
        the model lives and its fingerprint is unchanged; thread-safe). ``sizes``: :meth:`from_hf`'s
        ``max_slots``, ``max_len``, ``max_rows``; a shared engine with other sizes is rebuilt. By
        default sequences hold :attr:`DEFAULT_MAX_LEN` positions and the slots take at most
        :attr:`KV_MEMORY_SHARE` of the GPU's free memory (at most :attr:`MAX_SHARED_SLOTS`)."""
        from ..integrations.models import fingerprint as model_fingerprint

        cp = _require_cupy()
        param = next(iter(model.parameters()))
        if param.device.type != "cuda":
            raise InvalidInputError(f"GpuEngine.for_model: the model's parameters are on {param.device}, not a GPU")
        fp = model_fingerprint(model)
        with _SHARED_LOCK:
            eng = _SHARED.get(model)
            same = eng is not None and eng.source_fingerprint == fp and all(
                getattr(eng, k) == int(v) for k, v in sizes.items())
            if not same:
                with cp.cuda.Device(param.device.index or 0):
                    eng = cls.from_hf(model, **_shared_sizes(cp, model, sizes))
                _SHARED[model] = eng
        assert eng is not None
        return eng

    @property
    def vocab_size(self) -> int:
        return self.V

    @property
    def num_layers(self) -> int:
        return self.L

    #: weight and KV storage of the GPU port (the CPU engine's ``dtype="bf16"``, ``kv_dtype="f32"``)
    dtype = "bf16"
    kv_dtype = "f32"

    def fingerprint(self) -> bytes:
        """The same 32 bytes as the CPU engine's for the same model and dtypes
        (:func:`seqkv.engine.cpu.engine_fingerprint`): one stream decodes on either device."""
        return engine_fingerprint(self.source_fingerprint, self.dtype, self.kv_dtype)

    def numerics_profile(self) -> dict[str, Any]:
        """What determines the bits (kernel definition, dtypes: as on the CPU) and, for
        information, the device that computed them."""
        from .. import _native

        props = self.cp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        return {
            "engine": "seqkv-engine",
            "kernel_definition": KERNEL_DEFINITION,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "isa": "cuda",
            "device": name.decode() if isinstance(name, bytes) else str(name),
            "version": _native.__version__,
        }

    # -- sequences (slots) -----------------------------------------------------------------------

    def new_sequence(self) -> GpuSequence:
        """A new empty sequence in a free KV slot (:class:`CapacityError` when all are taken)."""
        with self._lock:
            if not self._free_slots:
                raise CapacityError(f"GpuEngine: all {self.max_slots} KV slots hold sequences "
                                    "(release some, or build the engine with more max_slots)")
            slot = self._free_slots.pop()
            self.lens[slot] = 0
        return GpuSequence(self, slot)

    def _release_slot(self, slot: int) -> None:
        with self._lock:
            self.lens[slot] = 0
            self._free_slots.append(slot)

    def _copy_positions(self, src: int, dst: int, n: int) -> None:
        with self._lock, self.cp.cuda.Device(self.device_id):
            self.kv[dst, :, :, :n] = self.kv[src, :, :, :n]
            self.lens[dst] = n

    # -- host-level passes: the CPU engine's API --------------------------------------------------

    def forward(self, seqs: Seq[GpuSequence], chunks: Seq[Any], *, logits: str = "all") -> np.ndarray:
        """Append ``chunks[i]`` to ``seqs[i]`` for every i, as :meth:`seqkv.engine.cpu.Engine.forward`:
        ``logits`` ``"all"``, ``"last"`` (a row per non-empty chunk) or ``"none"``; float32
        ``[rows, vocab]`` on the host. More rows than ``max_rows`` run as several passes (the rows
        in order, cut every ``max_rows``): the same bits, since no row depends on its batch."""
        if logits not in ("all", "last", "none"):
            raise InvalidInputError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        seqs = list(seqs)
        if len(seqs) != len(chunks):
            raise InvalidInputError("forward: one chunk per sequence is required")
        if len({id(s) for s in seqs}) != len(seqs):
            raise InvalidInputError("forward: a sequence appears twice in one batch")
        for s in seqs:
            if not isinstance(s, GpuSequence) or s.engine is not self:
                raise InvalidInputError("forward: seqs must be GpuSequences of this engine")
        arrays = [_as_token_array(c, self.V) for c in chunks]
        slots = [s._live_slot() for s in seqs]
        for slot, a in zip(slots, arrays):
            if self.lens[slot] + a.size > self.max_len:
                raise CapacityError(f"GpuEngine: a sequence would hold {self.lens[slot] + a.size} positions, "
                                    f"more than max_len={self.max_len}")
        parts = []
        with self._lock, self.cp.cuda.Device(self.device_id):
            sizes = [int(a.size) for a in arrays]
            for pieces in _passes(sizes, self.max_rows):
                rows = None if logits == "all" else [] if logits == "none" else _chunk_end_rows(pieces, sizes)
                out = self._pass([slots[i] for i, _, _ in pieces], [arrays[i][a:b] for i, a, b in pieces], rows)
                parts.append(self.cp.asnumpy(out))
        for s, a in zip(seqs, arrays):
            if a.size:
                s._tokens.extend(a.tolist())
                s._schedule.append(int(a.size))
        if not parts:
            return np.zeros((0, self.V), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def prefill(self, seq: GpuSequence, tokens: Any, *, logits: str = "all") -> np.ndarray:
        """Append ``tokens`` to ``seq`` (as :meth:`seqkv.engine.cpu.Engine.prefill`)."""
        return self.forward([seq], [tokens], logits=logits)

    def step(self, seqs: Seq[GpuSequence], tokens: Seq[int]) -> np.ndarray:
        """One decode step for each sequence: float32 ``[len(seqs), vocab]``."""
        seqs = list(seqs)
        if isinstance(tokens, (int, np.integer)):
            tokens = [int(tokens)]
        toks = _as_token_array(list(tokens), self.V)
        if toks.size != len(seqs):
            raise InvalidInputError("step: one token per sequence is required")
        return self.forward(seqs, [toks[i : i + 1] for i in range(len(seqs))], logits="all")

    # -- slot-level passes (benches, graphs): the caller owns the slots and the buffers ------------

    def forward_slots(self, slots: Seq[int], chunks: Seq[Any], *, logits: str = "all") -> Any:
        """Append ``chunks[i]`` to slot ``slots[i]`` in one pass (at most ``max_rows`` rows); returns
        the logits (``"all"`` rows, ``"last"`` row of each non-empty chunk, or ``"none"``) as CuPy
        float32 ``[rows, V]``, a view of an internal buffer that the next pass overwrites."""
        if logits not in ("all", "last", "none"):
            raise InvalidInputError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        arrays = [_as_token_array(ch, self.V) for ch in chunks]
        ends = np.cumsum([a.size for a in arrays]) - 1
        rows = None if logits == "all" else [] if logits == "none" else [
            int(e) for e, a in zip(ends, arrays) if a.size]
        return self._pass(list(slots), arrays, rows)

    def _pass(self, slots: list[int], arrays: list[np.ndarray], keep: list[int] | None) -> Any:
        """One pass: ``arrays[i]`` appended to slot ``slots[i]``; the logits of rows ``keep``
        (``None``: all) as a CuPy view of the logits buffer."""
        cp = self.cp
        slot_l, pos_l, tok_l = [], [], []
        lens = list(self.lens)
        for s, ch in zip(slots, arrays):
            if not 0 <= int(s) < self.max_slots:
                raise InvalidInputError(f"GpuEngine: slot {s} out of range 0..{self.max_slots - 1}")
            if lens[s] + ch.size > self.max_len:
                raise CapacityError(f"GpuEngine: slot {s} would hold {lens[s] + ch.size} positions, "
                                    f"more than max_len={self.max_len}")
            slot_l += [s] * ch.size
            pos_l += list(range(lens[s], lens[s] + ch.size))
            tok_l += ch.tolist()
            lens[s] += ch.size
        R = len(tok_l)
        if R > self.max_rows:
            raise CapacityError(f"GpuEngine: {R} rows exceed max_rows={self.max_rows}")
        if len(set(slots)) != len(slots):
            raise InvalidInputError("GpuEngine: a slot appears twice in one pass")
        self.lens = lens
        if R == 0:
            return self.buf["logits"][:0]
        b = self.buf
        b["slot"][:R] = cp.asarray(np.array(slot_l, np.int32))
        b["pos"][:R] = cp.asarray(np.array(pos_l, np.int32))
        b["tokens"][:R] = cp.asarray(np.array(tok_l, np.uint32))
        n = self._layers(R, None if keep is None else cp.asarray(np.array(keep, np.int64)))
        return b["logits"][:n]

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
