r"""Stochastic-volatility model (a standard nonlinear benchmark for particle methods).

.. math::
    X_0 \sim \mathcal N\!\left(\mu, \frac{\sigma^2}{1 - \phi^2}\right), \quad
    X_t = \mu + \phi (X_{t-1} - \mu) + \sigma \varepsilon_t, \quad
    Y_t \mid X_t \sim \mathcal N(0, e^{X_t}).

Parameters: a dict ``{"mu", "phi", "sigma"}`` with ``|phi| < 1`` and ``sigma > 0``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from bayeskit.model.ssm import StateSpaceModel

__all__ = ["ssm", "example_params", "prior"]


def _initial(p):
    return dist.Normal(p["mu"], p["sigma"] / jnp.sqrt(1.0 - p["phi"] ** 2))


def _transition(p, x_prev, t):
    return dist.Normal(p["mu"] + p["phi"] * (x_prev - p["mu"]), p["sigma"])


def _observation(p, x, t):
    return dist.Normal(0.0, jnp.exp(0.5 * x))


def prior():
    """A weakly informative prior for ``to_numpyro``: mu ~ N(0, 2), phi ~ U(-1, 1), sigma ~ HalfNormal(1)."""
    return {
        "mu": numpyro.sample("mu", dist.Normal(0.0, 2.0)),
        "phi": numpyro.sample("phi", dist.Uniform(-1.0, 1.0)),
        "sigma": numpyro.sample("sigma", dist.HalfNormal(1.0)),
    }


#: The stochastic-volatility model (vectorized StateSpaceModel with scalar states).
ssm = StateSpaceModel(_initial, _transition, _observation, vectorized=True, prior=prior)


def example_params() -> dict:
    """Parameters typical of daily returns: mu = -1, phi = 0.95, sigma = 0.3."""
    return {"mu": jnp.asarray(-1.0), "phi": jnp.asarray(0.95), "sigma": jnp.asarray(0.3)}
