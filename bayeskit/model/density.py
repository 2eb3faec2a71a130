r"""Log densities of any NumPyro model, split into prior and likelihood, in unconstrained space.

For a model with latent sites :math:`\theta` (constrained) and observed sites :math:`y`, and a bijection
:math:`\theta = T(z)` to unconstrained space (NumPyro's ``biject_to`` of each site's support),

.. math::
    \log \pi(z) = \underbrace{\log p(T(z)) + \log |\det J_T(z)|}_{\text{log\_prior}(z)}
                 + \underbrace{\log p(y \mid T(z))}_{\text{log\_likelihood}(z)} .

Built on ``numpyro.infer.util`` (``initialize_model``, ``potential_energy``, ``constrain_fn``,
``log_density``), so plates, masks, ``scale`` handlers, dynamic supports and deterministic sites
behave exactly as in NumPyro's own NUTS. Tempered SMC uses the split directly:
:math:`\pi_\lambda(z) \propto \text{prior}(z)\,\text{lik}(z)^\lambda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bayeskit.errors import ModelError

__all__ = ["LogDensity", "log_density"]


@dataclass(frozen=True, eq=False)  # hashed by identity: usable as a static jit argument
class LogDensity:
    """Log-density functions of a NumPyro model over unconstrained latent values ``z`` (a dict).

    Attributes:
        log_prior: ``z -> log p(T(z)) + log|J|`` (prior in unconstrained space, Jacobian included).
        log_likelihood: ``z -> log p(y | T(z))`` (sum over observed sites, masks and scales applied).
        log_joint: ``z -> log_prior(z) + log_likelihood(z)``.
        constrain: ``z -> dict`` of constrained latent values plus deterministic sites.
        unconstrain: constrained latent dict -> ``z``.
        init_params: one valid ``z`` (from NumPyro's ``init_to_uniform``), a template for shapes.
        latent_sites / observed_sites: site names.
    """

    model: Callable
    args: tuple
    kwargs: dict
    init_params: dict
    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]
    _postprocess: Callable

    # unconstrained <-> flat vectors -------------------------------------------------
    @property
    def dim(self) -> int:
        return int(ravel_pytree(self.init_params)[0].shape[0])

    def flatten(self, z) -> jax.Array:
        return ravel_pytree(z)[0]

    def unflatten(self, v) -> dict:
        return ravel_pytree(self.init_params)[1](v)

    # densities ----------------------------------------------------------------------
    def log_joint(self, z) -> jax.Array:
        from numpyro.infer.util import potential_energy

        return -potential_energy(self.model, self.args, self.kwargs, z)

    def log_likelihood(self, z) -> jax.Array:
        from numpyro.infer.util import constrain_fn
        from numpyro.infer.util import log_density as np_log_density

        params = constrain_fn(self.model, self.args, self.kwargs, z)
        _, tr = np_log_density(self.model, self.args, self.kwargs, params)
        total = jnp.zeros(())
        for name in self.observed_sites:
            site = tr[name]
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = site["scale"] * lp
            total = total + jnp.sum(lp)
        return total

    def log_prior(self, z) -> jax.Array:
        return self.log_joint(z) - self.log_likelihood(z)

    # transforms ---------------------------------------------------------------------
    def constrain(self, z, deterministic: bool = True) -> dict:
        """Constrained values of the latent sites (and deterministic sites if asked)."""
        if deterministic:
            return self._postprocess(z)
        from numpyro.infer.util import constrain_fn

        return constrain_fn(self.model, self.args, self.kwargs, z)

    def unconstrain(self, params: dict) -> dict:
        from numpyro.infer.util import unconstrain_fn

        return unconstrain_fn(self.model, self.args, self.kwargs, {k: params[k] for k in self.latent_sites})

    def sample_prior(self, key, num_samples: int) -> dict:
        """``num_samples`` draws from the prior, unconstrained, with a leading sample axis."""
        from numpyro import handlers

        def one(k):
            tr = handlers.trace(handlers.seed(self.model, k)).get_trace(*self.args, **self.kwargs)
            return self.unconstrain({name: tr[name]["value"] for name in self.latent_sites})

        return jax.vmap(one)(jax.random.split(key, num_samples))


def log_density(model: Callable, *args, key=None, **kwargs) -> LogDensity:
    """Build a :class:`LogDensity` for ``model(*args, **kwargs)``.

    Discrete latent sites are rejected with a :class:`~bayeskit.errors.ModelError` (enumerate them
    out in the model, or use a backend that handles them).

    Args:
        model: a NumPyro model.
        *args: the model's positional arguments.
        key: ``jax.random`` key of the one traced run of the model that reads its sites, and of the shape
            template ``init_params``; no density depends on it, so it may be omitted (then ``key(0)``: a
            structural trace, not a random result).
        **kwargs: the model's keyword arguments.

    Example:
        >>> import numpyro, numpyro.distributions as dist, jax.numpy as jnp
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0, 1))
        ...     numpyro.sample("y", dist.Normal(mu, 1), obs=y)
        >>> d = log_density(model, jnp.array([0.5, 1.0]))
        >>> float(d.log_prior({"mu": jnp.array(0.0)}))  # doctest: +ELLIPSIS
        -0.918...
    """
    from numpyro import handlers
    from numpyro.infer.util import initialize_model

    key = jax.random.key(0) if key is None else key
    try:
        tr = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    except Exception as exc:
        raise ModelError(f"the model raised while being traced with the given arguments: {exc}") from exc
    latent, observed = [], []
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            observed.append(name)
            continue
        if site["fn"].support.is_discrete:
            raise ModelError(
                f"latent site {name!r} is discrete ({type(site['fn']).__name__}); bayeskit's continuous "
                "samplers need continuous latent sites: marginalise it out (e.g. a mixture distribution)"
            )
        latent.append(name)
    if not latent:
        raise ModelError("the model has no latent sample sites: nothing to infer")
    try:
        info = initialize_model(key, model, model_args=args, model_kwargs=kwargs)
    except Exception as exc:
        raise ModelError(f"NumPyro could not initialise the model: {exc}") from exc
    return LogDensity(
        model=model,
        args=tuple(args),
        kwargs=dict(kwargs),
        init_params=info.param_info.z,
        latent_sites=tuple(latent),
        observed_sites=tuple(observed),
        _postprocess=info.postprocess_fn,
    )
