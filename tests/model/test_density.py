import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

import bayeskit as bk
from bayeskit.errors import ModelError


def model(y):
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    mu = numpyro.sample("mu", dist.Normal(1.0, 3.0))
    numpyro.deterministic("double", 2 * mu)
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


Y = jnp.array([0.3, -1.2, 2.5, 0.7])


def test_prior_likelihood_split_matches_scipy():
    d = bk.model.log_density(model, Y)
    assert d.latent_sites == ("s", "mu") and d.observed_sites == ("y",)
    z = {"s": jnp.asarray(0.4), "mu": jnp.asarray(-0.3)}
    s, mu = np.exp(0.4), -0.3  # HalfNormal support is positive: T = exp, log|J| = z
    prior = stats.halfnorm(scale=2.0).logpdf(s) + 0.4 + stats.norm(1.0, 3.0).logpdf(mu)
    lik = stats.norm(mu, s).logpdf(np.asarray(Y)).sum()
    np.testing.assert_allclose(d.log_prior(z), prior, rtol=1e-10)
    np.testing.assert_allclose(d.log_likelihood(z), lik, rtol=1e-10)
    np.testing.assert_allclose(d.log_joint(z), prior + lik, rtol=1e-10)
    c = d.constrain(z)
    np.testing.assert_allclose(c["double"], -0.6)
    np.testing.assert_allclose(d.unconstrain({"s": s, "mu": mu})["s"], 0.4, rtol=1e-10)


def test_flatten_jit_vmap_and_prior_samples():
    d = bk.model.log_density(model, Y)
    assert d.dim == 2
    zs = d.sample_prior(jax.random.key(0), 2000)
    assert zs["s"].shape == (2000,)
    # prior samples of s are HalfNormal(2): E[s] = 2 sqrt(2/pi)
    s = np.exp(np.asarray(zs["s"]))
    assert abs(s.mean() - 2 * np.sqrt(2 / np.pi)) < 4 * s.std() / np.sqrt(2000)
    v = jax.vmap(d.flatten)(zs)
    lj = jax.jit(jax.vmap(lambda x: d.log_joint(d.unflatten(x))))(v)
    assert lj.shape == (2000,) and np.all(np.isfinite(lj))


def test_rejects_discrete_and_empty_models():
    def disc():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ModelError, match="discrete"):
        bk.model.log_density(disc)

    def empty(y):
        numpyro.sample("y", dist.Normal(0, 1), obs=y)

    with pytest.raises(ModelError, match="no latent"):
        bk.model.log_density(empty, 1.0)
