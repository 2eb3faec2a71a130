r"""Resampling schemes, effective sample size and log-weight normalisation.

Every scheme has the same signature ``scheme(key, log_weights, num_samples) -> ancestors`` (int32
indices into the particle axis), takes *unnormalised* log-weights, and satisfies the unbiasedness
property :math:`\mathbb{E}[\#\{j : A_j = i\}] = M W_i` for ``num_samples = M``.

The systematic, stratified and residual schemes are O(N): they compute offspring counts from the
cumulative weights in one pass and expand them with ``jnp.repeat(..., total_repeat_length=M)``
(a scatter and a cumulative sum) instead of a binary search per particle. Multinomial resampling
draws sorted uniforms from normalised exponential spacings and counts them per particle.

On CPU, for up to ``2**15`` particles, the expansion of the counts is a binary search instead
(``searchsorted`` of ``0..M-1`` in the running totals of the counts): it returns the same indices,
and XLA:CPU's scatter made the O(N) expansion 1.4-2x slower than the whole rest of a bootstrap
filter step at N = 1e3-1e4 (``benchmarks/throughput.py``). Multinomial resampling there is one
binary search of the sorted uniforms in the cumulative weights (same indices; 8-9x faster than the
sort-based count at N = 1e3-1e4). Above that size, and on every other platform, the O(N) expansion
is used.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "normalize_log_weights",
    "ess",
    "log_ess",
    "multinomial",
    "stratified",
    "systematic",
    "residual",
    "SCHEMES",
    "get_scheme",
]


def normalize_log_weights(log_weights):
    """Return ``(normalised weights W, logsumexp(log_weights))``."""
    lse = jax.nn.logsumexp(log_weights)
    return jnp.exp(log_weights - lse), lse


def log_ess(log_weights):
    """log of the effective sample size ``1 / sum_i W_i^2``."""
    lse = jax.nn.logsumexp(log_weights)
    return 2.0 * lse - jax.nn.logsumexp(2.0 * log_weights)


def ess(log_weights):
    """Effective sample size ``1 / sum_i W_i^2`` of unnormalised log-weights (in [1, N])."""
    return jnp.exp(log_ess(log_weights))


def _cumulative(log_weights):
    w, _ = normalize_log_weights(log_weights)
    c = jnp.cumsum(w)
    # guard the top end against rounding so that every uniform falls below it
    return c.at[-1].set(1.0)


def _expand(counts, num_samples):
    n = counts.shape[0]
    return jnp.repeat(jnp.arange(n, dtype=jnp.int32), counts, total_repeat_length=num_samples)


def _counts_from_below(below):
    """Offspring counts from ``below[i]`` = number of uniforms strictly below C_i."""
    return jnp.diff(below, prepend=jnp.zeros((1,), below.dtype))


SEARCH_MAX = 1 << 15  # largest N or M for which CPU expands the counts by binary search


def _search_on_small_cpu(operand, sizes, by_search, by_counts):
    """``by_search(operand)`` on CPU when every size is <= SEARCH_MAX, else ``by_counts(operand)``
    (both must return the same indices)."""
    if max(sizes) > SEARCH_MAX:
        return by_counts(operand)
    return jax.lax.platform_dependent(operand, cpu=by_search, default=by_counts)


def _ancestors_from_below(below, num_samples: int):
    """Ancestor indices from the running totals ``below`` (nondecreasing, ``below[-1] = M``):
    particle i is repeated ``below[i] - below[i-1]`` times, i.e. ``A_j = #{i : below_i <= j}``."""
    n = below.shape[0]

    def by_repeat(b):
        return _expand(_counts_from_below(b), num_samples)

    def by_search(b):
        a = jnp.searchsorted(b, jnp.arange(num_samples, dtype=b.dtype), side="right")
        return jnp.minimum(a, n - 1).astype(jnp.int32)

    return _search_on_small_cpu(below, (n, num_samples), by_search, by_repeat)


def systematic(key, log_weights, num_samples: int):
    """Systematic resampling: one uniform U, points ``(j + U) / M``. O(N)."""
    c = _cumulative(log_weights)
    u = jax.random.uniform(key, dtype=c.dtype)
    below = jnp.clip(jnp.ceil(num_samples * c - u), 0, num_samples).astype(jnp.int32)
    return _ancestors_from_below(below, num_samples)


def stratified(key, log_weights, num_samples: int):
    """Stratified resampling: independent ``U_j`` per stratum, points ``(j + U_j) / M``. O(N)."""
    c = _cumulative(log_weights)
    u = jax.random.uniform(key, (num_samples,), dtype=c.dtype)
    scaled = num_samples * c
    fl = jnp.floor(scaled)
    j = jnp.clip(fl.astype(jnp.int32), 0, num_samples - 1)
    extra = (fl < num_samples) & (u[j] < scaled - fl)
    below = jnp.clip(fl.astype(jnp.int32) + extra.astype(jnp.int32), 0, num_samples)
    return _ancestors_from_below(below, num_samples)


def multinomial(key, log_weights, num_samples: int):
    """Multinomial resampling: i.i.d. draws from Cat(W), via sorted uniforms (exponential spacings)."""
    c = _cumulative(log_weights)
    e = jax.random.exponential(key, (num_samples + 1,), dtype=c.dtype)
    u = jnp.cumsum(e[:-1]) / jnp.sum(e)  # sorted uniforms on (0, 1)
    n = c.shape[0]

    def by_counts(u):
        below = jnp.searchsorted(u, c, side="left", method="sort").astype(jnp.int32)
        return _expand(_counts_from_below(below.at[-1].set(num_samples)), num_samples)

    def by_search(u):
        # A_j = #{i : c_i <= u_j}: the same indices as the counts above, in one binary search
        return jnp.minimum(jnp.searchsorted(c, u, side="right"), n - 1).astype(jnp.int32)

    return _search_on_small_cpu(u, (n, num_samples), by_search, by_counts)


def residual(key, log_weights, num_samples: int):
    """Residual resampling: ``floor(M W_i)`` deterministic copies, the rest multinomial on the residuals."""
    w, _ = normalize_log_weights(log_weights)
    scaled = num_samples * w
    det = jnp.floor(scaled).astype(jnp.int32)
    num_det = jnp.sum(det)
    res = scaled - det
    log_res = jnp.where(res > 0, jnp.log(jnp.where(res > 0, res, 1.0)), -jnp.inf)
    # if no residual mass is left (all counts integral), any draw is discarded below
    log_res = jnp.where(jnp.all(res <= 0), jnp.zeros_like(log_res), log_res)
    k_draw, k_perm = jax.random.split(key)
    # multinomial() returns its i.i.d. draws sorted; shuffle them so any prefix is an i.i.d. sample
    extra = jax.random.permutation(k_perm, multinomial(k_draw, log_res, num_samples))
    det_idx = _expand(det, num_samples)
    pos = jnp.arange(num_samples)
    # positions >= num_det take the first num_samples - num_det residual draws
    return jnp.where(pos < num_det, det_idx, extra[pos - num_det]).astype(jnp.int32)


SCHEMES: dict[str, Callable] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_scheme(resampling) -> Callable:
    """A resampling function from its name or a callable with the common signature."""
    from bayeskit.errors import ConfigurationError

    if callable(resampling):
        return resampling
    if resampling not in SCHEMES:
        raise ConfigurationError(
            f"`resampling` must be one of {sorted(SCHEMES)} or a callable "
            f"(key, log_weights, num_samples) -> indices, got {resampling!r}"
        )
    return SCHEMES[resampling]
