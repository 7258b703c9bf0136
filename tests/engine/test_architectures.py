"""The engine on the draft-model families beyond Llama, checked against transformers on
random-weight models of realistic layer shapes (few layers, small vocab: nothing can be
downloaded here): Qwen2 (q/k/v biases), Qwen3 (q/k RMSNorm), Mistral (sliding window),
Llama 3.x (``llama3`` RoPE scaling), Gemma 3 (sliding layers interleaved with global ones and
their own RoPE table, ``1 + w`` norms, norms of the attention and MLP outputs, scaled
embeddings, GELU-tanh, final-logit soft-capping). For each: f32-weight logits within
``LOGIT_TOL`` of transformers fp32, the same greedy continuation for 32 tokens, and the
invariance checks (one prefill = random chunks = single steps beside another sequence = the
scalar kernels, logits and KV bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqkv.engine import Engine  # noqa: E402
from seqkv.engine.cpu import hf_config, supports, unsupported_reason  # noqa: E402
from seqkv.errors import InvalidInputError  # noqa: E402

#: largest |engine f32 - transformers fp32| logit allowed, relative to the largest |logit|
LOGIT_TOL = 2e-5
VOCAB = 1024
PROMPT = 40  # longer than every sliding window below, so the windows matter


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Norm weights are initialised to a constant; make them vary so that a misplaced norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_hidden_layers=3, max_position_embeddings=4096, tie_word_embeddings=True)
    if kind == "qwen2":  # Qwen2.5-0.5B layer shapes
        cfg = transformers.Qwen2Config(hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                                       num_key_value_heads=2, rope_theta=1e6, **common)
        model = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "qwen2-sliding":
        cfg = transformers.Qwen2Config(hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                                       num_key_value_heads=2, use_sliding_window=True, sliding_window=12,
                                       max_window_layers=1, **common)
        model = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "qwen3":  # Qwen3-0.6B layer shapes
        cfg = transformers.Qwen3Config(hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                                       num_key_value_heads=8, head_dim=128, rope_theta=1e6, **common)
        model = transformers.Qwen3ForCausalLM(cfg)
    elif kind == "mistral":  # Mistral's head_dim and GQA ratio, a short window
        cfg = transformers.MistralConfig(hidden_size=1024, intermediate_size=3584, num_attention_heads=8,
                                         num_key_value_heads=2, head_dim=128, sliding_window=16, **common)
        model = transformers.MistralForCausalLM(cfg)
    elif kind == "llama3":  # Llama 3.2-1B's RoPE scaling and head_dim, fewer heads
        cfg = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                                       num_key_value_heads=4, head_dim=64, rope_theta=500000.0,
                                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8192}, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "gemma3":  # Gemma 3 270M layer shapes: 4 heads of 256, one KV head
        cfg = transformers.Gemma3TextConfig(
            hidden_size=640, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
            query_pre_attn_scalar=256, sliding_window=12,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            final_logit_softcapping=30.0, **common)
        model = transformers.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    _randomize_norms(model, 1)
    return model.eval().to(torch.float32)


KINDS = ["qwen2", "qwen2-sliding", "qwen3", "mistral", "llama3", "gemma3"]


@pytest.fixture(scope="module", params=KINDS)
def arch(request):
    model = _build(request.param)
    return request.param, model, Engine.from_hf(model, "f32", page_tokens=16, fingerprint=False)


def _prompt(seed: int = 3, n: int = PROMPT) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n)


def test_config_names_every_feature(arch):
    kind, model, _ = arch
    cfg = hf_config(model)
    expect = {
        "qwen2": set(), "qwen2-sliding": {"layer_windows"}, "qwen3": set(), "mistral": {"layer_windows"},
        "llama3": set(),
        "gemma3": {"layer_windows", "extra_rope", "layer_rope", "hidden_act", "embed_scale", "norm_weight_offset",
                   "final_logit_softcap"},
    }[kind]
    optional = {"layer_windows", "extra_rope", "layer_rope", "hidden_act", "embed_scale", "norm_weight_offset",
                "final_logit_softcap"}
    assert optional & set(cfg) == expect
    if kind == "qwen2-sliding":
        assert cfg["layer_windows"] == [0, 12, 12]
    if kind == "gemma3":
        assert cfg["layer_windows"] == [12, 0, 12] and cfg["layer_rope"] == [1, 0, 1]


def test_logits_agree_with_transformers(arch):
    kind, model, eng = arch
    ids = _prompt()
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].numpy()
    got = eng.prefill(eng.new_sequence(), ids)
    scale = float(np.abs(ref).max())
    assert np.abs(got - ref).max() <= LOGIT_TOL * scale, (kind, float(np.abs(got - ref).max()), scale)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_greedy_continuation_agrees(arch):
    kind, model, eng = arch
    ids = _prompt(5, 24)
    with torch.no_grad():
        out = model.generate(torch.tensor(ids[None]), max_new_tokens=32, do_sample=False,
                             min_new_tokens=32, pad_token_id=0)
    ref = out[0, len(ids):].tolist()
    seq = eng.new_sequence()
    eng.prefill(seq, ids, logits="none")
    assert eng.generate(seq, 32) == ref, kind


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 17), min_size=1, max_size=5), other=st.integers(1, 30))
def test_schedules_batches_and_isas_give_the_same_bits(arch, chunks, other):
    kind, model, eng = arch
    ids = _prompt(7, 36)
    ref_seq = eng.new_sequence()
    ref = eng.prefill(ref_seq, ids)
    hashes = ref_seq.layer_hashes()
    # random chunking
    seq, rows, at = eng.new_sequence(), [], 0
    for c in chunks:
        rows.append(eng.prefill(seq, ids[at:at + c]))
        at += c
    rows.append(eng.prefill(seq, ids[at:]))
    assert np.concatenate(rows).tobytes() == ref.tobytes()
    assert seq.layer_hashes() == hashes
    # single steps beside another sequence
    a, b = eng.new_sequence(), eng.new_sequence()
    eng.prefill(b, _prompt(11, other), logits="none")
    steps = [eng.step([b, a], [int(ids[j]) % VOCAB, int(ids[j])])[1] for j in range(len(ids))]
    assert np.stack(steps).tobytes() == ref.tobytes()
    assert a.layer_hashes() == hashes


def test_scalar_kernels_give_the_same_bits(arch):
    kind, model, eng = arch
    ids = _prompt(7, 20)
    ref_seq, seq = eng.new_sequence(), eng.new_sequence()
    ref = eng.prefill(ref_seq, ids)
    scalar = eng.with_isa("scalar")
    rows = [scalar.prefill(seq, ids[:13]), scalar.prefill(seq, ids[13:])]
    assert np.concatenate(rows).tobytes() == ref.tobytes()
    assert seq.layer_hashes() == ref_seq.layer_hashes()


def test_bf16_weights_and_kv_run_invariantly(arch):
    kind, model, _ = arch
    eng = Engine.from_hf(model, "bf16", kv_dtype="bf16", page_tokens=7, fingerprint=False)
    ids = _prompt(13, 30)
    ref = eng.prefill(eng.new_sequence(), ids)
    seq = eng.new_sequence()
    rows = [eng.prefill(seq, ids[:9])] + [eng.step([seq], [int(t)]) for t in ids[9:]]
    assert np.concatenate(rows).tobytes() == ref.tobytes()
    with torch.no_grad():
        fp32 = model(torch.tensor(ids[None])).logits[0].numpy()
    assert np.abs(ref - fp32).max() < 0.05 * np.abs(fp32).max()  # bf16 weights: close, not equal


def test_unsupported_models_are_named():
    torch.manual_seed(0)
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16)
    phi = transformers.Phi3ForCausalLM(transformers.Phi3Config(**small, pad_token_id=0))
    assert "model type 'phi3'" in unsupported_reason(phi)
    dyn = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small, rope_scaling={"rope_type": "dynamic",
                                                                                         "factor": 2.0}))
    assert "RoPE type 'dynamic'" in unsupported_reason(dyn)
    capped = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**small, attn_logit_softcapping=50.0))
    assert "soft-capping" in unsupported_reason(capped)
    gelu = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small, hidden_act="gelu"))
    assert "activation 'gelu'" in unsupported_reason(gelu)
    assert not supports(phi)
    with pytest.raises(InvalidInputError, match="phi3"):
        Engine.from_hf(phi, fingerprint=False)
