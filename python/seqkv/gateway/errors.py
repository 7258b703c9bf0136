"""The gateway's errors (subclasses of :class:`seqkv.SeqkvError`)."""

from __future__ import annotations

from ..errors import SeqkvError

__all__ = ["UpstreamError", "UpstreamUnavailableError"]


class UpstreamError(SeqkvError):
    """An upstream engine answered with an error or something this driver cannot use."""


class UpstreamUnavailableError(UpstreamError):
    """No upstream engine could be reached (down, restarting, or every replica gone)."""
