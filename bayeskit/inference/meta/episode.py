r"""Episode models: the likelihood :math:`p(D_i \mid \theta_i)` of one few-shot episode.

NIW-Meta places its hierarchical prior on a *flat* parameter vector :math:`\theta \in \mathbb{R}^d`
(the episode parameters). An :class:`EpisodeModel` says how such a vector scores an episode's data
``(x, y)``, and how it predicts. Three ways to build one:

* :meth:`EpisodeModel.from_network` – a plain-JAX function ``apply(params, x)`` (any pytree of
  parameters, or an equinox module) with a likelihood head (``"normal"`` with a fixed noise scale,
  ``"categorical"`` on logits, or your own ``head(outputs, y) -> pointwise log-likelihood``);
* :meth:`EpisodeModel.from_numpyro` – a NumPyro model of one episode ``model(x, y=None)``; its
  latent sites, in NumPyro's unconstrained space, form :math:`\theta` (their own priors are *replaced*
  by the hierarchical prior :math:`\theta \sim \mathcal N(\mu, \Sigma)`; only their supports are used);
* the constructor directly, from ``pointwise_log_likelihood(theta, x, y) -> (N,)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bayeskit.errors import ConfigurationError, ModelError

__all__ = ["EpisodeModel"]


def _normal_head(noise_scale: float):
    def head(outputs, y):
        outputs = jnp.reshape(outputs, jnp.shape(y))
        return jax.scipy.stats.norm.logpdf(y, outputs, noise_scale).reshape(y.shape[0], -1).sum(-1)

    return head


def _categorical_head(outputs, y):
    logp = jax.nn.log_softmax(outputs, axis=-1)
    return jnp.take_along_axis(logp, y.astype(jnp.int32)[..., None], axis=-1)[..., 0]


@dataclass(frozen=True)
class EpisodeModel:
    """Likelihood and predictions of one episode as functions of a flat parameter vector.

    Attributes:
        pointwise_log_likelihood: ``(theta (d,), x (N, ...), y (N, ...)) -> (N,)`` log p(y_n | x_n, theta).
        dim: ``d``, the length of ``theta``.
        predict_fn: ``(theta, x (Q, ...)) -> outputs (Q, ...)``: the regression mean or class
            probabilities the Monte Carlo predictive averages.
        sample_fn: ``(key, theta, x) -> y`` draws from ``p(y | x, theta)`` (for predictive intervals).
        init_theta: a default starting point for the global mean (e.g. a network's initialisation).
        unflatten: ``theta -> params`` (the user's pytree / constrained NumPyro sites).
        noise_scale: the fixed observation noise of a ``"normal"`` head, else ``None``.
    """

    pointwise_log_likelihood: Callable
    dim: int
    predict_fn: Callable | None = None
    sample_fn: Callable | None = None
    init_theta: Any = None
    unflatten: Callable | None = None
    noise_scale: float | None = None

    def __post_init__(self):
        if not callable(self.pointwise_log_likelihood):
            raise ConfigurationError("`pointwise_log_likelihood` must be callable (theta, x, y) -> (N,)")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigurationError(f"`dim` must be a positive integer, got {self.dim!r}")
        if self.init_theta is None:
            object.__setattr__(self, "init_theta", jnp.zeros(self.dim))
        elif jnp.shape(self.init_theta) != (self.dim,):
            raise ConfigurationError(f"`init_theta` must have shape ({self.dim},), got {jnp.shape(self.init_theta)}")

    def log_likelihood(self, theta, x, y) -> jax.Array:
        """``log p(D | theta) = sum_n log p(y_n | x_n, theta)`` for one episode."""
        return jnp.sum(self.pointwise_log_likelihood(theta, x, y))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_network(cls, apply_fn: Callable, params: Any, *, likelihood: str | Callable = "normal",
                     noise_scale: float = 0.1) -> "EpisodeModel":
        """Episode model of a network ``apply_fn(params, x) -> outputs`` with a likelihood head.

        Args:
            apply_fn: ``(params, x (N, ...)) -> outputs (N, ...)``. For an equinox module pass the module
                as ``params`` and ``apply_fn(module, x)``; its inexact arrays become ``theta``.
            params: initial parameters (any pytree); flattened with ``jax.flatten_util.ravel_pytree``,
                their values give :attr:`init_theta`.
            likelihood: ``"normal"`` (``y ~ N(outputs, noise_scale^2)``), ``"categorical"``
                (``y ~ Categorical(logits=outputs)``, integer labels), or a callable
                ``(outputs, y) -> (N,)`` pointwise log-likelihood.
            noise_scale: observation standard deviation of the ``"normal"`` head.
        """
        static = None
        try:  # equinox modules: split arrays from static structure
            import equinox as eqx

            if isinstance(params, eqx.Module):
                arrays, static = eqx.partition(params, eqx.is_inexact_array)
                params = arrays
        except ImportError:  # pragma: no cover
            pass
        flat, unravel = ravel_pytree(params)
        if flat.size == 0:
            raise ModelError("`params` holds no floating-point arrays: nothing to meta-learn")

        def rebuild(theta):
            p = unravel(theta)
            if static is not None:
                import equinox as eqx

                p = eqx.combine(p, static)
            return p

        def outputs(theta, x):
            return apply_fn(rebuild(theta), x)

        if likelihood == "normal":
            if not noise_scale > 0:
                raise ConfigurationError(f"`noise_scale` must be positive, got {noise_scale}")
            head = _normal_head(float(noise_scale))
            predict = outputs

            def sample(key, theta, x):
                mean = outputs(theta, x)
                return mean + noise_scale * jax.random.normal(key, jnp.shape(mean), jnp.result_type(mean))

            scale = float(noise_scale)
        elif likelihood == "categorical":
            head = _categorical_head

            def predict(theta, x):
                return jax.nn.softmax(outputs(theta, x), axis=-1)

            def sample(key, theta, x):
                return jax.random.categorical(key, outputs(theta, x), axis=-1)

            scale = None
        elif callable(likelihood):
            head, predict, sample, scale = likelihood, outputs, None, None
        else:
            raise ConfigurationError(
                f"`likelihood` must be 'normal', 'categorical' or a callable (outputs, y) -> (N,), got {likelihood!r}")

        def pointwise(theta, x, y):
            return head(outputs(theta, x), y)

        return cls(pointwise_log_likelihood=pointwise, dim=int(flat.size), predict_fn=predict, sample_fn=sample,
                   init_theta=flat, unflatten=rebuild, noise_scale=scale)

    @classmethod
    def from_numpyro(cls, model: Callable, example_x: Any, example_y: Any, *,
                     observed_site: str = "y") -> "EpisodeModel":
        """Episode model from a NumPyro model of one episode, called as ``model(x, y=y)``.

        ``theta`` is the flat vector of the model's latent sites in NumPyro's unconstrained space
        (built with :func:`bayeskit.model.log_density`). The latent sites' own prior densities are not
        used: NIW-Meta replaces them by the learned hierarchical prior. ``observed_site`` names the
        site whose ``log_prob`` gives the pointwise likelihood (its leading axis indexes data points).
        """
        from numpyro import handlers
        from numpyro.infer.util import constrain_fn

        from bayeskit.model.density import log_density

        density = log_density(model, example_x, y=example_y)
        if observed_site not in density.observed_sites:
            raise ModelError(f"`observed_site` {observed_site!r} is not an observed site of the model "
                             f"(observed: {list(density.observed_sites)})")

        def constrained(theta, x):
            z = density.unflatten(theta)
            return constrain_fn(handlers.seed(model, rng_seed=0), (x,), {"y": None}, z)

        def site_fn(theta, x, y):
            params = constrained(theta, x)
            tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=params)).get_trace(x, y=y)
            return tr[observed_site]["fn"]

        def pointwise(theta, x, y):
            lp = site_fn(theta, x, y).log_prob(y)
            return jnp.reshape(lp, (jnp.shape(y)[0], -1)).sum(-1)

        def predict(theta, x):
            fn = site_fn(theta, x, None)
            return fn.probs if fn.support.is_discrete and hasattr(fn, "probs") else fn.mean

        def sample(key, theta, x):
            return site_fn(theta, x, None).sample(key)

        unflatten = lambda theta: density.constrain(density.unflatten(theta), deterministic=False)  # noqa: E731
        return cls(pointwise_log_likelihood=pointwise, dim=density.dim, predict_fn=predict, sample_fn=sample,
                   init_theta=density.flatten(density.init_params), unflatten=unflatten)

    def replace(self, **changes) -> "EpisodeModel":
        return dataclasses.replace(self, **changes)
