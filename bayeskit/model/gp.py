r"""Gaussian-process priors for one-dimensional unknown dynamics (used by :mod:`bayeskit.inference.gpdp`).

A GP prior :math:`f \sim \mathcal{GP}(m, k_\theta)` on the one-step map :math:`x_{t+1} = f(S_t) +
\varepsilon_t`, :math:`\varepsilon_t \sim N(0, \sigma_n^2)`, conditioned on pairs
:math:`(S_i, y_i)` gives the predictive (Rasmussen & Williams 2006, eqs. 2.25–2.26)

.. math::

    E[f(s)] = m(s) + k(s, S) (K + \Sigma)^{-1} (y - m(S)), \qquad
    \operatorname{Var}[f(s)] = k(s, s) - k(s, S) (K + \Sigma)^{-1} k(S, s),

with :math:`K = k(S, S)` and :math:`\Sigma = \operatorname{diag}(\sigma_i^2)` the per-point noise
variances (the observation noise :math:`\sigma_n^2` for data, a small or equal variance for
pseudo-observations such as :math:`f(0) = 0`). The log marginal likelihood is
:math:`\log N(y; m(S), K + \Sigma)`. Boettiger, Mangel & Munch (Proc. R. Soc. B 2015) use the
squared-exponential kernel with unit amplitude, a zero prior mean, Gamma priors on the length-scale
and on :math:`\sigma_n`; those are the defaults here, every piece is replaceable.

Kernels are plain functions ``kernel(x1, x2, **hyperparameters) -> (n1, n2)`` covariance matrix.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

__all__ = [
    "squared_exponential",
    "matern32",
    "matern52",
    "KERNELS",
    "GPData",
    "make_gp_data",
    "default_priors",
    "noise_variances",
    "log_evidence",
    "predict",
    "predict_draws",
    "gp_regression_model",
]

Kernel = Callable[..., jax.Array]


def _sqdist(x1, x2):
    x1 = jnp.asarray(x1)[:, None]
    x2 = jnp.asarray(x2)[None, :]
    return (x1 - x2) ** 2


def squared_exponential(x1, x2, lengthscale, amplitude=1.0):
    r"""Squared-exponential kernel :math:`k(x, x') = a^2 \exp(-(x - x')^2 / (2 \ell^2))`.

    Example:
        >>> import jax.numpy as jnp
        >>> squared_exponential(jnp.array([0.0, 1.0]), jnp.array([0.0]), lengthscale=1.0).shape
        (2, 1)
    """
    return amplitude**2 * jnp.exp(-0.5 * _sqdist(x1, x2) / lengthscale**2)


def matern32(x1, x2, lengthscale, amplitude=1.0):
    r"""Matérn-3/2 kernel :math:`a^2 (1 + \sqrt3 r/\ell) \exp(-\sqrt3 r/\ell)`, :math:`r = |x - x'|`."""
    r = jnp.sqrt(_sqdist(x1, x2) + 1e-30) * jnp.sqrt(3.0) / lengthscale
    return amplitude**2 * (1.0 + r) * jnp.exp(-r)


def matern52(x1, x2, lengthscale, amplitude=1.0):
    r"""Matérn-5/2 kernel :math:`a^2 (1 + \sqrt5 r/\ell + 5 r^2 / (3 \ell^2)) \exp(-\sqrt5 r/\ell)`."""
    d2 = _sqdist(x1, x2)
    r = jnp.sqrt(d2 + 1e-30) * jnp.sqrt(5.0) / lengthscale
    return amplitude**2 * (1.0 + r + 5.0 * d2 / (3.0 * lengthscale**2)) * jnp.exp(-r)


KERNELS: dict[str, Kernel] = {
    "squared_exponential": squared_exponential,
    "matern32": matern32,
    "matern52": matern52,
}


class GPData(NamedTuple):
    """Training inputs of a GP regression, observations and pseudo-observations stacked.

    Fields:
        inputs: (n,) states after the action, :math:`S_i`.
        targets: (n,) next states :math:`y_i`.
        is_pseudo: (n,) bool, True for pseudo-observations (e.g. the point f(0) = 0).
        pseudo_noise: scalar standard deviation of the pseudo-observations, or NaN to use the
            observation noise :math:`\\sigma_n` for them too (the paper's choice: its (0, 0) point is
            simply one more training pair).
    """

    inputs: jax.Array
    targets: jax.Array
    is_pseudo: jax.Array
    pseudo_noise: jax.Array


def make_gp_data(inputs, targets, pseudo_inputs=(), pseudo_targets=(), pseudo_noise=None) -> GPData:
    """Stack observations and pseudo-observations into a :class:`GPData` (no validation here)."""
    inputs = jnp.asarray(inputs)
    dtype = inputs.dtype if jnp.issubdtype(inputs.dtype, jnp.floating) else jnp.result_type(float)
    x = jnp.concatenate([jnp.asarray(pseudo_inputs, dtype).reshape(-1), inputs.astype(dtype)])
    y = jnp.concatenate([jnp.asarray(pseudo_targets, dtype).reshape(-1), jnp.asarray(targets, dtype)])
    mask = jnp.arange(x.shape[0]) < jnp.asarray(pseudo_inputs).size
    pn = jnp.asarray(jnp.nan if pseudo_noise is None else pseudo_noise, dtype)
    return GPData(x, y, mask, pn)


def default_priors() -> dict:
    """Priors of Boettiger et al. (2015, code ``gp_mcmc``): length-scale ~ Gamma(10, scale 10),
    noise standard deviation ~ Gamma(5, rate 5), amplitude fixed to 1."""
    return {
        "lengthscale": dist.Gamma(10.0, 0.1),
        "noise": dist.Gamma(5.0, 5.0),
        "amplitude": 1.0,
    }


def noise_variances(data: GPData, noise) -> jax.Array:
    """Per-point noise variances: ``noise**2`` for data, ``pseudo_noise**2`` for pseudo-points."""
    obs_var = jnp.broadcast_to(jnp.asarray(noise) ** 2, data.inputs.shape)
    pseudo_var = jnp.where(jnp.isnan(data.pseudo_noise), noise**2, data.pseudo_noise**2)
    return jnp.where(data.is_pseudo, pseudo_var, obs_var)


def _kernel_params(hyperparameters: Mapping) -> dict:
    return {k: v for k, v in hyperparameters.items() if k != "noise"}


def _mean(mean_fn, x):
    return jnp.zeros_like(x) if mean_fn is None else mean_fn(x)


def log_evidence(data: GPData, hyperparameters: Mapping, *, kernel: Kernel = squared_exponential,
                 mean_fn=None, jitter: float = 1e-6) -> jax.Array:
    r"""Log evidence (log marginal likelihood) :math:`\log N(y; m(S), K_\theta + \Sigma)` (``hyperparameters``
    holds ``noise`` and the kernel's keyword arguments); ``log_marginal_likelihood`` before this release."""
    cov = kernel(data.inputs, data.inputs, **_kernel_params(hyperparameters))
    cov = cov + jnp.diag(noise_variances(data, hyperparameters["noise"]) + jitter)
    resid = data.targets - _mean(mean_fn, data.inputs)
    return dist.MultivariateNormal(jnp.zeros_like(resid), covariance_matrix=cov).log_prob(resid)


def predict(data: GPData, hyperparameters: Mapping, test_inputs, *, kernel: Kernel = squared_exponential,
            mean_fn=None, jitter: float = 1e-6):
    r"""Predictive mean and *latent* variance of :math:`f` at ``test_inputs`` for one hyperparameter set.

    Returns ``(mean, variance)`` of shape ``test_inputs.shape``; the variance excludes the observation
    noise (the paper's transition matrices use the latent variance).
    """
    test_inputs = jnp.asarray(test_inputs)
    flat = test_inputs.reshape(-1)
    params = _kernel_params(hyperparameters)
    cov = kernel(data.inputs, data.inputs, **params)
    cov = cov + jnp.diag(noise_variances(data, hyperparameters["noise"]) + jitter)
    chol = jnp.linalg.cholesky(cov)
    resid = data.targets - _mean(mean_fn, data.inputs)
    alpha = jax.scipy.linalg.cho_solve((chol, True), resid)
    k_star = kernel(data.inputs, flat, **params)  # (n, m)
    mean = _mean(mean_fn, flat) + k_star.T @ alpha
    v = jax.scipy.linalg.solve_triangular(chol, k_star, lower=True)
    prior_var = jax.vmap(lambda s: kernel(s[None], s[None], **params)[0, 0])(flat)
    var = jnp.maximum(prior_var - jnp.sum(v**2, axis=0), 0.0)
    return mean.reshape(test_inputs.shape), var.reshape(test_inputs.shape)


def predict_draws(data: GPData, draws: Mapping, test_inputs, *, kernel: Kernel = squared_exponential,
                  mean_fn=None, jitter: float = 1e-6):
    """:func:`predict` vectorised over hyperparameter draws: ``draws`` maps names to (num_draws,)
    arrays (fixed hyperparameters may be scalars). Returns (num_draws, *test_shape) mean and variance."""
    draws = {k: jnp.asarray(v) for k, v in draws.items()}
    batched = {k: v for k, v in draws.items() if v.ndim >= 1}
    fixed = {k: v for k, v in draws.items() if v.ndim == 0}

    def one(b):
        return predict(data, {**fixed, **b}, test_inputs, kernel=kernel, mean_fn=mean_fn, jitter=jitter)

    return jax.vmap(one)(batched)


def gp_regression_model(data: GPData, *, kernel: Kernel = squared_exponential, priors: Mapping | None = None,
                        mean_fn=None, jitter: float = 1e-6):
    """NumPyro model of GP regression with hyperparameter priors (a distribution or a fixed number
    for each of ``noise`` and the kernel's keyword arguments); the function values are marginalised."""
    priors = dict(default_priors() if priors is None else priors)
    hyper = {}
    for name, prior in priors.items():
        if isinstance(prior, dist.Distribution):
            hyper[name] = numpyro.sample(name, prior)
        else:
            hyper[name] = jnp.asarray(prior, dtype=data.inputs.dtype)
    cov = kernel(data.inputs, data.inputs, **_kernel_params(hyper))
    cov = cov + jnp.diag(noise_variances(data, hyper["noise"]) + jitter)
    loc = _mean(mean_fn, data.inputs)
    numpyro.sample("y", dist.MultivariateNormal(loc, covariance_matrix=cov), obs=data.targets)


def log_marginal_likelihood(*args, **kwargs) -> jax.Array:
    """Deprecated name of :func:`log_evidence` (glossary: ``log_evidence`` everywhere); removed in the next
    release.

    Args:
        *args: as :func:`log_evidence`.
        **kwargs: as :func:`log_evidence`.
    """
    import warnings

    warnings.warn("bayeskit.model.gp.log_marginal_likelihood is renamed log_evidence; the old name will be removed "
                  "in the next release", FutureWarning, stacklevel=2)
    return log_evidence(*args, **kwargs)
