r"""Tempered SMC kernels: the prior/likelihood split, the adaptive temperature and the MCMC moves.

Pure pieces used by :mod:`bayeskit.inference.smc._tempered` (the model on the engine, the driver) and
exported in :mod:`bayeskit.smc.kernels`: :func:`prior_and_likelihood_fn` (one pass over a NumPyro model),
:func:`solve_next_tempering` (the bisection of Jasra et al. 2011), and the moves :func:`rwm_move`,
:func:`hmc_move`, :func:`nuts_move`, :func:`blackjax_move` (:class:`Move`: an MCMC kernel applied to the
whole cloud at one temperature, with its tuning adapted from one temperature to the next).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError

__all__ = ["Move", "KERNELS", "prior_and_likelihood_fn", "tempered_log_likelihood", "solve_next_tempering",
           "rwm_move", "hmc_move", "nuts_move", "blackjax_move", "build_move"]

KERNELS = ("rwm", "hmc", "nuts")

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


def tempered_log_likelihood(tempering, log_likelihood):
    """:math:`\\lambda \\ell`, with :math:`0 \\cdot (-\\infty) = 0`."""
    return jnp.where(tempering > 0, tempering * log_likelihood, jnp.zeros_like(log_likelihood))


# --------------------------------------------------------------------------------------------------
# the adaptive temperature
# --------------------------------------------------------------------------------------------------
def solve_next_tempering(log_likelihood, tempering, target_ess, num_iterations: int = 60):
    r"""The next temperature :math:`\lambda' = \lambda + \delta` by bisection on :math:`\delta`.

    Solves :math:`\log \mathrm{ESS}(\delta \ell) = \log(\rho N)` for :math:`\delta \in (0, 1 - \lambda]`
    with incremental log-weights :math:`+\delta \ell^i` (the same sign as the reweighting in
    the tempered model's potential). Returns :math:`1` when :math:`\delta = 1 - \lambda` keeps the ESS at or above
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
        lw = tempered_log_likelihood(delta, log_likelihood)
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
            log_alpha = ((lp_new + tempered_log_likelihood(tempering, ll_new))
                         - (lp + tempered_log_likelihood(tempering, ll)))
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
            out = lp + tempered_log_likelihood(tempering, ll)
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


def build_move(kernel, fn, dim, num_mcmc_steps, kernel_parameters) -> tuple[Move, str]:
    """The :class:`Move` for the driver's ``kernel`` option (a name, a NumPyro HMC/NUTS object, a BlackJAX
    algorithm) and its label; :class:`~bayeskit.errors.ConfigurationError` for a bad kernel or parameters."""
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
