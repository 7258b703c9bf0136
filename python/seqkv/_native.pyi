# Type stubs for the native extension `seqkv._native` (built from rust/seqkv-py).
# Each part of the extension keeps its own section; checked by stubtest in `make test`.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

# --- coder (rust/seqkv-py/src/coder.rs) ---

# --- trie (rust/seqkv-py/src/trie.rs) ---

# --- engine (rust/seqkv-py/src/engine.rs) ---

# --- ppm (rust/seqkv-py/src/ppm.rs) ---
