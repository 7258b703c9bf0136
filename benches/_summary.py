"""The typed summary every bench writes and ``benches/report.py`` reads: one schema per bench.

Each bench builds its result as a plain dict and hands it to :func:`write_summary` with its schema
(a ``TypedDict`` below); :func:`load_summary` reads a JSON back through the same schema. Both check
every key against the schema — a missing key, a key of the wrong type or a key the schema does not
know raises :class:`SummaryError` naming the file and the dotted key path — so a renamed key fails
the bench that wrote it and the report that reads it instead of rendering "not measured".

``NotRequired`` keys are the ones that only some runs write (quick runs skip parts, older committed
runs predate a measurement); every other key must be there. Snapshots of a library object's own
stats (``SessionStore.stats()``, ``Trie.stats()``) are typed as :data:`JSONObject`: their schema
belongs to the library, not to the bench.

:func:`machine` records the machine once for every bench: CPU model, cores, load average, Python /
NumPy / torch / seqkv versions, git commit and date, plus what a bench adds as keyword arguments.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required, TypedDict
else:  # seqkv supports 3.10, whose typing lacks these
    from typing_extensions import NotRequired, Required, TypedDict

ROOT = Path(__file__).resolve().parents[1]

JSONObject = dict[str, Any]
"""A JSON object whose keys the bench does not define (a library's stats snapshot)."""


class SummaryError(Exception):
    """A bench summary that does not match its schema: names the file and the key."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{file}: key '{key}' {problem}")
        self.file, self.key, self.problem = str(file), key, problem


# --- the machine a bench ran on ---------------------------------------------------------------------

Machine = TypedDict("Machine", {
    # recorded by machine() for every bench
    "cpu": Required[str],
    "python": Required[str],
    "cores": int,
    "usable_cpus": int,
    "platform": str,
    "numpy": str | None,
    "torch": str | None,
    "seqkv": str | None,
    "git_commit": str | None,
    "date": str,
    "loadavg_start": list[float],
    "loadavg_end": list[float],
    # added by single benches
    "rayon_threads": int,  # coder
    "avx2": bool,  # coder
    "constriction": str | None,  # coder
    "transparent_hugepage": str | None,  # coder
    "transformers": str | None,  # competitors, compression, serve
    "optimum-quanto": str | None,  # competitors
    "hqq": str | None,  # competitors
    "torchac": str | None,  # competitors
    "torch_threads": int,  # engine, serve
    "engine_threads": int,  # engine
    "engine_isa": str,  # engine
    "note": str,  # engine --weights: what else shared the machine
    "sqlite": str,  # store
    "redis_server": str | None,  # store
    "workdir_filesystem": str | None,  # store
    # seqkv.integrations.models.numerics_profile(model), merged in by compression and residual
    "device": str,
    "dtype": str,
    "threads": int,
    "machine": str,
    "gpu": str,
    "cuda": str | None,
    # the CUDA device, gpu_kernels
    "sm_count": int,
    "l2_bytes": int,
    "memory_bytes": int,
    "smem_per_block_optin": int | None,
    "cuda_runtime": int,
    "cuda_driver": int,
    "cupy": str,
}, total=False)


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout the bench ran from, with ``-dirty`` when tracked files differ."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def machine(**extra: Any) -> Machine:
    """The machine at the start of a run; ``extra`` adds bench-specific keys (typed in ``Machine``).
    :func:`write_summary` adds ``loadavg_end``."""
    from seqkv.integrations.models import cpu_name

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "seqkv": version("seqkv"),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": list(os.getloadavg()),
    }
    info.update(extra)
    return info  # type: ignore[return-value]  # checked against Machine by write_summary


# --- coder.py -------------------------------------------------------------------------------------


class Coder(TypedDict):
    logits: str
    real_model: bool
    vocab_size: int
    tokens: int
    precision: int
    encode_tokens_per_s: float
    decode_tokens_per_s: float
    constriction_encode_tokens_per_s: float
    constriction_decode_tokens_per_s: float
    table_encode_tokens_per_s: float
    table_decode_tokens_per_s: float
    encode_tokens_per_s_torch_owned_logits: NotRequired[float]  # only with the real model's logits
    decode_tokens_per_s_torch_owned_logits: NotRequired[float]
    stream_encode_tokens_per_s: float
    stream_decode_tokens_per_s: float
    constriction_encode_with_softmax_tokens_per_s: float
    constriction_decode_with_softmax_tokens_per_s: float
    encode_speedup_vs_constriction: float
    decode_speedup_vs_constriction: float
    encode_speedup_vs_constriction_torch_owned_logits: NotRequired[float]
    decode_speedup_vs_constriction_torch_owned_logits: NotRequired[float]
    encode_speedup_vs_constriction_with_softmax: float
    decode_speedup_vs_constriction_with_softmax: float
    softmax_tokens_per_s: float
    cross_entropy_bits_per_token: float
    quantized_cross_entropy_bits_per_token: float
    bits_per_token: float
    overhead_bits_per_token: float
    quantization_overhead_bits_per_token: float
    coder_overhead_bits_per_token: float
    constriction_bits_per_token: float
    constriction_overhead_bits_per_token: float
    notes: str
    quick: bool
    machine: Machine


# --- competitors.py -------------------------------------------------------------------------------


class CompetitorsExact(TypedDict):
    cross_entropy_bits: float
    chunked_run_s: float


class KVQuantizerRow(TypedDict):
    library: str
    backend: str
    nbits: NotRequired[int]
    settings: NotRequired[str]
    bits_per_token: NotRequired[float]
    relative_mse_keys: NotRequired[float]
    relative_mse_values: NotRequired[float]
    cross_entropy_bits: NotRequired[float]
    top1_agreement_with_exact: NotRequired[float]
    chunked_run_s: NotRequired[float]
    status: str


class TokenCoderRow(TypedDict):
    library: str
    version: NotRequired[str | None]
    method: NotRequired[str]
    bytes: NotRequired[int]
    bits_per_token: NotRequired[float]
    encode_tokens_per_s: NotRequired[float]
    decode_tokens_per_s: NotRequired[float]
    encode_from_logits_tokens_per_s: NotRequired[float]
    decode_from_logits_tokens_per_s: NotRequired[float]
    timing: NotRequired[str]
    round_trip: NotRequired[bool]
    status: str


class Competitors(TypedDict):
    machine: Machine
    quick: bool
    text: str
    tokens: int
    chunk: int
    model: str
    bf16_bits_per_token: float
    exact: CompetitorsExact
    kv_quantizers: list[KVQuantizerRow]
    coders_cross_entropy_bits: float
    coders: list[TokenCoderRow]
    seconds: float


# --- compression.py -------------------------------------------------------------------------------


class RobustEpsilonPoint(TypedDict):
    bin_unit: float
    bits_per_token: float
    overhead_vs_lm: float


class PositionBucket(TypedDict):
    positions: str  # "lo-hi"
    tokens: int
    table_bits_per_token: float
    cross_entropy_bits: float


class CompressionText(TypedDict):
    text: str
    tokens: int
    lm_source: NotRequired[str]
    cross_entropy_bits: float
    lm_table_bits_per_token: float
    lm_bits_per_token: float
    lm_container_bits_per_token: float
    lm_overhead_bits_per_token: float
    lm_encode_tokens_per_s: float
    lm_decode_tokens_per_s: float
    robust_epsilon: float
    robust_bin_unit: float
    robust_bits_per_token: float
    robust_overhead_vs_lm_bits_per_token: float
    robust_encode_tokens_per_s: float
    robust_decode_exact: bool | None
    robust_epsilon_sweep: NotRequired[dict[str, RobustEpsilonPoint]]  # keyed by epsilon
    robust_decode_tokens_per_s: NotRequired[float]
    plt_bits_per_token: float
    plt_container_bits_per_token: float
    raw_bits_per_token: float
    ratio_vs_bf16: float
    ratio_vs_3bit: float
    ratio_vs_bf16_with_header: float
    ratio_vs_3bit_with_header: float
    restore_ms: float
    recompute_ms: float
    kv_load_ms: float
    kv_file_bytes: int
    stream_bytes: int
    max_abs_kv_error: float
    greedy_agreement: float
    exact_verified: bool
    schedule: str
    by_position: list[PositionBucket]


class CompressionMultiStream(TypedDict):
    streams: int
    tokens: int
    decode_tokens_per_s: float
    one_by_one_decode_tokens_per_s: float
    same_tokens: bool


class CompressionSummary(TypedDict):
    lm_bits_per_token: float
    cross_entropy_bits: float
    lm_overhead_bits_per_token_max: float
    robust_overhead_vs_lm_bits_per_token: float
    ratio_vs_bf16_min: float
    ratio_vs_3bit_min: float
    greedy_agreement_min: float
    exact_verified_all: bool


class Compression(TypedDict):
    bench: Literal["compression"]
    quick: bool
    model: str
    lm_source: NotRequired[str]
    texts: list[CompressionText]
    multi_stream: NotRequired[CompressionMultiStream]
    summary: CompressionSummary
    machine: Machine
    seconds: float


# --- dedup.py -------------------------------------------------------------------------------------


class DedupWorkload(TypedDict):
    source: str
    conversations: int
    turns: int
    sessions: int
    tokens: int


class DedupCodecRow(TypedDict):
    codec: str
    sessions: int
    tokens: int
    coded_tokens: int
    dedup_ratio: float
    bits_per_token: float
    payload_bits_per_token: float
    payload_bits_per_coded_token: float
    container_bytes: int
    alone_bits_per_token: float
    alone_payload_bits_per_token: float
    alone_container_bytes: int
    bf16_kv_bits_per_token: float
    put_all_s: float
    put_alone_s: float
    read_back_equal: bool


class Dedup(TypedDict):
    model: str
    quick: bool
    workload: DedupWorkload
    codecs: list[DedupCodecRow]
    seconds: float
    machine: Machine


# --- engine.py (CPU) ------------------------------------------------------------------------------


class ReadBandwidth(TypedDict):
    numpy: float
    engine_threads: float
    used: float


class EngineComputeBound(TypedDict):
    macs_per_token: int
    fma_peak_macs_per_s: float
    fma_peak_note: str
    batched_bound_tokens_per_s: float
    batched_64_fraction_of_bound_wall: float
    batched_64_fraction_of_bound_cpu_time: float
    speedup_ceiling_vs_one_stream_measured: float
    speedup_ceiling_vs_one_stream_memory_bound: float
    ten_x_reachable: bool
    ten_x_reachable_at_measured_efficiency: bool
    explanation: str


class EngineLMBatch(TypedDict):
    streams: int
    tokens_each: int
    encode_tokens_per_s: float
    decode_tokens_per_s: float


class EngineAgreement(TypedDict):
    tokens: int
    max_abs_dlogit_f32_weights: float
    max_abs_dlogit_bf16_weights: float
    logit_scale_max_abs: float
    argmax_agreement_f32_weights: float
    argmax_agreement_bf16_weights: float
    greedy_continuation_tokens: int
    greedy_agreement_f32_weights: float
    greedy_agreement_bf16_weights: float


EngineTargets = TypedDict("EngineTargets", {
    "prefill_ge_0.5x_transformers": bool,
    "step_ge_2x_transformers": bool,
    "step_ge_0.5x_memory_bound": bool,
    "batched_64_ge_10x_one_stream": bool,
    "lm_encode_ge_100_tokens_per_s": bool,
})


class EngineProfile(TypedDict):
    """``Engine.numerics_profile()``: what determines the engine's bits."""
    engine: str
    kernel_definition: int
    dtype: str
    kv_dtype: str
    isa: str
    threads: int
    version: str


class EngineWeightsRow(TypedDict):
    """One weight format of ``benches/engine.py --weights``."""
    load_cold_s: float
    load_warm_s: float
    weight_formats: list[str]
    step_weight_bytes: int
    step_bound_tokens_per_s: float
    step_tokens_per_s: float
    step_fraction_of_bound: float
    decode_8_streams_tokens_per_s: float
    decode_64_streams_tokens_per_s: float
    prefill_tokens_per_s: float
    lm_encode_tokens_per_s: float
    lm_decode_tokens_per_s: float
    lm_tokens: int
    lm_cross_entropy_bits_per_token: float
    fingerprint: str


class EngineWeights(TypedDict):
    """``benches/engine.py --weights``: SmolLM2's GGUF blocks (q4_1) beside bf16 and f32 weights."""
    formats: dict[str, EngineWeightsRow]  # keyed by the engine dtype
    read_bandwidth_bytes_per_s: float
    q4_1_bits_equal_f32: bool
    targets: dict[str, bool]
    quick: bool
    machine: Machine


class EngineLoadRun(TypedDict):
    import_torch_transformers_s: float
    load_smollm2_s: float
    engine_build_s: float
    process_to_first_logits_s: float


class EngineLoad(TypedDict):
    """``benches/engine.py --load``: SmolLM2 from an empty model cache, then from the filled one."""
    cold: EngineLoadRun
    warm_best: EngineLoadRun
    warm_runs: int
    warm_logits_equal_cold: bool
    warm_engine_without_torch_s: float
    note: str
    machine: Machine


class Engine(TypedDict):
    quick: bool
    model: str
    random_weights: bool
    engine_build_s: float
    prefill_tokens: int
    transformers_prefill_tokens_per_s: float
    prefill_tokens_per_s: float
    prefill_f32_weights_tokens_per_s: float
    prefill_kv_only_tokens_per_s: float
    transformers_step_tokens_per_s: float
    transformers_1thread_prefill_tokens_per_s: float
    transformers_1thread_step_tokens_per_s: float
    step_tokens_per_s: float
    step_f32_weights_tokens_per_s: float
    read_bandwidth_bytes_per_s: ReadBandwidth
    step_weight_bytes: int
    step_bound_tokens_per_s: float
    step_fraction_of_bound: float
    batched_decode_tokens_per_s: dict[str, float]  # keyed by the number of streams
    batched_decode_cpu_time_tokens_per_s: dict[str, float]
    batched_decode_speedup_64_vs_1: float
    compute_bound: EngineComputeBound
    lm_tokens: int
    lm_encode_tokens_per_s: float
    lm_decode_tokens_per_s: float
    lm_bits_per_token: float
    lm_payload_bits_per_token: float
    lm_cross_entropy_bits_per_token: float
    lm_batch: EngineLMBatch
    agreement_vs_transformers_fp32: EngineAgreement
    invariance_checks: dict[str, bool]  # keyed by the schedule or ISA compared
    invariant: bool
    prefill_vs_transformers_best: float
    step_vs_transformers_best: float
    targets: EngineTargets
    machine: Machine
    note: NotRequired[str]  # with random weights: which figures mean nothing then
    engine: EngineProfile
    seconds: float
    load: NotRequired[EngineLoad]  # merged in by engine.py --load (its own run and machine)
    weights: NotRequired[EngineWeights]  # merged in by engine.py --weights (its own run and machine)


# --- engine.py --gpu ------------------------------------------------------------------------------


class GemmByOp(TypedDict):
    qkv: dict[str, float]  # keyed by the tile configuration
    o: dict[str, float]
    gu: dict[str, float]
    down: dict[str, float]
    lm_head: dict[str, float]


class GemmShapes(TypedDict):
    qkv: str
    o: str
    gu: str
    down: str
    lm_head: str


class EngineGPUChecks(TypedDict):
    prefill_and_steps_logits_vs_cpu: bool
    kv_vs_cpu: bool
    graph_greedy_decode_256_streams_vs_cpu_prefill: bool
    lm_rows_cross_device: bool  # lm streams: GPU-encoded decoded by the CPU engine and the other way


class EngineGPUDecodeBatch(TypedDict):
    streams: int
    tokens_each: int
    decode_tokens_per_s: float
    roundtrip: bool


class EngineGPULM(TypedDict):
    tokens: int
    encode_tokens_per_s: float
    decode_tokens_per_s: float
    bits_per_token: float
    gpu_roundtrip: bool
    gpu_stream_decoded_on_cpu: bool
    cpu_decode_tokens_per_s: float
    cpu_stream_decoded_on_gpu: bool
    decode_batch: EngineGPUDecodeBatch


class PeerVariant(TypedDict):
    decode_tokens_per_s: dict[str, float]  # keyed by the number of streams
    prefill_tokens_per_s: NotRequired[float]
    errors: NotRequired[list[str]]


class EngineGPUPeer(TypedDict):
    dtype: str
    transformers: str
    eager_dynamic_cache: PeerVariant
    static_cache_compile: PeerVariant
    seconds: float


EngineGPUTargets = TypedDict("EngineGPUTargets", {
    "single_stream_ge_2000_tokens_per_s": bool,
    "prefill_ge_150000_tokens_per_s": bool,
    "256_streams_ge_51700_tokens_per_s": bool,
})


class CrossMachineDecode(TypedDict):
    ok: bool
    tokens: int
    stream_bytes: int
    decoder: str
    fingerprint_override: bool  # decoded under the stream's fingerprint (another transformers version)
    seconds: float


class EngineGPU(TypedDict):
    what: str
    model: str
    real_weights: bool
    random_weights: bool
    setup_s: float
    device: str
    machine: Machine
    gemm_us_per_shape_256_rows: GemmByOp
    gemm_shapes: GemmShapes
    single_stream_tokens_per_s: float  # CUDA-graph greedy steps
    single_stream_host_api_tokens_per_s: float  # GpuEngine.step with the row copied to the host
    prefill_tokens: int
    prefill_tokens_per_s: float  # logits for every token
    prefill_kv_only_tokens_per_s: float
    batched_decode_tokens_per_s: dict[str, float]  # keyed by the number of streams
    gpu_step_breakdown_256_streams_us: dict[str, float]  # keyed by the kernel
    gpu_step_breakdown_1_stream_us: dict[str, float]
    lm_codec: EngineGPULM
    checks: EngineGPUChecks
    bit_identical_to_cpu: bool
    cross_device_roundtrip: bool
    cross_machine_decode: NotRequired[CrossMachineDecode]  # added by engine.py --check-stream on another machine
    peer: NotRequired[EngineGPUPeer]  # left out with --no-peer
    seqkv_over_peer: NotRequired[dict[str, float]]
    targets: EngineGPUTargets
    note: NotRequired[str]  # random weights
    seconds: float


# --- gpu_store.py ---------------------------------------------------------------------------------


class GpuStoreCell(TypedDict):
    seconds: NotRequired[float]  # best of a few GPU-synchronised wall times
    error: NotRequired[str]  # what the path raised instead


class GpuStoreRow(TypedDict):
    lm_put_seconds: NotRequired[float]
    lm_put_error: NotRequired[str]
    cold_lm: GpuStoreCell
    cold_plt: GpuStoreCell
    warm: GpuStoreCell
    hot: GpuStoreCell
    reprefill_transformers: GpuStoreCell
    pinned_host_copy: GpuStoreCell
    bf16_kv_bytes: int


class GpuStore(TypedDict):
    what: str
    model: str
    real_weights: bool
    random_weights: bool
    model_dtype: str
    device: str
    machine: Machine
    kv_source: str
    kv_engine: str
    restore: dict[str, GpuStoreRow]  # keyed by the session's token count
    note: NotRequired[str]
    seconds: float


# --- gpu_kernels.py -------------------------------------------------------------------------------


class SectionError(TypedDict):
    """What gpu_kernels.py keeps of a section that raised, so the other sections still count."""
    error: str


class QuantizeConfig(TypedDict):
    tokens_per_s: float
    call_s: float
    kernel_s: float
    kernel_GBps: float
    kernel_tokens_per_s: float
    quantize_gather_bw_fraction: float


class QuantizeBest(QuantizeConfig):
    config: str


class DefaultClusterConfig(TypedDict):
    f32: list[int]
    bf16: list[int]


class GPUQuantize(TypedDict):
    # plus one SearchTiming per row count, keyed "search/f32/n=<rows>": see _EXTRA_KEYS
    V: int
    precision: int
    configs: dict[str, QuantizeConfig]  # keyed "<dtype>/n=<rows>/<launch config>"
    best: dict[str, QuantizeBest]  # keyed "<dtype>/n=<rows>"
    bytes_counted: str
    default_cluster_config: DefaultClusterConfig


class SearchTiming(TypedDict):
    call_s: float
    tokens_per_s: float
    GBps: float


GPU_KERNELS_SEARCH = "search/f32/n="


class ResidualGPUOnly(TypedDict):
    pack_s: float
    unpack_s: float
    pack_GBps: float
    unpack_GBps: float
    pack_bw_fraction: float
    unpack_bw_fraction: float


class GPUResidualDtype(TypedDict):
    n: int
    bpw: int
    sweep_pack_unpack_s: dict[str, list[float]]
    changed_fraction: float
    packed_bits_per_component: float
    pack_GBps: float
    unpack_GBps: float
    call_pack_bw_fraction: float
    call_unpack_bw_fraction: float
    call_bw_fraction: float
    gpu_only: ResidualGPUOnly
    residual_bw_fraction: float


class GPUResidual(TypedDict):
    bf16: GPUResidualDtype
    f32: GPUResidualDtype


class GPUQuantizerTiming(TypedDict):
    quantize_GBps: float
    dequantize_GBps: float
    relative_mse: NotRequired[float]
    bits_per_component: float


class GPUQuantizers(TypedDict):
    shape: list[int]
    turbo2: GPUQuantizerTiming
    turbo3: GPUQuantizerTiming
    turbo4: GPUQuantizerTiming
    kivi2_keys: GPUQuantizerTiming
    kivi2_values: GPUQuantizerTiming


class GPULM(TypedDict):
    model: str
    dtype: str
    range_coder_included: bool
    encode_prefill_tokens_per_s: float
    encode_stepwise_tokens_per_s: float
    stepwise_bits_per_token: float
    decode_tokens_per_s: float
    decode_roundtrip_exact: bool
    decode_forward_only_tokens_per_s: float
    encode_T: int


class GPUKernelsSummary(TypedDict):
    quantize_gather_bw_fraction: float | None
    quantize_gather_tokens_per_s: float | None
    residual_bw_fraction: float | None


class GPUKernels(TypedDict):
    machine: Machine
    quick: bool
    copy_bandwidth_GBps: float
    # a section left out with --only is absent
    quantize: NotRequired[GPUQuantize | SectionError]
    residual: NotRequired[GPUResidual | SectionError]
    quantizers: NotRequired[GPUQuantizers | SectionError]
    lm: NotRequired[GPULM | SectionError]
    summary: GPUKernelsSummary


# --- plt.py ---------------------------------------------------------------------------------------


class PLTText(TypedDict):
    text: str
    tokens: int
    distinct_tokens: int
    plt_bytes: int
    plt_bits_per_token: float
    plt_payload_bits_per_token: float
    plt_model_bits_per_token: float
    xz9e_bits_per_token: float
    xz9_bits_per_token: float
    xz_bytes: int
    ratio: float
    payload_ratio: float
    meets_target: bool
    encode_tokens_per_s: float
    decode_tokens_per_s: float
    primer_tokens: NotRequired[int]  # not for the long text
    primed_bits_per_token: NotRequired[float]


class PLTSummary(TypedDict):
    texts: int
    tokens: int
    plt_bits_per_token: float
    xz_bits_per_token: float
    ratio_total: float
    ratio_mean: float
    ratio_max: float
    payload_ratio_total: float
    texts_meeting_target: int
    target_ratio: float


class PLTConcatenated(TypedDict):
    tokens: int
    plt_bits_per_token: float
    ratio: float
    encode_tokens_per_s: float
    decode_tokens_per_s: float


class PLTSettings(TypedDict):
    order: int
    quick: bool
    tokenizer: str
    vocab_size: int
    repeats: int


class PLT(TypedDict):
    texts: list[PLTText]
    summary: PLTSummary
    concatenated: PLTConcatenated
    long_text: NotRequired[PLTText]  # full runs only
    order_sweep_model_bits_per_token: NotRequired[dict[str, float]]  # keyed by the model order; full runs only
    settings: PLTSettings
    machine: Machine
    seconds: float
    notes: str


# --- residual.py ----------------------------------------------------------------------------------


class ResidualScenario(TypedDict):
    residual_bits_per_token: float
    residual_bits_per_component: float
    naive_bf16_bits_per_token: float
    packed_bits_per_token: float
    kv_bits_per_token: float
    nonzero_fraction: float
    max_abs_diff: float
    exact_restore: bool
    encode_s: float
    decode_s: float
    tokens: NotRequired[int]


class ResidualSummary(TypedDict):
    same_schedule_bits_per_token: float
    single_step_bf16_bits_per_token: float
    single_step_f32_bits_per_token: float
    vs_naive_52000_bits_per_token: float


class Residual(TypedDict):
    machine: Machine
    tokens: int
    model: str
    text: str
    scenarios: dict[str, ResidualScenario]  # keyed "<schedule pair>/<dtype>"
    gpu_model: NotRequired[str]  # only when GPU scenarios were merged in (gpu_kv_dump.py)
    summary: ResidualSummary


# --- serve.py -------------------------------------------------------------------------------------


class ServeWorkload(TypedDict):
    conversations: int
    turns: int
    requests: int
    system_prompts: int
    system_prompt_tokens: list[int]
    max_new_tokens: int


class ServeVariantConfig(TypedDict):
    tiers: list[str]
    warm_bits: int | None


class ServeStore(TypedDict):
    codec: str
    capacity_bytes: int
    policy: str
    variants: dict[str, ServeVariantConfig]  # keyed by the variant name


class Percentiles(TypedDict):
    p50: float
    p95: float
    mean: float


class PeakFinal(TypedDict):
    peak: int
    final: int


class ServeVariantRun(TypedDict):
    requests: int
    ttft_ms: Percentiles
    tokens_per_s: float
    wall_s: float
    prompt_tokens: int
    reused_tokens: int
    prefilled_tokens: int
    kv_bytes: PeakFinal
    # the seqkv variants only
    answers_equal_baseline: NotRequired[float]
    requests_with_baseline_prompt: NotRequired[int]
    kv_bytes_if_all_hot: NotRequired[int]
    hot_unique_bytes: NotRequired[int]
    hot_logical_bytes: NotRequired[int]
    hot_pages: NotRequired[int]
    hot_pages_shared: NotRequired[int]
    tiers: NotRequired[JSONObject]  # SessionStore.stats() at the end of the run


class ServeThreadsRun(TypedDict):
    baseline: ServeVariantRun
    seqkv: ServeVariantRun
    seqkv_warm4: ServeVariantRun
    seqkv_hot_cold: ServeVariantRun
    ttft_p50_speedup: float
    tokens_per_s_ratio: float


class Serve(TypedDict):
    machine: Machine
    model: str
    quick: bool
    workload: ServeWorkload
    store: ServeStore
    threads: dict[str, ServeThreadsRun]  # keyed by the number of request threads
    seconds: float


# --- store.py -------------------------------------------------------------------------------------


class BackendOps(TypedDict):
    record_bytes: int
    threads: int
    ops: int
    put_ops_per_s: float
    get_ops_per_s: float


class StoreOps(TypedDict):
    memory: dict[str, BackendOps]  # keyed "<record size>_<threads>t"
    sqlite_full: dict[str, BackendOps]
    sqlite_normal: dict[str, BackendOps]
    redis: dict[str, BackendOps | str]  # plus "server" (the server's version) or "skipped" (why)


class ModelShape(TypedDict):
    layers: int
    kv_heads: int
    head_dim: int


class TierBytes(TypedDict):
    hot_bytes_fp32: int
    hot_bytes_bf16: int
    warm_bytes_turboquant3: int
    cold_bytes_plt_record: int
    cold_bytes_lm_estimate: int
    cold_lm_source: str
    hot_over_warm: float
    hot_over_cold_plt: float


class RestoreTimes(TypedDict):
    put_ms: float
    hot_ms: float
    warm_ms: float
    cold_faithful_ms: float
    cold_exact_ms: float
    cold_tokens_only_ms: float
    warm_max_abs_err: float
    cold_exact_engine_ms: float | None
    cold_exact_engine_reason: NotRequired[str]  # why cold_exact_engine_ms is None


class StoreTiers(TypedDict):
    # plus one TierBytes per context length, keyed by the length ("256"): see _EXTRA_KEYS
    model: str
    model_shape: ModelShape
    cold_codec: str


class StoreRestore(TypedDict):
    # plus one RestoreTimes per context length, keyed by the length ("256"): see _EXTRA_KEYS
    how: str
    torch_threads: int


class SharedPrefixRun(TypedDict):
    hot_unique_bytes: int
    hot_logical_bytes: int
    logical_over_unique: float
    pages: int
    pages_shared: int
    page_tokens: int
    get_prefix_tokens: int
    put_ms: float
    get_hot_ms: float
    get_prefix_ms: float


class StoreSharedPrefix(TypedDict):
    model: str
    sessions: int
    system_tokens: int
    tail_tokens: int
    how: str
    transformers: SharedPrefixRun
    engine: NotRequired[SharedPrefixRun]


class Store(TypedDict):
    machine: Machine
    quick: bool
    # each left out by its --no-ops, --no-tiers, --no-shared option
    ops: NotRequired[StoreOps]
    tiers: NotRequired[StoreTiers]
    restore: NotRequired[StoreRestore]
    shared_prefix: NotRequired[StoreSharedPrefix]
    seconds: float


# --- stress.py ------------------------------------------------------------------------------------


class StressRow(TypedDict):
    workload: str
    seconds: float
    # the workload's own counts (tests/stress helpers)
    inserted: NotRequired[int]
    evicted: NotRequired[int]
    matches: NotRequired[int]
    rss_growth_bytes: NotRequired[int]
    rss_bound_bytes: NotRequired[int]
    peak_len: NotRequired[int]
    peak_bytes: NotRequired[int]
    put: NotRequired[int]
    get: NotRequired[int]
    delete: NotRequired[int]
    # SQLite store rates (stress.store_rates) and the SIGKILLed writer (kill_reputters)
    puts: NotRequired[int]
    puts_per_s: NotRequired[float]
    gets: NotRequired[int]
    gets_per_s: NotRequired[float]
    restores_verified: NotRequired[int]
    kills: NotRequired[int]
    acknowledged_puts: NotRequired[int]
    sessions_lost: NotRequired[int]


class Stress(TypedDict):
    machine: Machine
    quick: bool
    threads: int
    deadline_s: float
    all_checks_passed: bool
    rows: list[StressRow]


# --- trie.py --------------------------------------------------------------------------------------


class RSSGrowth(TypedDict):
    dict: int
    seqkv: int
    sglang: int | None


class SGLangInfo(TypedDict):
    available: bool
    status: str
    version: str | None


class TrieTargets(TypedDict):
    match_vs_sglang: str
    met_match: bool | None
    met_read_scaling_on_this_machine: bool
    met_read_scaling_strict: bool
    read_scaling: str


class TrieWorkload(TypedDict):
    key_len: int
    n_prompts: int
    prompt_len: int
    sessions: int
    tail_len: int
    vocab: int


ByThreads = dict[str, float]
"""A figure per thread count, keyed by the count ("16")."""


class Trie(TypedDict):
    bench: Literal["trie"]
    bench_threads_pinned_to_cpus: NotRequired[list[int]]
    bytes_per_token: float
    bytes_per_token_rss: float
    dict_bytes_per_token_rss: float
    dict_insert_ops_per_s: float
    dict_match_ops_per_s: float
    insert_ops_per_s: float
    insert_us: float
    label: str
    logical_tokens: int
    machine: Machine
    match_list_input_ops_per_s: float
    match_ops_per_s: float
    match_us: float
    physical_cores: NotRequired[int]
    quick: bool
    read_scaling: ByThreads
    read_scaling_best: NotRequired[ByThreads]
    read_scaling_efficiency: ByThreads
    read_scaling_efficiency_best_of: NotRequired[ByThreads]
    read_scaling_efficiency_vs_cores: ByThreads
    read_scaling_l2_resident_control: NotRequired[ByThreads]
    read_scaling_l2_resident_control_efficiency: NotRequired[ByThreads]
    read_scaling_note: str
    read_scaling_private_control: ByThreads
    read_scaling_private_control_efficiency: ByThreads
    read_scaling_python_threads: ByThreads
    read_scaling_python_threads_gil_held: ByThreads
    read_scaling_rounds: NotRequired[int]
    read_scaling_shared_vs_private: ByThreads
    read_scaling_walk_only_control: NotRequired[ByThreads]
    read_scaling_walk_only_control_efficiency: NotRequired[ByThreads]
    read_scaling_walk_touch_control: NotRequired[ByThreads]
    read_scaling_walk_touch_control_efficiency: NotRequired[ByThreads]
    rss_growth_bytes: RSSGrowth
    sglang: SGLangInfo
    # None (the first four) or absent (the rest) when SGLang could not be loaded
    sglang_match_ops_per_s: float | None
    sglang_insert_ops_per_s: float | None
    speedup_vs_sglang_match: float | None
    speedup_vs_sglang_insert: float | None
    sglang_bytes_per_token_rss: NotRequired[float | None]
    sglang_insert_us: NotRequired[float]
    sglang_match_us: NotRequired[float]
    sglang_match_with_values_ops_per_s: NotRequired[float]
    speedup_vs_sglang_match_list_input: NotRequired[float]
    speedup_vs_sglang_match_with_values: NotRequired[float]
    spin_control_efficiency: ByThreads
    spin_control_scaling: ByThreads
    stored_tokens: int
    targets: TrieTargets
    trie_stats: JSONObject  # Trie.stats()
    workload: TrieWorkload


# --- gateway.py -----------------------------------------------------------------------------------


class GatewayUpstream(TypedDict):
    llama_server_build: str  # /props build_info
    model: str
    model_bytes: int
    threads: int
    n_batch: int
    n_ubatch: int
    cache_type: str


class GatewaySession(TypedDict):
    target_tokens: int
    tokens: int
    cached_tokens: int  # held in the slot (the last sampled token is never evaluated)
    turns: int
    transcript_bytes: int
    seqkv_record_bytes: int  # container + metadata of every node on the session's chain
    seqkv_tokens_bytes: int  # the plt blocks' payloads alone
    seqkv_metadata_bytes: int
    slot_file_bytes: int
    zstd_transcript_bytes: int
    resume_slot_file_s: float
    resume_replay_s: float
    resume_prefill_s: float
    replay_requests: int
    reps: int
    prefill_reproduces_kv: bool


class GatewayLoadRow(TypedDict):
    mode: Literal["direct", "gateway", "gateway_exact"]  # gateway_exact: seqkv gateway --exact-sessions
    clients: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_s: float
    p99_s: float


class GatewayBench(TypedDict):
    machine: Machine
    quick: bool
    upstream: GatewayUpstream
    max_tokens: int
    sessions: list[GatewaySession]
    replays: int
    exact_replays: int
    exact_restore_rate: float
    exact_sessions_replays: int  # short sessions built two at a time with exact_sessions, replayed
    exact_sessions_exact_replays: int
    load_turns_per_client: int
    load_n_parallel: int
    load: list[GatewayLoadRow]


# --- report.py's record of a `make report` run -----------------------------------------------------


class BenchRun(TypedDict):
    name: str
    script: str
    mode: Literal["full", "quick"]
    out: str
    status: str
    command: NotRequired[str]
    seconds: NotRequired[float]
    loadavg_end: NotRequired[list[float]]
    output_tail: NotRequired[str]


class Runs(TypedDict):
    gpu: bool
    updated: str
    runs: list[BenchRun]


# --- which schema each result file follows ----------------------------------------------------------

SCHEMAS: dict[str, Any] = {
    "coder": Coder,
    "coder_16core": Coder,
    "competitors": Competitors,
    "compression": Compression,
    "dedup": Dedup,
    "engine": Engine,
    "engine_gpu": EngineGPU,
    "gateway": GatewayBench,
    "gpu_kernels": GPUKernels,
    "gpu_store": GpuStore,
    "plt": PLT,
    "residual": Residual,
    "serve": Serve,
    "store": Store,
    "stress": Stress,
    "trie": Trie,
    "trie_16core": Trie,
    "trie_32core": Trie,
    "runs": Runs,
}
"""Result name (``benches/results/<name>.json``, ``<name>-quick.json`` or ``quick/<name>.json``) → schema."""


def _search_key(key: str) -> Any:
    n = key.removeprefix(GPU_KERNELS_SEARCH)
    return SearchTiming if n != key and n.isdigit() else None


def _length_key(value_schema: Any) -> Any:
    return lambda key: value_schema if key.isdigit() else None


def _restore_tier_key(key: str) -> Any:
    """The store bench may time more tiers than RestoreTimes names: ``<tier>_ms``, with
    ``<tier>_reason`` saying why it was not measured."""
    return float | None if key.endswith("_ms") else str if key.endswith("_reason") else None


# Schemas whose JSON objects hold, besides their fixed keys, keys made from a measurement's
# parameters: schema -> (key -> the schema of its value, or None for a key that does not belong).
_EXTRA_KEYS: dict[Any, Callable[[str], Any]] = {
    GPUQuantize: _search_key,
    StoreTiers: _length_key(TierBytes),
    StoreRestore: _length_key(RestoreTimes),
    RestoreTimes: _restore_tier_key,
}


def schema_for(name: str) -> Any:
    """The schema of result ``name``; an unknown name is a SummaryError (every result has one)."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise SummaryError(f"{name}.json", "", "has no schema: add one to benches/_summary.py SCHEMAS") from None


# --- checking -----------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _fields(td: Any) -> dict[str, Any]:
    hints = get_type_hints(td, include_extras=True)
    return {k: (get_args(t)[0] if get_origin(t) in (Required, NotRequired) else t) for k, t in hints.items()}


def check(value: Any, tp: Any, file: Path | str, key: str = "") -> None:
    """Raises SummaryError (naming ``file`` and the dotted ``key`` path) unless ``value`` has type ``tp``."""
    where = key or "(top level)"
    origin = get_origin(tp)
    if tp is Any:
        return
    if tp is None or tp is type(None):
        if value is not None:
            raise SummaryError(file, where, f"is {type(value).__name__}, the schema says null")
        return
    if origin in (Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            try:
                check(value, alt, file, key)
                return
            except SummaryError as e:
                errors.append(e)
        # the alternative that got furthest into the value names the most useful key
        raise max(errors, key=lambda e: len(e.key))
    if origin is Literal:
        if value not in get_args(tp):
            raise SummaryError(file, where, f"is {value!r}, the schema allows {', '.join(map(repr, get_args(tp)))}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SummaryError(file, where, f"is {type(value).__name__}, the schema says float")
        return
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise SummaryError(file, where, f"is {type(value).__name__}, the schema says {tp.__name__}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise SummaryError(file, where, f"is {type(value).__name__}, the schema says {_type_name(tp)}")
        (item,) = get_args(tp)
        for i, v in enumerate(value):
            check(v, item, file, f"{key}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise SummaryError(file, where, f"is {type(value).__name__}, the schema says {_type_name(tp)}")
        _, item = get_args(tp)
        for k, v in value.items():
            check(v, item, file, f"{key}.{k}" if key else k)
        return
    if _is_typeddict(tp):
        _check_typeddict(value, tp, file, key)
        return
    raise TypeError(f"benches/_summary.py: no check for the type {tp!r} (at key {where})")


def _check_typeddict(value: Any, td: Any, file: Path | str, key: str) -> None:
    where = key or "(top level)"
    if not isinstance(value, dict):
        raise SummaryError(file, where, f"is {type(value).__name__}, the schema says an object ({td.__name__})")
    fields = _fields(td)
    extra = _EXTRA_KEYS.get(td)
    for k in td.__required_keys__:
        if k not in value:
            raise SummaryError(file, f"{key}.{k}" if key else k, f"is missing (required by {td.__name__})")
    for k, v in value.items():
        path = f"{key}.{k}" if key else k
        if k in fields:
            check(v, fields[k], file, path)
        elif extra is not None and (extra_type := extra(k)) is not None:
            check(v, extra_type, file, path)
        else:
            raise SummaryError(file, path, f"is not in the schema ({td.__name__}): a renamed key, or a new one "
                                           "that benches/_summary.py must list")


def load_summary(path: Path, schema: Any) -> Any:
    """The JSON at ``path``, checked against ``schema``; SummaryError when it is not JSON or does not match."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(path, "(top level)", f"is not valid JSON: {e}") from None
    check(data, schema, path)
    return data


def write_summary(path: Path | str, schema: Any, data: dict[str, Any], indent: int = 2) -> None:
    """Stamps ``machine.loadavg_end``, checks ``data`` against ``schema`` and writes it as JSON.

    Data that does not match is written next to ``path`` as ``<name>.rejected.json`` (a long run's
    numbers are not lost) and SummaryError names the key."""
    path = Path(path)
    if isinstance(data.get("machine"), dict):
        data["machine"]["loadavg_end"] = list(os.getloadavg())
    text = json.dumps(data, indent=indent) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        check(json.loads(text), schema, path)
    except SummaryError:
        path.with_name(path.stem + ".rejected.json").write_text(text)
        raise
    path.write_text(text)
