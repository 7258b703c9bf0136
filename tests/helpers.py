"""Helpers the tests import (``from helpers import ...``); fixtures stay in ``conftest.py``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from seqkv.kv import residual as R

KIND_DTYPES = {"f32": np.uint32, "bf16": np.uint16, "f16": np.uint16}


def run_threads(work: Callable[..., None], args_per_thread: Iterable[tuple[Any, ...]]) -> None:
    """Runs ``work(*args)`` on one thread per ``args`` at once, waits for all, and re-raises the
    first exception any of them raised (an assertion failing in a worker fails the test)."""
    errors: list[BaseException] = []

    def guarded(*args: Any) -> None:
        try:
            work(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=args) for args in args_per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def perturbed_bits(rng: np.random.Generator, n: int, kind: str, frac: float = 0.3, spread: int = 3):
    """(orig bits, recomp bits): recomp differs from orig by a few ulps in a fraction of places,
    plus a few arbitrary bit patterns (signs, zeros, inf, NaN)."""
    dt = KIND_DTYPES[kind]
    if kind == "f32":
        x = rng.standard_normal(n).astype(np.float32).view(np.uint32)
    elif kind == "f16":
        x = rng.standard_normal(n).astype(np.float16).view(np.uint16)
    else:
        x = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    width = R.KINDS[kind][1]
    k = R.ordered_key(x, width)
    m = rng.random(n) < frac
    with np.errstate(over="ignore"):
        k = k + np.where(m, rng.integers(-spread, spread + 1, n), 0).astype(dt)
    y = R.ordered_key(k.astype(dt), width)
    special = rng.random(n) < 0.01
    y[special] = rng.integers(0, np.iinfo(dt).max, special.sum(), dtype=dt, endpoint=True)
    return x, y
