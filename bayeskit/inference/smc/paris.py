r"""PaRIS online additive smoothing and the Parisian particle Gibbs (PPG) sampler.

**Additive smoothing.** For an additive functional :math:`h_t(x_{0:t}) = \sum_{s \le t} \tilde h_s(x_{s-1}, x_s)`
(with :math:`\tilde h_0(x_0)` at :math:`s = 0`) the PaRIS algorithm of Olsson & Westerborn (Bernoulli 2017)
keeps, for every particle :math:`\xi_t^i`, a statistic :math:`\tau_t^i \approx \mathbb E[h_t(X_{0:t}) \mid X_t = \xi_t^i, y_{0:t}]`:

.. math::
    \tau_0^i = \tilde h_0(\xi_0^i), \qquad
    \tau_t^i = \frac1K \sum_{k=1}^K \Big[\tau_{t-1}^{J_t^{i,k}} + \tilde h_t\big(\xi_{t-1}^{J_t^{i,k}}, \xi_t^i\big)\Big],
    \qquad J_t^{i,k} \overset{iid}{\sim} \Lambda_t(i, \cdot), \quad
    \Lambda_t(i, j) \propto \omega_{t-1}^j\, m_t(\xi_{t-1}^j, \xi_t^i),

and estimates :math:`\mathbb E[h_t(X_{0:t}) \mid y_{0:t}] \approx \sum_i W_t^i \tau_t^i` at every :math:`t`. Memory is
:math:`O(N)` (only the current cloud and its statistics are kept), the cost :math:`O(NK)` per step.

**Backward draws** are exact. Following the hybrid scheme of Dau & Chopin (2022), each of the :math:`NK`
indices is first proposed from :math:`\mathrm{Cat}(W_{t-1})` and accepted with probability
:math:`m_t(\xi_{t-1}^J, \xi_t^i) / \bar\varepsilon_t` (:math:`\bar\varepsilon_t \ge \max_j \sup_x m_t(\xi_{t-1}^j, x)`);
after ``num_trials`` vectorised rounds the indices still unaccepted are drawn exactly from
:math:`\Lambda_t(i, \cdot)` in :math:`O(N)` each (in chunks inside a ``while_loop``), so every draw has
exactly the law :math:`\Lambda_t(i, \cdot)` whatever the trial budget, and the cost stays :math:`O(NK)` when
the rejection sampler works well.

**PPG** (Cardoso, Janati, Le Corff, Moulines & Olsson, ICML 2023) runs PaRIS *conditionally* on a frozen
path :math:`\zeta_{0:T-1}`: the path occupies slot 0 at every step, the other :math:`N-1` particles are
resampled multinomially (over all :math:`N`) and moved as usual, every particle draws :math:`K` backward
indices from :math:`\Lambda_t` except that the frozen particle's first index is pinned to the frozen
predecessor (slot 0). The estimate of iteration :math:`\ell` is :math:`\sum_i W_{T-1}^i \tau_{T-1}^i`; the next
frozen path is drawn by :math:`b_{T-1} \sim \mathrm{Cat}(W_{T-1})` and
:math:`b_{t-1} = J_t^{b_t, U_t}` with :math:`U_t` uniform on :math:`\{1..K\}`. This is a Gibbs sampler on the
extended target in which the path is one of the :math:`K` backward draws of each of its particles (the
frozen particle's forward ancestor is marginalised, which gives exactly the normaliser of
:math:`\Lambda_t`), so the smoothing distribution is invariant for every :math:`N \ge 2`, :math:`K \ge 1`. Started from an exact smoothing draw, the
estimate of every iteration is unbiased (the particle system then follows the extended target, under which the
traced path is a smoothing draw and the :math:`\tau`'s are conditionally unbiased for the backward-kernel
expectations). The roll-out estimator averages the estimates of iterations :math:`k_0+1, \dots, k`; its bias
comes only from the start and decays geometrically in :math:`k`, faster for larger :math:`N`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc.feynman_kac import FeynmanKac, bootstrap
from bayeskit.inference.smc.filtering import check_model, check_weights
from bayeskit.inference.smc.resampling import get_scheme

__all__ = [
    "PaRISState",
    "PaRISInfo",
    "PaRISResult",
    "PPGResult",
    "paris",
    "ppg",
    "paris_init",
    "paris_step",
    "conditional_paris",
    "sample_backward",
    "categorical",
    "transition_log_bound",
    "default_functional",
]

DEFAULT_NUM_TRIALS = 10


# --------------------------------------------------------------------------------------------- helpers
def default_functional(t, x_prev, x):
    """:math:`\\tilde h_t(x_{t-1}, x_t) = x_t`: the estimate is :math:`\\sum_t \\mathbb E[X_t \\mid y]`."""
    return x


def _cdf(log_weights):
    """The CDF of :math:`\\mathrm{Cat}(W)` with its last entry set to +inf (robust to rounding)."""
    cdf = jnp.cumsum(jax.nn.softmax(log_weights))
    return cdf.at[-1].set(jnp.inf)


def _categorical_from_cdf(key, cdf, num_samples: int):
    u = jax.random.uniform(key, (num_samples,), dtype=cdf.dtype)
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.clip(idx, 0, cdf.shape[0] - 1).astype(jnp.int32)


def categorical(key, log_weights, num_samples: int):
    """``num_samples`` i.i.d. (unsorted) draws from :math:`\\mathrm{Cat}(W)`, by inverse CDF: O(N + M log N)."""
    return _categorical_from_cdf(key, _cdf(log_weights), num_samples)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


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


def _log_transition_matrix(fk, t, x_prev, x):
    """``L[i, j] = log m_t(x_prev[j], x[i])``, shape ``(len(x), len(x_prev))``."""
    n_prev = jax.tree_util.tree_leaves(x_prev)[0].shape[0]

    def row(xi):
        xb = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_prev,) + a.shape), xi)
        return fk.log_transition(t, x_prev, xb)

    return jax.vmap(row)(x)


# ------------------------------------------------------------------------------------ backward draws
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


def sample_backward(key, fk: FeynmanKac, t, x_prev, log_weights_prev, x, num_draws: int, *,
                    log_bound=None, num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
                    chunk_size: int | None = None):
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

    Returns:
        ``(J, num_fallback)``: indices ``(M, num_draws)`` (``M`` = len(x)) and the number of draws that
        needed the exact O(N) fallback.
    """
    n_prev = log_weights_prev.shape[0]
    m = jax.tree_util.tree_leaves(x)[0].shape[0]
    total = m * num_draws
    target = jnp.repeat(jnp.arange(m, dtype=jnp.int32), num_draws)
    key_rej, key_exact = jax.random.split(key)
    J = jnp.zeros((total,), jnp.int32)
    accepted = jnp.zeros((total,), bool)

    levels = _schedule(total, n_prev, num_trials, max_trials)
    if levels and log_bound is None:
        raise ConfigurationError("sample_backward needs `log_bound` when `num_trials` > 0")
    cdf_prev = _cdf(log_weights_prev) if levels else None
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
        x_target = _take(x, target[safe])
        key_level = jax.random.fold_in(key_rej, level)

        # leave a level as soon as the unaccepted draws fit the next (8x smaller) buffer: its rounds
        # cost 1/8 as much. The switch looks only at how many draws were accepted, never at a
        # proposal's value, so every draw keeps its exact law.
        fits = levels[level + 1][0] if level + 1 < len(levels) else 0

        def cond(carry, rounds=rounds, fits=fits):
            r, _, acc = carry
            return (r < rounds) & (jnp.sum((~acc).astype(jnp.int32)) > fits)

        def body(carry, size=size, x_target=x_target, key_level=key_level):
            r, Jl, acc = carry
            k1, k2 = jax.random.split(jax.random.fold_in(key_level, r))
            prop = _categorical_from_cdf(k1, cdf_prev, size)  # CDF computed once per step, not per round
            lm = fk.log_transition(t, _take(x_prev, prop), x_target)
            ok = jnp.log(jax.random.uniform(k2, (size,), dtype=lm.dtype)) < lm - log_bound
            new = ok & ~acc
            return r + 1, jnp.where(new, prop, Jl), acc | ok

        _, Jl, accl = jax.lax.while_loop(cond, body, (jnp.int32(0), J[safe], ~valid))
        J = J.at[slots].set(Jl, mode="drop")
        accepted = accepted.at[slots].set(accl, mode="drop")

    remaining = ~accepted
    count = jnp.sum(remaining.astype(jnp.int32))
    c = int(chunk_size) if chunk_size is not None else min(64, max(1, 2**18 // max(n_prev, 1)))
    c = max(1, min(c, total))
    num_chunks_max = -(-total // c)
    (pos,) = jnp.nonzero(remaining, size=num_chunks_max * c, fill_value=total)  # padding: out of bounds

    def exact_draws(J, start, width):
        """Exact draws for the unaccepted draws ``pos[start : start + width]``."""
        sl = jax.lax.dynamic_slice(pos, (start,), (width,))
        L = log_weights_prev[None, :] + _log_transition_matrix(fk, t, x_prev, _take(x, target[jnp.minimum(sl, total - 1)]))
        draws = jax.random.categorical(jax.random.fold_in(key_exact, start), L, axis=-1).astype(jnp.int32)
        return J.at[sl].set(draws, mode="drop")

    # full chunks of c rows, then the last count mod c draws one row at a time (a lone straggler
    # used to cost a whole c x N chunk)
    num_full = count // c
    _, J = jax.lax.while_loop(lambda carry: carry[0] < num_full,
                              lambda carry: (carry[0] + 1, exact_draws(carry[1], carry[0] * c, c)),
                              (jnp.int32(0), J))
    if c > 1:
        _, J = jax.lax.while_loop(lambda carry: carry[0] < count,
                                  lambda carry: (carry[0] + 1, exact_draws(carry[1], carry[0], 1)),
                                  (num_full * c, J))
    return J.reshape(m, num_draws), count


# ------------------------------------------------------------------------------------ PaRIS kernel
class PaRISState(NamedTuple):
    """PaRIS state after step t: the filter (:class:`~bayeskit.inference.smc.engine.SMCState`) and the
    statistics ``stats`` (pytree, leading axis N): :math:`\\tau_t^i`."""

    smc: engine.SMCState
    stats: Any


class PaRISInfo(NamedTuple):
    """Per-step diagnostics: the engine's ``StepInfo`` fields plus ``num_fallback`` (exact backward draws
    needed after the rejection trials) and ``estimate`` (the online estimate :math:`\\sum_i W_t^i\\tau_t^i`,
    or None)."""

    smc: engine.StepInfo
    num_fallback: jax.Array
    estimate: Any


def _vmap_functional(functional, t, x_prev, x):
    if x_prev is None:
        return jax.vmap(lambda xx: functional(t, None, xx))(x)
    return jax.vmap(lambda xp, xx: functional(t, xp, xx))(x_prev, x)


def _weighted_sum(log_weights, stats):
    w = jax.nn.softmax(log_weights)
    return jax.tree_util.tree_map(lambda s: jnp.tensordot(w.astype(s.dtype), s, axes=1), stats)


def paris_init(key, fk: FeynmanKac, num_particles: int, functional: Callable):
    """Step 0: the engine's init and :math:`\\tau_0^i = \\tilde h_0(\\xi_0^i)`."""
    smc, info = engine.init(key, fk, num_particles)
    stats = _vmap_functional(functional, 0, None, smc.particles)
    return PaRISState(smc, stats), PaRISInfo(info, jnp.int32(0), _weighted_sum(smc.log_weights, stats))


def _update_stats(fk, t, functional, x_prev, stats_prev, x, J):
    """:math:`\\tau_t^i = K^{-1}\\sum_k [\\tau_{t-1}^{J^{i,k}} + \\tilde h_t(\\xi_{t-1}^{J^{i,k}}, \\xi_t^i)]`."""
    n, k = J.shape
    flat = J.reshape(-1)
    xp = _take(x_prev, flat)
    xx = _take(x, jnp.repeat(jnp.arange(n), k))
    h = _vmap_functional(functional, t, xp, xx)
    return jax.tree_util.tree_map(
        lambda s, hh: jnp.mean((s[flat] + hh).reshape((n, k) + hh.shape[1:]), axis=1), stats_prev, h)


def paris_step(key, state: PaRISState, fk: FeynmanKac, t, functional: Callable, *, num_backward: int = 2,
               resampling: Callable | str = "systematic", ess_threshold: float = 0.5, log_bound_fn=None,
               num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None, chunk_size: int | None = None):
    """One PaRIS step ``t >= 1``: an engine step (adaptive resampling, move, weight), then ``num_backward``
    exact backward draws per particle and the statistics update. ``log_bound_fn(t, x_prev) -> scalar`` bounds
    :math:`\\log m_t(x_{t-1}^j, \\cdot)` over the previous cloud (needed when ``num_trials > 0``)."""
    k_smc, k_back = jax.random.split(key)
    smc, info = engine.step(k_smc, state.smc, fk, t, resampling=get_scheme(resampling), ess_threshold=ess_threshold)
    x_prev, lw_prev = state.smc.particles, state.smc.log_weights
    bound = log_bound_fn(t, x_prev) if (num_trials > 0 and log_bound_fn is not None) else None
    J, nfb = sample_backward(k_back, fk, t, x_prev, lw_prev, smc.particles, num_backward, log_bound=bound,
                             num_trials=num_trials if bound is not None else 0, max_trials=max_trials,
                             chunk_size=chunk_size)
    stats = _update_stats(fk, t, functional, x_prev, state.stats, smc.particles, J)
    return PaRISState(smc, stats), PaRISInfo(info, nfb, _weighted_sum(smc.log_weights, stats))


def _run_paris(key, fk, num_particles, functional, *, num_backward, resampling, ess_threshold, log_bound_fn,
               num_trials, max_trials, chunk_size, online, exact=False):
    """The PaRIS loop (``exact=True``: the O(N^2) forward-only smoother on the same particle system)."""
    k0, kloop = jax.random.split(key)
    state, info0 = paris_init(k0, fk, num_particles, functional)
    resampling_fn = get_scheme(resampling)

    def body(st, inp):
        t, k = inp
        if exact:
            st, info = _exact_step(k, st, fk, t, functional, resampling_fn, ess_threshold)
        else:
            st, info = paris_step(k, st, fk, t, functional, num_backward=num_backward, resampling=resampling_fn,
                                  ess_threshold=ess_threshold, log_bound_fn=log_bound_fn, num_trials=num_trials,
                                  max_trials=max_trials, chunk_size=chunk_size)
        info = info._replace(smc=info.smc._replace(ancestors=None))  # O(N) memory: no genealogy kept
        if not online:
            info = info._replace(estimate=None)
        return st, info

    info0 = info0._replace(smc=info0.smc._replace(ancestors=None))
    if not online:
        info0 = info0._replace(estimate=None)
    if fk.num_steps > 1:
        keys = jax.random.split(kloop, fk.num_steps - 1)
        state, infos = jax.lax.scan(body, state, (jnp.arange(1, fk.num_steps), keys))
        infos = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), info0, infos)
    else:
        infos = jax.tree_util.tree_map(lambda a: a[None], info0)
    return state, infos


def _exact_step(key, state, fk, t, functional, resampling_fn, ess_threshold):
    """Forward-only smoother step: :math:`\\tau_t^i = \\sum_j \\Lambda_t(i,j)[\\tau_{t-1}^j + \\tilde h_t]`."""
    k_smc, _ = jax.random.split(key)
    smc, info = engine.step(k_smc, state.smc, fk, t, resampling=resampling_fn, ess_threshold=ess_threshold)
    x_prev, lw_prev = state.smc.particles, state.smc.log_weights
    n_prev = lw_prev.shape[0]

    def one(xi):
        lam = jax.nn.softmax(lw_prev + _log_transition_matrix(fk, t, x_prev, _take(xi, None))[0])
        xb = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_prev,) + a.shape), xi)
        h = _vmap_functional(functional, t, x_prev, xb)
        return jax.tree_util.tree_map(lambda s, hh: jnp.tensordot(lam.astype(hh.dtype), s + hh, axes=1),
                                      state.stats, h)

    stats = jax.lax.map(one, smc.particles)
    return PaRISState(smc, stats), PaRISInfo(info, jnp.int32(0), _weighted_sum(smc.log_weights, stats))


# ------------------------------------------------------------------------------------ results
@partial(jax.tree_util.register_dataclass,
         data_fields=["estimate", "online_estimates", "log_evidence", "ess", "resampled", "num_fallback",
                      "particles", "log_weights", "stats", "nonfinite"],
         meta_fields=["num_particles", "num_backward", "num_trials"])
@dataclasses.dataclass(frozen=True)
class PaRISResult:
    """Output of :func:`paris`.

    Attributes:
        estimate: :math:`\\hat{\\mathbb E}[\\sum_t \\tilde h_t(X_{t-1}, X_t) \\mid y_{0:T-1}]` (pytree like the
            functional's output).
        online_estimates: the same at every t, leading axis T (only with ``online=True``, else None).
        log_evidence: :math:`\\log \\hat p(y_{0:T-1})`; ``ess``, ``resampled``: (T,).
        num_fallback: (T,) number of backward draws that needed the exact O(N) fallback.
        particles, log_weights, stats: the final cloud and its PaRIS statistics :math:`\\tau_{T-1}^i`.
    """

    estimate: Any
    online_estimates: Any
    log_evidence: Any
    ess: Any
    resampled: Any
    num_fallback: Any
    particles: Any
    log_weights: Any
    stats: Any
    nonfinite: Any
    num_particles: int
    num_backward: int
    num_trials: int

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (``x_final``: the last filtering marginal as N
        equally weighted draws), ``smoothing`` (the estimate's leaves, and their online values over ``time``),
        ``sample_stats`` (the run as one draw: ess, resampled, num_fallback over time, log_evidence)."""
        from bayeskit.diagnostics import equal_weight_draws, one_chain, one_run, to_datatree

        T = int(np.shape(self.ess)[0])
        smoothing = _leaves_dict("estimate", self.estimate)
        dims = {k: [] for k in smoothing}
        if self.online_estimates is not None:
            online = _leaves_dict("online_estimate", self.online_estimates)
            smoothing.update(online)
            dims.update({k: ["time"] for k in online})
        groups = {"posterior": one_chain({"x_final": equal_weight_draws(self.particles, self.log_weights)}),
                  "smoothing": smoothing,
                  "sample_stats": one_run({"ess": self.ess, "resampled": self.resampled,
                                           "num_fallback": self.num_fallback, "log_evidence": self.log_evidence})}
        dims.update({"ess": ["time"], "resampled": ["time"], "num_fallback": ["time"]})
        return to_datatree(groups, dims=dims, coords={"time": np.arange(T)},
                           attrs={"log_evidence": float(self.log_evidence), "num_particles": self.num_particles,
                                  "num_backward": self.num_backward, "num_trials": self.num_trials})


def _leaves_dict(prefix, tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        name = prefix + "".join(f"_{_key_name(p)}" for p in path)
        out[name] = np.asarray(leaf)
    return out


def _key_name(p):
    for attr in ("key", "name", "idx"):
        if hasattr(p, attr):
            return str(getattr(p, attr))
    return str(p)


# ------------------------------------------------------------------------------------ validation
def _is_traced(*trees) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def check_functional(functional, ssm, params, name: str = "functional"):
    """Evaluate the functional abstractly at t = 0 and t = 1 on one state and check that it returns a
    pytree of arrays with the same structure and shapes at both (an additive functional)."""
    if not callable(functional):
        raise ConfigurationError(f"`{name}` must be a callable h(t, x_prev, x) -> pytree, got {functional!r}")
    x = jax.ShapeDtypeStruct(ssm.state_shape(params), jnp.result_type(float))
    try:
        out0 = jax.eval_shape(lambda xx: functional(0, None, xx), x)
        out1 = jax.eval_shape(lambda xp, xx: functional(1, xp, xx), x, x)
    except Exception as exc:
        raise ConfigurationError(
            f"`{name}` failed on one state of shape {x.shape} (it is called as {name}(t, x_prev, x) with one "
            f"particle, x_prev=None at t=0): {exc}") from exc
    s0 = jax.tree_util.tree_structure(out0)
    s1 = jax.tree_util.tree_structure(out1)
    shapes0 = [leaf.shape for leaf in jax.tree_util.tree_leaves(out0)]
    shapes1 = [leaf.shape for leaf in jax.tree_util.tree_leaves(out1)]
    if s0 != s1 or shapes0 != shapes1:
        raise ConfigurationError(
            f"`{name}` must return the same pytree of arrays at every t (an additive functional); got "
            f"structure {s0} with shapes {shapes0} at t=0 but {s1} with shapes {shapes1} at t=1")
    for leaf in jax.tree_util.tree_leaves(out1):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ConfigurationError(f"`{name}` must return floating-point arrays, got dtype {leaf.dtype}")
    if not shapes1:
        raise ConfigurationError(f"`{name}` returned an empty pytree")


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


def _bound_fn(ssm, params, log_transition_bound):
    """``(t, x_prev) -> log bound`` of the transition density over the cloud ``x_prev``."""
    if log_transition_bound is not None:
        return lambda t, x_prev: jnp.asarray(log_transition_bound(params, x_prev, t))
    return lambda t, x_prev: transition_log_bound(ssm, params, x_prev, t)


def _validate_common(key, ssm, params, ys, num_particles, num_backward, num_trials, functional,
                     log_transition_bound, max_trials=None):
    _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles", 2)
    num_backward = _checks.check_positive_int(num_backward, "num_backward")
    num_trials = _checks.check_positive_int(num_trials, "num_trials", 0)
    if max_trials is not None:
        _checks.check_positive_int(max_trials, "max_trials")
    check_model(ssm, params, ys)
    check_functional(functional, ssm, params)
    check_backward_model(ssm, params, log_transition_bound, num_trials)
    if log_transition_bound is not None and not callable(log_transition_bound):
        raise ConfigurationError("`log_transition_bound` must be a callable (params, x_prev, t) -> scalar")
    return num_particles, num_backward, num_trials


# ------------------------------------------------------------------------------------ PaRIS driver
@partial(jax.jit, static_argnames=("ssm", "num_particles", "functional", "num_backward", "resampling", "num_trials",
                                   "max_trials", "log_transition_bound", "chunk_size", "online", "exact"))
def _paris_jit(key, ssm, params, ys, ess_threshold, *, num_particles, functional, num_backward, resampling,
               num_trials, log_transition_bound, chunk_size, online, max_trials=None, exact=False):
    fk = bootstrap(ssm, params, ys)
    bound = _bound_fn(ssm, params, log_transition_bound)
    return _run_paris(key, fk, num_particles, functional, num_backward=num_backward, resampling=resampling,
                      ess_threshold=ess_threshold, log_bound_fn=bound, num_trials=num_trials, max_trials=max_trials,
                      chunk_size=chunk_size, online=online, exact=exact)


def paris(key, ssm, params, ys, num_particles: int = 1000, *, num_backward: int = 2, functional: Callable | None = None,
          num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
          log_transition_bound: Callable | None = None, resampling: str | Callable = "systematic",
          ess_threshold: float = 1.0, online: bool = False, chunk_size: int | None = None) -> PaRISResult:
    r"""PaRIS online additive smoothing (Olsson & Westerborn 2017) with the hybrid exact backward sampler.

    Estimates :math:`\mathbb E[\sum_{t=0}^{T-1} \tilde h_t(X_{t-1}, X_t) \mid y_{0:T-1}]` in one forward pass,
    with O(N) memory and O(N K) cost per step.

    Args:
        key: ``jax.random`` key.
        ssm: a :class:`~bayeskit.StateSpaceModel` whose transition has a log-density.
        params: the model's parameters.
        ys: observations ``(T, *obs_shape)``.
        num_particles: N.
        num_backward: K >= 1 backward draws per particle (K >= 2 keeps the variance linear in T).
        functional: ``h(t, x_prev, x) -> pytree`` of arrays for ONE particle (``x_prev`` is None at t = 0);
            default :math:`\tilde h_t = x_t`.
        num_trials: vectorised rejection rounds over all draws (0: exact O(N^2) draws only).
        max_trials: total rejection trials per draw (spent on shrinking buffers of the unaccepted draws)
            before the exact O(N) draw; default N, as recommended by Dau & Chopin (2022).
        log_transition_bound: optional ``(params, x_prev, t) -> scalar`` upper bound of
            :math:`\log m_t(x_{prev}^j, x)` over the cloud ``x_prev`` and all ``x``; default: from the mode of
            each transition distribution (Gaussian, Student, Laplace families).
        resampling: as in :func:`~bayeskit.smc.particle_filter`.
        ess_threshold: as in :func:`~bayeskit.smc.particle_filter`; the default 1.0 resamples
            at every step, as Olsson & Westerborn's algorithm does. Adaptive resampling (< 1) keeps the
            weights of unresampled particles, the rejection sampler then falls back to exact O(N) draws
            more often as N grows (measured: 7, 52 and 441 fallback draws per step at N = 1e3, 1e4, 1e5),
            and the cost stops being linear in N (``benchmarks/smoothing.py``).
        online: also return the estimate at every t (``online_estimates``).
        chunk_size: rows of the backward kernel computed at once by the exact fallback.

    Returns:
        :class:`PaRISResult`.

    Example:
        >>> import jax, bayeskit as bk
        >>> from bayeskit.models import linear_gaussian as lg
        >>> p = lg.example_params(1)
        >>> _, ys = lg.ssm.simulate(jax.random.key(0), p, 50)
        >>> res = bk.smc.paris(jax.random.key(1), lg.ssm, p, ys, num_particles=200)
        >>> res.estimate.shape
        (1,)
    """
    functional = default_functional if functional is None else functional
    traced = _is_traced(key, params, ys)
    if not traced:
        num_particles, num_backward, num_trials = _validate_common(
            key, ssm, params, ys, num_particles, num_backward, num_trials, functional, log_transition_bound,
            max_trials=max_trials)
        get_scheme(resampling)
        ess_threshold = _checks.check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
    state, infos = _paris_jit(key, ssm, params, jnp.asarray(ys), ess_threshold, num_particles=num_particles,
                              functional=functional, num_backward=num_backward, resampling=resampling,
                              num_trials=num_trials, log_transition_bound=log_transition_bound,
                              chunk_size=chunk_size, online=online, max_trials=max_trials)
    if not traced:
        check_weights(infos.smc.nonfinite, "paris")
    return PaRISResult(
        estimate=_weighted_sum(state.smc.log_weights, state.stats),
        online_estimates=infos.estimate if online else None,
        log_evidence=state.smc.log_evidence, ess=infos.smc.ess, resampled=infos.smc.resampled,
        num_fallback=infos.num_fallback, particles=state.smc.particles, log_weights=state.smc.log_weights,
        stats=state.stats, nonfinite=infos.smc.nonfinite, num_particles=num_particles, num_backward=num_backward,
        num_trials=num_trials)


# ------------------------------------------------------------------------------------ conditional PaRIS
class ConditionalPaRISOutput(NamedTuple):
    """One PPG iteration: ``estimate`` (:math:`\\sum_i W_{T-1}^i\\tau_{T-1}^i`), ``path`` (the next frozen
    path, (T, ...)), ``online_estimates`` (leading T, or None), ``num_fallback`` (T,), ``log_weights``
    (final, (N,))."""

    estimate: Any
    path: Any
    online_estimates: Any
    num_fallback: Any
    log_weights: Any


def conditional_paris(key, fk: FeynmanKac, reference, num_particles: int, functional: Callable, *,
                      num_backward: int = 2, log_bound_fn=None, num_trials: int = DEFAULT_NUM_TRIALS,
                      max_trials: int | None = None, chunk_size: int | None = None,
                      online: bool = False) -> ConditionalPaRISOutput:
    """One PPG iteration: PaRIS conditioned on the frozen path ``reference`` (T, ...) held in slot 0 (module
    docstring), then the next frozen path by tracing one uniformly chosen backward index per step from
    :math:`b_{T-1} \\sim \\mathrm{Cat}(W_{T-1})`. Memory O(TN) (the path must be traced back)."""
    N, K, T = num_particles, num_backward, fk.num_steps
    k0, kloop, kpath = jax.random.split(key, 3)
    x0 = fk.init(k0, N)
    x0 = jax.tree_util.tree_map(lambda a, r: a.at[0].set(r[0]), x0, reference)
    lw0 = fk.log_potential(0, None, x0)
    stats0 = _vmap_functional(functional, 0, None, x0)

    def body(carry, inp):
        x_prev, lw_prev, stats_prev = carry
        t, k = inp
        k_res, k_move, k_back, k_pick = jax.random.split(k, 4)
        anc = categorical(k_res, lw_prev, N).at[0].set(0)
        xp = _take(x_prev, anc)
        x = fk.move(k_move, t, xp)
        x = jax.tree_util.tree_map(lambda a, r: a.at[0].set(r[t]), x, reference)
        lw = fk.log_potential(t, xp, x)
        bound = log_bound_fn(t, x_prev) if (num_trials > 0 and log_bound_fn is not None) else None
        J, nfb = sample_backward(k_back, fk, t, x_prev, lw_prev, x, K, log_bound=bound,
                                 num_trials=num_trials if bound is not None else 0, max_trials=max_trials,
                             chunk_size=chunk_size)
        J = J.at[0, 0].set(0)  # the frozen particle's first backward index is its frozen predecessor
        stats = _update_stats(fk, t, functional, x_prev, stats_prev, x, J)
        pick = J[jnp.arange(N), jax.random.randint(k_pick, (N,), 0, K)]
        est = _weighted_sum(lw, stats) if online else None
        return (x, lw, stats), (x, pick, nfb, est)

    if T > 1:
        keys = jax.random.split(kloop, T - 1)
        (xT, lwT, statsT), (xs, picks, nfb, ests) = jax.lax.scan(body, (x0, lw0, stats0), (jnp.arange(1, T), keys))
        xs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), x0, xs)
    else:
        xT, lwT, statsT = x0, lw0, stats0
        xs = jax.tree_util.tree_map(lambda a: a[None], x0)
        picks, nfb, ests = jnp.zeros((0, N), jnp.int32), jnp.zeros((0,), jnp.int32), None
    b_last = jax.random.categorical(kpath, lwT).astype(jnp.int32)

    def back(b, pick_t):
        return pick_t[b], b

    b_first, bs = jax.lax.scan(back, b_last, picks, reverse=True)  # bs[t-1] = b_t for t = 1..T-1
    idx = jnp.concatenate([b_first[None], bs], axis=0)
    path = jax.tree_util.tree_map(lambda a: a[jnp.arange(T), idx], xs)
    estimate = _weighted_sum(lwT, statsT)
    online_est = None
    if online:
        est0 = jax.tree_util.tree_map(lambda a: a[None], _weighted_sum(lw0, stats0))
        online_est = est0 if T == 1 else jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a, b], axis=0), est0, ests)
    nfb = jnp.concatenate([jnp.zeros((1,), jnp.int32), nfb.astype(jnp.int32)])
    return ConditionalPaRISOutput(estimate, path, online_est, nfb, lwT)


# ------------------------------------------------------------------------------------ PPG driver
@partial(jax.tree_util.register_dataclass,
         data_fields=["estimate", "estimates", "paths", "final_path", "num_fallback"],
         meta_fields=["num_particles", "num_backward", "num_iterations", "burn_in"])
@dataclasses.dataclass(frozen=True)
class PPGResult:
    """Output of :func:`ppg`.

    Attributes:
        estimate: the roll-out estimator, the mean of ``estimates`` over iterations ``burn_in+1 .. k``.
        estimates: per-iteration PPG estimates (leading axis ``num_iterations``).
        paths: the frozen paths ``(num_iterations, T, ...)`` (only with ``keep_paths=True``, else None).
        final_path: the last frozen path (T, ...), to continue the chain (``initial_path=``).
        num_fallback: (num_iterations,) total exact fallback draws per iteration.
    """

    estimate: Any
    estimates: Any
    paths: Any
    final_path: Any
    num_fallback: Any
    num_particles: int
    num_backward: int
    num_iterations: int
    burn_in: int

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (one chain: per-iteration estimates, and the paths
        ``x`` over time if kept, as draws), ``smoothing`` (the roll-out estimate), ``sample_stats``
        (num_fallback per iteration and time)."""
        from bayeskit.diagnostics import one_chain, to_datatree

        post = one_chain(_leaves_dict("estimate", self.estimates))
        if self.paths is not None:
            post["x"] = np.asarray(self.paths)[None]
        T = int(np.shape(self.final_path)[0])
        return to_datatree({"posterior": post, "sample_stats": one_chain({"num_fallback": self.num_fallback}),
                            "smoothing": _leaves_dict("estimate", self.estimate)},
                           dims={"x": ["time"]}, coords={"time": np.arange(T)},
                           attrs={"num_particles": self.num_particles, "num_backward": self.num_backward,
                                  "burn_in": self.burn_in})


@partial(jax.jit, static_argnames=("ssm", "num_particles", "functional", "num_backward", "num_trials", "max_trials",
                                   "log_transition_bound", "chunk_size", "num_iterations", "keep_paths"))
def _ppg_jit(key, ssm, params, ys, initial_path, *, num_particles, functional, num_backward, num_trials,
             log_transition_bound, chunk_size, num_iterations, keep_paths, max_trials=None):
    fk = bootstrap(ssm, params, ys)
    bound = _bound_fn(ssm, params, log_transition_bound)

    def it(path, k):
        out = conditional_paris(k, fk, path, num_particles, functional, num_backward=num_backward,
                                log_bound_fn=bound, num_trials=num_trials, max_trials=max_trials,
                                chunk_size=chunk_size)
        return out.path, (out.estimate, out.path if keep_paths else None, jnp.sum(out.num_fallback))

    keys = jax.random.split(key, num_iterations)
    final, (ests, paths, nfb) = jax.lax.scan(it, initial_path, keys)
    return final, ests, paths, nfb


def initial_reference(key, ssm, params, ys, num_particles: int = 100):
    """A starting frozen path: one path drawn from a bootstrap filter's genealogy (FFBS-free, O(TN))."""
    from bayeskit.inference.smc.smoothing import ffbs

    return ffbs(key, ssm, params, ys, num_particles=num_particles, num_paths=1).paths[0]


def ppg(key, ssm, params, ys, num_particles: int = 100, *, num_iterations: int = 100, burn_in: int = 0,
        num_backward: int = 2, functional: Callable | None = None, initial_path=None,
        num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
        log_transition_bound: Callable | None = None, keep_paths: bool = False,
        chunk_size: int | None = None) -> PPGResult:
    r"""The Parisian particle Gibbs sampler (Cardoso et al., ICML 2023): PaRIS driven by conditional SMC.

    Runs ``num_iterations`` conditional PaRIS passes, each with the frozen path drawn by the previous
    one, and returns the roll-out estimator :math:`\frac{1}{k - k_0}\sum_{\ell = k_0+1}^{k} \hat h^\ell` of
    :math:`\mathbb E[\sum_t \tilde h_t(X_{t-1}, X_t) \mid y_{0:T-1}]` (``burn_in`` = :math:`k_0`). Its bias comes
    only from the initial path (each iteration is unbiased once the chain is stationary) and decreases
    geometrically with the number of iterations, at a rate that improves with N; PaRIS's bias is :math:`O(1/N)`.
    At equal cost (PaRIS with N (k + 1) particles) PPG is less biased once N is large enough for the
    conditional SMC to mix (docs: smoothing.md has the measured table).

    Args:
        key: as in :func:`paris`.
        ssm: as in :func:`paris`.
        params: as in :func:`paris`.
        ys: as in :func:`paris`.
        num_particles: N >= 2.
        num_iterations: k >= 1.
        burn_in: :math:`k_0 < k`.
        num_backward: as in :func:`paris`.
        functional: as in :func:`paris`.
        num_trials: as in :func:`paris`.
        max_trials: as in :func:`paris`.
        log_transition_bound: as in :func:`paris`.
        chunk_size: as in :func:`paris`.
        initial_path: the first frozen path (T, *state_shape); default: a draw from a bootstrap filter
            with N particles (backward sampling).
        keep_paths: return every frozen path (O(k T) memory).

    Returns:
        :class:`PPGResult`.
    """
    functional = default_functional if functional is None else functional
    traced = _is_traced(key, params, ys, initial_path)
    if not traced:
        num_particles, num_backward, num_trials = _validate_common(
            key, ssm, params, ys, num_particles, num_backward, num_trials, functional, log_transition_bound,
            max_trials=max_trials)
        num_iterations = _checks.check_positive_int(num_iterations, "num_iterations")
        burn_in = _checks.check_positive_int(burn_in, "burn_in", 0)
        if burn_in >= num_iterations:
            raise ConfigurationError(f"`burn_in` ({burn_in}) must be smaller than `num_iterations` ({num_iterations})")
    ys = jnp.asarray(ys)
    k_init, k_run = jax.random.split(key)
    if initial_path is None:
        initial_path = initial_reference(k_init, ssm, params, ys, num_particles)
    elif not traced:
        _checks.check_finite_array(initial_path, "initial_path",
                                   shape=(ys.shape[0],) + tuple(ssm.state_shape(params)))
    initial_path = jnp.asarray(initial_path)
    final, ests, paths, nfb = _ppg_jit(k_run, ssm, params, ys, initial_path, num_particles=num_particles,
                                       functional=functional, num_backward=num_backward, num_trials=num_trials,
                                       log_transition_bound=log_transition_bound, chunk_size=chunk_size,
                                       num_iterations=num_iterations, keep_paths=keep_paths, max_trials=max_trials)
    estimate = jax.tree_util.tree_map(lambda e: jnp.mean(e[burn_in:], axis=0), ests)
    return PPGResult(estimate=estimate, estimates=ests, paths=paths, final_path=final, num_fallback=nfb,
                     num_particles=num_particles, num_backward=num_backward, num_iterations=num_iterations,
                     burn_in=burn_in)
