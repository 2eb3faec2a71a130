r"""Resampling: schemes, strategies, effective sample size and log-weight normalisation.

A *strategy* (:class:`Strategy`) tells the SMC engine how to pick ancestors at each step:
:func:`adaptive` (resample when the ESS falls below a threshold), :func:`always`, :func:`never`,
:func:`conditional` (a reference path pinned to one slot, with optional ancestor sampling: conditional
SMC) and :func:`frozen` (skip whole steps once every particle has finished). A step that does not
resample does no resampling work: the decision is a ``lax.cond``, not a selection between two
computed results.

Every scheme has the same signature ``scheme(key, log_weights, num_samples) -> ancestors`` (int32
indices into the particle axis), takes *unnormalised* log-weights, and satisfies the unbiasedness
property :math:`\mathbb{E}[\#\{j : A_j = i\}] = M W_i` for ``num_samples = M``.

The systematic, stratified and residual schemes are O(N): they compute the running totals ``below_i``
(uniforms below the cumulative weight C_i) in one pass, mark where each particle's offspring end (a scatter)
and count the marks (a running sum): ``A_j = #{i : below_i <= j}``. Multinomial resampling draws sorted
uniforms from normalised exponential spacings and counts them per particle.

On CPU two choices depend on N (measured in a whole bootstrap filter, ``benchmarks/filter_overhead.py``, 2-core
CPU, against a plain jitted JAX filter that resamples by ``searchsorted``):

* running sums along rows of 2**13 entries or more add blocks of 32 by one matrix product
  (``bayeskit.inference.smc._cumulative``; the resampling weights, and the exact backward draws' inverse-CDF
  rows at large N);
* up to ``SEARCH_MAX = 2**12`` particles the ancestors come from a binary search of ``0..M-1`` in the running
  totals instead (the same indices): at N = 1e3-4e3 the scatter and its running sum cost more per step than
  the search. Above it the O(N) expansion wins at N = 1e5: the filter went from 1.05x to 0.58-0.60x the plain
  filter's time (in CPU time from 1.08-1.11x to 0.84-0.87x: XLA:CPU also runs a step's independent operations
  on the second core); at N = 1e4 from 0.92-0.98x to 0.81-0.91x in wall time, not in CPU time. Making the
  blocked running sum nondecreasing then cost 5-10% (0.67-0.68x at 1e5, 0.90-0.92x at 1e4 in one check).

Every other platform uses ``jnp.cumsum`` and the O(N) expansion.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.smc._cumulative import count_running_sum, running_sum

__all__ = [
    "normalize_log_weights",
    "ess",
    "log_ess",
    "weight_stats",
    "multinomial",
    "stratified",
    "systematic",
    "residual",
    "SCHEMES",
    "get_scheme",
    "categorical",
    "categorical_rows",
    "Strategy",
    "adaptive",
    "always",
    "never",
    "conditional",
    "frozen",
]


def _shifted_exp(log_weights):
    """``(m, e)`` with ``m`` the largest log-weight (0 if it is not finite) and ``e = exp(log_w - m)``:
    the one pass that the normalised weights, the log-sum and the ESS share (written once, so that XLA
    computes it once per step for all of them)."""
    m = jnp.max(log_weights)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))
    return m, jnp.exp(log_weights - m)


def normalize_log_weights(log_weights):
    r"""Return ``(normalised weights W, logsumexp(log_weights))``.

    It normalises *weights*: the second value is :math:`\log \sum_i w_i`, which is a log-evidence increment
    only when the incoming weights were normalised; the engine's estimate of the log normalising constant is
    ``log_evidence`` (the glossary's one spelling).
    """
    m, e = _shifted_exp(log_weights)
    s = jnp.sum(e)
    return e / s, m + jnp.log(s)


def log_ess(log_weights):
    """log of the effective sample size ``1 / sum_i W_i^2``."""
    lse = jax.nn.logsumexp(log_weights)
    return 2.0 * lse - jax.nn.logsumexp(2.0 * log_weights)


def ess(log_weights):
    """Effective sample size ``1 / sum_i W_i^2`` of unnormalised log-weights (in [1, N])."""
    return jnp.exp(log_ess(log_weights))


def weight_stats(log_weights):
    r"""``(logsumexp, ESS, nonfinite)`` of unnormalised log-weights in one pass over them: one max and
    two sums of :math:`e_i = \exp(\log w_i - \max_j \log w_j)`, with
    :math:`\mathrm{ESS} = (\sum e)^2 / \sum e^2`. ``nonfinite`` is true when a log-weight is NaN or
    all are :math:`-\infty` (the sum of the :math:`e_i` is then NaN or 0)."""
    m, e = _shifted_exp(log_weights)
    s1 = jnp.sum(e)
    s2 = jnp.sum(e * e)
    return m + jnp.log(s1), s1 * s1 / s2, ~(s1 > 0)


def _cumulative(log_weights):
    w, _ = normalize_log_weights(log_weights)
    c = running_sum(w)
    # guard the top end against rounding so that every uniform falls below it
    return c.at[-1].set(1.0)


SEARCH_MAX = 1 << 12  # largest N or M for which CPU finds the ancestors by binary search


def _search_on_small_cpu(operand, sizes, by_search, by_counts):
    """``by_search(operand)`` on CPU when every size is <= SEARCH_MAX, else ``by_counts(operand)``
    (both must return the same indices)."""
    if max(sizes) > SEARCH_MAX:
        return by_counts(operand)
    return jax.lax.platform_dependent(operand, cpu=by_search, default=by_counts)


def _scatter_ancestors(below, num_samples: int):
    """``A_j = #{i : below_i <= j}`` in O(N + M): mark where each particle's offspring end, then a running
    count of the marks."""
    n = below.shape[0]
    marks = jnp.zeros((num_samples + 1,), jnp.int32).at[jnp.clip(below, 0, num_samples)].add(
        1, mode="promise_in_bounds")
    return jnp.minimum(count_running_sum(marks[:num_samples], n), n - 1).astype(jnp.int32)


def _ancestors_from_below(below, num_samples: int):
    """Ancestor indices from the running totals ``below`` (nondecreasing, ``below[-1] = M``):
    particle i is repeated ``below[i] - below[i-1]`` times, i.e. ``A_j = #{i : below_i <= j}``.

    On CPU, up to ``SEARCH_MAX`` particles, by binary search; under ``vmap`` the batch counts (the innermost
    ``vmap``'s): a batch of filters whose particles number more than ``SEARCH_MAX`` in all takes the O(N)
    expansion (100 filters of 1000 particles, ``benchmarks/batched.py``'s workload: 0.24 s instead of
    0.30 s in one session)."""
    n = below.shape[0]
    size = max(n, num_samples)

    def by_search(b):
        a = jnp.searchsorted(b, jnp.arange(num_samples, dtype=b.dtype), side="right")
        return jnp.minimum(a, n - 1).astype(jnp.int32)

    def by_scatter(b):
        return _scatter_ancestors(b, num_samples)

    if size > SEARCH_MAX:
        return by_scatter(below)

    def chosen(b):
        return jax.lax.platform_dependent(b, cpu=by_search, default=by_scatter)

    @jax.custom_batching.custom_vmap
    def ancestors(b):
        return chosen(b)

    @ancestors.def_vmap
    def _batched(axis_size, in_batched, b):
        (batched,) = in_batched
        if not batched:
            return chosen(b), False
        return jax.vmap(by_scatter if axis_size * size > SEARCH_MAX else chosen)(b), True

    return ancestors(below)


def _expand(counts, num_samples):
    """Each index ``i`` repeated ``counts[i]`` times (``sum(counts) <= num_samples``; the positions past the
    total hold the last index)."""
    return _scatter_ancestors(count_running_sum(counts.astype(jnp.int32), num_samples), num_samples)


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
    u = running_sum(e[:-1]) / jnp.sum(e)  # sorted uniforms on (0, 1)
    n = c.shape[0]

    def by_counts(u):
        below = jnp.searchsorted(u, c, side="left", method="sort").astype(jnp.int32)
        return _scatter_ancestors(below.at[-1].set(num_samples), num_samples)

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


# ------------------------------------------------------------------------------------- i.i.d. draws
def cdf(log_weights):
    """The CDF of :math:`\\mathrm{Cat}(W)` with its last entry set to +inf (robust to rounding), for
    repeated :func:`categorical_from_cdf` draws from the same weights."""
    c = jnp.cumsum(jax.nn.softmax(log_weights))
    return c.at[-1].set(jnp.inf)


def categorical_from_cdf(key, cdf_values, num_samples: int):
    """``num_samples`` i.i.d. (unsorted) draws from the categorical law whose :func:`cdf` is given."""
    u = jax.random.uniform(key, (num_samples,), dtype=cdf_values.dtype)
    idx = jnp.searchsorted(cdf_values, u, side="right")
    return jnp.clip(idx, 0, cdf_values.shape[0] - 1).astype(jnp.int32)


def categorical(key, log_weights, num_samples: int):
    """``num_samples`` i.i.d. (unsorted) draws from :math:`\\mathrm{Cat}(W)`, by inverse CDF: O(N + M log N)."""
    return categorical_from_cdf(key, cdf(log_weights), num_samples)


def categorical_rows(key, logits):
    r"""One draw per row of ``logits`` (M, N) from :math:`\mathrm{Cat}(\mathrm{softmax}(\text{row}))`, by
    inverse CDF: one uniform per row and one pass over the row (a cumulative sum and a count), instead of
    the N Gumbel variates per row of ``jax.random.categorical`` (3-4x faster on CPU at N = 1e3-4e3).
    The uniform is taken in (0, total], so a zero-weight entry is never drawn."""
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))
    c = running_sum(jnp.exp(logits - m))
    u = (1.0 - jax.random.uniform(key, logits.shape[:-1], dtype=c.dtype)) * c[..., -1]
    idx = jnp.sum((c < u[..., None]).astype(jnp.int32), axis=-1)
    return jnp.minimum(idx, logits.shape[-1] - 1).astype(jnp.int32)


# ------------------------------------------------------------------------------------- strategies
def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


class Strategy(NamedTuple):
    """How the SMC engine picks ancestors (a small pure piece; build one with :func:`adaptive`,
    :func:`always`, :func:`never`, :func:`conditional` or :func:`frozen`).

    Fields:
        select: ``(key, t, particles, log_weights, fk) -> (ancestors, resampled, particles, log_weights)``:
            the ancestors (N,), whether this was a resampling (bool), and the ancestors' particles and the
            log-weights they carry into step t.
        pin: optional ``(t, particles) -> particles``: sets pinned slots after each move (and at t = 0).
        halt: optional ``particles -> bool``: when true, the engine skips the whole step.
        freeze: optional ``particles -> particles`` applied to the particles of a skipped step.
    """

    select: Callable
    pin: Callable | None = None
    halt: Callable | None = None
    freeze: Callable | None = None


def _static_float(x):
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def adaptive(scheme: str | Callable = "systematic", threshold: Any = 0.5) -> Strategy:
    """Resample with ``scheme`` when :math:`\\mathrm{ESS} < \\kappa N` (``threshold`` = :math:`\\kappa`, may be
    traced). A static ``threshold`` >= 1 is :func:`always`, <= 0 is :func:`never`."""
    static = _static_float(threshold)
    if static is not None and static >= 1.0:
        return always(scheme)
    if static is not None and static <= 0.0:
        return never()
    scheme_fn = get_scheme(scheme)

    def select(key, t, particles, log_weights, fk):
        n = log_weights.shape[0]
        do = (threshold >= 1.0) | (weight_stats(log_weights)[1] < threshold * n)

        def resample(_):
            idx = scheme_fn(key, log_weights, n)
            return idx, _take(particles, idx), jnp.zeros_like(log_weights)

        def keep(_):
            return jnp.arange(n, dtype=jnp.int32), particles, log_weights

        idx, x, lw = jax.lax.cond(do, resample, keep, None)
        return idx, do, x, lw

    return Strategy(select)


def always(scheme: str | Callable = "systematic") -> Strategy:
    """Resample with ``scheme`` at every step (the bootstrap filter of Gordon, Salmond & Smith)."""
    scheme_fn = get_scheme(scheme)

    def select(key, t, particles, log_weights, fk):
        idx = scheme_fn(key, log_weights, log_weights.shape[0])
        return idx, jnp.array(True), _take(particles, idx), jnp.zeros_like(log_weights)

    return Strategy(select)


def never() -> Strategy:
    """Never resample (sequential importance sampling); no resampling work at all."""

    def select(key, t, particles, log_weights, fk):
        return jnp.arange(log_weights.shape[0], dtype=jnp.int32), jnp.array(False), particles, log_weights

    return Strategy(select)


def conditional(reference, *, slot: int = 0, ancestor_sampling: bool = False, pin: bool = True) -> Strategy:
    """Conditional SMC: ``reference`` (a pytree with leading axis T) is pinned to ``slot`` at every step.

    The other N - 1 slots draw i.i.d. ancestors from :math:`\\mathrm{Cat}(W_{t-1})` over all N particles
    (multinomial: conditional resampling keeps the exact invariance of particle Gibbs). The pinned slot's
    ancestor is itself or, with ``ancestor_sampling`` (Lindsten, Jordan & Schön 2014), a draw from
    :math:`\\mathbb P(A_t = j) \\propto W_{t-1}^j m_t(\\xi_{t-1}^j, x^\\star_t)` (needs ``fk.log_transition``).
    ``pin=False`` when the Feynman–Kac model's own ``init``/``move`` place the reference in ``slot`` (because
    its potential must see it, as in the inference-time-scaling sweep).
    """

    def select(key, t, particles, log_weights, fk):
        n = log_weights.shape[0]
        k_free, k_as = jax.random.split(key)
        free = multinomial(k_free, log_weights, n - 1)
        if ancestor_sampling:
            ref_t = jax.tree_util.tree_map(lambda r: jnp.broadcast_to(r[t], (n,) + r.shape[1:]), reference)
            own = jax.random.categorical(k_as, log_weights + fk.log_transition(t, particles, ref_t))
        else:
            own = slot
        own = jnp.asarray(own, jnp.int32)[None]
        idx = jnp.concatenate([free[:slot], own, free[slot:]])
        return idx, jnp.array(True), _take(particles, idx), jnp.zeros_like(log_weights)

    def pin_fn(t, particles):
        return jax.tree_util.tree_map(lambda a, r: a.at[slot].set(r[t]), particles, reference)

    if not isinstance(slot, int) or slot < 0:
        from bayeskit.errors import ConfigurationError

        raise ConfigurationError(f"`slot` must be a non-negative int (N - 1 for the last slot), got {slot!r}")
    return Strategy(select, pin_fn if pin else None)


def frozen(inner: Strategy, is_done: Callable, freeze: Callable | None = None) -> Strategy:
    """``inner``, except that once ``is_done(particles)`` (N,) is true for every particle the engine skips
    whole steps: no move, no resampling, weights and evidence unchanged (finished sequences).
    ``freeze(particles)`` marks the particles of a skipped step (e.g. zero per-step statistics)."""
    return inner._replace(halt=lambda particles: jnp.all(is_done(particles)), freeze=freeze)
