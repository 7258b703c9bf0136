# Type stubs for the native extension `seqkv._native` (built from rust/seqkv-py): one submodule
# per core crate, each with its own stub; the top level re-exports the names of before the split.
# Checked by stubtest in `make test`.
from . import coder as coder, engine as engine, ppm as ppm, trie as trie
from .coder import (
    QUANTIZER_VERSION as QUANTIZER_VERSION,
    MAX_PRECISION as MAX_PRECISION,
    CONTAINER_FORMAT_VERSION as CONTAINER_FORMAT_VERSION,
    ADAPTIVE_DEFAULT_INCREMENT as ADAPTIVE_DEFAULT_INCREMENT,
    ADAPTIVE_DEFAULT_LIMIT as ADAPTIVE_DEFAULT_LIMIT,
    quantize_logits as quantize_logits,
    quantize_row_path as quantize_row_path,
    has_avx2 as has_avx2,
    exp2_table as exp2_table,
    encode_static as encode_static,
    decode_static as decode_static,
    encode_tables as encode_tables,
    decode_tables as decode_tables,
    encode_logits as encode_logits,
    decode_logits as decode_logits,
    encode_adaptive as encode_adaptive,
    decode_adaptive as decode_adaptive,
    crc32c as crc32c,
    tokens_crc32c as tokens_crc32c,
    crc32c_combine as crc32c_combine,
    container_pack as container_pack,
    container_unpack as container_unpack,
    Encoder as Encoder,
    Decoder as Decoder,
    AdaptiveModel as AdaptiveModel,
)
from .trie import (
    Node as Node,
    Match as Match,
    Pin as Pin,
    Trie as Trie,
)
from .engine import (
    EngineCore as EngineCore,
    SequenceCore as SequenceCore,
    engine_read_bandwidth as engine_read_bandwidth,
    engine_fma_peak as engine_fma_peak,
    engine_isa as engine_isa,
    engine_threads as engine_threads,
)
from .ppm import (
    PPM_DEFAULT_ORDER as PPM_DEFAULT_ORDER,
    PPM_MAX_ORDER as PPM_MAX_ORDER,
    PPM_PROFILES as PPM_PROFILES,
    PpmModel as PpmModel,
    ppm_parse_params as ppm_parse_params,
)

__version__: str
