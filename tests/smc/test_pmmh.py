"""PMMH against the exact posterior of a linear-Gaussian model (Kalman likelihood + quadrature)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc import pmmh
from bayeskit.models import linear_gaussian as lg

SIGMA_Y = 1.0


def prior():
    return {"rho": numpyro.sample("rho", dist.Uniform(-1.0, 1.0))}


ssm = bk.StateSpaceModel(
    initial=lambda p: dist.Normal(0.0, 1.0),
    transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
    observation=lambda p, x, t: dist.Normal(x, SIGMA_Y),
    vectorized=True,
    prior=prior,
)


def exact_posterior_mean(ys):
    grid = np.linspace(-0.999, 0.999, 2001)

    def ll(rho):
        p = {"A": rho * jnp.eye(1), "Q": jnp.eye(1), "H": jnp.eye(1), "R": SIGMA_Y**2 * jnp.eye(1),
             "m0": jnp.zeros(1), "P0": jnp.eye(1)}
        return lg.kalman_filter(p, ys[:, None]).log_likelihood

    lls = np.asarray(jax.vmap(ll)(jnp.asarray(grid)))
    w = np.exp(lls - lls.max())
    return float(np.sum(w * grid) / np.sum(w))


def test_pmmh_chain_means_match_exact_posterior():
    _, ys = ssm.simulate(jax.random.key(0), {"rho": 0.7}, 50)
    exact = exact_posterior_mean(ys)
    res = pmmh(jax.random.key(1), ssm, ys, num_particles=100, num_iterations=300, num_warmup=100,
               num_chains=32, step_size=0.5)
    chain_means = res.samples["rho"].mean(axis=1)
    se = chain_means.std(ddof=1) / np.sqrt(len(chain_means))
    assert abs(chain_means.mean() - exact) < 4 * se, (chain_means.mean(), exact, se)
    assert 0.05 < res.acceptance_rate.mean() < 0.9
    tree = res.to_arviz()
    assert tree["posterior"]["rho"].sizes["chain"] == 32


def test_pmmh_bad_input():
    _, ys = ssm.simulate(jax.random.key(0), {"rho": 0.7}, 10)
    no_prior = bk.StateSpaceModel(ssm.initial, ssm.transition, ssm.observation, vectorized=True)
    with pytest.raises(ModelError, match="prior"):
        pmmh(jax.random.key(0), no_prior, ys)
    with pytest.raises(ConfigurationError, match="step_size"):
        pmmh(jax.random.key(0), ssm, ys, step_size=-1.0)
    with pytest.raises(ConfigurationError, match="num_chains"):
        pmmh(jax.random.key(0), ssm, ys, num_chains=0)
