"""Device side of the CPU-vs-GPU residual measurement: KV of the seeded SmolLM2-shaped model on
the GPU (fp32) under the prefill and single-step schedules, saved for benches/residual.py.

    PYTHONPATH=python python3 benches/gpu_kv_dump.py OUTDIR [T]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kv import run_schedule, save_kv, seeded_ids, seeded_smollm2_shape  # noqa: E402


def main() -> None:
    import torch

    out = Path(sys.argv[1])
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    model = seeded_smollm2_shape(0, "cuda")
    ids = seeded_ids(T).to("cuda")
    save_kv(str(out / "gpu_kv_prefill.npz"), run_schedule(model, ids, [T]))
    save_kv(str(out / "gpu_kv_single_step.npz"), run_schedule(model, ids, [1] * T))
    print("saved", T, torch.cuda.get_device_name())


if __name__ == "__main__":
    main()
