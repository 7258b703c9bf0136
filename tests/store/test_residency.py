"""The residency manager on its own: synthetic KV tensors, no model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from seqkv.integrations import transformers as hf  # noqa: E402
from seqkv.store.residency import Built, KVLayout, Residency  # noqa: E402

L, H, D = 2, 2, 16
TOKEN_BYTES = L * 2 * H * D * 4


@pytest.fixture
def layout() -> KVLayout:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                      num_key_value_heads=H, head_dim=D)
    return KVLayout(L, H, D, torch.float32, torch.device("cpu"), config)


def synthetic(layout: KVLayout, n: int, seed: int) -> object:
    g = torch.Generator().manual_seed(seed)
    return hf.cache_from_config_layers(
        layout.config, [(torch.randn(1, H, n, D, generator=g), torch.randn(1, H, n, D, generator=g)) for _ in range(L)]
    )


def put(res: Residency, layout: KVLayout, number: int, toks: np.ndarray, seed: int) -> tuple[object, str]:
    cache = synthetic(layout, toks.size, seed)
    handle = res.insert_hot(toks, cache, number)
    return cache, res.track(number, toks.size, 100, toks, cache, handle)


def test_hot_reads_are_exact_and_shared_prefix_pages_stored_once(layout):
    res = Residency(layout, ("hot", "cold"), capacity_bytes=None, page_tokens=4)
    toks = np.arange(20, dtype=np.uint32)
    a, tier = put(res, layout, 1, toks, seed=0)
    assert tier == "hot"
    built, served = res.read(1, "exact")
    assert served == "hot" and hf.caches_equal(built.cache, a) and built.cache is not a
    # a second session with the same first 16 tokens and the same KV there shares 4 pages
    b_layers = [(k.clone(), v.clone()) for k, v in hf.cache_layers(a)]
    for k, v in b_layers:
        k[..., 16:, :] += 1.0
        v[..., 16:, :] += 1.0
    b = hf.cache_from_config_layers(layout.config, b_layers)
    toks_b = toks.copy()
    toks_b[16:] += 100
    res.track(2, 20, 100, toks_b, b, res.insert_hot(toks_b, b, 2))
    st = res.stats(cold_bytes=200)
    assert st["tiers"]["hot"]["pages_shared"] == 4
    assert st["tiers"]["hot"]["bytes"] == st["tiers"]["hot"]["logical_bytes"] - 16 * TOKEN_BYTES
    n, cache = res.lookup_prefix(np.concatenate([toks_b[:18], [7]]).astype(np.uint32))
    assert n == 18 and hf.caches_equal(cache, hf.cache_from_config_layers(
        layout.config, [(k[..., :18, :], v[..., :18, :]) for k, v in hf.cache_layers(b)]))
    res.forget(1)
    res.forget(2)
    assert res.stats(0)["hot_index"]["pages"] == 0 and res.stats(0)["used_bytes"] == 0


def test_budget_demotes_to_warm_then_cold_and_promotes_on_access(layout):
    res = Residency(layout, ("hot", "warm", "cold"), capacity_bytes=60 * TOKEN_BYTES, page_tokens=4)
    caches = {}
    for number in range(1, 6):
        toks = np.arange(number * 100, number * 100 + 24, dtype=np.uint32)
        caches[number], _ = put(res, layout, number, toks, seed=number)
        assert res.stats(0)["used_bytes"] <= 60 * TOKEN_BYTES
    tiers = {n: res.tier_of(n) for n in caches}
    assert tiers[5] == "hot" and "warm" in tiers.values()
    warm = next(n for n, t in tiers.items() if t == "warm")
    built, served = res.read(warm, "faithful")
    assert served == "warm" and built.kind == "quantized"
    err = max(float((x - y).abs().max()) for (x, _), (y, _) in zip(hf.cache_layers(built.cache), hf.cache_layers(caches[warm])))
    assert 0 < err < 2.0  # 3-bit codes: close, not exact
    assert res.read(warm, "exact") is None  # warm KV is never served as exact
    res.accessed(warm, served, built)
    assert res.tier_of(warm) == "hot" and res.stats(0)["tiers"]["warm"]["hits"] == 1
    assert res.demote(warm, "cold") == "cold" and res.read(warm, "faithful") is None
    res.accessed(warm, "cold", Built(built.tokens, caches[warm], "exact"))
    assert res.tier_of(warm) == "hot"
    assert hf.caches_equal(res.read(warm, "exact")[0].cache, caches[warm])
    res.drop_all()
    assert all(res.tier_of(n) == "cold" for n in caches) and res.stats(0)["used_bytes"] == 0
