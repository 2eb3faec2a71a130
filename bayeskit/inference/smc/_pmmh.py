r"""Particle marginal Metropolis–Hastings (PMMH) with many chains in parallel.

Andrieu, Doucet & Holenstein (2010): a Metropolis–Hastings chain on the parameters :math:`\theta` whose
acceptance ratio uses the particle filter's unbiased likelihood estimate :math:`\hat p_\theta(y)`,

.. math::
    \alpha = \min\left(1, \frac{\hat p_{\theta'}(y)\, p(\theta')}{\hat p_{\theta}(y)\, p(\theta)}\right),

which leaves the exact posterior :math:`p(\theta \mid y)` invariant for any number of particles. Here the
parameters live in NumPyro's unconstrained space (the prior is a NumPyro function, e.g. the
``prior`` of a :class:`~bayeskit.StateSpaceModel`), the proposal is a Gaussian random walk, and
``num_chains`` independent chains run at once by ``vmap`` over the particle filter — the way small
state-space problems fill a GPU (1000 chains x 1000 particles is one batched filter per iteration).
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._feynman_kac import bootstrap
from bayeskit.inference.smc.resampling import adaptive
from bayeskit.progress import progress, tick

__all__ = ["pmmh", "PMMHResult"]


@dataclasses.dataclass(frozen=True)
class PMMHResult:
    """Output of :func:`pmmh`.

    Attributes:
        samples: dict of constrained parameter draws, each ``(num_chains, num_samples, ...)``.
        log_evidence: ``(num_chains, num_samples)`` the filter's :math:`\\log \\hat p_\\theta(y)` at each draw.
        acceptance_rate: ``(num_chains,)``.
    """

    samples: dict
    log_evidence: Any
    accepted: Any
    acceptance_rate: Any

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (chains x iterations), ``sample_stats``
        (``log_evidence``: the particle filter's estimate at each state; ``accepted``)."""
        from bayeskit.diagnostics import to_datatree

        return to_datatree({"posterior": self.samples,
                            "sample_stats": {"log_evidence": self.log_evidence, "accepted": self.accepted}},
                           attrs={"inference_library": "bayeskit", "algorithm": "pmmh"})


@functools.lru_cache(maxsize=32)
def _prior_density(prior: Callable):
    from bayeskit.model.density import log_density

    def model():
        prior()

    return log_density(model)


@partial(jax.jit, static_argnames=("ssm", "dens", "num_particles", "num_iterations", "resampling", "progress_bar"))
def _run(key, z0, scale, ys, *, ssm, dens, num_particles, num_iterations, resampling, progress_bar=False):
    def loglik(k, z):
        params = dens.constrain(z, deterministic=False)
        fk = bootstrap(ssm, params, ys)
        state, _ = engine.run(k, fk, num_particles, strategy=adaptive(resampling, 0.5))
        ll = state.log_evidence
        return jnp.where(jnp.isnan(ll), -jnp.inf, ll)

    def chain(key, z_init):
        k0, kloop = jax.random.split(key)
        v0 = dens.flatten(z_init)
        ll0 = loglik(k0, z_init)
        lp0 = dens.log_joint(z_init)

        def body(carry, inp):
            k, i = inp
            tick(i + 1, num_iterations, progress_bar)  # chains are vmapped: the bar shows the furthest
            v, ll, lp = carry
            kp, kf, ku = jax.random.split(k, 3)
            v_new = v + scale * jax.random.normal(kp, v.shape, v.dtype)
            z_new = dens.unflatten(v_new)
            lp_new = dens.log_joint(z_new)
            ll_new = loglik(kf, z_new)
            log_alpha = ll_new + lp_new - ll - lp
            accept = jnp.log(jax.random.uniform(ku, dtype=v.dtype)) < log_alpha
            carry = (jnp.where(accept, v_new, v), jnp.where(accept, ll_new, ll), jnp.where(accept, lp_new, lp))
            return carry, (carry[0], carry[1], accept)

        _, (vs, lls, acc) = jax.lax.scan(body, (v0, ll0, lp0),
                                         (jax.random.split(kloop, num_iterations), jnp.arange(num_iterations)))
        return vs, lls, acc, ll0

    keys = jax.random.split(key, z0[next(iter(z0))].shape[0])
    return jax.vmap(chain)(keys, z0)


def pmmh(key, ssm, ys, *, prior: Callable | None = None, num_particles: int = 256, num_iterations: int = 1000,
         num_chains: int = 4, step_size: float | Any = 0.1, num_warmup: int = 0, init_params: dict | None = None,
         resampling: str = "systematic", progress_bar: bool = False) -> PMMHResult:
    """Run ``num_chains`` PMMH chains in parallel (one batched particle filter per iteration).

    Args:
        key: ``jax.random`` key.
        ssm: the :class:`~bayeskit.StateSpaceModel`.
        ys: observations ``(T, ...)``.
        prior: a function of NumPyro ``sample`` statements returning the parameter dict (default
            ``ssm.prior``).
        num_particles: particles per filter. num_iterations: MH iterations per chain (after warm-up).
        num_chains: independent chains, ``vmap``-ed.
        step_size: random-walk scale in unconstrained space (a scalar or a vector of ``dim`` scales).
        num_warmup: iterations discarded at the start.
        init_params: constrained starting parameters (default: prior draws, one per chain).
        resampling: the particle filters' resampling scheme (as in :func:`~bayeskit.smc.particle_filter`).
        progress_bar: show a tqdm bar of the iterations (warm-up included).
    """
    _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles")
    num_iterations = _checks.check_positive_int(num_iterations, "num_iterations")
    num_chains = _checks.check_positive_int(num_chains, "num_chains")
    num_warmup = _checks.check_positive_int(num_warmup, "num_warmup", minimum=0)
    prior = prior if prior is not None else ssm.prior
    if prior is None:
        raise ModelError("pmmh needs `prior=` or a StateSpaceModel built with `prior=`")
    dens = _prior_density(prior)
    k_init, k_run = jax.random.split(key)
    if init_params is None:
        z0 = dens.sample_prior(k_init, num_chains)
    else:
        z = dens.unconstrain(init_params)
        z0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (num_chains,) + jnp.shape(a)), z)
    params0 = dens.constrain(jax.tree_util.tree_map(lambda a: a[0], z0), deterministic=False)
    from bayeskit.inference.smc._filtering import check_model_params

    check_model_params(ssm, params0, "prior draws / init_params")
    ssm.validate(params0, ys)
    scale = jnp.asarray(step_size, dtype=jnp.result_type(float))
    if scale.ndim not in (0, 1) or (scale.ndim == 1 and scale.shape[0] != dens.dim) or not bool(jnp.all(scale > 0)):
        raise ConfigurationError(f"`step_size` must be positive, a scalar or a vector of length {dens.dim}")
    with progress(progress_bar, num_iterations + num_warmup, "PMMH"):
        vs, lls, acc, ll0 = _run(k_run, z0, scale, jnp.asarray(ys), ssm=ssm, dens=dens, num_particles=num_particles,
                                 num_iterations=num_iterations + num_warmup, resampling=resampling,
                                 progress_bar=bool(progress_bar))
        jax.block_until_ready(vs)
    vs, lls, acc = vs[:, num_warmup:], lls[:, num_warmup:], acc[:, num_warmup:]
    samples = jax.vmap(jax.vmap(lambda v: dens.constrain(dens.unflatten(v), deterministic=False)))(vs)
    samples = {k: np.asarray(v) for k, v in samples.items()}
    return PMMHResult(samples, np.asarray(lls), np.asarray(acc), np.asarray(acc).mean(axis=1))
