r"""The backward kernel of a particle filter, shared by FFBS, conditional SMC, PaRIS and PPG.

.. math::
    \Lambda_t(i, j) = \frac{\omega_{t-1}^j\, m_t(\xi_{t-1}^j, \xi_t^i)}
                           {\sum_l \omega_{t-1}^l\, m_t(\xi_{t-1}^l, \xi_t^i)} .

Here: the N x N log-transition matrix (:func:`log_transition_matrix`, evaluated in row blocks), exact
draws from :math:`\Lambda_t` (:func:`sample_backward`: the hybrid rejection sampler of Dau & Chopin
2022 with an exact O(N) fallback), backward sampling of whole paths through a stored particle system
(:func:`backward_sample`), and the bound of the transition density that the rejection sampler needs
(:func:`transition_log_bound`, :func:`log_bound_fn`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import renamed_kwargs
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc.engine import take
from bayeskit.inference.smc._cells import build_envelope
from bayeskit.inference.smc._feynman_kac import FeynmanKac
from bayeskit.inference.smc.resampling import categorical, categorical_from_cdf, categorical_rows, cdf

__all__ = ["log_transition_matrix", "sample_backward", "backward_sample", "transition_log_bound", "log_bound_fn",
           "check_backward_model", "DEFAULT_NUM_TRIALS", "TransitionBound"]

DEFAULT_NUM_TRIALS = 10
_ROUND_OVERHEAD = 2048  # a rejection round's fixed cost, in pair evaluations (about 16 us on CPU)


def log_transition_matrix(fk: FeynmanKac, t, x_prev, x):
    """``L[i, j] = log m_t(x_prev[j], x[i])``, shape ``(len(x), len(x_prev))``, one row per particle of ``x``
    (the transition's log-density evaluated on a whole cloud per row, vectorised over rows)."""
    n_prev = jax.tree_util.tree_leaves(x_prev)[0].shape[0]

    def row(xi):
        xb = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_prev,) + a.shape), xi)
        return fk.log_transition(t, x_prev, xb)

    return jax.vmap(row)(x)


_SYMMETRIC_UNIMODAL = ("Normal", "MultivariateNormal", "LowRankMultivariateNormal", "StudentT", "Laplace",
                       "Cauchy", "MultivariateStudentT", "Logistic")


def _mode(d):
    """A global maximiser of the density of ``d`` (batched), for the rejection sampler's bound."""
    try:
        return d.mode
    except NotImplementedError:
        pass
    name = type(d).__name__
    if name in ("Independent", "ExpandedDistribution"):
        base = _mode(d.base_dist)
        return jnp.broadcast_to(base, tuple(d.batch_shape) + tuple(d.event_shape))
    if name in _SYMMETRIC_UNIMODAL:
        return jnp.broadcast_to(d.loc, tuple(d.batch_shape) + tuple(d.event_shape))
    raise ModelError(
        f"cannot bound the transition density of a {name} distribution for PaRIS's rejection sampler: "
        "pass `log_transition_bound=fn(params, x_prev, t)` (an upper bound of log m_t(x_prev[j], x) over j "
        "and x), or `num_trials=0` for exact O(N^2) backward draws")


def transition_log_bound(ssm, params, x_prev, t):
    """:math:`\\log \\bar\\varepsilon_t = \\max_j \\sup_x \\log m_t(x_{t-1}^j, x)`, an upper bound of the
    transition density over the current cloud, from the mode of each transition distribution
    (Normal, MultivariateNormal, StudentT, Laplace, ... and any distribution with ``.mode``)."""
    if ssm.vectorized:
        d = ssm.transition(params, x_prev, t)
        return jnp.max(d.log_prob(_mode(d)))

    def one(xp):
        d = ssm.transition(params, xp, t)
        return d.log_prob(_mode(d))

    return jnp.max(jax.vmap(one)(x_prev))


def _generic_pairs(fk: FeynmanKac):
    """``pairs`` from the Feynman-Kac model's ``log_transition`` (any model)."""
    def prepare(t, x_prev, x):
        def pair(j, i):
            return fk.log_transition(t, take(x_prev, j), take(x, i))

        def rows(i):
            return log_transition_matrix(fk, t, x_prev, take(x, i))
        return pair, rows
    return prepare


def _shared_gaussian(ssm, params, t, x_prev):
    """``(loc (N, d), scale_tril (d, d))`` when the transition from every particle of ``x_prev`` is a
    ``MultivariateNormal`` with one scale shared over the cloud (decided while tracing), else ``None``."""
    leaves = jax.tree_util.tree_leaves(x_prev)
    if len(leaves) != 1 or leaves[0].ndim != 2:
        return None
    n, dim = leaves[0].shape
    if ssm.vectorized:
        d = ssm.transition(params, x_prev, t)
        if type(d).__name__ != "MultivariateNormal" or tuple(d.event_shape) != (dim,):
            return None
        L = d.scale_tril
        if int(np.prod(L.shape[:-2])) != 1:
            return None
        return jnp.broadcast_to(d.loc, (n, dim)), L.reshape(dim, dim)
    d0 = ssm.transition(params, leaves[0][0], t)
    if type(d0).__name__ != "MultivariateNormal" or tuple(d0.event_shape) != (dim,):
        return None
    try:  # out_axes=None fails while tracing if the scale depends on the particle
        L = jax.vmap(lambda xp: ssm.transition(params, xp, t).scale_tril, out_axes=None)(x_prev)
    except ValueError:
        return None
    loc = jax.vmap(lambda xp: jnp.broadcast_to(ssm.transition(params, xp, t).loc, (dim,)))(x_prev)
    return loc, L.reshape(dim, dim)


def _whitened(loc, L):
    """Whitening ``W = L^{-1}`` (a d x d solve, never one with N right-hand sides: XLA's CPU triangular
    solve with many right-hand sides is slow and erratic) and the log normaliser."""
    dim = L.shape[-1]
    W = jax.scipy.linalg.solve_triangular(L, jnp.eye(dim, dtype=L.dtype), lower=True)
    const = -0.5 * dim * jnp.log(2 * jnp.pi).astype(L.dtype) - jnp.sum(jnp.log(jnp.abs(jnp.diagonal(L))))
    return W, const


class TransitionBound:
    r"""``(t, x_prev) -> log bound`` of the transition density over the cloud ``x_prev`` (see
    :func:`log_bound_fn`), with :meth:`prepare`, the ``pairs`` argument of :func:`sample_backward`: for a
    ``MultivariateNormal`` transition with a scale shared over the cloud, :math:`\log m_t(\xi_{t-1}^j, x) =
    c - \tfrac12 \lVert W x - W \mu(\xi_{t-1}^j)\rVert^2` with :math:`W = L^{-1}` computed once per step, so
    a pair costs O(d) and a block of the N x N matrix is one broadcast difference (no per-pair Cholesky
    factor or triangular solve)."""

    def __init__(self, ssm, params, user_bound: Callable | None = None):
        self.ssm, self.params, self.user_bound = ssm, params, user_bound

    def __call__(self, t, x_prev):
        if self.user_bound is not None:
            return jnp.asarray(self.user_bound(self.params, x_prev, t))
        g = _shared_gaussian(self.ssm, self.params, t, x_prev)
        if g is not None:
            return _whitened(*g)[1]  # the peak density, shared by every particle
        return transition_log_bound(self.ssm, self.params, x_prev, t)

    def whiten(self, t, x_prev, x):
        """``(v, u, const)``: whitened transition means ``v = W mu(x_prev)`` (N, d), whitened targets
        ``u = W x`` (M, d) and the log normaliser, so that ``log m_t = const - |u_i - v_j|^2 / 2``; ``None``
        unless the transition is a shared-scale ``MultivariateNormal`` (the ``whiten`` argument of
        :func:`sample_backward`, for its per-target cell envelope)."""
        g = _shared_gaussian(self.ssm, self.params, t, x_prev)
        if g is None:
            return None
        W, const = _whitened(*g)
        return g[0] @ W.T, x @ W.T, const

    def prepare(self, t, x_prev, x):
        wh = self.whiten(t, x_prev, x)
        return None if wh is None else _whitened_pairs(*wh)  # None: the Feynman-Kac model's log_transition


def _whitened_pairs(v, u, const):
    """``(pair, rows)`` (the ``pairs`` of :func:`sample_backward`) from whitened quantities ``(v, u, const)`` (see
    :meth:`TransitionBound.whiten`): a pair costs O(d), a block of rows is one matrix product."""
    vv = jnp.sum(jnp.square(v), axis=-1)
    uu = jnp.sum(jnp.square(u), axis=-1)

    def pair(j, i):
        return const - 0.5 * jnp.sum(jnp.square(u[i] - v[j]), axis=-1)

    def rows(i):
        # |u - v|^2 = |u|^2 + |v|^2 - 2 u.v: a block of rows is one matrix product (no rows x N x d
        # intermediate); clipped at 0 against rounding, so that no entry exceeds the peak density
        sq = uu[i][:, None] + vv[None, :] - 2.0 * (u[i] @ v.T)
        return const - 0.5 * jnp.maximum(sq, 0.0)
    return pair, rows


def _schedule(total: int, n_prev: int, num_trials: int, max_trials: int | None):
    """Static rejection schedule: ``[(buffer_size, rounds), ...]``. Level 0 runs ``num_trials`` rounds on all
    draws; level l > 0 runs ``num_trials * 8**l`` rounds on (at most) ``total / 8**l`` still-unaccepted
    draws, so each level costs about the same, until ``max_trials`` trials per draw are spent."""
    if num_trials <= 0:
        return []
    max_trials = n_prev if max_trials is None else max_trials
    levels, used, size, rounds = [], 0, total, num_trials
    while used < max_trials and size >= 1:
        r = min(rounds, max_trials - used)
        levels.append((size, r))
        used += r
        size, rounds = size // 8, rounds * 8
    if not levels:
        levels = [(total, min(num_trials, max_trials))]
    return levels


def sample_backward(key, fk: FeynmanKac, t, x_prev, log_weights_prev, x, num_samples: int | None = None, *,
                    log_bound=None, num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
                    chunk_size: int | None = None, pairs=None, whiten=None, **deprecated):
    r"""Exact draws :math:`J^{i,k} \sim \Lambda_t(i, \cdot) \propto \omega_{t-1}^j m_t(\xi_{t-1}^j, \xi_t^i)`.

    Hybrid sampler (Dau & Chopin 2022) with static shapes: rejection sampling with proposals from
    :math:`\mathrm{Cat}(W_{t-1})` and acceptance probability :math:`m_t(\xi_{t-1}^J, \xi_t^i)/\bar\varepsilon_t`
    (``log_bound`` = :math:`\log\bar\varepsilon_t`): first ``num_trials`` vectorised rounds over all
    :math:`MK` draws, then rounds on compacted buffers of the still-unaccepted draws (size
    :math:`MK/8^l`, :math:`8^l` ``num_trials`` rounds at level :math:`l`) until ``max_trials`` trials per draw
    (default N) are spent; the draws still unaccepted (or that did not fit a buffer) are drawn exactly
    from :math:`\Lambda_t(i, \cdot)`, ``chunk_size`` rows at a time. Whatever the budget, every draw has
    exactly the law :math:`\Lambda_t(i,\cdot)` (the switch to the exact draw never looks at the rejected
    proposals), provided ``log_bound`` bounds :math:`\log m_t(\xi_{t-1}^j, \xi_t^i)` for all :math:`i, j`.

    ``pairs`` (optional, e.g. :meth:`TransitionBound.prepare`): ``pairs(t, x_prev, x) -> (pair, rows)`` (or ``None``) with
    ``pair(j, i)`` = :math:`\log m_t(\xi_{t-1}^{j}, \xi_t^{i})` for index vectors and ``rows(i)`` the
    ``(len(i), N)`` block of the log-transition matrix; the same density, evaluated from quantities derived
    once per step (default: ``fk.log_transition`` on gathered pairs and :func:`log_transition_matrix`).

    ``num_samples`` (K, required) is the number of draws per row ``i`` (``num_draws`` before this release; the
    old name warns for one release).

    ``whiten`` (optional, e.g. :meth:`TransitionBound.whiten`): ``whiten(t, x_prev, x) -> (v, u, const)`` (or
    ``None``) with :math:`\log m_t(\xi_{t-1}^j, \xi_t^i) = \mathrm{const} - \tfrac12\lVert u_i - v_j\rVert^2`
    (a Gaussian transition). The rejection rounds then propose from a per-target mixture envelope over cells
    of the cloud (:mod:`~bayeskit.inference.smc._cells`) instead of :math:`\mathrm{Cat}(W_{t-1})` with the
    global bound: the same exact law, with an acceptance rate that does not collapse with the dimension.
    Without ``pairs``, the pairs are then derived from the same whitened quantities, as
    :meth:`TransitionBound.prepare` derives them.

    Returns:
        ``(J, num_fallback)``: indices ``(M, num_samples)`` (``M`` = len(x)) and the number of draws that
        needed the exact O(N) fallback.
    """
    num_samples = renamed_kwargs("sample_backward", deprecated, {"num_draws": "num_samples"}).get("num_samples",
                                                                                                 num_samples)
    if num_samples is None:
        raise TypeError("sample_backward() missing required argument 'num_samples'")
    n_prev = log_weights_prev.shape[0]
    m = jax.tree_util.tree_leaves(x)[0].shape[0]
    total = m * num_samples
    target = jnp.repeat(jnp.arange(m, dtype=jnp.int32), num_samples)
    key_rej, key_exact = jax.random.split(key)
    # whitened once per step: the envelope's coordinates and, unless `pairs` is given, the pairs
    whitened = whiten(t, x_prev, x) if whiten is not None else None
    if pairs is not None:
        prepared = pairs(t, x_prev, x)
    else:
        prepared = _whitened_pairs(*whitened) if whitened is not None else None
    pair, rows = prepared if prepared is not None else _generic_pairs(fk)(t, x_prev, x)
    J = jnp.zeros((total,), jnp.int32)
    accepted = jnp.zeros((total,), bool)

    levels = _schedule(total, n_prev, num_trials, max_trials)
    max_budget = n_prev if max_trials is None else max_trials
    if levels and log_bound is None:
        raise ConfigurationError("sample_backward needs `log_bound` when `num_trials` > 0")
    env = build_envelope(whitened[0], whitened[1], log_weights_prev) if (whitened is not None and levels) else None
    cdf_prev = cdf(log_weights_prev) if (levels and env is None) else None
    for level, (size, rounds) in enumerate(levels):
        if level == 0:
            slots = jnp.arange(total, dtype=jnp.int32)
            valid = jnp.ones((total,), bool)
        else:
            remaining = ~accepted
            (slots,) = jnp.nonzero(remaining, size=size, fill_value=total)  # padding: out of bounds
            slots = slots.astype(jnp.int32)
            valid = jnp.arange(size) < jnp.sum(remaining.astype(jnp.int32))
        safe = jnp.minimum(slots, total - 1)
        i_target = target[safe]
        key_level = jax.random.fold_in(key_rej, level)

        # leave a level as soon as the unaccepted draws fit the next (8x smaller) buffer: its rounds
        # cost 1/8 as much. The switch looks only at how many draws were accepted, never at a
        # proposal's value, so every draw keeps its exact law.
        fits = levels[level + 1][0] if level + 1 < len(levels) else 0

        # after `num_trials` rounds a level goes on only while its rounds pay for themselves: a round costs
        # `size` pair evaluations plus a fixed loop overhead (counted as min(N, _ROUND_OVERHEAD) pair
        # evaluations: about one exact draw at N ~ 1e3, a small fraction of one at N = 1e5), an exact
        # fallback draw costs N, so go on while the rounds accept at least (size + overhead) / N draws each,
        # on average: `rate` is a moving average of the draws accepted per round (the last round's count
        # alone, often 0 when a few hundred stragglers each accept with probability 1e-3, stopped levels that
        # still paid: PaRIS at N = 1e5 sent 440 draws per step to the O(N) fallback). Level 0 may run past its
        # `rounds` (up to the budget the later levels leave); a deep level stops once its few stragglers
        # (draws of low acceptance, d > 1) stop being accepted, instead of spinning through thousands of
        # near-empty rounds. Again only acceptance counts decide.
        cap = rounds + (max_budget - sum(r_ for _, r_ in levels) if level == 0 else 0)
        min_rounds = min(rounds, num_trials)
        overhead = min(n_prev, _ROUND_OVERHEAD)

        def cond(carry, min_rounds=min_rounds, fits=fits, cap=cap, size=size, overhead=overhead):
            r, _, acc, rate = carry
            return ((r < cap) & (jnp.sum((~acc).astype(jnp.int32)) > fits)
                    & ((r < min_rounds) | (rate * n_prev >= size + overhead)))

        def body(carry, size=size, i_target=i_target, key_level=key_level):
            r, Jl, acc, rate = carry
            k_round = jax.random.fold_in(key_level, r)
            if env is None:
                k1, k2 = jax.random.split(k_round)
                prop = categorical_from_cdf(k1, cdf_prev, size)  # CDF computed once per step, not per round
                log_acc = pair(prop, i_target) - log_bound
                u_acc = jax.random.uniform(k2, (size,), dtype=log_acc.dtype)
            else:  # per-target mixture envelope: cell ~ W_c B_ic, ancestor in it ~ W, accept m / B_ic
                # the round's three uniforms per draw in one call of the generator
                u3 = jax.random.uniform(k_round, (3, size), dtype=env.segcum.dtype)
                prop, log_b = env.propose(u3[:2], i_target)
                log_acc = env.log_ratio(prop, i_target, log_b)
                u_acc = u3[2].astype(log_acc.dtype)
            ok = jnp.log(u_acc) < log_acc
            new = ok & ~acc
            gain = jnp.sum(new, dtype=jnp.int32).astype(jnp.float32)
            rate = jnp.where(r == 0, gain, rate + (gain - rate) / 8)
            return r + 1, jnp.where(new, prop, Jl), acc | ok, rate

        _, Jl, accl, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), J[safe], ~valid, jnp.float32(0)))
        J = J.at[slots].set(Jl, mode="drop")
        accepted = accepted.at[slots].set(accl, mode="drop")

    remaining = ~accepted
    count = jnp.sum(remaining.astype(jnp.int32))
    c = int(chunk_size) if chunk_size is not None else min(64, max(1, 2**18 // max(n_prev, 1)))
    c = max(1, min(c, total))
    num_chunks_max = -(-total // c)
    (pos,) = jnp.nonzero(remaining, size=(num_chunks_max + 1) * c, fill_value=total)  # padding: out of bounds

    def exact_draws(J, start, width):
        """Exact draws for the unaccepted draws ``pos[start : start + width]``."""
        sl = jax.lax.dynamic_slice(pos, (start,), (width,))
        L = log_weights_prev[None, :] + rows(target[jnp.minimum(sl, total - 1)])
        draws = categorical_rows(jax.random.fold_in(key_exact, start), L)
        return J.at[sl].set(draws, mode="drop")

    # full chunks of c rows, then the last count mod c draws in chunks of c // 8 rows (the last one padded
    # with out-of-bounds slots, whose draws are dropped): a few loop iterations per step instead of up
    # to c - 1 single-row ones, and a lone straggler costs c // 8 rows, not c
    num_full = count // c
    _, J = jax.lax.while_loop(lambda carry: carry[0] < num_full,
                              lambda carry: (carry[0] + 1, exact_draws(carry[1], carry[0] * c, c)),
                              (jnp.int32(0), J))
    if c > 1:
        w = max(1, c // 8)
        _, J = jax.lax.while_loop(lambda carry: carry[0] < count,
                                  lambda carry: (carry[0] + w, exact_draws(carry[1], carry[0], w)),
                                  (num_full * c, J))
    return J.reshape(m, num_samples), count


def check_backward_model(ssm, params, log_transition_bound, num_trials):
    """The transition must have a log-density (backward kernels), and, for the rejection sampler, a bound."""
    x0 = ssm.initial(params).sample(jax.random.key(0))
    xb = x0[None] if ssm.vectorized else x0
    try:
        d = ssm.transition(params, xb, 1)
        lp = d.log_prob(d.sample(jax.random.key(1)))
        if not np.all(np.isfinite(np.asarray(lp))):
            raise ValueError("non-finite log-density at a draw of the transition")
    except NotImplementedError as exc:
        raise ModelError(
            "backward sampling / PaRIS needs the transition density m_t(x_prev, x): the model's transition "
            f"distribution {type(d).__name__} has no log_prob") from exc
    except Exception as exc:
        raise ModelError(f"backward sampling / PaRIS needs the transition log-density: {exc}") from exc
    if num_trials > 0 and log_transition_bound is None:
        _mode(d)


def log_bound_fn(ssm, params, log_transition_bound: Callable | None = None) -> TransitionBound:
    """``(t, x_prev) -> log bound`` of the transition density over the cloud ``x_prev``: the user's
    ``log_transition_bound(params, x_prev, t)`` if given, else :func:`transition_log_bound` (the exact peak
    for a shared-scale ``MultivariateNormal``); its ``prepare`` gives :func:`sample_backward` its pairs."""
    return TransitionBound(ssm, params, log_transition_bound)


def backward_sample(key, fk: FeynmanKac, particles, log_weights, num_samples: int | None = None, **deprecated):
    r"""Backward sampling through a stored particle system.

    Args:
        key: ``jax.random`` key.
        fk: the Feynman–Kac model (its ``log_transition`` gives :math:`\log m_t`).
        particles: (T, N, ...) clouds; log_weights: (T, N) their log-weights.
        num_samples: M, the number of paths (required).
        **deprecated: ``num_paths``, the old name of ``num_samples``.

    Returns:
        ``(paths, indices)``: paths (M, T, ...) and the particle index of each path at each time (M, T).
    """
    num_samples = renamed_kwargs("backward_sample", deprecated, {"num_paths": "num_samples"}).get("num_samples",
                                                                                                  num_samples)
    if num_samples is None:
        raise TypeError("backward_sample() missing required argument 'num_samples'")
    T = log_weights.shape[0]
    k_last, k_loop = jax.random.split(key)
    b_last = categorical(k_last, log_weights[-1], num_samples)

    def step(b_next, inp):
        t, k = inp  # draw b_t given b_{t+1}
        x_t = jax.tree_util.tree_map(lambda a: a[t], particles)
        x_next = jax.tree_util.tree_map(lambda a: a[t + 1][b_next], particles)
        lg = log_weights[t][None, :] + log_transition_matrix(fk, t + 1, x_t, x_next)
        b = categorical_rows(k, lg)
        return b, b

    if T > 1:
        keys = jax.random.split(k_loop, T - 1)
        _, bs = jax.lax.scan(step, b_last, (jnp.arange(T - 1), keys), reverse=True)
        idx = jnp.concatenate([bs, b_last[None]], axis=0).T  # (M, T)
    else:
        idx = b_last[:, None]
    paths = jax.tree_util.tree_map(lambda a: a[jnp.arange(T)[None, :], idx], particles)
    return paths, idx
