"""Slow checks of ``from_numpyro``: every driver runs on converted models, and particle Gibbs with a NUTS
update of the globals reaches the same posterior as NumPyro's NUTS on the unchanged model."""

import importlib.util
import pathlib
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.contrib.control_flow import scan

import bayeskit as bk

pytestmark = pytest.mark.slow


# the tuple-carry model shared with the fast tests (same folder; --import-mode=importlib has no package here)
_spec = importlib.util.spec_from_file_location("numpyro_scan_models",
                                               pathlib.Path(__file__).with_name("numpyro_scan_models.py"))
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)
local_trend = _models.local_trend


def test_every_driver_runs_on_a_converted_tuple_carry_model():
    y = jnp.cumsum(jax.random.normal(jax.random.key(0), (12,)))
    ssm = bk.StateSpaceModel.from_numpyro(local_trend, y)
    params = {"s_level": jnp.asarray(0.8), "s_trend": jnp.asarray(0.3)}
    key = jax.random.key(0)
    pf = bk.smc.particle_filter(key, ssm, params, ssm.ys, num_particles=64)
    assert pf.filter_mean.shape == (13, 2) and np.isfinite(float(pf.log_evidence))
    pg = bk.smc.particle_gibbs(key, ssm, params, ssm.ys, num_particles=16, num_iterations=6, num_chunks=1,
                               parameter_update=bk.smc.NumPyroUpdate(numpyro.infer.NUTS, num_warmup=3))
    assert pg.paths.shape == (6, 13, 2) and set(pg.params) == {"s_level", "s_trend"}
    assert ssm.sites_from_path(pg.paths)["level"].shape == (6, 12)
    assert "s_level" in pg.to_arviz().posterior
    sm = bk.smc.paris(key, ssm, params, ssm.ys, num_particles=32, num_trials=0)
    assert np.all(np.isfinite(np.asarray(sm.estimate)))
    pp = bk.smc.ppg(key, ssm, params, ssm.ys, num_particles=16, num_iterations=3, num_trials=0)
    assert np.all(np.isfinite(np.asarray(pp.estimate)))
    mh = bk.smc.pmmh(key, ssm, ssm.ys, num_particles=32, num_iterations=5, num_chains=2, init_params=params)
    assert mh.samples["s_level"].shape == (2, 5)
    fit = bk.smc.fit(key, ssm, params, ssm.ys, optimizer=optax.adam(1e-2), num_iterations=3, num_particles=16,
                     estimator="paris", num_trials=0)
    assert set(fit.params) == {"s_level", "s_trend"}


def test_simulate_draws_from_the_numpyro_model():
    # x0 ~ N(0, 1), y0 ~ N(x0, 0.5), x1 = phi x0 + N(0, 1), y1 ~ N(x1, 0.5): Var y0 = 1.25, Var y1 = phi^2 + 1.25
    def model(y):
        phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
        x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))
        numpyro.sample("y0", dist.Normal(x0, 0.5), obs=y[0])

        def step(x_prev, y_t):
            x = numpyro.sample("x", dist.Normal(phi * x_prev, 1.0))
            numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
            return x, None

        scan(step, x0, y[1:])

    ssm = bk.StateSpaceModel.from_numpyro(model, jnp.zeros(5))
    n = 4000
    xs, ys = jax.vmap(lambda k: ssm.simulate(k, {"phi": jnp.asarray(0.5)}, 3))(jax.random.split(jax.random.key(4), n))
    assert xs.shape == (n, 3) and ys.shape == (n, 3)
    for got, var in ((np.var(ys[:, 0]), 1.25), (np.var(ys[:, 1]), 1.5), (np.var(xs[:, 1]), 1.25)):
        assert abs(got - var) < 4 * var * np.sqrt(2.0 / n), (got, var)


# ------------------------------------------------------------------------------- same posterior as NUTS
def counts_model(counts=None, num_steps=40):
    """A small nonlinear model: AR(1) log-intensity with a sine term, Poisson counts; globals phi, sigma.
    Written in NumPyro's ``y=None`` idiom (observations indexed from a closure) so Predictive can simulate."""
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, t):
        x = numpyro.sample("x", dist.Normal(phi * x_prev + 0.3 * jnp.sin(x_prev), sigma))
        numpyro.sample("c", dist.Poisson(jnp.exp(1.0 + 0.7 * x)), obs=None if counts is None else counts[t])
        return x, None

    scan(step, x0, jnp.arange(num_steps))


def _batch_means(draws, num_batches=20):
    draws = np.asarray(draws)
    n = (draws.shape[0] // num_batches) * num_batches
    means = draws[:n].reshape(num_batches, -1, *draws.shape[1:]).mean(axis=1)
    return draws.mean(axis=0), means.std(axis=0, ddof=1) / np.sqrt(num_batches)


def test_particle_gibbs_with_nuts_update_matches_nuts_on_the_numpyro_model():
    from numpyro.infer import MCMC, NUTS

    T = 40
    truth = {"phi": jnp.asarray(0.7), "sigma": jnp.asarray(0.5)}
    sim = numpyro.infer.Predictive(counts_model, params=truth, num_samples=1)
    counts = sim(jax.random.key(1), None, T)["c"][0]
    assert counts.sum() > T  # informative data
    ssm = bk.StateSpaceModel.from_numpyro(counts_model, counts)

    num_samples, num_warmup = 4000, 1000
    mcmc = MCMC(NUTS(counts_model), num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(2), counts)
    nuts = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    t_nuts = time.perf_counter() - t0

    t0 = time.perf_counter()
    pg = bk.smc.particle_gibbs(jax.random.key(3), ssm, truth, ssm.ys, num_particles=32,
                               num_iterations=num_samples + num_warmup, burn_in=num_warmup,
                               parameter_update=bk.smc.NumPyroUpdate(NUTS, num_warmup=num_warmup))
    jax.block_until_ready(pg.paths)
    t_pg = time.perf_counter() - t0
    sites = ssm.sites_from_path(pg.paths[num_warmup:])
    pgd = {"phi": np.asarray(pg.params["phi"][num_warmup:]), "sigma": np.asarray(pg.params["sigma"][num_warmup:]),
           "x0": np.asarray(sites["x0"]), "x": np.asarray(sites["x"])}

    lines = []
    for name in ("phi", "sigma", "x0", "x"):
        m1, se1 = _batch_means(nuts[name])
        m2, se2 = _batch_means(pgd[name])
        z = np.abs(m1 - m2) / np.sqrt(se1 ** 2 + se2 ** 2)
        assert np.all(z < 4), (name, np.max(z))
        if name in ("phi", "sigma"):
            ess1 = float(az.ess(nuts[name][None]))
            ess2 = float(az.ess(pgd[name][None]))
            lines.append(f"{name}: NUTS {m1:.3f} +- {se1:.3f} ESS/s {ess1 / t_nuts:.1f} | "
                         f"PG {m2:.3f} +- {se2:.3f} ESS/s {ess2 / t_pg:.1f}")
    print(f"\nNUTS {t_nuts:.1f} s, particle Gibbs {t_pg:.1f} s (compile included)\n" + "\n".join(lines))


def test_numpyro_models_example_runs(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "numpyro_models.py"
    spec = importlib.util.spec_from_file_location("numpyro_models_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.main(["--quick", "--no-progress", "--num-iterations", "20", "--outdir", str(tmp_path)])
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")]
    assert len(rows) == 6
    means = [float(r.split("|")[3]) for r in rows]
    assert np.all(np.isfinite(means))
    assert (tmp_path / "numpyro_models.md").exists()
