"""``seqkv.engine.cpu``: a batch-invariant forward pass for Llama-family causal LMs.

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
does), f32, or — for a model converted from a GGUF — the GGUF's own blocks (``"q4_1"``,
``"q4_0"``, ``"q8_0"``: :meth:`Engine.from_gguf`), de-quantized exactly in the kernels, so a
block engine computes the f32 engine's bits with a quarter of its bytes per step;
activations and accumulations are f32. Only NumPy is needed to run it;
:meth:`Engine.from_hf` and :meth:`Sequence.kv_cache` import torch.

:class:`GpuEngine` runs the same definition on a CUDA GPU (``seqkv/cuda/kernels/engine.cu``,
through CuPy) and gives the same bits as the CPU engine (checked by ``benches/engine.py --gpu``;
see ``docs/engine.md``). :class:`EngineLogitsSource` plugs the engine into the ``lm`` codec.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from typing import Any, Sequence as Seq

import numpy as np

from .. import _native
from ..errors import InvalidInputError
from ..kv.hashing import layer_hashes

__all__ = [
    "Engine",
    "random_tensors",
    "supports",
    "unsupported_reason",
    "Sequence",
    "KERNEL_DEFINITION",
    "read_bandwidth",
    "hf_tensors",
    "engine_fingerprint",
    "smollm2_engine",
    "BLOCK_TYPES",
    "gguf_tensors",
]

#: Version of the arithmetic the kernels define (bump when any result bit can change).
KERNEL_DEFINITION = 1

#: transformers ``model_type`` values whose forward pass the engine reproduces.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text"})
_STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})
#: the MLP activation of each family (transformers' name) and the engine's name for it
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_GEMMA = frozenset({"gemma3_text"})


#: GGUF block types the kernels compute with (any other GGUF tensor type is kept as f32).
BLOCK_TYPES = frozenset({"q4_0", "q4_1", "q8_0"})
_FLOAT_DTYPES = {"f32": "f32", "float32": "f32", "fp32": "f32", "bf16": "bf16", "bfloat16": "bf16"}


def _dtype_name(dtype: Any) -> str:
    """The canonical weight dtype name (``"f32"``, ``"bf16"`` or a block type); raises on others."""
    name = str(dtype).lower()
    name = _FLOAT_DTYPES.get(name, name)
    if name not in _FLOAT_DTYPES.values() and name not in BLOCK_TYPES:
        raise InvalidInputError(f"dtype must be 'bf16', 'f32' or a block type {sorted(BLOCK_TYPES)}, not {dtype!r}")
    return name


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


def engine_fingerprint(source_fingerprint: bytes | None, dtype: str, kv_dtype: str) -> bytes:
    """32 bytes naming a model as the engine computes it, on any device: the source model's
    fingerprint, the weight and KV dtypes and the kernel definition. Block weights count as
    f32: an engine on a GGUF's blocks (checked to de-quantize to the source model's f32 weights
    when built) computes the f32 engine's bits, so their streams decode with each other."""
    if source_fingerprint is None:
        raise InvalidInputError("this engine was built without a model fingerprint (fingerprint=False)")
    computes = "f32" if str(dtype) in BLOCK_TYPES else str(dtype)
    h = hashlib.blake2b(digest_size=32)
    h.update(b"seqkv-engine")
    h.update(bytes(source_fingerprint))
    h.update(f"|def={KERNEL_DEFINITION}|dtype={computes}|kv={kv_dtype}".encode())
    return h.digest()


def _activation(cfg: Any) -> str:
    return str(getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu"))


def _rope_types(rotary: Any) -> list[str]:
    kind = getattr(rotary, "rope_type", "default")
    return sorted(set(kind.values())) if isinstance(kind, dict) else [str(kind)]


def unsupported_reason(model: Any) -> str | None:
    """Why the engine cannot run ``model`` (a transformers causal LM), or ``None`` if it can:
    ``model_type`` in :data:`SUPPORTED_MODEL_TYPES` (Llama 2/3.x, Mistral, Qwen2, Qwen3, Gemma 3
    text), its family's MLP activation, no tensor-parallel split, static RoPE tables, no
    attention-score soft-capping or bidirectional attention, the usual
    ``model.model.{embed_tokens, layers, norm, rotary_emb}``."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "not a transformers model (no .config)"
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (supported: {sorted(SUPPORTED_MODEL_TYPES)})"
    act = _activation(cfg)
    want = "gelu_pytorch_tanh" if model_type in _GEMMA else "silu"
    if act != want:
        return f"activation {act!r} (the engine computes {want!r} for {model_type})"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        return "attention-score soft-capping (attn_logit_softcapping)"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "bidirectional attention"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "unexpected module layout (needs model.model.embed_tokens/layers/norm/rotary_emb)"
    for rope_type in _rope_types(inner.rotary_emb):
        if rope_type not in _STATIC_ROPE_TYPES:
            return f"RoPE type {rope_type!r} (length-dependent)"
    return None


def supports(model: Any) -> bool:
    """Whether :meth:`Engine.from_hf` can take ``model`` (see :func:`unsupported_reason`)."""
    return unsupported_reason(model) is None


def _f32_list(t: Any) -> list[float]:
    return [float(x) for x in np.asarray(t.detach().to("cpu").float().numpy(), dtype=np.float32)]


def _rope_tables(model: Any) -> tuple[list[tuple[list[float], float]], list[int]]:
    """The model's RoPE tables (inverse frequencies, attention scaling) and each layer's table:
    one table, or one per layer type (Gemma 3: full and sliding attention)."""
    inner = model.model
    rotary = inner.rotary_emb
    layer_types = getattr(model.config, "layer_types", None)
    if not isinstance(getattr(rotary, "rope_type", None), dict):
        return [(_f32_list(rotary.inv_freq), float(getattr(rotary, "attention_scaling", 1.0)))], []
    if not layer_types:
        raise InvalidInputError("per-layer-type RoPE tables without config.layer_types")
    kinds = sorted(set(layer_types), key=lambda k: (k != "full_attention", k))
    tables = [(_f32_list(getattr(rotary, f"{k}_inv_freq")), float(getattr(rotary, f"{k}_attention_scaling")))
              for k in kinds]
    return tables, [kinds.index(k) for k in layer_types]


def _layer_windows(model: Any) -> list[int]:
    """Per layer, how many positions a query reads back (0 = all): the attention module's
    ``sliding_window`` (Qwen2/3, Gemma 3 set it per layer), Mistral's config-wide one."""
    cfg = model.config
    out = []
    for layer in model.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "sliding_window"):
            window = attn.sliding_window
        elif cfg.model_type == "mistral":
            window = getattr(cfg, "sliding_window", None)
        else:
            window = None
        out.append(int(window or 0))
    return out


def _norm_eps(module: Any) -> float:
    eps = getattr(module, "variance_epsilon", None)
    return float(eps if eps is not None else module.eps)


def _native_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config dict as the native core takes it (each extra RoPE table a tuple)."""
    out = dict(config)
    if "extra_rope" in out:
        out["extra_rope"] = [(list(inv), float(scaling)) for inv, scaling in out["extra_rope"]]
    return out


def hf_config(model: Any) -> dict[str, Any]:
    """The engine's config dict of a supported transformers causal LM (what :class:`Engine`
    needs besides the tensors of :func:`hf_tensors`). Keys beyond Llama's appear only when the
    model needs them: ``hidden_act``, ``embed_scale``, ``norm_weight_offset``, ``layer_windows``,
    ``extra_rope`` / ``layer_rope``, ``final_logit_softcap``."""
    why = unsupported_reason(model)
    if why is not None:
        raise InvalidInputError(f"seqkv.engine.cpu cannot run this model: {why}")
    cfg = model.config
    inner = model.model
    attn0 = inner.layers[0].self_attn
    head_dim = int(getattr(attn0, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    tables, layer_rope = _rope_tables(model)
    config: dict[str, Any] = {
        "vocab_size": int(inner.embed_tokens.weight.shape[0]),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_layers": len(inner.layers),
        "num_heads": int(cfg.num_attention_heads),
        "num_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "head_dim": head_dim,
        "rms_norm_eps": _norm_eps(inner.norm),
        "rope_inv_freq": tables[0][0],
        "rope_attention_scaling": tables[0][1],
        "attention_scale": float(getattr(attn0, "scaling", head_dim**-0.5)),
    }
    if len(tables) > 1:
        config["extra_rope"] = [list(t) for t in tables[1:]]
        config["layer_rope"] = layer_rope
    windows = _layer_windows(model)
    if any(windows):
        config["layer_windows"] = windows
    act = _ACTIVATIONS[_activation(cfg)]
    if act != "silu":
        config["hidden_act"] = act
    if cfg.model_type in _GEMMA:
        config["embed_scale"] = float(inner.embed_tokens.embed_scale.float())
        config["norm_weight_offset"] = 1.0
    softcap = getattr(cfg, "final_logit_softcapping", None)
    if softcap is not None:
        config["final_logit_softcap"] = float(softcap)
    return config


def hf_tensors(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, tensors)`` of a supported transformers causal LM, in the engine's naming:
    ``config`` is :func:`hf_config`; ``embed`` ``[V, H]``, ``lm_head`` (only when untied),
    ``norm``, and per layer ``layers.{i}.`` + ``input_norm``, ``post_norm`` (the norm before the
    MLP), ``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down`` (``torch.nn.Linear`` layout
    ``[out, in]``), ``*_bias`` where present, and where the model has them ``q_norm``,
    ``k_norm`` (per head, ``[head_dim]``), ``attn_out_norm`` and ``mlp_out_norm`` (Gemma's norms
    of the attention and MLP outputs). Norm weights are as stored (Gemma's ``w``, used as
    ``1 + w``). Arrays are float32 copies."""
    from ..integrations.models import require_torch

    torch, _ = require_torch()
    config = hf_config(model)
    inner = model.model
    gemma = model.config.model_type in _GEMMA

    def arr(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())

    tensors: dict[str, np.ndarray] = {"embed": arr(inner.embed_tokens.weight), "norm": arr(inner.norm.weight)}
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and lm_head.weight.data_ptr() != inner.embed_tokens.weight.data_ptr():
        tensors["lm_head"] = arr(lm_head.weight)
        if getattr(lm_head, "bias", None) is not None:
            raise InvalidInputError("an lm_head bias is not supported")
    for i, layer in enumerate(inner.layers):
        a, m = layer.self_attn, layer.mlp
        p = f"layers.{i}."
        tensors[p + "input_norm"] = arr(layer.input_layernorm.weight)
        if gemma:
            tensors[p + "attn_out_norm"] = arr(layer.post_attention_layernorm.weight)
            tensors[p + "post_norm"] = arr(layer.pre_feedforward_layernorm.weight)
            tensors[p + "mlp_out_norm"] = arr(layer.post_feedforward_layernorm.weight)
        else:
            tensors[p + "post_norm"] = arr(layer.post_attention_layernorm.weight)
        for name in ("q_norm", "k_norm"):
            if getattr(a, name, None) is not None:
                tensors[p + name] = arr(getattr(a, name).weight)
        for name, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj),
                          ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj)):
            tensors[p + name] = arr(lin.weight)
            if lin.bias is not None:
                tensors[p + name + "_bias"] = arr(lin.bias)
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


#: GGUF tensor names (llama.cpp's) and the engine's names for them (per layer after ``blk.{i}.``).
_GGUF_NAMES = {"token_embd.weight": "embed", "output_norm.weight": "norm", "output.weight": "lm_head"}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_norm", "ffn_norm.weight": "post_norm",
    "attn_q.weight": "q", "attn_k.weight": "k", "attn_v.weight": "v", "attn_output.weight": "o",
    "ffn_gate.weight": "gate", "ffn_up.weight": "up", "ffn_down.weight": "down",
    "attn_q.bias": "q_bias", "attn_k.bias": "k_bias", "attn_v.bias": "v_bias",
}


def _gguf_engine_name(name: str) -> str | None:
    if name in _GGUF_NAMES:
        return _GGUF_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


def gguf_tensors(path: Any, num_heads: int, num_kv_heads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of a Llama-family GGUF file in the engine's naming (see :func:`hf_tensors`),
    without de-quantizing: ``(tensors, types)``. A tensor of a type in :data:`BLOCK_TYPES` is a
    ``(type, uint8 [rows, bytes per row])`` pair of its raw blocks, an F32/F16 tensor a float32
    array, and any other type is left out; ``types`` gives every engine tensor's GGUF type name
    (``"Q4_1"``, ``"Q6_K"``, ...). The rows of ``q`` and ``k`` are put back in transformers'
    order (llama.cpp stores them permuted for its RoPE), as transformers' GGUF loader does.
    Needs the ``gguf`` package."""
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a dependency of the torch extra
        raise InvalidInputError("reading GGUF blocks needs the 'gguf' package") from exc
    reader = gguf.GGUFReader(str(path))
    tensors: dict[str, Any] = {}
    types: dict[str, str] = {}
    for t in reader.tensors:
        name = _gguf_engine_name(t.name)
        if name is None:
            continue
        kind = t.tensor_type.name
        types[name] = kind
        data = np.asarray(t.data)
        if kind in ("F32", "F16"):
            tensors[name] = np.ascontiguousarray(data, dtype=np.float32).reshape(data.shape)
            continue
        if kind.lower() not in BLOCK_TYPES:
            continue
        if name.endswith((".q", ".k")):
            heads = num_heads if name.endswith(".q") else num_kv_heads
            data = data.reshape(heads, data.shape[0] // heads // 2, 2, data.shape[1]).swapaxes(1, 2).reshape(data.shape)
        tensors[name] = (kind.lower(), np.ascontiguousarray(data, dtype=np.uint8))
    return tensors, types


def _dequantized(blocks: tuple[str, np.ndarray]) -> np.ndarray:
    import gguf

    kind, raw = blocks
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind.upper()]), dtype=np.float32)


def _with_gguf_blocks(model: Any, config: dict[str, Any], tensors: dict[str, np.ndarray],
                      dtype: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``tensors`` (the f32 weights of a model converted from a GGUF) with every matrix the GGUF
    holds in a block type replaced by its blocks — only where the blocks de-quantize to exactly
    the model's f32 weights, so the engine computes the same bits as on the f32 weights — and
    what was kept in f32 and why (``{name: reason}``)."""
    from ..integrations.model_cache import gguf_path_of

    path = gguf_path_of(model)
    if path is None:
        raise InvalidInputError(
            f"dtype={dtype!r} computes with a GGUF's own blocks: load the model with "
            "seqkv.integrations.models.load_model(folder, gguf_file=...) or use Engine.from_gguf(path)")
    blocks, types = gguf_tensors(path, config["num_heads"], config["num_kv_heads"])
    layer_types = {types[n] for n in types if n.startswith("layers.") and isinstance(blocks.get(n), tuple)}
    if layer_types and dtype.upper() not in layer_types:
        raise InvalidInputError(f"{os.path.basename(path)} holds its layer weights as {sorted(layer_types)}, not {dtype}")
    out = dict(tensors)
    kept: dict[str, str] = {}
    for name, t in tensors.items():
        b = blocks.get(name)
        if not isinstance(b, tuple):
            if t.ndim == 2:
                kept[name] = f"GGUF type {types.get(name, 'absent')} (no block kernel)"
            continue
        if _dequantized(b).reshape(t.shape).view(np.uint32).tobytes() != t.view(np.uint32).tobytes():
            kept[name] = f"{types[name]} blocks do not de-quantize to the model's weights"
            continue
        out[name] = b
    if "lm_head" not in tensors and isinstance(out.get("embed"), np.ndarray):
        kept["lm_head"] = kept.get("embed", "tied to embed")
    return out, kept


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
        return f"<seqkv.engine.cpu.Sequence len={len(self)}>"

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

    def layer_hashes(self) -> list[bytes]:
        """Per-layer digests of this sequence's KV (:func:`seqkv.kv.hashing.layer_hashes`), equal to
        those of the float32 transformers cache :meth:`kv_cache` returns."""
        return layer_hashes(self.kv_arrays())

    def kv_cache(self, *, dtype: Any = None, device: Any = None, config: Any = None) -> Any:
        """The KV as a transformers ``DynamicCache`` (batch 1).

        ``model.generate(ids, past_key_values=cache)`` expects the cache of all of ``ids``
        but the last token (it feeds that one again): pass ``seq.fork(len(seq) - 1).kv_cache()``.

        ``dtype`` defaults to ``torch.float32``; ``config`` defaults to the config of the
        model the engine was built from (when built with :meth:`Engine.from_hf`).
        """
        from ..integrations.models import require_torch

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

        ``dtype``: ``"bf16"`` (weights rounded to bfloat16, half the bytes per step), ``"f32"``,
        or the block type of the GGUF the model was converted from (``"q4_1"`` for SmolLM2:
        its blocks, checked to de-quantize to the model's weights, so the bits are the f32
        engine's; tensors of other GGUF types stay f32: :attr:`weight_formats`, and why in
        ``info["kept_f32"]`` of a fresh build).
        ``kv_dtype``: storage of cached keys/values (``"f32"`` or ``"bf16"``).
        ``page_tokens``: positions per KV page. ``fingerprint``: also record the model's
        :func:`seqkv.integrations.models.fingerprint` (used by :class:`EngineLogitsSource`).
        """
        source_fp = None
        if fingerprint:
            from ..integrations.models import fingerprint as model_fingerprint

            source_fp = model_fingerprint(model)
        dtype = _dtype_name(dtype)
        eng = cls._from_cache(model, dtype, source_fp, kv_dtype=kv_dtype, page_tokens=page_tokens)
        if eng is None:
            config, tensors = hf_tensors(model)
            kept: dict[str, str] = {}
            if dtype in BLOCK_TYPES:
                tensors, kept = _with_gguf_blocks(model, config, tensors, dtype)
            eng = cls.from_tensors(config, tensors, dtype, kv_dtype=kv_dtype, page_tokens=page_tokens)
            if kept:
                eng.info["kept_f32"] = kept
            if source_fp is not None:
                from ..integrations.model_cache import store_engine_state

                store_engine_state(model, eng.dtype, source_fp, config, eng._core.packed_state())
        eng.hf_config = model.config
        eng.source_fingerprint = source_fp
        return eng

    @classmethod
    def from_gguf(cls, gguf_path: Any, dtype: str = "q4_1", *, kv_dtype: str = "f32", page_tokens: int = 64) -> "Engine":
        """The engine of a Llama-family GGUF file computing with its own blocks (``dtype`` the
        block type of its layer weights, e.g. ``"q4_1"``) or ``"f32"`` / ``"bf16"``: from the
        model cache when an earlier build stored it (no torch), else built once through
        :func:`seqkv.integrations.models.load_model` (the cached de-quantized model gives the
        config and the fingerprint) and stored. Its fingerprint is the one the f32 engine of
        that model has (:func:`engine_fingerprint`)."""
        dtype = _dtype_name(dtype)
        eng = cls.from_cached_gguf(gguf_path, dtype, kv_dtype=kv_dtype, page_tokens=page_tokens)
        if eng is not None:
            return eng
        from ..integrations.models import load_model

        path = os.path.abspath(os.fspath(gguf_path))
        model, _ = load_model(os.path.dirname(path), gguf_file=os.path.basename(path))
        return cls.from_hf(model, dtype, kv_dtype=kv_dtype, page_tokens=page_tokens)

    @classmethod
    def from_cached_gguf(cls, gguf_path: Any, dtype: str = "bf16", *, kv_dtype: str = "f32",
                         page_tokens: int = 64) -> "Engine | None":
        """The engine of a GGUF straight from the model cache — no torch, no transformers — when
        an earlier :meth:`from_hf` of the cached model stored its ``dtype`` weights, else ``None``
        (:func:`seqkv.integrations.model_cache.cached_engine_state`). Its fingerprint is the one
        ``Engine.for_model(load_model(...))`` has, so streams of either decode with the other."""
        dtype = _dtype_name(dtype)
        from ..integrations.model_cache import cached_engine_state

        cached = cached_engine_state(gguf_path, dtype)
        if cached is None:
            return None
        config, arrays, source_fp = cached
        core = _native.EngineCore.from_packed_state(_native_config(config), arrays, dtype=dtype, kv_dtype=kv_dtype,
                                                    page_tokens=int(page_tokens))
        return cls(core, source_fingerprint=source_fp, info=config)

    @classmethod
    def _from_cache(cls, model: Any, dtype: str, source_fp: bytes | None, *, kv_dtype: str,
                    page_tokens: int) -> "Engine | None":
        """The engine of a model loaded from the model cache, rebuilt from its cached packed
        weights (:mod:`seqkv.integrations.model_cache`), or ``None``."""
        if source_fp is None:
            return None
        from ..integrations.model_cache import load_engine_state

        config = hf_config(model)
        cached = load_engine_state(model, dtype, source_fp)
        if cached is None or cached[0] != config:
            return None
        core = _native.EngineCore.from_packed_state(_native_config(config), cached[1], dtype=dtype, kv_dtype=kv_dtype,
                                                    page_tokens=int(page_tokens))
        return cls(core, info=dict(config))

    @classmethod
    def for_model(cls, model: Any, dtype: str = "bf16", *, kv_dtype: str = "f32", page_tokens: int = 64) -> "Engine":
        """A shared engine of ``model``: built once by :meth:`from_hf` and reused while the
        model lives and its :func:`seqkv.integrations.models.fingerprint` is unchanged (codecs and stores
        built for one model share its engine; thread-safe)."""
        from ..integrations.models import fingerprint as model_fingerprint

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
        names and shapes); no torch needed. A matrix or ``embed`` may instead be a
        ``(block type, uint8 array)`` pair of GGUF blocks (``[rows, K / 32 * block bytes]``, as
        :func:`gguf_tensors` gives): kept as blocks when ``dtype`` is a block type, else
        de-quantized exactly. A block type outside :data:`BLOCK_TYPES` is an error naming it."""
        tensors = {k: (str(v[0]), np.ascontiguousarray(v[1], dtype=np.uint8)) if isinstance(v, tuple)
                   else np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        core = _native.EngineCore(_native_config(config), tensors, dtype=dtype, kv_dtype=kv_dtype, page_tokens=int(page_tokens))
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
    def weight_formats(self) -> dict[str, str]:
        """Storage of every weight matrix and of the embedding table (``"f32"``, ``"bf16"``,
        ``"q4_0"``, ``"q4_1"``, ``"q8_0"``), by packed-state name (``layers.{i}.wqkv``, ...)."""
        return dict(self._core.weight_formats)

    @property
    def step_weight_bytes(self) -> int:
        """Bytes of weights one decode step reads."""
        return int(self._core.step_weight_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        return int(self._core.kv_bytes_per_token)

    def numerics_profile(self) -> dict[str, Any]:
        """What determines the engine's bits: the kernel definition, weight and KV dtypes.
        The ISA and thread count are recorded for information only — they do not change results;
        nor does the storage of block weights (``weights``: how many matrices of each format),
        which compute as f32 (``computes_as``)."""
        counts: dict[str, int] = {}
        for fmt in self.weight_formats.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return {
            "engine": "seqkv-engine",
            "kernel_definition": KERNEL_DEFINITION,
            "dtype": self.dtype,
            "weights": dict(sorted(counts.items())),
            "computes_as": "f32" if self.dtype in BLOCK_TYPES else self.dtype,
            "kv_dtype": self.kv_dtype,
            "isa": self.isa,
            "threads": int(_native.engine_threads()),
            "version": _native.__version__,
        }

    def fingerprint(self) -> bytes:
        """32 bytes naming the model *as the engine computes it*: the source model's
        fingerprint, the weight and KV dtypes and the kernel definition."""
        return engine_fingerprint(self.source_fingerprint, self.dtype, self.kv_dtype)

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


def smollm2_engine(dtype: str = "bf16") -> Engine | None:
    """SmolLM2's engine from the model cache without importing torch (:meth:`Engine.from_cached_gguf`),
    or ``None`` until a run has built it (``Engine.for_model(load_smollm2()[0], dtype)`` or
    ``Engine.from_gguf(path, dtype)`` stores it). ``"q4_1"`` computes with the GGUF's own blocks."""
    import os

    from ..integrations.models import SMOLLM2_GGUF, smollm2_folder

    return Engine.from_cached_gguf(os.path.join(smollm2_folder(), SMOLLM2_GGUF), dtype)
