"""The ``load`` section of ``benches/results/engine.json`` (``benches/engine.py --load``): how long
SmolLM2 takes to become usable, on the first run (de-quantizing the GGUF and writing the model
cache) and on later runs (reading the cache), each in a fresh process with an empty or a filled
``SEQKV_CACHE_DIR``. Each run reports the import of torch + transformers, ``load_smollm2()``,
``Engine.for_model`` and the whole process up to the first logits; warm runs also time a
process that takes the engine straight from the cache without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, seqkv
from seqkv.engine import Engine
t_seqkv = time.perf_counter()
import torch, transformers
t_torch = time.perf_counter()
from seqkv.integrations.models import load_smollm2
model, tok = load_smollm2()
t_load = time.perf_counter()
eng = Engine.for_model(model)
t_engine = time.perf_counter()
row = eng.prefill(eng.new_sequence(), [1, 2, 3], logits="last")[0]
t_end = time.perf_counter()
json.dump({"import_torch_transformers_s": t_torch - t_seqkv, "load_smollm2_s": t_load - t_torch,
           "engine_build_s": t_engine - t_load, "process_to_first_logits_s": t_end - t0,
           "first_logits_crc": float(np.float64(row.astype(np.float64).sum()))}, sys.stdout)
"""


_CHILD_NO_TORCH = r"""
import json, sys, time
t0 = time.perf_counter()
from seqkv.engine.cpu import smollm2_engine
eng = smollm2_engine()
row = eng.prefill(eng.new_sequence(), [1, 2, 3], logits="last")[0]
json.dump({"process_to_first_logits_s": time.perf_counter() - t0, "torch_imported": "torch" in sys.modules}, sys.stdout)
"""


def _run(cache: Path, root: Path, child: str = _CHILD) -> dict[str, Any]:
    env = dict(os.environ, SEQKV_CACHE_DIR=str(cache), PYTHONPATH=str(root / "python"))
    out = subprocess.run([sys.executable, "-c", child], env=env, check=True, capture_output=True, text=True)
    return {k: round(v, 3) if isinstance(v, float) else v
            for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def measure_load(root: Path, warm_runs: int = 3) -> dict[str, Any]:
    """Cold run (empty cache), then ``warm_runs`` warm runs (best of, the machine is shared)."""
    with tempfile.TemporaryDirectory(prefix="seqkv-load-bench-") as tmp:
        cache = Path(tmp)
        cold = _run(cache, root)
        warm = [_run(cache, root) for _ in range(warm_runs)]
        no_torch = [_run(cache, root, _CHILD_NO_TORCH) for _ in range(warm_runs)]
    if any(r["torch_imported"] for r in no_torch):
        raise RuntimeError("smollm2_engine() imported torch")
    same = all(w["first_logits_crc"] == cold["first_logits_crc"] for w in warm)
    best = {k: min(w[k] for w in warm) for k in warm[0] if k != "first_logits_crc"}
    return {
        "cold": {k: v for k, v in cold.items() if k != "first_logits_crc"},
        "warm_best": best,
        "warm_runs": warm_runs,
        "warm_logits_equal_cold": same,
        "warm_engine_without_torch_s": min(r["process_to_first_logits_s"] for r in no_torch),
        "note": ("cold = de-quantizing the GGUF, writing and verifying the model cache and the engine's packed "
                 "weights; warm = the same process start reading them back (CRC-32C of every file checked). "
                 "load_smollm2_s includes importing transformers' model modules on first use. "
                 "warm_engine_without_torch_s: a process that takes the engine straight from the cache "
                 "(smollm2_engine(): no torch, no transformers) up to its first logits."),
    }
