r"""Tempered SMC for any static NumPyro model: adaptive temperatures, MCMC moves, log-evidence.

For a model with prior :math:`p(\theta)` and likelihood :math:`p(y \mid \theta)`, work in NumPyro's
unconstrained space :math:`z` (``bk.model.log_density``: the prior carries the Jacobian) and define the
path of tempered targets

.. math::
    \pi_\lambda(z) \propto p(z)\, p(y \mid z)^\lambda, \qquad 0 = \lambda_0 < \lambda_1 < \dots < \lambda_K = 1 .

Tempered SMC (Neal 2001; Del Moral, Doucet & Jasra 2006; Chopin & Papaspiliopoulos 2020, ch. 17) is the
SMC engine over the Feynman–Kac model with ``M_n = MCMC kernel invariant for`` :math:`\pi_{\lambda_n}`
and log-potential :math:`\log G_n(z) = (\lambda_n - \lambda_{n-1}) \log p(y \mid z)`. Starting from
:math:`N` prior draws, each step

1. chooses :math:`\lambda_n` (adaptive, Jasra et al. 2011): with :math:`\ell^i = \log p(y \mid z^i)`, solve
   by bisection :math:`\mathrm{ESS}\big(\{e^{\delta \ell^i}\}\big) = \rho N` for :math:`\delta \in (0,
   1 - \lambda_{n-1}]`, where :math:`\rho` is ``target_ess`` (ESS is non-increasing in :math:`\delta`;
   take :math:`\delta = 1 - \lambda_{n-1}` when even that keeps the ESS above :math:`\rho N`); or reads
   :math:`\lambda_n` from a fixed ``schedule``;
2. reweights with the incremental weights :math:`w^i = e^{(\lambda_n - \lambda_{n-1}) \ell^i}` (the *same*
   sign as in the ESS equation: BlackJAX issue #914 was a sign mismatch between the two, invisible on
   symmetric log-likelihoods) and adds
   :math:`\log \hat Z_n - \log \hat Z_{n-1} = \log \frac1N \sum_i w^i` to the log-evidence;
3. resamples (weights are equal after every step, so the particles are draws from :math:`\pi_{\lambda_n}`);
4. moves every particle with ``num_mcmc_steps`` steps of an MCMC kernel invariant for
   :math:`\pi_{\lambda_n}`: random-walk Metropolis with proposal covariance
   :math:`s^2 \hat\Sigma` (:math:`\hat\Sigma` the particle cloud's covariance, :math:`s` started at
   :math:`2.38/\sqrt{d}` and adapted from the previous step's acceptance rate), or HMC / NUTS
   (BlackJAX's kernels) with the cloud's variances as inverse mass matrix and a step size adapted the same way.

:math:`\hat Z = \prod_n \frac1N \sum_i w_n^i` is an unbiased estimate of :math:`p(y)`. The number of
steps is random, so the loop is a ``lax.while_loop`` (capped at ``max_steps``) inside ``jit``; the
driver :func:`tempered` validates input, runs it and returns a :class:`TemperedSMCResult` with
constrained posterior draws (deterministic sites included) and ``.to_arviz()``.

Layers: :func:`solve_next_tempering` (the bisection), :func:`rwm_move` / :func:`hmc_move` /
:func:`nuts_move` / :func:`blackjax_move` (the move kernels), :func:`init` / :func:`step` (one
tempering step, pure), :func:`run` (the whole loop, pure, ``jit``/``vmap``-able), :func:`tempered`
(the checked driver for NumPyro models).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ConvergenceError, DegenerateWeightsError, ModelError
from bayeskit.inference.smc.resampling import ess as ess_fn
from bayeskit.inference.smc.resampling import get_scheme

__all__ = [
    "TemperedState",
    "TemperedInfo",
    "Move",
    "TemperedSMCResult",
    "solve_next_tempering",
    "rwm_move",
    "hmc_move",
    "nuts_move",
    "blackjax_move",
    "prior_and_likelihood_fn",
    "init",
    "step",
    "run",
    "tempered",
]

KERNELS = ("rwm", "hmc", "nuts")
DEFAULT_NUM_MCMC_STEPS = {"rwm": 10, "hmc": 5, "nuts": 2, "custom": 5}


# --------------------------------------------------------------------------------------------------
# states and infos
# --------------------------------------------------------------------------------------------------
class TemperedState(NamedTuple):
    """State after a tempering step (all particles equally weighted).

    Fields: ``particles`` (N, D) flat unconstrained positions; ``log_prior`` and ``log_likelihood``
    (N,) at those positions; ``tempering`` () the current :math:`\\lambda`; ``log_evidence`` () the running
    :math:`\\log \\hat Z_\\lambda`; ``log_tuning`` () log of the move's scale (RWM scale, HMC step size)
    to use at the next step.
    """

    particles: jax.Array
    log_prior: jax.Array
    log_likelihood: jax.Array
    tempering: jax.Array
    log_evidence: jax.Array
    log_tuning: jax.Array


class TemperedInfo(NamedTuple):
    """Per-step diagnostics: ``tempering`` (the new :math:`\\lambda_n`), ``log_evidence_increment``,
    ``ess`` (ESS of the incremental weights, before resampling), ``acceptance_rate`` (mean over particles
    and MCMC steps), ``move_scale`` (RWM scale or HMC/NUTS step size used), ``nonfinite`` (a NaN
    incremental weight, or all weights zero)."""

    tempering: jax.Array
    log_evidence_increment: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    move_scale: jax.Array
    nonfinite: jax.Array


class Move(NamedTuple):
    """An MCMC move applied to the whole cloud at one temperature.

    ``apply(key, particles, log_prior, log_likelihood, tempering, log_tuning)`` returns
    ``(particles, log_prior, log_likelihood, acceptance_rate, move_scale, next_log_tuning)``;
    ``initial_log_tuning`` starts the adaptation; ``name`` labels the result.
    """

    apply: Callable
    initial_log_tuning: float
    name: str


# --------------------------------------------------------------------------------------------------
# densities
# --------------------------------------------------------------------------------------------------
def prior_and_likelihood_fn(density) -> Callable:
    """``v -> (log_prior, log_likelihood)`` on flat unconstrained vectors, in one pass over the model.

    ``density`` is a :class:`bayeskit.model.density.LogDensity`. The model is run once with NumPyro's
    unconstraining substitution (which adds the log-Jacobian factors); the log-likelihood is the sum
    over observed sites (scales and masks applied), the log-prior the rest of the joint.
    """
    from numpyro import handlers
    from numpyro.infer.util import log_density as np_log_density

    try:
        from numpyro.infer.util import _unconstrain_reparam
    except ImportError:  # pragma: no cover - very old or very new NumPyro: two passes
        def two_pass(v):
            z = density.unflatten(v)
            ll = density.log_likelihood(z)
            return density.log_joint(z) - ll, ll

        return two_pass

    observed = tuple(density.observed_sites)

    def one_pass(v):
        z = density.unflatten(v)
        model = handlers.substitute(density.model, substitute_fn=partial(_unconstrain_reparam, z))
        log_joint, trace = np_log_density(model, density.args, density.kwargs, {})
        ll = jnp.zeros((), dtype=jnp.result_type(log_joint))
        for name in observed:
            site = trace[name]
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = site["scale"] * lp
            ll = ll + jnp.sum(lp)
        return log_joint - ll, ll

    return one_pass


def _tempered(tempering, log_likelihood):
    """:math:`\\lambda \\ell`, with :math:`0 \\cdot (-\\infty) = 0`."""
    return jnp.where(tempering > 0, tempering * log_likelihood, jnp.zeros_like(log_likelihood))


# --------------------------------------------------------------------------------------------------
# the adaptive temperature
# --------------------------------------------------------------------------------------------------
def solve_next_tempering(log_likelihood, tempering, target_ess, num_iterations: int = 60):
    r"""The next temperature :math:`\lambda' = \lambda + \delta` by bisection on :math:`\delta`.

    Solves :math:`\log \mathrm{ESS}(\delta \ell) = \log(\rho N)` for :math:`\delta \in (0, 1 - \lambda]`
    with incremental log-weights :math:`+\delta \ell^i` (the same sign as the reweighting in
    :func:`step`). Returns :math:`1` when :math:`\delta = 1 - \lambda` keeps the ESS at or above
    :math:`\rho N`; otherwise the lower end of the final bracket (ESS :math:`\ge \rho N`, within
    :math:`2^{-\text{num\_iterations}}` of the root), or its upper end if the lower one never moved
    from 0 (so the ladder always advances).

    Args:
        log_likelihood: (N,) log-likelihoods of equally weighted particles (``-inf`` allowed).
        tempering: the current :math:`\lambda` in [0, 1).
        target_ess: :math:`\rho \in (0, 1)`.
        num_iterations: bisection iterations (static).
    """
    n = log_likelihood.shape[0]
    dtype = jnp.result_type(log_likelihood.dtype, jnp.float32)
    tempering = jnp.asarray(tempering, dtype)
    log_target = jnp.log(jnp.asarray(target_ess, dtype) * n)
    max_delta = 1.0 - tempering

    def excess(delta):
        lw = _tempered(delta, log_likelihood)
        le = 2.0 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2.0 * lw)
        return jnp.where(jnp.isnan(le), -jnp.inf, le) - log_target

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = excess(mid) >= 0
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_iterations, body, (jnp.zeros((), dtype), max_delta))
    delta = jnp.where(lo > 0, lo, hi)
    delta = jnp.where(excess(max_delta) >= 0, max_delta, delta)
    return jnp.where(delta >= max_delta, jnp.ones((), dtype), tempering + delta)


# --------------------------------------------------------------------------------------------------
# move kernels
# --------------------------------------------------------------------------------------------------
def _cloud_covariance(particles):
    n, d = particles.shape
    centred = particles - particles.mean(axis=0)
    cov = centred.T @ centred / jnp.maximum(n - 1, 1)
    scale = jnp.trace(cov) / d
    return cov + (1e-8 * scale + 1e-12) * jnp.eye(d, dtype=particles.dtype)


def _cloud_variance(particles):
    var = particles.var(axis=0)
    return var + 1e-8 * jnp.mean(var) + 1e-12


def rwm_move(log_prior_and_likelihood: Callable, dim: int, num_mcmc_steps: int = 10, *,
             scale: float | None = None, adapt_scale: bool = True, target_acceptance: float = 0.234) -> Move:
    r"""Random-walk Metropolis with the particle cloud's covariance.

    Proposal :math:`z' = z + s L \varepsilon`, :math:`LL^\top = \hat\Sigma` (cloud covariance at the
    current temperature), :math:`\varepsilon \sim N(0, I)`; accept with probability
    :math:`\min(1, \pi_\lambda(z') / \pi_\lambda(z))`. The scale starts at ``scale`` (default
    :math:`2.38/\sqrt{d}`, Roberts & Rosenthal 2001) and, with ``adapt_scale``, is updated after each
    temperature by :math:`\log s \leftarrow \log s + (\bar\alpha - \alpha^\star)`.
    """
    initial = float(np.log(2.38 / np.sqrt(dim) if scale is None else scale))
    vmapped = jax.vmap(log_prior_and_likelihood)

    def apply(key, particles, log_prior, log_likelihood, tempering, log_tuning):
        n, d = particles.shape
        chol = jnp.linalg.cholesky(_cloud_covariance(particles))
        chol = jnp.where(jnp.all(jnp.isfinite(chol)), chol,
                         jnp.diag(jnp.sqrt(_cloud_variance(particles))))
        s = jnp.exp(log_tuning)

        def one(carry, k):
            x, lp, ll = carry
            k_prop, k_acc = jax.random.split(k)
            x_new = x + s * jax.random.normal(k_prop, (n, d), x.dtype) @ chol.T
            lp_new, ll_new = vmapped(x_new)
            log_alpha = (lp_new + _tempered(tempering, ll_new)) - (lp + _tempered(tempering, ll))
            log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
            accept = jnp.log(jax.random.uniform(k_acc, (n,), x.dtype)) < log_alpha
            x = jnp.where(accept[:, None], x_new, x)
            lp = jnp.where(accept, lp_new, lp)
            ll = jnp.where(accept, ll_new, ll)
            return (x, lp, ll), jnp.mean(jnp.exp(jnp.minimum(log_alpha, 0.0)))

        (x, lp, ll), acc = jax.lax.scan(one, (particles, log_prior, log_likelihood),
                                        jax.random.split(key, num_mcmc_steps))
        acc = jnp.mean(acc)
        nxt = log_tuning + (acc - target_acceptance) if adapt_scale else log_tuning
        return x, lp, ll, acc, s, nxt

    return Move(apply, initial, "rwm")


def _blackjax_cloud_move(log_prior_and_likelihood, num_mcmc_steps, algorithm, parameters, *,
                         tuned: bool, initial_step_size, adapt_step_size, target_acceptance, name):
    """Shared body of the BlackJAX-based moves: vmap the kernel over particles, scan over steps."""
    kernel = algorithm.build_kernel()
    vmapped = jax.vmap(log_prior_and_likelihood)
    initial = float(np.log(initial_step_size)) if tuned else 0.0

    def apply(key, particles, log_prior, log_likelihood, tempering, log_tuning):
        n = particles.shape[0]

        def logdensity(v):
            lp, ll = log_prior_and_likelihood(v)
            out = lp + _tempered(tempering, ll)
            return jnp.where(jnp.isnan(out), -jnp.inf, out)

        params = dict(parameters)
        if isinstance(params.get("inverse_mass_matrix"), str):  # "cloud"
            params["inverse_mass_matrix"] = _cloud_variance(particles)
        step_size = jnp.exp(log_tuning)
        if tuned:
            params["step_size"] = step_size
        states = jax.vmap(lambda p: algorithm.init(p, logdensity))(particles)

        def one(states, k):
            keys = jax.random.split(k, n)
            states, info = jax.vmap(lambda kk, st: kernel(kk, st, logdensity, **params))(keys, states)
            acc = getattr(info, "acceptance_rate", None)
            acc = jnp.full((), jnp.nan, particles.dtype) if acc is None else jnp.mean(acc)
            return states, acc

        states, acc = jax.lax.scan(one, states, jax.random.split(key, num_mcmc_steps))
        acc = jnp.mean(acc)
        x = states.position
        lp, ll = vmapped(x)
        nxt = log_tuning + (acc - target_acceptance) if (tuned and adapt_step_size) else log_tuning
        nxt = jnp.clip(nxt, -12.0, 3.0)
        scale = step_size if tuned else jnp.asarray(params.get("step_size", jnp.nan), particles.dtype)
        return x, lp, ll, acc, scale, nxt

    return Move(apply, initial, name)


def _import_blackjax():
    try:
        import blackjax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "`kernel='hmc'`/`'nuts'` use BlackJAX's kernels: install blackjax (pip install blackjax), "
            "or use `kernel='rwm'`") from exc
    return blackjax


def hmc_move(log_prior_and_likelihood: Callable, dim: int, num_mcmc_steps: int = 5, *,
             num_integration_steps: int = 10, step_size: float | None = None, adapt_step_size: bool = True,
             inverse_mass_matrix="cloud", target_acceptance: float = 0.65) -> Move:
    r"""HMC moves (BlackJAX's ``hmc`` kernel) for :math:`\pi_\lambda`.

    The inverse mass matrix is the cloud's marginal variances (``"cloud"``, the default) or a given
    array; the step size starts at ``step_size`` (default :math:`d^{-1/4}`) and is adapted after each
    temperature from the mean acceptance rate towards ``target_acceptance`` (Buchholz, Chopin &
    Jacob 2021 tune HMC within SMC from the particle cloud in the same spirit).
    """
    blackjax = _import_blackjax()
    step_size = float(dim ** -0.25) if step_size is None else float(step_size)
    params = {"inverse_mass_matrix": inverse_mass_matrix, "num_integration_steps": int(num_integration_steps)}
    return _blackjax_cloud_move(log_prior_and_likelihood, num_mcmc_steps, blackjax.hmc, params, tuned=True,
                                initial_step_size=step_size, adapt_step_size=adapt_step_size,
                                target_acceptance=target_acceptance, name="hmc")


def nuts_move(log_prior_and_likelihood: Callable, dim: int, num_mcmc_steps: int = 2, *,
              max_num_doublings: int = 8, step_size: float | None = None, adapt_step_size: bool = True,
              inverse_mass_matrix="cloud", target_acceptance: float = 0.8) -> Move:
    """NUTS moves (BlackJAX's ``nuts`` kernel); mass matrix and step size as in :func:`hmc_move`."""
    blackjax = _import_blackjax()
    step_size = float(dim ** -0.25) if step_size is None else float(step_size)
    params = {"inverse_mass_matrix": inverse_mass_matrix, "max_num_doublings": int(max_num_doublings)}
    return _blackjax_cloud_move(log_prior_and_likelihood, num_mcmc_steps, blackjax.nuts, params, tuned=True,
                                initial_step_size=step_size, adapt_step_size=adapt_step_size,
                                target_acceptance=target_acceptance, name="nuts")


def blackjax_move(algorithm, log_prior_and_likelihood: Callable, num_mcmc_steps: int = 5,
                  **parameters) -> Move:
    """Any BlackJAX MCMC algorithm (``blackjax.hmc``, ``blackjax.mala``, ``blackjax.nuts``, ...) as a move.

    ``algorithm`` needs ``init(position, logdensity_fn)`` and ``build_kernel()`` returning
    ``kernel(key, state, logdensity_fn, **parameters)``; the parameters are passed unchanged
    (``inverse_mass_matrix="cloud"`` is replaced by the cloud's variances). The acceptance rate is read
    from the kernel's ``info.acceptance_rate`` (NaN if it has none).
    """
    return _blackjax_cloud_move(log_prior_and_likelihood, num_mcmc_steps, algorithm, parameters, tuned=False,
                                initial_step_size=1.0, adapt_step_size=False, target_acceptance=0.0,
                                name=_algorithm_name(algorithm))


def _algorithm_name(algorithm) -> str:
    """``"mala"`` for ``blackjax.mala`` (named after the module that defines its kernel)."""
    name = getattr(algorithm, "__name__", None)
    if name is None:
        module = getattr(getattr(algorithm, "build_kernel", None), "__module__", None) or "custom"
        name = module.rsplit(".", 1)[-1]
    return str(name)


# --------------------------------------------------------------------------------------------------
# the SMC step and loop (pure)
# --------------------------------------------------------------------------------------------------
def init(particles, log_prior_and_likelihood: Callable, log_tuning=0.0) -> TemperedState:
    """State at :math:`\\lambda = 0` from (N, D) prior draws."""
    lp, ll = jax.vmap(log_prior_and_likelihood)(particles)
    dtype = particles.dtype
    return TemperedState(particles, lp, ll, jnp.zeros((), dtype), jnp.zeros((), dtype),
                         jnp.asarray(log_tuning, dtype))


def step(key, state: TemperedState, next_tempering, move: Move, *,
         resampling: Callable | str = "systematic") -> tuple[TemperedState, TemperedInfo]:
    """One tempering step :math:`\\lambda \\to` ``next_tempering``: reweight, resample, move.

    Returns ``(TemperedState, TemperedInfo)``.
    """
    resampling_fn = get_scheme(resampling)
    n = state.log_likelihood.shape[0]
    k_res, k_move = jax.random.split(key)
    next_tempering = jnp.asarray(next_tempering, state.tempering.dtype)
    delta = next_tempering - state.tempering
    log_w = _tempered(delta, state.log_likelihood)
    incr = jax.nn.logsumexp(log_w) - jnp.log(n)
    nonfinite = jnp.any(jnp.isnan(log_w)) | jnp.all(log_w == -jnp.inf)
    current_ess = ess_fn(log_w)
    safe_w = jnp.where(nonfinite, jnp.zeros_like(log_w), log_w)
    idx = resampling_fn(k_res, safe_w, n)
    x, lp, ll = state.particles[idx], state.log_prior[idx], state.log_likelihood[idx]
    x, lp, ll, acc, scale, nxt = move.apply(k_move, x, lp, ll, next_tempering, state.log_tuning)
    new_state = TemperedState(x, lp, ll, next_tempering, state.log_evidence + incr,
                              jnp.asarray(nxt, state.log_tuning.dtype))
    info = TemperedInfo(next_tempering, incr, current_ess, jnp.asarray(acc, x.dtype),
                        jnp.asarray(scale, x.dtype), nonfinite)
    return new_state, info


class _Carry(NamedTuple):
    num_steps: jax.Array
    state: TemperedState
    infos: TemperedInfo
    failed: jax.Array


def _empty_infos(max_steps, dtype):
    nan = jnp.full((max_steps,), jnp.nan, dtype)
    return TemperedInfo(nan, nan, nan, nan, nan, jnp.zeros((max_steps,), bool))


def _advance(key, carry: _Carry, stop, *, move, target_ess, schedule, resampling, max_steps) -> _Carry:
    """Run tempering steps while :math:`\\lambda < 1`, no failure, and fewer than ``stop`` steps."""

    def cond(c):
        return (c.num_steps < jnp.minimum(stop, max_steps)) & (c.state.tempering < 1.0) & ~c.failed

    def body(c):
        if schedule is None:
            nxt = solve_next_tempering(c.state.log_likelihood, c.state.tempering, target_ess)
        else:
            nxt = jnp.asarray(schedule, c.state.tempering.dtype)[c.num_steps]
        state, info = step(jax.random.fold_in(key, c.num_steps), c.state, nxt, move, resampling=resampling)
        infos = jax.tree_util.tree_map(lambda a, b: a.at[c.num_steps].set(b), c.infos, info)
        return _Carry(c.num_steps + 1, state, infos, c.failed | info.nonfinite)

    return jax.lax.while_loop(cond, body, carry)


def _start(key, initial_particles, log_prior_and_likelihood, move, max_steps) -> _Carry:
    state = init(initial_particles, log_prior_and_likelihood, move.initial_log_tuning)
    return _Carry(jnp.zeros((), jnp.int32), state, _empty_infos(max_steps, state.particles.dtype),
                  jnp.zeros((), bool))


def run(key, initial_particles, log_prior_and_likelihood: Callable, move: Move, *, target_ess: float = 0.5,
        schedule=None, resampling: Callable | str = "systematic", max_steps: int = 500):
    r"""The whole tempered SMC loop from prior draws to :math:`\lambda = 1` (pure; ``jit``/``vmap``-able).

    Args:
        key: ``jax.random`` key.
        initial_particles: (N, D) flat unconstrained draws from the prior.
        log_prior_and_likelihood: ``v -> (log_prior, log_likelihood)`` for one flat vector.
        move: a :class:`Move` (e.g. :func:`rwm_move`).
        target_ess: :math:`\rho`, the ESS fraction the adaptive temperatures aim at (ignored with a schedule).
        schedule: optional increasing temperatures :math:`\lambda_1 < \dots < \lambda_K = 1`.
        resampling: scheme name or ``(key, log_weights, num_samples) -> indices``.
        max_steps: the cap on the number of tempering steps (static; the length of the info arrays).

    Returns:
        ``(TemperedState, TemperedInfo, num_steps)``: the final state, per-step infos padded with NaN
        to ``max_steps`` (the first ``num_steps`` entries are valid), and the number of steps taken.
    """
    if schedule is not None:
        max_steps = int(np.shape(schedule)[0])
    resampling = get_scheme(resampling)
    carry = _start(key, initial_particles, log_prior_and_likelihood, move, max_steps)
    carry = _advance(key, carry, max_steps, move=move, target_ess=target_ess, schedule=schedule,
                     resampling=resampling, max_steps=max_steps)
    return carry.state, carry.infos, carry.num_steps


# --------------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TemperedSMCResult:
    """Output of :func:`tempered`.

    Attributes:
        samples: dict of constrained posterior draws, leading axis N, latent and deterministic sites.
        unconstrained: dict of the same draws in NumPyro's unconstrained space.
        log_evidence: :math:`\\log \\hat p(y)`, scalar.
        tempering: (K,) the ladder :math:`\\lambda_1, \\dots, \\lambda_K = 1` (:math:`\\lambda_0 = 0`).
        log_evidence_increments: (K,) :math:`\\log \\frac1N \\sum_i e^{(\\lambda_n - \\lambda_{n-1})\\ell^i}`.
        ess: (K,) ESS of the incremental weights at each step (before resampling).
        acceptance_rate: (K,) mean MCMC acceptance rate at each temperature.
        move_scale: (K,) RWM scale or HMC/NUTS step size used at each temperature.
        log_likelihood: (N,) log-likelihood of the final particles.
        num_steps: K.
        num_particles, target_ess, kernel, num_mcmc_steps, resampling: the settings used
            (``target_ess`` is None with a fixed schedule).
    """

    samples: dict
    unconstrained: dict
    log_evidence: Any
    tempering: Any
    log_evidence_increments: Any
    ess: Any
    acceptance_rate: Any
    move_scale: Any
    log_likelihood: Any
    num_steps: int
    num_particles: int
    target_ess: float | None
    kernel: str
    num_mcmc_steps: int
    resampling: str

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (chain 1, draw = particle; weights are equal after
        the final resampling), ``log_likelihood`` (``total``: each draw's log-likelihood summed over the
        observed sites), ``sample_stats`` (the run as one draw: tempering, ess, acceptance_rate,
        log_evidence_increment, move_scale over ``tempering_step``, log_evidence); settings as attributes."""
        from bayeskit.diagnostics import one_chain, one_run, to_datatree

        stats = {"tempering": self.tempering, "ess": self.ess, "acceptance_rate": self.acceptance_rate,
                 "log_evidence_increment": self.log_evidence_increments, "move_scale": self.move_scale}
        dims = {name: ["tempering_step"] for name in stats}
        groups = {"posterior": one_chain(self.samples),
                  "log_likelihood": one_chain({"total": self.log_likelihood}),
                  "sample_stats": one_run({**stats, "log_evidence": self.log_evidence})}
        return to_datatree(groups, dims=dims, coords={"tempering_step": np.arange(self.num_steps)},
                           attrs={"log_evidence": float(self.log_evidence), "num_particles": self.num_particles,
                                  "num_tempering_steps": self.num_steps,
                                  "target_ess": self.target_ess, "kernel": self.kernel,
                                  "num_mcmc_steps": self.num_mcmc_steps, "resampling": self.resampling})


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------
def _build_move(kernel, fn, dim, num_mcmc_steps, kernel_parameters) -> tuple[Move, str]:
    params = dict(kernel_parameters or {})
    try:
        if isinstance(kernel, str):
            _checks.check_choice(kernel, "kernel", KERNELS)
            factory = {"rwm": rwm_move, "hmc": hmc_move, "nuts": nuts_move}[kernel]
            return factory(fn, dim, num_mcmc_steps, **params), kernel
        import numpyro.infer as ninfer

        if isinstance(kernel, (ninfer.HMC, ninfer.NUTS)):
            # a NumPyro kernel object: its settings, run with BlackJAX's integrator inside the SMC moves
            is_nuts = isinstance(kernel, ninfer.NUTS)
            settings: dict = {"adapt_step_size": bool(kernel._adapt_step_size)}
            if kernel._inverse_mass_matrix is not None:
                settings["inverse_mass_matrix"] = kernel._inverse_mass_matrix
            if kernel._step_size is not None and not kernel._adapt_step_size:
                settings["step_size"] = float(kernel._step_size)
            if is_nuts:
                settings["max_num_doublings"] = int(kernel._max_tree_depth if isinstance(kernel._max_tree_depth, int)
                                                    else kernel._max_tree_depth[0])
                settings["target_acceptance"] = float(kernel._target_accept_prob)
            else:
                if kernel._num_steps is not None:
                    settings["num_integration_steps"] = int(kernel._num_steps)
                elif kernel._trajectory_length is not None and "step_size" in settings:
                    settings["num_integration_steps"] = max(
                        1, int(np.ceil(kernel._trajectory_length / settings["step_size"])))
            settings.update(params)
            factory = nuts_move if is_nuts else hmc_move
            return factory(fn, dim, num_mcmc_steps, **settings), "nuts" if is_nuts else "hmc"
        if hasattr(kernel, "build_kernel") and hasattr(kernel, "init"):
            move = blackjax_move(kernel, fn, num_mcmc_steps, **params)
            return move, move.name
    except TypeError as exc:
        raise ConfigurationError(f"`kernel_parameters` do not fit kernel {kernel!r}: {exc}") from exc
    raise ConfigurationError(
        f"`kernel` must be one of {list(KERNELS)}, a NumPyro HMC/NUTS kernel object, or a BlackJAX "
        f"algorithm with `init` and `build_kernel` (e.g. blackjax.mala), got {kernel!r}")


def _check_schedule(schedule):
    arr = np.asarray(schedule, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigurationError(f"`schedule` must be a 1-D array of temperatures, got shape {arr.shape}")
    if arr[0] == 0.0:
        arr = arr[1:]
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1) \
            or np.any(np.diff(arr) <= 0) or arr[-1] != 1.0:
        raise ConfigurationError(
            "`schedule` must be strictly increasing temperatures in (0, 1] ending at 1.0 "
            f"(a leading 0 is allowed), got {np.asarray(schedule)!r}")
    return arr


def tempered(key, model: Callable, *args, num_particles: int = 2000, target_ess: float = 0.5,
             schedule=None, kernel="rwm", num_mcmc_steps: int | None = None,
             resampling: str | Callable = "systematic", kernel_parameters: dict | None = None,
             max_steps: int = 500, progress_bar: bool = False, **model_kwargs) -> TemperedSMCResult:
    r"""Tempered SMC for ``model(*args, **model_kwargs)``: posterior draws and :math:`\log p(y)`.

    Args:
        key: ``jax.random`` key.
        model: a NumPyro model with continuous latent sites and at least one observed site (or factor).
        *args: the model's positional arguments.
        **model_kwargs: the model's keyword arguments (names that clash with the options below cannot
            be passed; wrap the model in a closure).
        num_particles: N >= 2.
        target_ess: :math:`\rho \in (0, 1)`: each new temperature makes the ESS of the incremental
            weights :math:`\rho N` (smaller: fewer, bigger steps).
        schedule: optional fixed ladder, strictly increasing in (0, 1] and ending at 1 (a leading 0
            is dropped); overrides ``target_ess``.
        kernel: ``"rwm"`` (random-walk Metropolis, cloud covariance), ``"hmc"`` or ``"nuts"`` (BlackJAX's
            kernels, cloud variances as inverse mass matrix, adapted step size), a NumPyro
            ``HMC``/``NUTS`` object (its step size, number of steps / tree depth, target acceptance
            and mass matrix are used with BlackJAX's integrator), or a BlackJAX algorithm
            (e.g. ``blackjax.mala``) whose kernel takes ``kernel_parameters``.
        num_mcmc_steps: MCMC steps per temperature (default 10 for RWM, 5 for HMC, 2 for NUTS, 5 otherwise).
        resampling: ``"systematic"``, ``"stratified"``, ``"residual"``, ``"multinomial"`` or a function.
        kernel_parameters: options of the move (see :func:`rwm_move`, :func:`hmc_move`, :func:`nuts_move`;
            for a BlackJAX algorithm, its kernel's parameters).
        max_steps: cap on the number of temperatures.
        progress_bar: show a tqdm bar of :math:`\lambda` (the loop then runs in jitted chunks).

    Returns:
        :class:`TemperedSMCResult`.

    Raises:
        ConfigurationError: bad options (e.g. ``target_ess`` outside (0, 1), a bad schedule).
        ModelError: discrete latent sites, no latent or no observed sites, a log-likelihood or
            log-prior that is NaN (or +inf) at the initial prior draws.
        DegenerateWeightsError: the incremental weights vanished or became NaN during the run.
        ConvergenceError: :math:`\lambda` did not reach 1 within ``max_steps``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from bayeskit.inference.smc._tempered import tempered
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> res = tempered(jax.random.key(0), model, jnp.array([0.3, 0.8]), num_particles=500)
        >>> res.samples["mu"].shape, float(res.tempering[-1])
        ((500,), 1.0)
    """
    from bayeskit.model.density import log_density

    _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles", minimum=2)
    target_ess = _checks.check_in_interval(target_ess, "target_ess", 0.0, 1.0, closed="neither")
    max_steps = _checks.check_positive_int(max_steps, "max_steps")
    get_scheme(resampling)
    if schedule is not None:
        schedule = _check_schedule(schedule)
        max_steps = int(schedule.shape[0])
    kernel_label = kernel if isinstance(kernel, str) else "custom"
    if isinstance(kernel, str):
        _checks.check_choice(kernel, "kernel", KERNELS)
    if num_mcmc_steps is None:
        num_mcmc_steps = DEFAULT_NUM_MCMC_STEPS.get(kernel_label, 5)
        if not isinstance(kernel, str) and kernel.__class__.__name__ == "NUTS":
            num_mcmc_steps = DEFAULT_NUM_MCMC_STEPS["nuts"]
    num_mcmc_steps = _checks.check_positive_int(num_mcmc_steps, "num_mcmc_steps")

    density = log_density(model, *args, **model_kwargs)
    if not density.observed_sites:
        raise ModelError(
            "`model` has no observed sites (no `obs=` sample site or `numpyro.factor`): the likelihood is "
            "constant, so there is nothing to temper; sample the prior with numpyro.infer.Predictive")
    fn = prior_and_likelihood_fn(density)
    dim = density.dim
    move, kernel_name = _build_move(kernel, fn, dim, num_mcmc_steps, kernel_parameters)
    resampling_fn = get_scheme(resampling)
    k_init, k_run = jax.random.split(key)

    @jax.jit
    def start(k):
        z = density.sample_prior(k, num_particles)
        flat = jax.vmap(density.flatten)(z)
        return _start(k_run, flat, fn, move, max_steps)

    carry = start(k_init)
    _check_initial(carry.state, density)

    advance = jax.jit(partial(_advance, move=move, target_ess=target_ess,
                              schedule=None if schedule is None else jnp.asarray(schedule, carry.state.particles.dtype),
                              resampling=resampling_fn, max_steps=max_steps))
    if progress_bar:
        from tqdm.auto import tqdm

        chunk = 5
        with tqdm(total=1.0, desc="tempered SMC (lambda)", bar_format="{l_bar}{bar}| {n:.3f}/1") as bar:
            while True:
                carry = advance(k_run, carry, carry.num_steps + chunk)
                lam = float(carry.state.tempering)
                bar.n = lam
                bar.refresh()
                if lam >= 1.0 or bool(carry.failed) or int(carry.num_steps) >= max_steps:
                    break
    else:
        carry = advance(k_run, carry, max_steps)

    k = int(carry.num_steps)
    infos = jax.tree_util.tree_map(lambda a: np.asarray(a[:k]), carry.infos)
    if bool(carry.failed):
        bad = int(np.argmax(infos.nonfinite))
        raise DegenerateWeightsError(
            f"tempered: at tempering step {bad} (lambda {float(infos.tempering[bad]):.3g}) the incremental "
            "weights are NaN or all zero (a NaN log-likelihood reached by the MCMC moves, or every particle "
            "in a region of zero likelihood); check the model, or use more particles")
    if float(carry.state.tempering) < 1.0:
        raise ConvergenceError(
            f"tempered: the temperature reached only {float(carry.state.tempering):.3g} < 1 after "
            f"`max_steps`={max_steps} steps; raise `max_steps` or lower `target_ess`")

    state = carry.state
    z = jax.vmap(density.unflatten)(state.particles)
    samples = jax.jit(jax.vmap(density.constrain))(z)
    return TemperedSMCResult(
        samples=dict(samples), unconstrained=dict(z), log_evidence=state.log_evidence,
        tempering=infos.tempering, log_evidence_increments=infos.log_evidence_increment, ess=infos.ess,
        acceptance_rate=infos.acceptance_rate, move_scale=infos.move_scale,
        log_likelihood=state.log_likelihood, num_steps=k, num_particles=num_particles,
        target_ess=None if schedule is not None else target_ess, kernel=kernel_name,
        num_mcmc_steps=num_mcmc_steps,
        resampling=resampling if isinstance(resampling, str) else getattr(resampling, "__name__", "custom"))


def _check_initial(state: TemperedState, density):
    """Clear errors for a likelihood or prior that is NaN / +inf at the initial prior draws."""
    for name, values in (("log-likelihood", state.log_likelihood), ("log-prior", state.log_prior)):
        v = np.asarray(values)
        bad = np.isnan(v) | (v == np.inf)
        if bad.any():
            i = int(np.argmax(bad))
            point = {k: np.asarray(a) for k, a in density.constrain(
                density.unflatten(state.particles[i]), deterministic=False).items()}
            raise ModelError(
                f"the model's {name} is NaN or +inf at {int(bad.sum())} of {v.size} initial particles "
                f"(prior draws), first at particle {i} with latent values {point}; fix the model's "
                "densities (e.g. parameters outside a distribution's support, 0 * inf, log of a negative)")
    if np.all(np.asarray(state.log_likelihood) == -np.inf):
        raise ModelError("the model's likelihood is zero at every initial particle (prior draw): the data "
                         "are impossible under the prior; check the observations and the model")
