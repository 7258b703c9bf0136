"""The GPU engine's host side, run without a GPU: which engine ``engine="auto"`` / ``True`` pick for
a model on CUDA when CuPy or the GPU is missing or the model is unsupported (transformers with the
reason, MissingExtraError naming seqkv[cuda], InvalidInputError), and how a forward of more rows than
``max_rows`` is cut into passes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqkv.codecs import sources
from seqkv.codecs.sources import EngineLogitsSource, TransformersSource, choose_engine, default_source
from seqkv.engine.gpu import _chunk_end_rows, _passes, gpu_unsupported_reason
from seqkv.errors import InvalidInputError, MissingExtraError

pytest.importorskip("transformers")


def _cupy_missing() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() < 1
    except Exception:
        return True


needs_no_gpu = pytest.mark.skipif(not _cupy_missing(), reason="checks the behaviour without CuPy or a GPU")


@pytest.fixture
def on_cuda(monkeypatch):
    """Models seen as living on CUDA (this machine has no GPU to put them on)."""
    monkeypatch.setattr(sources, "_device_type", lambda model: "cuda")


@needs_no_gpu
def test_auto_on_a_cuda_model_without_cupy_falls_back_with_the_reason(tiny_llama, on_cuda):
    src = default_source(tiny_llama, "auto")
    assert isinstance(src, TransformersSource)
    assert "seqkv[cuda]" in src.fallback_reason and "seqkv.engine.gpu" in src.fallback_reason


@needs_no_gpu
@pytest.mark.parametrize("choice", [True, "seqkv"])
def test_requiring_the_engine_on_a_cuda_model_without_cupy_names_the_extra(tiny_llama, on_cuda, choice):
    with pytest.raises(MissingExtraError, match=r"seqkv\[cuda\]"):
        choose_engine(tiny_llama, choice)


def test_an_unsupported_cuda_model_falls_back_or_is_refused(on_cuda):
    biased = _tiny("llama-bias")
    assert "bias" in gpu_unsupported_reason(biased)
    decision = choose_engine(biased, "auto")
    assert decision.engine is None and "bias" in decision.fallback_reason
    with pytest.raises(InvalidInputError, match="bias"):
        choose_engine(biased, True)


def _tiny(kind: str):
    import torch
    import transformers

    torch.manual_seed(0)
    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if kind == "qwen3":  # q/k norms
        return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**shape)).eval()
    if kind == "llama-bias":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(attention_bias=True, **shape)).eval()
    return transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=8, **shape)).eval()


@pytest.mark.parametrize("kind,why", [("qwen3", "q_norm"), ("mistral", "layer_windows")])
def test_models_the_cpu_engine_runs_beyond_the_gpu_kernels_are_refused(kind, why, on_cuda):
    """The CPU engine runs these (q/k norms, sliding windows); the GPU kernels implement only the
    Llama core, so the GPU engine must refuse them rather than compute other numbers."""
    from seqkv.engine.cpu import hf_tensors, unsupported_reason
    from seqkv.engine.gpu import gpu_unsupported_config

    model = _tiny(kind)
    assert unsupported_reason(model) is None
    assert why in gpu_unsupported_reason(model)
    assert why in gpu_unsupported_config(*hf_tensors(model))
    decision = choose_engine(model, "auto")
    assert decision.engine is None and why in decision.fallback_reason


def test_the_llama_core_is_accepted(tiny_llama):
    from seqkv.engine.cpu import hf_tensors
    from seqkv.engine.gpu import gpu_unsupported_config

    assert gpu_unsupported_reason(tiny_llama) is None
    assert gpu_unsupported_config(*hf_tensors(tiny_llama)) is None


def test_a_cpu_model_keeps_the_cpu_engine(tiny_llama):
    assert isinstance(default_source(tiny_llama, "auto"), EngineLogitsSource)
    assert choose_engine(tiny_llama, False).engine is None
    with pytest.raises(InvalidInputError):
        choose_engine(tiny_llama, "gpu")


def test_another_device_falls_back(tiny_llama, monkeypatch):
    monkeypatch.setattr(sources, "_device_type", lambda model: "mps")
    decision = choose_engine(tiny_llama, "auto")
    assert decision.engine is None and "'mps'" in decision.fallback_reason
    with pytest.raises(InvalidInputError):
        choose_engine(tiny_llama, True)


@given(sizes=st.lists(st.integers(0, 40), max_size=8), max_rows=st.integers(1, 50))
def test_passes_cut_the_rows_in_order(sizes, max_rows):
    """Concatenating the passes' pieces gives every chunk's rows in input order, no pass is over
    max_rows or holds a chunk twice, and the 'last' rows are each non-empty chunk's last token."""
    passes = _passes(sizes, max_rows)
    flat = [(i, r) for p in passes for i, a, b in p for r in range(a, b)]
    assert flat == [(i, r) for i, n in enumerate(sizes) for r in range(n)]
    assert all(0 < sum(b - a for _, a, b in p) <= max_rows for p in passes)
    assert all(len({i for i, _, _ in p}) == len(p) for p in passes)
    lasts = []
    for p in passes:
        rows = [(i, r) for i, a, b in p for r in range(a, b)]
        lasts += [rows[k] for k in _chunk_end_rows(p, sizes)]
    assert lasts == [(i, n - 1) for i, n in enumerate(sizes) if n]
