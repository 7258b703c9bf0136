"""KV caches of one model under different compute schedules (shared by benches/residual.py and
benches/gpu_kernels.py)."""

from __future__ import annotations

from typing import Any

import numpy as np


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """[(keys, values)] per layer of a transformers cache ([B, H, T, d] tensors)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def run_schedule(model: Any, ids: Any, chunks: list[int]) -> list[tuple[Any, Any]]:
    """KV after feeding ``ids`` [1, T] in chunks of the given sizes (sum = T), fresh cache."""
    import torch
    from transformers import DynamicCache

    assert sum(chunks) == ids.shape[1]
    cache = DynamicCache()
    pos = 0
    with torch.inference_mode():
        for c in chunks:
            model(input_ids=ids[:, pos : pos + c], past_key_values=cache, use_cache=True)
            pos += c
    return [(k.detach().clone(), v.detach().clone()) for k, v in cache_layers(cache)]


def schedules(T: int) -> dict[str, list[int]]:
    return {
        "prefill": [T],
        "single_step": [1] * T,
        "chunks_64": [64] * (T // 64) + ([T % 64] if T % 64 else []),
        "prefill_then_steps": [T // 2] + [1] * (T - T // 2),
    }


def text_ids(tokenizer: Any, T: int) -> Any:
    import torch

    text = open("/usr/share/common-licenses/Apache-2.0").read()
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :T]
    return ids.to(torch.long)


def seeded_smollm2_shape(seed: int = 0, device: str = "cpu") -> Any:
    """A Llama with SmolLM2-135M's dimensions whose weights come from NumPy's PCG64 (the same
    bits on every machine, unlike torch's initializers): for comparing KV across devices."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
    model = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32) * np.float32(0.05)))
    return model.to(device=device, dtype=torch.float32).eval()


def seeded_ids(T: int, seed: int = 1) -> Any:
    import torch

    return torch.from_numpy(np.random.default_rng(seed).integers(0, 49152, (1, T)))


def save_kv(path: str, kv: list[tuple[Any, Any]]) -> None:
    np.savez(path, *[x.detach().float().cpu().numpy() for pair in kv for x in pair])


def load_kv(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    d = np.load(path)
    arrs = [d[f"arr_{i}"] for i in range(len(d.files))]
    return list(zip(arrs[0::2], arrs[1::2]))
