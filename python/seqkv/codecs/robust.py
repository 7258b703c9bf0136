"""``lm-robust``: the ``lm`` codec made tolerant of small logit differences between the
encoder and the decoder (another device, kernel or compute schedule), in the spirit of
PMATIC (Adler & Tang, arXiv 2601.10678: quantized probabilities plus helper bits).

The guarantee: if every logit the decoder computes is within ``epsilon`` of the encoder's
(``max |Δlogit| ≤ ε`` per row), the decoder rebuilds exactly the encoder's integer tables
and decodes exactly. If the bound is broken, the per-block token checksums still turn the
failure into :class:`~seqkv.NumericsMismatchError`.

Design
------
1. **Binarize.** A token ``t < V`` is coded as the ``D = ⌈log2 V⌉`` bits of its id, most
   significant first: a walk down a complete binary tree over ``[0, 2^D)``. Decisions whose
   right subtree lies wholly outside ``[0, V)`` are forced and cost nothing. Only the
   ``≤ D`` probabilities on the coded path have to agree between the ends, not all V.
2. **Log-odds.** At a node with children masses ``Lm`` and ``Rm`` (sums of
   ``exp(logit - max)`` over the subtrees, float64) the decision's log-odds is
   ``u = ln Rm - ln Lm``. A perturbation of every logit by at most ε moves each log-sum by
   at most ε (the shift by the row's max cancels), so ``u`` moves by at most ``2ε``;
   float64 rounding adds ~1e-15, covered by a slack of 1e-6: ``η = 2ε + 1e-6``.
3. **Bins.** ``u`` is binned on a fixed grid of edges, symmetric around 0, ``unit`` wide at
   0 and widening as ``1 + (u/4)² + (u/5.5)⁴`` up to ``limit`` (16); computed with IEEE
   double operations only, so both ends build identical grids. Each bin has one integer
   table ``(f0, f1)`` (sum ``2^P``) made by the shared quantizer from the bin's midpoint;
   the two outer bins code the minority branch at the minimum frequency 1. Coding with a
   log-odds off by δ costs about ``p(1-p)·δ²/2`` nats, so bins can widen where ``p`` is
   extreme; the width profile approximates the optimum ``∝ (p(1-p))^(-1/3)``.
4. **Helper bits.** The encoder calls a decision *ambiguous* when ``u`` lies within ``η`` of
   an edge: only then can the decoder's ``v`` fall in another bin. Per token it codes a
   flag "some decision of this token is ambiguous" (adaptive binary model); when set, each
   decision of the token gets a flag (second adaptive model) and, when ambiguous, one side
   bit (p = 1/2) saying on which side of the edge the encoder's ``u`` lay. The decoder finds
   that edge as the one nearest its own ``v`` (unique, since edges are more than ``4η``
   apart), so both ends pick the same bin.

The cost over plain ``lm`` is the binning loss plus the flags; both are measured in
``benches/results/compression.json`` (``robust_bits_per_token``) and by
:func:`estimate_overhead`.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ..errors import CorruptStreamError, FormatVersionError, InvalidInputError
from .lm import LMCodec
from .sources import LogitsSource, TransformersSource

__all__ = ["RobustLMCodec", "RobustBins", "default_unit"]

_PARAMS_VERSION = 1
_PARAMS = struct.Struct("<Bddd")  # version, epsilon, unit, limit
_SLACK = 1e-6
_CLAMP = -700.0  # exp() floor relative to the row max: keeps every finite logit's weight > 0
_OUTER = 64.0  # representative |log-odds| of the outer bins (→ minority frequency 1)
_ADAPT_INC = 32
_ADAPT_LIMIT = 1 << 16


def default_unit(epsilon: float) -> float:
    """The bin width at log-odds 0 used when none is given: ``10·ε^(1/3)`` rounded to a
    multiple of 1/64 (and at least 1/64). It balances the binning loss, ∝ width², against
    the rate of ambiguous decisions, ∝ ε/width (each costs ~8 bits of helpers)."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        return 1.0 / 64
    return max(1, round(64 * 10.0 * epsilon ** (1.0 / 3.0))) / 64.0


def _width_factor(u: float) -> float:
    """Bin width relative to the width at 0: ``1 + (u/4)² + (u/5.5)⁴`` (≈ cosh(u/2)^(2/3), the
    width that equalizes the marginal costs; plain IEEE double operations only, so every
    machine computes the same edges)."""
    a = u / 4.0
    b = u / 5.5
    b2 = b * b
    return 1.0 + a * a + b2 * b2


class RobustBins:
    """The bin grid over decision log-odds and the integer table of each bin.

    Edges: 0, then ``e_{k+1} = e_k + unit·h(e_k + unit·h(e_k)/2)`` with ``h`` =
    :func:`_width_factor` while ``e ≤ limit``, mirrored to the negative side.
    """

    def __init__(self, epsilon: float, unit: float, limit: float = 16.0, precision: int = 24):
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise InvalidInputError(f"epsilon must be finite and >= 0, got {epsilon}")
        if not (math.isfinite(unit) and unit > 0):
            raise InvalidInputError(f"bin unit must be finite and > 0, got {unit}")
        if not (math.isfinite(limit) and unit <= limit <= 64.0):
            raise InvalidInputError(f"limit must lie in [unit, 64], got {limit}")
        self.epsilon = float(epsilon)
        self.unit = float(unit)
        self.limit = float(limit)
        self.precision = int(precision)
        self.eta = 2.0 * self.epsilon + _SLACK
        pos: list[float] = []
        e = 0.0
        while True:
            mid = e + self.unit * _width_factor(e) / 2.0
            e = e + self.unit * _width_factor(mid)
            if e > self.limit:
                break
            pos.append(e)
        self.edges = np.array([-p for p in reversed(pos)] + [0.0] + pos, dtype=np.float64)
        spacing = float(np.diff(self.edges).min()) if self.edges.size > 1 else math.inf
        if spacing <= 4.0 * self.eta:
            raise InvalidInputError(
                f"epsilon {epsilon} is too large for bin unit {unit}: edges must be more than "
                f"4·(2ε + 1e-6) = {4 * self.eta:.3g} apart"
            )
        reps = np.empty(self.edges.size + 1, dtype=np.float64)
        reps[0] = -_OUTER
        reps[-1] = _OUTER
        reps[1:-1] = 0.5 * (self.edges[:-1] + self.edges[1:])
        from ..coding import coder

        pairs = np.zeros((reps.size, 2), dtype=np.float32)
        pairs[:, 1] = reps.astype(np.float32)
        tables = np.asarray(coder.quantize_logits(pairs, self.precision), dtype=np.int64)
        self.f0 = [int(v) for v in tables[:, 0]]
        self.f1 = [int(v) for v in tables[:, 1]]
        self._edges_list = [float(v) for v in self.edges]

    @property
    def n_bins(self) -> int:
        return self.edges.size + 1

    def bin_of(self, u: float) -> int:
        return int(np.searchsorted(self.edges, u, side="right"))

    def nearest_edge(self, u: float) -> tuple[int, float]:
        """(index, distance) of the edge nearest ``u``."""
        j = int(np.searchsorted(self.edges, u))
        best = (-1, math.inf)
        for i in (j - 1, j):
            if 0 <= i < self.edges.size:
                d = abs(u - self._edges_list[i])
                if d < best[1]:
                    best = (i, d)
        return best

    def pack(self) -> bytes:
        return _PARAMS.pack(_PARAMS_VERSION, self.epsilon, self.unit, self.limit)

    @classmethod
    def unpack(cls, data: bytes, precision: int) -> "RobustBins":
        if len(data) != _PARAMS.size:
            raise CorruptStreamError("lm-robust parameters have the wrong length")
        version, eps, unit, limit = _PARAMS.unpack(data)
        if version != _PARAMS_VERSION:
            raise FormatVersionError(f"lm-robust parameters version {version} (this seqkv reads {_PARAMS_VERSION})")
        try:
            return cls(eps, unit, limit, precision)
        except InvalidInputError as exc:
            raise CorruptStreamError(f"lm-robust parameters are invalid: {exc}") from exc


class _Adaptive:
    """Adaptive binary probability (integer counts, both ends identical), starting at
    ``p(1) = 1/odds`` with the weight of two observations."""

    __slots__ = ("c0", "c1")

    def __init__(self, odds: int) -> None:
        self.c1 = 2 * _ADAPT_INC // odds
        self.c0 = 2 * _ADAPT_INC - self.c1

    def f1(self, precision: int) -> int:
        total = 1 << precision
        f = (self.c1 << precision) // (self.c0 + self.c1)
        return min(max(f, 1), total - 1)

    def update(self, bit: int) -> None:
        if bit:
            self.c1 += _ADAPT_INC
        else:
            self.c0 += _ADAPT_INC
        if self.c0 + self.c1 > _ADAPT_LIMIT:
            self.c0 = (self.c0 + 1) >> 1
            self.c1 = (self.c1 + 1) >> 1


class _State:
    __slots__ = ("token_flag", "decision_flag")

    def __init__(self) -> None:
        self.token_flag = _Adaptive(64)
        self.decision_flag = _Adaptive(16)


def _levels(row: np.ndarray, depth: int) -> list[np.ndarray]:
    """Subtree masses: ``levels[d]`` has the ``2^d`` node masses at depth ``d`` (float64)."""
    x = np.asarray(row, dtype=np.float64)
    if np.isnan(x).any() or np.isposinf(x).any():
        raise InvalidInputError("logits contain NaN or +inf")
    w = np.zeros(1 << depth, dtype=np.float64)
    finite = np.isfinite(x)
    if finite.any():
        m = x[finite].max()
        w[: x.size][finite] = np.exp(np.maximum(x[finite] - m, _CLAMP))
    levels = [w]
    while levels[-1].size > 1:
        levels.append(levels[-1].reshape(-1, 2).sum(axis=1))
    levels.reverse()
    return levels


def _log_odds(levels: list[np.ndarray], d: int, node: int) -> float:
    lm = float(levels[d + 1][2 * node])
    rm = float(levels[d + 1][2 * node + 1])
    if lm <= 0.0 and rm <= 0.0:
        return 0.0
    if lm <= 0.0:
        return math.inf
    if rm <= 0.0:
        return -math.inf
    return math.log(rm) - math.log(lm)


class _RobustScheme:
    def __init__(self, bins: RobustBins, vocab_size: int):
        self.bins = bins
        self.V = vocab_size
        self.D = max(1, (vocab_size - 1).bit_length())
        self.P = bins.precision
        self.total = 1 << self.P
        self.half = 1 << (self.P - 1)

    def new_state(self) -> _State:
        return _State()

    def _forced(self, d: int, node: int) -> bool:
        return ((2 * node + 1) << (self.D - d - 1)) >= self.V

    # binary coding helpers ------------------------------------------------------
    def _put(self, enc: Any, bit: int, f1: int) -> float:
        f0 = self.total - f1
        if bit:
            enc.push_slice(f0, f1, self.total)
            return self.P - math.log2(f1)
        enc.push_slice(0, f0, self.total)
        return self.P - math.log2(f0)

    def _get(self, dec: Any, f1: int) -> int:
        f0 = self.total - f1
        target = dec.target(self.total)
        if target >= f0:
            dec.advance(f0, f1)
            return 1
        dec.advance(0, f0)
        return 0

    def _put_adaptive(self, enc: Any, model: _Adaptive, bit: int) -> float:
        bits = self._put(enc, bit, model.f1(self.P))
        model.update(bit)
        return bits

    def _get_adaptive(self, dec: Any, model: _Adaptive) -> int:
        bit = self._get(dec, model.f1(self.P))
        model.update(bit)
        return bit

    # the scheme ------------------------------------------------------------------
    def plan(self, symbol: int, row: np.ndarray) -> list[tuple[int, int, bool, int]]:
        """The token's unforced decisions: ``(bit, bin, ambiguous, side)`` each (``side``: the
        helper bit saying on which side of its nearest edge the log-odds lay)."""
        bins = self.bins
        levels = _levels(row, self.D)
        path = []
        node = 0
        for d in range(self.D):
            bit = (symbol >> (self.D - 1 - d)) & 1
            if not self._forced(d, node):
                u = _log_odds(levels, d, node)
                j, dist = bins.nearest_edge(u) if math.isfinite(u) else (-1, math.inf)
                amb = dist <= bins.eta
                path.append((bit, bins.bin_of(u), amb, int(amb and u >= bins._edges_list[j])))
            node = 2 * node + bit
        return path

    def emit(self, enc: Any, state: _State, plan: list[tuple[int, int, bool, int]]) -> float:
        bins = self.bins
        any_amb = any(amb for _, _, amb, _ in plan)
        bits = self._put_adaptive(enc, state.token_flag, int(any_amb))
        for bit, k, amb, side in plan:
            if any_amb:
                bits += self._put_adaptive(enc, state.decision_flag, int(amb))
                if amb:
                    bits += self._put(enc, side, self.half)
            bits += self._put(enc, bit, bins.f1[k])
        return bits

    def pop(self, dec: Any, state: _State, row: np.ndarray) -> int:
        bins = self.bins
        levels = _levels(row, self.D)
        any_amb = self._get_adaptive(dec, state.token_flag)
        node = 0
        for d in range(self.D):
            if self._forced(d, node):
                node = 2 * node
                continue
            v = _log_odds(levels, d, node)
            k = -1
            if any_amb and self._get_adaptive(dec, state.decision_flag):
                side = self._get(dec, self.half)
                j, _ = bins.nearest_edge(v) if math.isfinite(v) else (-1, math.inf)
                if j < 0:
                    raise CorruptStreamError("lm-robust: helper bits for a decision with no edge nearby")
                k = j + 1 if side else j
            if k < 0:
                k = bins.bin_of(v)
            node = 2 * node + self._get(dec, bins.f1[k])
        return node


class RobustLMCodec(LMCodec):
    """``lm`` that decodes exactly whenever the decoder's logits are within ``epsilon`` of the
    encoder's (max norm per row). Options beyond :class:`~seqkv.codecs.lm.LMCodec`'s:

    epsilon:
        tolerated max |Δlogit| (default 1e-3; docs/codecs.md compares it with the differences
        between transformers' prefill and single steps).
    bin_unit, limit:
        the bin grid (see the module doc); ``bin_unit`` defaults to :func:`default_unit`.
    encode_chunk:
        with ``model=``, compute the encoder's logits in prefill chunks of this many tokens
        (faster than single steps, see docs/codecs.md; the decoder still steps).
    engine:
        as for ``lm``, but ``False`` (transformers) by default: robust mode is for logits that
        differ between the two ends (transformers on another device or kernel); the engine's
        are the same bits everywhere, where plain ``lm`` already decodes exactly. With
        ``engine="auto"`` or ``True`` the stream is coded under the engine (and records its
        fingerprint, so only an engine-backed codec decodes it).
    """

    name = "lm-robust"

    def __init__(
        self,
        model: Any = None,
        *,
        epsilon: float = 1e-3,
        bin_unit: float | None = None,
        limit: float = 16.0,
        encode_chunk: int | None = None,
        source: LogitsSource | None = None,
        engine: Any = False,
        draft: Any = None,
        precision: int = 24,
        **options: Any,
    ):
        if source is None and encode_chunk is not None:
            if engine is not False and engine != "transformers":
                raise InvalidInputError("encode_chunk is a transformers option; the engine always encodes by prefill")
            coding_model = draft if draft is not None else model
            if coding_model is None:
                raise InvalidInputError("encode_chunk needs model= (or draft=)")
            source = TransformersSource(coding_model, encode_chunk=encode_chunk)
        super().__init__(model, source=source, engine=engine, draft=draft, precision=precision, **options)
        unit = default_unit(epsilon) if bin_unit is None else bin_unit
        self.bins = RobustBins(epsilon, unit, limit, self.precision)

    def _scheme(self, precision: int, extra: bytes = b"") -> Any:
        bins = self.bins if not extra else RobustBins.unpack(extra, precision)
        return _RobustScheme(bins, self.vocab_size)

    def _extra_params(self) -> bytes:
        return self.bins.pack()

    def read_header(self, data: bytes) -> tuple[Any, dict[str, Any], bytes]:
        c, fields, extra = super().read_header(data)
        if len(extra) != _PARAMS.size:
            raise CorruptStreamError("lm-robust stream lacks its bin parameters")
        return c, fields, extra
