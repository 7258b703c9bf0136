"""seqkv.engine.cpu: bit-identity across schedules, batch compositions and ISAs; agreement
with transformers; the KV as a DynamicCache; the lm-codec logits source."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import seqkv  # noqa: E402
from seqkv.codecs.sources import EngineLogitsSource  # noqa: E402
from seqkv.engine import Engine  # noqa: E402
from seqkv.integrations.transformers import layer_hashes as cache_layer_hashes  # noqa: E402
from seqkv.kv.hashing import layer_hashes  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def tiny_engines(tiny_llama):
    return {
        "bf16": Engine.from_hf(tiny_llama, "bf16", page_tokens=8),
        "f32": Engine.from_hf(tiny_llama, "f32", kv_dtype="bf16", page_tokens=5),
    }


def run_schedule(eng: Engine, tokens: np.ndarray, chunks: list[int]):
    """Feed `tokens` in the given chunk sizes (remainder as single steps); all logits rows."""
    seq = eng.new_sequence()
    rows = []
    at = 0
    for c in chunks:
        if at >= len(tokens):
            break
        rows.append(eng.prefill(seq, tokens[at : at + c]))
        at += c
    while at < len(tokens):
        rows.append(eng.step([seq], [int(tokens[at])]))
        at += 1
    return np.concatenate(rows), seq


tokens_st = st.lists(st.integers(0, 511), min_size=1, max_size=64).map(lambda x: np.array(x, dtype=np.int64))


@SETTINGS
@given(tokens=tokens_st, chunks=st.lists(st.integers(1, 20), max_size=8), dtype=st.sampled_from(["bf16", "f32"]))
def test_schedules_are_bit_identical(tiny_engines, tokens, chunks, dtype):
    eng = tiny_engines[dtype]
    ref, ref_seq = run_schedule(eng, tokens, [len(tokens)])
    ref_hashes = ref_seq.layer_hashes()
    for sched in (chunks, []):  # random chunking (rest as steps), and all single steps
        got, seq = run_schedule(eng, tokens, sched)
        assert bits(got) == bits(ref)
        assert seq.layer_hashes() == ref_hashes


@SETTINGS
@given(
    target=tokens_st,
    others=st.lists(st.tuples(tokens_st, st.integers(0, 8)), min_size=1, max_size=5),
    where=st.integers(0, 5),
)
def test_batch_composition_does_not_matter(tiny_engines, target, others, where):
    """A sequence decoded alone, or inside batches of other sequences (of any lengths, with
    prefill chunks mixed in), gives the same logits and KV bits."""
    eng = tiny_engines["bf16"]
    alone, alone_seq = run_schedule(eng, target, [1])
    seq = eng.new_sequence()
    companions = []
    for toks, pre in others:
        s = eng.new_sequence()
        if pre:
            eng.prefill(s, toks[:pre], logits="none")
        companions.append((s, toks))
    rows = []
    for i, t in enumerate(target):
        batch_seqs, chunks = [], []
        for j, (s, toks) in enumerate(companions):
            batch_seqs.append(s)
            chunks.append(toks[(i + j) % len(toks) : (i + j) % len(toks) + 1 + (j % 3)])
        pos = where % (len(batch_seqs) + 1)
        batch_seqs.insert(pos, seq)
        chunks.insert(pos, [int(t)])
        out = eng.forward(batch_seqs, chunks, logits="last")
        rows.append(out[pos])
    assert bits(np.stack(rows)) == bits(alone)
    assert seq.layer_hashes() == alone_seq.layer_hashes()


def test_step_of_many_streams(tiny_engines):
    eng = tiny_engines["bf16"]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 512, n) for n in (3, 17, 9, 30)]
    seqs = [eng.new_sequence() for _ in prompts]
    for s, p in zip(seqs, prompts):
        eng.prefill(s, p[:-1], logits="none")
    batched = eng.step(seqs, [int(p[-1]) for p in prompts])
    for i, p in enumerate(prompts):
        alone = eng.prefill(eng.new_sequence(), p)[-1]
        assert bits(batched[i]) == bits(alone)


def test_isas_agree(tiny_engines):
    eng = tiny_engines["bf16"]
    scalar = eng.with_isa("scalar")
    toks = np.random.default_rng(2).integers(0, 512, 40)
    a, sa = run_schedule(eng, toks, [13, 13])
    b, sb = run_schedule(scalar, toks, [40])
    assert bits(a) == bits(b)
    assert sa.layer_hashes() == sb.layer_hashes()


def _bf16_params_copy(model):
    """The model with every parameter (not the RoPE buffer) rounded to bf16, computing in f32."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return m


def test_agrees_with_transformers(tiny_llama, tiny_engines):
    toks = np.random.default_rng(3).integers(0, 512, 48)
    with torch.no_grad():
        ref = tiny_llama(torch.tensor(toks[None])).logits[0].numpy()
        ref_bf = _bf16_params_copy(tiny_llama)(torch.tensor(toks[None])).logits[0].numpy()
    f32 = Engine.from_hf(tiny_llama, "f32")
    got = f32.prefill(f32.new_sequence(), toks)
    assert np.abs(got - ref).max() < 1e-5
    got_bf = tiny_engines["bf16"].prefill(tiny_engines["bf16"].new_sequence(), toks)
    assert np.abs(got_bf - ref_bf).max() < 1e-5


def test_kv_cache_matches_transformers_and_generates(tiny_llama):
    eng = Engine.from_hf(tiny_llama, "f32")
    toks = np.random.default_rng(4).integers(0, 512, 20)
    seq = eng.new_sequence()
    eng.prefill(seq, toks)
    cache = seq.kv_cache()
    with torch.no_grad():
        out = tiny_llama(torch.tensor(toks[None]), use_cache=True)
    for (k, v), layer in zip(seq.kv_arrays(), out.past_key_values.layers):
        assert np.abs(k - layer.keys[0].numpy()).max() < 1e-5
        assert np.abs(v - layer.values[0].numpy()).max() < 1e-5
    assert cache_layer_hashes(cache) == seq.layer_hashes()
    # The exported cache continues generation in transformers like the engine does
    # (generate() wants the cache of all prompt tokens but the last).
    ids = torch.tensor(toks[None])
    with torch.no_grad():
        gen = tiny_llama.generate(ids, past_key_values=seq.fork(len(toks) - 1).kv_cache(), max_new_tokens=6, do_sample=False)
    assert gen[0, len(toks) :].tolist() == eng.generate(seq, 6)


def test_fork_shares_pages_and_continues(tiny_engines):
    eng = tiny_engines["bf16"]
    toks = np.random.default_rng(5).integers(0, 512, 40)
    ref, ref_seq = run_schedule(eng, toks, [40])
    base = eng.new_sequence()
    eng.prefill(base, toks[:25])
    fork = base.fork(17)
    pages, shared = fork.page_stats()
    assert pages == 3 and shared >= 2
    rows = eng.prefill(fork, toks[17:])
    assert bits(rows) == bits(ref[17:])
    assert fork.layer_hashes() == ref_seq.layer_hashes()
    # the parent is untouched by the fork's writes (copy on write)
    cont = eng.prefill(base, toks[25:])
    assert bits(cont) == bits(ref[25:])
    assert len(base) == 40 and base.schedule == (25, 15)


def test_errors(tiny_engines, tiny_llama):
    eng = tiny_engines["bf16"]
    seq = eng.new_sequence()
    with pytest.raises(seqkv.InvalidInputError):
        eng.prefill(seq, [512])
    with pytest.raises(seqkv.InvalidInputError):
        eng.prefill(seq, [-1])
    with pytest.raises(seqkv.InvalidInputError):
        eng.step([seq, seq], [1, 2])
    with pytest.raises(seqkv.InvalidInputError):
        eng.step([seq], [1, 2])
    other = Engine.from_hf(tiny_llama, "bf16", fingerprint=False)
    with pytest.raises(seqkv.InvalidInputError):
        other.prefill(seq, [1])
    with pytest.raises(seqkv.InvalidInputError):
        Engine.from_hf(tiny_llama, "fp8")
    with pytest.raises(seqkv.InvalidInputError):
        other.fingerprint()
    assert len(seq) == 0


def test_layer_hash_definition():
    """Known answer of the one layer-hash definition (docs/format.md): BLAKE2b-8, personalised,
    over the batch-1 shape, the dtype name, then K and V bytes; the engine's [H, T, D] arrays
    hash as the [1, H, T, D] float32 tensor they become."""
    import hashlib
    import struct

    k = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    v = -k
    h = hashlib.blake2b(digest_size=8, person=b"seqkv-kv")
    h.update(struct.pack("<4q", 1, 1, 3, 4) + b"torch.float32" + k.tobytes() + v.tobytes())
    assert layer_hashes([(k, v)]) == [h.digest()]
    torch = pytest.importorskip("torch")
    assert cache_layer_hashes([(torch.from_numpy(k)[None], torch.from_numpy(v)[None])]) == [h.digest()]


def test_logits_source_encode_by_prefill_decode_by_steps(tiny_llama, tiny_engines):
    from seqkv.codecs.lm import LMCodec

    eng = tiny_engines["bf16"]
    src = EngineLogitsSource(eng, chunk=7)
    toks = np.random.default_rng(6).integers(0, 512, 50)
    prefix = np.array([1, 2, 3])
    by_prefill = list(src.iter_rows(prefix, toks))
    by_steps = list(super(EngineLogitsSource, src).iter_rows(prefix, toks))  # start + single steps
    assert len(by_prefill) == len(by_steps) == 50
    assert all(bits(a) == bits(b) for a, b in zip(by_prefill, by_steps))
    codec = LMCodec(tiny_llama, source=EngineLogitsSource(eng, chunk=16))
    data = codec.encode(toks)
    assert np.array_equal(codec.decode(data), toks)
    # a stream coded by the engine is refused by plain transformers (different fingerprint)
    with pytest.raises(seqkv.ModelMismatchError):
        LMCodec(tiny_llama, engine=False).decode(data)
    # ... and decoded by the default codec of the model, which is the engine (bf16 weights)
    assert np.array_equal(LMCodec(tiny_llama).decode(data), toks)


# ---- SmolLM2 (small: <= 32 tokens) ---------------------------------------------------


@pytest.fixture(scope="module")
def smol_engine(smollm2):
    model, _ = smollm2
    return Engine.from_hf(model, "bf16")


@pytest.fixture(scope="module")
def smol_text(smollm2):
    _, tok = smollm2
    text = open("/usr/share/common-licenses/Apache-2.0").read()[:400]
    return np.array(tok(text)["input_ids"][:32])


@pytest.mark.model
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 12), min_size=1, max_size=4), cut=st.integers(1, 31))
def test_smollm2_schedules_and_batches(smol_engine, smol_text, chunks, cut):
    eng = smol_engine
    toks = smol_text
    ref, ref_seq = run_schedule(eng, toks, [len(toks)])
    got, seq = run_schedule(eng, toks, chunks)
    assert bits(got) == bits(ref)
    assert seq.layer_hashes() == ref_seq.layer_hashes()
    # the tail as a batch beside another sequence's prefill
    a, b = eng.new_sequence(), eng.new_sequence()
    eng.prefill(a, toks[:cut], logits="none")
    rows = eng.forward([b, a], [toks[::-1][:5], toks[cut:]], logits="all")[5:]
    assert bits(rows) == bits(ref[cut:])
    assert a.layer_hashes() == ref_seq.layer_hashes()


@pytest.mark.model
def test_smollm2_agrees_with_transformers(smollm2, smol_engine, smol_text):
    model, _ = smollm2
    toks = smol_text
    with torch.no_grad():
        ref = model(torch.tensor(toks[None])).logits[0].numpy()
    f32 = Engine.from_hf(model, "f32")
    got = f32.prefill(f32.new_sequence(), toks)
    assert np.abs(got - ref).max() < 2e-3
    bf = smol_engine.prefill(smol_engine.new_sequence(), toks)
    assert (bf.argmax(1) == ref.argmax(1)).mean() >= 0.9
    # greedy continuation: engine (f32) == transformers generate from the exported cache
    seq = f32.new_sequence()
    f32.prefill(seq, toks, logits="none")
    cache = seq.fork(len(toks) - 1).kv_cache()  # generate() re-feeds the last prompt token
    with torch.no_grad():
        gen = model.generate(torch.tensor(toks[None]), past_key_values=cache, max_new_tokens=8, do_sample=False)
    assert gen[0, len(toks) :].tolist() == f32.generate(seq, 8)


# ---- the CUDA kernels, emulated on the CPU (threads + barriers), against the CPU engine -------


def _build_emulator(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    root = Path(__file__).resolve().parents[2]
    src = (root / "python" / "seqkv" / "cuda" / "kernels" / "engine.cu").read_text()
    src = src.replace("extern __shared__ float sm[];", "float* sm = g_dynsmem;")
    (tmp_path / "engine_emu.cu").write_text(src)
    here = root / "tests" / "engine" / "engine_emu"
    exe = tmp_path / "driver"
    cmd = ["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", f"-I{here}", f"-I{tmp_path}",
           str(here / "driver.cpp"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        if "barrier" in r.stderr and "No such file" in r.stderr:
            pytest.skip("no C++20 <barrier>")
        raise AssertionError(r.stderr[-4000:])
    return exe


def test_rope_table_numpy_replica_is_exact(tiny_engines):
    from seqkv.engine.gpu import rope_table

    core = tiny_engines["bf16"]._core
    info = tiny_engines["bf16"].info
    pos = list(range(0, 5000, 7)) + [65535, 100000]
    c1, s1 = core.rope_table(pos)
    c2, s2 = rope_table(info["rope_inv_freq"], info["rope_attention_scaling"], pos)
    assert c1.tobytes() == c2.tobytes() and s1.tobytes() == s2.tobytes()


def test_cuda_kernels_emulated_match_cpu_engine(tiny_llama, tmp_path):
    import subprocess

    from seqkv.engine.cpu import hf_tensors
    from seqkv.engine.gpu import gpu_weight_arrays

    exe = _build_emulator(tmp_path)
    config, tensors = hf_tensors(tiny_llama)
    max_len, slots = 80, 3
    arrays = gpu_weight_arrays(config, tensors, max_len)
    for name, a in arrays.items():
        ext = ".u16" if a.dtype == np.uint16 else ".f32"
        a.tofile(tmp_path / (name + ext))
    c = config
    np.array([c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_layers"], c["num_heads"],
              c["num_kv_heads"], c["head_dim"], max_len, slots], np.int32).tofile(tmp_path / "config.i32")
    np.array([c["rms_norm_eps"], c["attention_scale"]], np.float32).tofile(tmp_path / "scalars.f32")
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 512, n) for n in (7, 70, 1)]  # 70: K/V in two rounds of 64 rows
    steps = [rng.integers(0, 512, 3) for _ in range(3)]
    # pass 0: all prompts in one batch (rows interleaved by slot); passes 1..3: one step per slot
    passes = []
    rows = [(s, i, int(t)) for s, p in enumerate(prompts) for i, t in enumerate(p)]
    passes.append(rows)
    lens = [len(p) for p in prompts]
    for st_ in steps:
        passes.append([(s, lens[s], int(st_[s])) for s in range(slots)])
        lens = [n + 1 for n in lens]
    flat = []
    for rws in passes:
        flat.append(len(rws))
        for r in rws:
            flat.extend(r)
    np.array(flat, np.int32).tofile(tmp_path / "passes.i32")
    subprocess.run([str(exe), str(tmp_path)], check=True, timeout=600)
    V = c["vocab_size"]
    gpu_logits = [np.fromfile(tmp_path / f"logits_{i}.f32", np.float32).reshape(-1, V) for i in range(len(passes))]
    gpu_argmax = [np.fromfile(tmp_path / f"argmax_{i}.u32", np.uint32) for i in range(len(passes))]
    kv = np.fromfile(tmp_path / "kv.f32", np.float32).reshape(slots, c["num_layers"], 2, max_len, c["num_kv_heads"], c["head_dim"])
    eng = Engine.from_tensors(config, tensors, "bf16")
    for s in range(slots):
        seq = eng.new_sequence()
        cpu_rows = [eng.prefill(seq, prompts[s])]
        for st_ in steps:
            cpu_rows.append(eng.step([seq], [int(st_[s])]))
        gpu_rows = [gpu_logits[0][[i for i, r in enumerate(passes[0]) if r[0] == s]]]
        gpu_rows += [gpu_logits[p][s : s + 1] for p in range(1, len(passes))]
        assert bits(np.concatenate(cpu_rows)) == bits(np.concatenate(gpu_rows)), f"slot {s} logits differ"
        for layer, (k, v) in enumerate(seq.kv_arrays()):
            n = len(seq)
            assert bits(k) == bits(kv[s, layer, 0, :n].transpose(1, 0, 2)), f"slot {s} layer {layer} keys"
            assert bits(v) == bits(kv[s, layer, 1, :n].transpose(1, 0, 2)), f"slot {s} layer {layer} values"
    for lg, am in zip(gpu_logits, gpu_argmax):
        assert np.array_equal(am, lg.argmax(1))


@pytest.mark.gpu
def test_gpu_engine_matches_cpu_engine(tiny_llama):
    cp = pytest.importorskip("cupy")
    from seqkv.coding import gpu
    from seqkv.cuda import runtime as cuda_runtime
    from seqkv.kv import gpu as kvgpu

    if not cuda_runtime.available():
        pytest.skip("no CUDA device")
    from seqkv.engine import GpuEngine
    from seqkv.engine.cpu import hf_tensors

    config, tensors = hf_tensors(tiny_llama)
    g = GpuEngine(config, tensors, max_slots=4, max_len=128)
    eng = Engine.from_tensors(config, tensors, "bf16")
    rng = np.random.default_rng(8)
    prompts = [rng.integers(0, 512, n) for n in (5, 33, 64)]
    out = cp.asnumpy(g.forward_slots([0, 1, 2], prompts))
    at = 0
    for s, p in enumerate(prompts):
        seq = eng.new_sequence()
        ref = eng.prefill(seq, p)
        assert bits(out[at : at + len(p)]) == bits(ref)
        at += len(p)
        for layer, (k, v) in enumerate(seq.kv_arrays()):
            gk, gv = g.kv_layer(s, layer)
            assert bits(gk) == bits(k) and bits(gv) == bits(v)
