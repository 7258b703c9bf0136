"""hypothesis, imported for the strategy modules, or :class:`~seqkv.errors.MissingExtraError`
naming the extra that installs it."""

from __future__ import annotations

from ..errors import MissingExtraError

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:
    raise MissingExtraError(
        "seqkv.testing's strategies need hypothesis: pip install 'seqkv[testing]'"
    ) from exc

__all__ = ["hnp", "st"]
