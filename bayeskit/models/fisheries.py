r"""Harvested fish-stock models of Boettiger, Mangel & Munch (Proc. R. Soc. B 2015).

Stock :math:`X_t`, harvest :math:`h_t`, escapement :math:`S_t = \max(X_t - h_t, 0)`, and

.. math::

    X_{t+1} = Z_t \, f(S_t \mid \mathbf p), \qquad Z_t \sim \operatorname{LogNormal}(0, \sigma),

with three growth functions (paper eqs. 2.6–2.8):

* Ricker: :math:`f(S) = S \exp(r (1 - S/K))` (no tipping point);
* Allen (Ricker with an Allee threshold :math:`C`): :math:`f(S) = S \exp(r (1 - S/K)(S - C)/K)`;
* Myers: :math:`f(S) = r S^\theta / (1 + S^\theta / K)` (an Allee effect for :math:`\theta > 2`).

The "true" system of the paper is Allen with r = 2, K = 8, C = 5, σ = 0.05 (:data:`TRUE_PARAMS`).
:func:`growth_model` is the NumPyro model of a stock series under one growth function with the
paper's uniform priors (its Tables S1–S3), so the competitors are fitted by NUTS.

Example:
    >>> import jax
    >>> xs = simulate(jax.random.key(0), "allen", TRUE_PARAMS, 0.05, 5.5, 10)
    >>> xs.shape
    (10,)
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from bayeskit.errors import ConfigurationError

__all__ = [
    "ricker",
    "allen",
    "myers",
    "GROWTH_FUNCTIONS",
    "PARAMETER_NAMES",
    "PRIORS",
    "TRUE_PARAMS",
    "TRUE_SIGMA",
    "log_growth",
    "growth",
    "growth_model",
    "step",
    "simulate",
]


def _safe_log(s):
    return jnp.log(jnp.where(s > 0, s, 1.0))


def ricker(escapement, r, K):
    """Ricker growth :math:`S e^{r(1 - S/K)}`."""
    return escapement * jnp.exp(r * (1.0 - escapement / K))


def allen(escapement, r, K, C):
    """Allen growth :math:`S e^{r(1 - S/K)(S - C)/K}` (tipping point at :math:`C`)."""
    return escapement * jnp.exp(r * (1.0 - escapement / K) * (escapement - C) / K)


def myers(escapement, r, theta, K):
    """Myers growth :math:`r S^\\theta / (1 + S^\\theta/K)`."""
    s = jnp.maximum(escapement, 0.0)
    return jnp.where(s > 0, jnp.exp(log_growth("myers", s, {"r": r, "theta": theta, "K": K})), 0.0)


GROWTH_FUNCTIONS = {"ricker": ricker, "allen": allen, "myers": myers}
PARAMETER_NAMES = {"ricker": ("r", "K"), "allen": ("r", "K", "C"), "myers": ("r", "theta", "K")}

#: Uniform priors of the paper's JAGS fits (supplement Tables S1–S3); ``sigma`` is the log-normal scale.
PRIORS = {
    "ricker": {"r": (0.01, 20.0), "K": (0.01, 40.0), "sigma": (1e-6, 100.0)},
    "allen": {"r": (0.01, 6.0), "K": (0.01, 20.0), "C": (0.01, 20.0), "sigma": (1e-6, 100.0)},
    "myers": {"r": (1e-4, 10.0), "theta": (1e-4, 10.0), "K": (1e-4, 40.0), "sigma": (1e-6, 100.0)},
}

TRUE_PARAMS = {"r": 2.0, "K": 8.0, "C": 5.0}
TRUE_SIGMA = 0.05


def _check_name(name):
    if name not in GROWTH_FUNCTIONS:
        raise ConfigurationError(f"`growth` must be one of {sorted(GROWTH_FUNCTIONS)}, got {name!r}")
    return name


def log_growth(name: str, escapement, params: Mapping):
    """:math:`\\log f(S)` for ``S > 0``, computed stably (Myers via softplus)."""
    _check_name(name)
    log_s = _safe_log(escapement)
    p = params
    if name == "ricker":
        return log_s + p["r"] * (1.0 - escapement / p["K"])
    if name == "allen":
        return log_s + p["r"] * (1.0 - escapement / p["K"]) * (escapement - p["C"]) / p["K"]
    u = p["theta"] * log_s
    return jnp.log(p["r"]) + u - jax.nn.softplus(u - jnp.log(p["K"]))


def growth(name: str, escapement, params: Mapping):
    """Expected next stock :math:`f(S)` (0 at S <= 0); ``params`` broadcast against ``escapement``."""
    s = jnp.asarray(escapement)
    return jnp.where(s > 0, jnp.exp(log_growth(name, s, params)), 0.0)


_expected_growth = growth


def growth_model(series, *, growth: str = "allen", priors: Mapping | None = None):
    """NumPyro model :math:`x_{t+1} \\sim \\operatorname{LogNormal}(\\log f(x_t), \\sigma)` of a positive
    stock series (unharvested), uniform priors from :data:`PRIORS` (or ``priors``: name -> (low, high)).

    The per-transition log-likelihood is the observed site ``"x"`` (shape ``(T - 1,)``), so
    ``numpyro.infer.log_likelihood`` gives the matrix WAIC/LOO need.
    """
    _check_name(growth)
    bounds = dict(PRIORS[growth] if priors is None else priors)
    series = jnp.asarray(series)
    params = {k: numpyro.sample(k, dist.Uniform(*bounds[k])) for k in PARAMETER_NAMES[growth]}
    sigma = numpyro.sample("sigma", dist.Uniform(*bounds["sigma"]))
    loc = log_growth(growth, series[:-1], params)
    numpyro.sample("x", dist.LogNormal(loc, sigma), obs=series[1:])


def step(key, stock, harvest, growth: str, params: Mapping, sigma):
    """One transition :math:`X' = Z f(\\max(X - h, 0))`, :math:`Z \\sim \\operatorname{LogNormal}(0, \\sigma)`."""
    z = jnp.exp(sigma * jax.random.normal(key, jnp.shape(stock)))
    return z * _expected_growth(growth, jnp.maximum(stock - harvest, 0.0), params)


def simulate(key, growth: str, params: Mapping, sigma, initial_stock, num_steps: int, harvest=0.0):
    """Simulate ``num_steps`` stock values from ``initial_stock`` under a constant ``harvest``."""
    _check_name(growth)

    def body(x, k):
        x_next = step(k, x, harvest, growth, params, sigma)
        return x_next, x

    x0 = jnp.asarray(initial_stock, dtype=jnp.result_type(float))
    _, xs = jax.lax.scan(body, x0, jax.random.split(key, num_steps))
    return xs
