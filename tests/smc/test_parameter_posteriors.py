"""Parameter updates of particle Gibbs (NUTS, a user function) and PMMH against the exact posterior of an
AR(1) parameter, by quadrature of the Kalman likelihood (issue: the NUTS update once froze the chain)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayeskit as bk


def _ar1_with_exact_posterior():
    """AR(1) x_t = a x_{t-1} + N(0, 0.5^2), y_t = x_t + N(0, 0.4^2), stationary x_0, a ~ Uniform(-1, 1),
    T = 60: the model, data and the exact posterior mean and sd of ``a`` (quadrature of the Kalman
    likelihood)."""
    import numpyro

    from bayeskit.models import linear_gaussian as lg

    def prior():
        return {"a": numpyro.sample("a", dist.Uniform(-1.0, 1.0))}

    ssm = bk.StateSpaceModel(initial=lambda p: dist.Normal(0.0, 0.5 / jnp.sqrt(1 - p["a"] ** 2)),
                             transition=lambda p, x, t: dist.Normal(p["a"] * x, 0.5),
                             observation=lambda p, x, t: dist.Normal(x, 0.4), vectorized=True, prior=prior)
    _, ys = ssm.simulate(jax.random.key(0), {"a": 0.6}, 60)
    grid = np.linspace(-0.995, 0.995, 1999)

    def loglik(a):
        p = {"A": a * jnp.eye(1), "Q": 0.25 * jnp.eye(1), "H": jnp.eye(1), "R": 0.16 * jnp.eye(1),
             "m0": jnp.zeros(1), "P0": 0.25 / (1 - a**2) * jnp.eye(1)}
        return lg.kalman_filter(p, ys[:, None]).log_likelihood

    lls = np.asarray(jax.vmap(loglik)(jnp.asarray(grid)))
    w = np.exp(lls - lls.max())
    w /= w.sum()
    mean = float(np.sum(w * grid))
    return ssm, ys, mean, float(np.sqrt(np.sum(w * (grid - mean) ** 2)))


def _check_chain_against_exact(draws, mean, sd, burn_in=200, num_batches=20):
    """Mean within 4 batch-means standard errors, sd within +-20% of the exact posterior's."""
    a = np.asarray(draws)[burn_in:]
    a = a[: len(a) // num_batches * num_batches]
    se = a.reshape(num_batches, -1).mean(axis=1).std(ddof=1) / np.sqrt(num_batches)
    assert abs(a.mean() - mean) < 4 * se, (a.mean(), mean, se)
    assert 0.8 < a.std() / sd < 1.2, (a.std(), sd)


@pytest.mark.slow
def test_particle_gibbs_nuts_update_matches_exact_posterior():
    """The NUTS parameter step of particle Gibbs against the exact posterior of ``a``. Before the kernel's
    cached potential energy was refreshed for each new path, the chain stuck at one value (sd 0)."""
    from numpyro.infer import NUTS

    ssm, ys, mean, sd = _ar1_with_exact_posterior()
    res = bk.smc.particle_gibbs(jax.random.key(1), ssm, {"a": 0.0}, ys, num_particles=50, num_iterations=800,
                                parameter_update=NUTS)
    _check_chain_against_exact(res.params["a"], mean, sd)


@pytest.mark.slow
def test_particle_gibbs_user_update_matches_exact_posterior():
    """A user-written parameter step (10 random-walk Metropolis moves on ``a`` given the path) against
    the same exact posterior."""
    ssm, ys, mean, sd = _ar1_with_exact_posterior()

    def log_cond(a, path):
        x = path.reshape(path.shape[0])  # scalar state: (T,)
        inside = jnp.abs(a) < 1
        a_ = jnp.where(inside, a, 0.0)
        lp = (dist.Normal(0.0, 0.5 / jnp.sqrt(1 - a_**2)).log_prob(x[0])
              + dist.Normal(a_ * x[:-1], 0.5).log_prob(x[1:]).sum())
        return jnp.where(inside, lp, -jnp.inf)

    def update(key, theta, path, ys):
        def move(a, k):
            k1, k2 = jax.random.split(k)
            prop = a + 0.15 * jax.random.normal(k1)
            accept = jnp.log(jax.random.uniform(k2)) < log_cond(prop, path) - log_cond(a, path)
            return jnp.where(accept, prop, a), None

        a, _ = jax.lax.scan(move, theta["a"], jax.random.split(key, 10))
        return {"a": a}

    res = bk.smc.particle_gibbs(jax.random.key(2), ssm, {"a": 0.0}, ys, num_particles=50, num_iterations=800,
                                parameter_update=update)
    _check_chain_against_exact(res.params["a"], mean, sd)


@pytest.mark.slow
def test_pmmh_matches_exact_posterior():
    """PMMH on the same AR(1) problem: the pooled chains' mean within 4 batch-means SE of the exact posterior
    mean (batches within each chain) and their sd within +-20% of the exact sd."""
    ssm, ys, mean, sd = _ar1_with_exact_posterior()
    num_chains, num_batches = 4, 5  # 5 batches per chain, 20 in all
    res = bk.smc.pmmh(jax.random.key(3), ssm, ys, num_particles=100, num_iterations=1500, num_warmup=300,
                      num_chains=num_chains, step_size=0.7)
    a = np.asarray(res.samples["a"])  # (chains, iterations), warm-up already dropped
    a = a[:, : a.shape[1] // num_batches * num_batches]
    batch_means = a.reshape(num_chains * num_batches, -1).mean(axis=1)
    se = batch_means.std(ddof=1) / np.sqrt(batch_means.size)
    assert abs(a.mean() - mean) < 4 * se, (a.mean(), mean, se)
    assert 0.8 < a.std() / sd < 1.2, (a.std(), sd)
    assert 0.1 < float(np.mean(res.acceptance_rate)) < 0.9
