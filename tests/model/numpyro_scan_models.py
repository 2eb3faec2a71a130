"""NumPyro ``scan`` models of every supported shape, shared by the from_numpyro tests."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.control_flow import scan

T = 12


def local_level(y):
    """Scalar state, one observed site, observations through xs."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 2.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, sigma))
        numpyro.sample("y", dist.Normal(x, tau), obs=y_t)
        return x, None

    scan(step, x0, y)


def linear_gaussian(y):
    """2-D vector state (MultivariateNormal), 2-D observation; a vector global site."""
    rho = numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    scales = numpyro.sample("scales", dist.HalfNormal(jnp.ones(2)).to_event(1))
    A = rho * jnp.eye(2) + 0.1 * jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    x0 = numpyro.sample("x0", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.MultivariateNormal(A @ x_prev, jnp.diag(scales ** 2)))
        numpyro.sample("y", dist.MultivariateNormal(jnp.array([[1.0, 0.5], [0.0, 1.0]]) @ x, 0.25 * jnp.eye(2)),
                       obs=y_t)
        return x, None

    scan(step, x0, y)


def local_trend(y):
    """Tuple carry (level, trend)."""
    s_level = numpyro.sample("s_level", dist.HalfNormal(1.0))
    s_trend = numpyro.sample("s_trend", dist.HalfNormal(0.5))
    level0 = numpyro.sample("level0", dist.Normal(0.0, 2.0))
    trend0 = numpyro.sample("trend0", dist.Normal(0.0, 1.0))

    def step(carry, y_t):
        level_prev, trend_prev = carry
        level = numpyro.sample("level", dist.Normal(level_prev + trend_prev, s_level))
        trend = numpyro.sample("trend", dist.Normal(trend_prev, s_trend))
        numpyro.sample("y", dist.Normal(level, 0.5), obs=y_t)
        return (level, trend), None

    scan(step, (level0, trend0), y)


def dict_plate_covariates(y, counts, u):
    """Dict carry, a plate over the state dims, two observed sites per step, a covariate through xs."""
    rho = numpyro.sample("rho", dist.Uniform(-1.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    with numpyro.plate("dim", 3):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))
    v0 = numpyro.sample("v0", dist.Normal(0.0, 1.0))

    def step(carry, inputs):
        y_t, c_t, u_t = inputs
        with numpyro.plate("dim", 3):
            z = numpyro.sample("z", dist.Normal(rho * carry["z"], 0.7))
        v = numpyro.sample("v", dist.Normal(0.8 * carry["v"] + beta * u_t, 0.3))
        numpyro.sample("y", dist.Normal(jnp.sum(z), 1.0), obs=y_t)
        numpyro.sample("c", dist.Poisson(jnp.exp(0.5 * v)), obs=c_t)
        return {"z": z, "v": v}, None

    scan(step, {"z": z0, "v": v0}, (y, counts, u))


def observed_start_conditioned(y):
    """An observation of the initial state before the scan; body observations set by ``condition``
    around the scan (NumPyro's ar2 example style), the body scanning over time indices."""
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))
    numpyro.sample("y0", dist.Normal(x0, 0.5), obs=y[0])

    def step(x_prev, t):
        x = numpyro.sample("x", dist.Normal(phi * x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x, 0.5))
        return x, None

    with handlers.condition(data={"y": y[1:]}):
        scan(step, x0, jnp.arange(1, y.shape[0]))


def stochastic_volatility(returns):
    """NumPyro's stochastic-volatility example (examples/stochastic_volatility.py) written with scan:
    the Gaussian random walk s_0 ~ N(0, sigma), s_t ~ N(s_{t-1}, sigma) and StudentT returns."""
    sigma = numpyro.sample("sigma", dist.Exponential(50.0))
    nu = numpyro.sample("nu", dist.Exponential(0.1))
    s0 = numpyro.sample("s0", dist.Normal(0.0, sigma))
    numpyro.sample("r0", dist.StudentT(nu, 0.0, jnp.exp(s0)), obs=returns[0])

    def step(s_prev, r_t):
        s = numpyro.sample("s", dist.Normal(s_prev, sigma))
        numpyro.sample("r", dist.StudentT(nu, 0.0, jnp.exp(s)), obs=r_t)
        return s, None

    scan(step, s0, returns[1:])


def stochastic_volatility_grw(returns):
    """The same model as NumPyro's example writes it (GaussianRandomWalk; not a scan)."""
    sigma = numpyro.sample("sigma", dist.Exponential(50.0))
    nu = numpyro.sample("nu", dist.Exponential(0.1))
    s = numpyro.sample("s_all", dist.GaussianRandomWalk(scale=sigma, num_steps=returns.shape[0]))
    numpyro.sample("r", dist.StudentT(nu, 0.0, jnp.exp(s)), obs=returns)


def data():
    k = jax.random.split(jax.random.key(0), 4)
    y1 = jax.random.normal(k[0], (T,))
    y2 = jax.random.normal(k[1], (T, 2))
    counts = jax.random.poisson(k[2], 1.0, (T,)).astype(jnp.float64)
    u = jnp.sin(jnp.arange(T) / 3.0)
    returns = 0.05 * jax.random.normal(k[3], (T,))
    return {
        "local_level": (local_level, (y1,)),
        "linear_gaussian": (linear_gaussian, (y2,)),
        "local_trend": (local_trend, (y1,)),
        "dict_plate_covariates": (dict_plate_covariates, (y1, counts, u)),
        "observed_start_conditioned": (observed_start_conditioned, (y1,)),
        "stochastic_volatility": (stochastic_volatility, (returns,)),
    }
