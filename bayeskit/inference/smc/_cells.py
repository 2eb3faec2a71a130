r"""A per-target mixture envelope for the backward kernel of a Gaussian transition (d >= 1).

For a ``MultivariateNormal`` transition with a scale shared over the cloud,
:math:`m_t(\xi_{t-1}^j, \xi_t^i) = c\, e^{-\frac12 \lVert y_i - z_j \rVert^2}` in whitened coordinates
(:math:`z_j = L^{-1}\mu(\xi_{t-1}^j)`, :math:`y_i = L^{-1}\xi_t^i`). The global bound :math:`c` (the peak) makes
the rejection sampler's acceptance rate :math:`p(\xi_t^i \mid \cdot)/c`, which decays exponentially with
the dimension. Here the ancestors are split into cells :math:`\mathcal C_1, \dots, \mathcal C_C` and, for each
target :math:`i`, :math:`m_t(\xi_{t-1}^j, \xi_t^i) \le c\, B_{ic} = c\, e^{-\frac12 \operatorname{dist}(y_i, \mathrm{box}_c)^2}`
for :math:`j \in \mathcal C_c` (the axis-aligned bounding box of the cell in principal coordinates of the
cloud). Rejection sampling from the mixture envelope :math:`q_i(j) \propto W^j B_{i c(j)}`: draw a cell
:math:`c \propto W_c B_{ic}`, an ancestor in it :math:`\propto W^j`, accept with probability
:math:`e^{-\frac12\lVert y_i - z_j\rVert^2} / B_{ic}`; an accepted :math:`J` has exactly the law
:math:`\Lambda_t(i, \cdot)`. The cells are a grid over the leading principal directions of the weighted
cloud crossed with classes of log-weight (factors of 10): light particles far from the bulk then do not
inflate the boxes of the heavy ones. Of the ``8 x 64`` grid cells, the ``CELLS`` heaviest are kept and the
others merged into one. Building it costs :math:`O(N C d)` per step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.inference.smc._cumulative import short_running_sum

__all__ = ["CellEnvelope", "build_envelope", "CELLS"]

CELLS = 64          # cells kept (the heaviest), plus one for the rest
_CLASSES = 8        # log-weight classes: [max W / 10^(g+1), max W / 10^g), the last one open
_GRID = 64          # grid cells over the leading principal directions


def _grid_shape(dim: int):
    """(number of principal directions, bins per direction) of the spatial grid."""
    p = min(dim, 3)
    return p, round(_GRID ** (1.0 / p))


class CellEnvelope(NamedTuple):
    """The envelope of one step (see the module docstring): rotated whitened ancestors ``zr`` (N, d) and
    targets ``yr`` (M, d); ``log_b`` (M, C + 1): :math:`\\log B_{ic}` (plus a rounding slack);
    ``cell_cdf`` (M, C + 1): the cumulative (unnormalised) :math:`W_c B_{ic}`; the ancestors sorted by cell
    (``order``), ``start``/``count`` of each cell in that order and ``segcum``, the cumulative weights
    within each cell (relative to the cell's heaviest)."""

    zr: jax.Array
    yr: jax.Array
    log_b: jax.Array
    cell_cdf: jax.Array
    order: jax.Array
    start: jax.Array
    count: jax.Array
    segcum: jax.Array

    def propose(self, uniforms, i):
        """One proposal per entry of the target indices ``i``, from two uniforms on [0, 1) per entry
        (``uniforms``: (2, len(i))): ``(j, log B_{i, c(j)})``."""
        ncol = self.cell_cdf.shape[1]
        flat = self.cell_cdf.reshape(-1)
        base = i * ncol
        u = (1.0 - uniforms[0].astype(flat.dtype)) * flat[base + ncol - 1]  # in (0, total]
        c, top = jnp.zeros_like(i), jnp.full_like(i, ncol - 1)
        for _ in range(math.ceil(math.log2(ncol + 1))):  # the first cell whose cumulative mass reaches u
            mid = (c + top) // 2
            go = flat[base + mid] < u
            c, top = jnp.where(go, mid + 1, c), jnp.where(go, top, mid)
        lo = self.start[c]
        hi = lo + jnp.maximum(self.count[c] - 1, 0)
        total = self.segcum[hi]
        v = (1.0 - uniforms[1].astype(self.segcum.dtype)) * total
        # first position of the cell whose within-cell cumulative weight reaches v (bisection; never a
        # zero-weight ancestor, since v > 0 and the cumulative weight does not grow at one)
        for _ in range(max(1, math.ceil(math.log2(self.segcum.shape[0] + 1)))):  # unrolled: ~1.4x faster
            mid = (lo + hi) // 2
            go = self.segcum[mid] < v
            lo, hi = jnp.where(go, mid + 1, lo), jnp.where(go, hi, mid)
        return self.order[lo], self.log_b[i, c]

    def log_ratio(self, j, i, log_b):
        """:math:`\\log(e^{-\\frac12\\lVert y_i - z_j\\rVert^2} / B_{ic})` (<= 0): the log acceptance probability."""
        return -0.5 * jnp.sum(jnp.square(self.yr[i] - self.zr[j]), axis=-1) - log_b


def _segmented_cumsum(values, starts):
    """Inclusive cumulative sums restarting at every ``starts`` flag."""
    def op(a, b):
        return jnp.where(b[1], b[0], a[0] + b[0]), a[1] | b[1]
    return jax.lax.associative_scan(op, (values, starts))[0]


def build_envelope(z, y, log_weights) -> CellEnvelope:
    """The cell envelope for whitened ancestors ``z`` (N, d) with log-weights ``log_weights`` and whitened
    targets ``y`` (M, d)."""
    n, dim = z.shape
    lw = log_weights - jax.nn.logsumexp(log_weights)
    w = jnp.exp(lw)
    live = lw > -jnp.inf
    zbar = w @ z
    zc = z - zbar
    cov = (zc * w[:, None]).T @ zc
    evals, evecs = jnp.linalg.eigh(cov)
    rot = evecs[:, ::-1]                       # leading principal directions first
    sd = jnp.sqrt(jnp.maximum(evals[::-1], 0.0))
    zr = zc @ rot
    yr = (y - zbar) @ rot

    p, b = _grid_shape(dim)
    q = jnp.asarray(jax.scipy.special.ndtri(np.arange(1, b) / b), z.dtype)  # Gaussian quantiles
    gap = jnp.where(live, jnp.max(lw) - lw, jnp.inf)
    slot = jnp.clip(jnp.floor(gap / jnp.log(10.0)), 0, _CLASSES - 1).astype(jnp.int32)
    for k in range(p):
        slot = slot * b + jnp.sum((zr[:, k:k + 1] > sd[k] * q).astype(jnp.int32), axis=1)
    num_slots = _CLASSES * b ** p
    mass_slot = jax.ops.segment_sum(w, slot, num_slots)
    _, top = jax.lax.top_k(mass_slot, CELLS)
    rank = jnp.full((num_slots,), CELLS, jnp.int32).at[top].set(jnp.arange(CELLS, dtype=jnp.int32))
    cell = rank[slot]

    nc = CELLS + 1
    # weights relative to the heaviest of their cell (no underflow of light cells' weights)
    top_lw = jax.ops.segment_max(jnp.where(live, lw, -jnp.inf), cell, nc)
    filled = top_lw > -jnp.inf
    top_lw = jnp.where(filled, top_lw, 0.0)
    w_rel = jnp.where(live, jnp.exp(lw - top_lw[cell]), 0.0)
    log_mass = top_lw + jnp.log(jax.ops.segment_sum(w_rel, cell, nc))
    lo = jax.ops.segment_min(jnp.where(live[:, None], zr, jnp.inf), cell, nc)
    hi = jax.ops.segment_max(jnp.where(live[:, None], zr, -jnp.inf), cell, nc)
    lo = jnp.where(filled[:, None], lo, 0.0)
    hi = jnp.where(filled[:, None], hi, 0.0)
    sq = 0.0  # squared distance of each target to each box, one coordinate at a time (a (M, C + 1, d)
    for k in range(dim):  # intermediate reduced over its short last axis is ~9x slower on CPU)
        gap = jnp.maximum(jnp.maximum(lo[None, :, k] - yr[:, k, None], yr[:, k, None] - hi[None, :, k]), 0.0)
        sq = sq + gap * gap
    log_b = -0.5 * sq                                                # (M, C + 1), <= 0
    # gap_k <= |y_k - z_k| holds coordinatewise in floating point; the slack covers the summation order
    log_b = log_b + 64 * jnp.finfo(z.dtype).eps * (1.0 - log_b)
    log_env = jnp.where(filled[None], jnp.where(filled, log_mass, 0.0)[None] + log_b, -jnp.inf)
    top_env = jnp.max(log_env, axis=1, keepdims=True)
    # the running sum over the C + 1 cells as one matrix product: 3-4x faster on CPU than jnp.cumsum along the
    # short minor axis
    cell_cdf = short_running_sum(jnp.exp(log_env - top_env))

    order = jnp.argsort(cell, stable=True).astype(jnp.int32)
    count = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), cell, nc)
    start = (jnp.cumsum(count) - count).astype(jnp.int32)
    sorted_cell = cell[order]
    flags = jnp.arange(n, dtype=jnp.int32) == start[sorted_cell]
    segcum = _segmented_cumsum(w_rel[order], flags)
    return CellEnvelope(zr, yr, log_b, cell_cdf, order, start, count, segcum)
