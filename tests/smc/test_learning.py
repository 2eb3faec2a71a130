"""bk.smc.fit: stochastic-gradient MLE on PaRIS / PPG scores converges to the exact Kalman MLE; MSC runs."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
import scipy.optimize as so
from numpyro.distributions import constraints

import bayeskit as bk
from bayeskit.errors import ConfigurationError
from bayeskit.models import linear_gaussian as lg

AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)
TRUE = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
FIXED = {"sigma_x": 1.0, "sigma_y": 0.5}


def lg_params(p):
    return {"A": jnp.reshape(p["rho"], (1, 1)), "Q": jnp.reshape(p["sigma_x"] ** 2, (1, 1)), "H": jnp.ones((1, 1)),
            "R": jnp.reshape(p["sigma_y"] ** 2, (1, 1)), "m0": jnp.zeros(1), "P0": jnp.ones((1, 1))}


@pytest.fixture(scope="module")
def problem():
    _, ys = AR.simulate(jax.random.key(0), TRUE, 100)

    @jax.jit
    def loglik(rho):
        return lg.kalman_filter(lg_params({**TRUE, "rho": rho}), ys[:, None]).log_likelihood

    mle = so.minimize(lambda r: -float(loglik(jnp.asarray(r[0]))), [0.5], method="Nelder-Mead",
                      options={"xatol": 1e-10, "fatol": 1e-12}).x[0]
    se = 1.0 / np.sqrt(-float(jax.hessian(loglik)(jnp.asarray(mle))))
    return ys, mle, se


def _fit(ys, estimator, iterations=300):
    schedule = optax.exponential_decay(0.05, iterations, 0.1)
    return bk.smc.fit(jax.random.key(1), AR, {"rho": 0.3}, ys, fixed_params=FIXED, estimator=estimator,
                      num_iterations=iterations, num_particles=30, optimizer=optax.adam(schedule),
                      constraints={"rho": constraints.interval(-1.0, 1.0)})


def test_fit_ppg_converges_to_kalman_mle(problem):
    """Polyak average of the last 100 PPG-driven iterates within half a standard error of the exact MLE
    (the optimisation + Monte Carlo error is small next to the estimator's statistical error)."""
    ys, mle, se = problem
    res = _fit(ys, "ppg")
    est = float(res.history["rho"][-100:].mean())
    assert abs(est - mle) < 0.5 * se, (est, mle, se)
    assert res.history["rho"].shape == (300,) and res.final_path.shape == (100,)
    tree = res.to_arviz()
    assert tree["learning"]["rho"].shape == (300,)


@pytest.mark.slow
def test_fit_paris_converges_to_kalman_mle(problem):
    ys, mle, se = problem
    res = _fit(ys, "paris")
    est = float(res.history["rho"][-100:].mean())
    assert abs(est - mle) < 0.5 * se, (est, mle, se)
    assert np.all(np.isfinite(res.log_evidence))


@pytest.mark.slow
def test_msc_runs_and_moves_towards_the_posterior(problem):
    """Markov score climbing of q_lam(x_t | x_{t-1}, y_t) = N(a x_{t-1} + b y_t, s): the inclusive-KL gradient
    from a PPG chain moves b (weight of y_t) up from 0 (the posterior mean depends on y_t)."""
    ys, _, _ = problem
    q = bk.smc.Proposal(initial=lambda lam, y0: dist.Normal(lam["b"] * y0, lam["s"]),
                        transition=lambda lam, xp, y, t: dist.Normal(lam["a"] * xp + lam["b"] * y, lam["s"]))
    res = bk.smc.fit(jax.random.key(2), AR, {"a": 0.0, "b": 0.0, "s": 1.0}, ys, method="msc", variational=q,
                     fixed_params={k: jnp.asarray(v) for k, v in {**FIXED, "rho": 0.8}.items()},
                     constraints={"s": constraints.positive}, num_iterations=60, num_particles=20,
                     optimizer=optax.adam(0.05))
    assert float(res.params["b"]) > 0.3
    assert float(res.params["s"]) < 1.0


def test_bad_inputs(problem):
    ys, _, _ = problem
    with pytest.raises(ConfigurationError, match="method"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, method="em")
    with pytest.raises(ConfigurationError, match="variational"):
        bk.smc.fit(jax.random.key(0), AR, {"a": 0.3}, ys, fixed_params={**FIXED, "rho": 0.8}, method="msc")
    with pytest.raises(ConfigurationError, match="init_params"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 1.5}, ys, fixed_params=FIXED,
                   constraints={"rho": constraints.interval(-1.0, 1.0)})
    with pytest.raises(ConfigurationError, match="optimizer"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, optimizer="adam")
    with pytest.raises(ConfigurationError, match="num_particles"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, num_particles=1)
