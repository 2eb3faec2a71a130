"""A second call of a driver with the same model, shapes and options compiles nothing (issue 21).

Each driver is called twice with tiny sizes; a ``jax.monitoring`` listener counts the XLA compilations
(``/jax/core/compile/backend_compile_duration``, emitted for every compilation, also when the persistent
cache answers it) during the second call. The first call compiles; the second must reuse every program.
Most cases are slow (their first call's compile dominates); a few representative ones stay in the fast suite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bayeskit as bk

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
K = jax.random.key(1)


def prior():
    return {"rho": numpyro.sample("rho", dist.Uniform(-1.0, 1.0))}


AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0), lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
                        lambda p, x, t: dist.Normal(x, 0.5), vectorized=True, prior=prior)
P = {"rho": jnp.array(0.7)}
YS = AR.simulate(jax.random.key(0), P, 6)[1]


def rho_update(key, params, path, ys):
    prec = 1.0 + jnp.sum(path[:-1] ** 2)
    return {"rho": jnp.sum(path[:-1] * path[1:]) / prec + jax.random.normal(key) / jnp.sqrt(prec)}


def tempered_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


TY = jnp.array([0.3, -0.2, 0.8])


def _smc_cases():
    nuts = bk.smc.NumPyroUpdate(numpyro.infer.NUTS, num_warmup=2)
    return {
        "smc.particle_filter": lambda: bk.smc.particle_filter(K, AR, P, YS, 8),
        "smc.paris": lambda: bk.smc.paris(K, AR, P, YS, 8),
        "smc.forward_smoother": lambda: bk.smc.forward_smoother(K, AR, P, YS, 4),
        "smc.ffbs": lambda: bk.smc.ffbs(K, AR, P, YS, 8, num_samples=4),
        "smc.ppg": lambda: bk.smc.ppg(K, AR, P, YS, 4, num_iterations=2),
        "smc.particle_gibbs": lambda: bk.smc.particle_gibbs(K, AR, P, YS, 4, num_iterations=3),
        "smc.particle_gibbs(update)": lambda: bk.smc.particle_gibbs(K, AR, P, YS, 4, num_iterations=3,
                                                                    parameter_update=rho_update),
        "smc.particle_gibbs(NUTS)": lambda: bk.smc.particle_gibbs(K, AR, P, YS, 4, num_iterations=3,
                                                                  parameter_update=nuts),
        "smc.pmmh": lambda: bk.smc.pmmh(K, AR, YS, num_particles=4, num_iterations=3, num_warmup=1, num_chains=2),
        "smc.fit(ppg)": lambda: bk.smc.fit(K, AR, {"rho": 0.3}, YS, num_iterations=2, num_particles=4),
        "smc.fit(paris)": lambda: bk.smc.fit(K, AR, {"rho": 0.3}, YS, estimator="paris", num_iterations=2,
                                             num_particles=4),
        "smc.tempered": lambda: bk.smc.tempered(K, tempered_model, TY, num_particles=16, num_mcmc_steps=2),
    }


def _scaling_cases():
    S = bk.scaling
    world = bk.testing.random_markov_world(jax.random.key(0), num_digits=2, modulus=3, max_steps=3)
    gen, rm = world.generator(), world.exact_reward_model(1)
    gm = bk.testing.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [2.0, 0.0]]),
                                    jnp.stack([jnp.eye(2)] * 2))
    score = gm.score_fn(S.VESDE())  # built once: a fresh lambda per call would be a new program (docs/scaling.md)
    return {
        "scaling.particle_filtering": lambda: S.particle_filtering(K, gen, rm, 1, budget=4),
        "scaling.best_of_n": lambda: S.best_of_n(K, gen, rm, 1, budget=4),
        "scaling.beam_search": lambda: S.beam_search(K, gen, rm, 1, budget=4, beam_width=2),
        "scaling.particle_gibbs": lambda: S.particle_gibbs(K, gen, rm, 1, num_particles=2, budget=4),
        "scaling.parallel_tempering": lambda: S.parallel_tempering(K, gen, rm, 1, num_particles=2,
                                                                   temperatures=(1.0, 3.0), budget=4),
        "scaling.fkc_sample": lambda: S.fkc_sample(K, [score], [2.0], num_particles=8, num_steps=3),
    }


def _profit(x, h):
    return jnp.minimum(x, h)


def _other_cases():
    import optax

    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(16, 2)), rng.normal(size=(16, 2)) + 1.0
    snaps = [rng.normal(size=(8, 2)) + m for m in (0.0, 0.5, 1.0)]
    ou = bk.bridges.OU(sigma=0.3)
    sigma = 0.5
    episode_model = bk.meta.EpisodeModel(
        pointwise_log_likelihood=lambda th, x, y: jax.scipy.stats.norm.logpdf(y, x @ th, sigma), dim=2,
        predict_fn=lambda th, x: x @ th,
        sample_fn=lambda k, th, x: x @ th + sigma * jax.random.normal(k, (x.shape[0],)))
    ex, ey = jnp.asarray(rng.normal(size=(4, 3, 2))), jnp.asarray(rng.normal(size=(4, 3)))
    meta = bk.meta.NIWMeta(episode_model, covariance="full", local_approximation="laplace", optimizer=optax.adam(0.05),
                           batch_size=2, num_iterations=4, chunk_size=2)
    fitted = {}

    def meta_predict():
        if "m" not in fitted:
            fitted["m"] = meta.fit(K, (ex, ey))
        return fitted["m"].predict(K, (ex[:2], ey[:2]), (ex[2:], ey[2:]), num_samples=4)

    from bayeskit.models import fractional_ou as fou

    sde = fou.make_sde(hurst=0.3, num_ou=2, gamma_max=20.0, t1=2.0)
    sde_params = fou.example_params(theta=0.0, sigma=1.0, obs_sd=0.1)
    sde_opt = optax.adam(0.05)
    from bayeskit.datasets import load_gpdp

    td = load_gpdp("training_data")
    gx, gy, ggrid = td["x"][1:], td["y"][1:], np.linspace(0.0, 15.0, 12)
    return {
        "gpdp.solve(map)": lambda: bk.gpdp.solve(K, gx, gy, ggrid, _profit, discount=0.95, method="map"),
        "gpdp.solve(nuts)": lambda: bk.gpdp.solve(K, gx, gy, ggrid, _profit, discount=0.95, num_warmup=2,
                                                  num_samples=2, num_transition_samples=2),
        "bridges.LightSB.fit": lambda: bk.bridges.LightSB.fit(K, x0, x1, epsilon=0.5, num_components=2, num_iterations=3,
                                                              batch_size=8),
        "bridges.multimarginal": lambda: bk.bridges.multimarginal(K, snaps, [0.0, 0.5, 1.0], reference=ou,
                                                                  num_refinements=1, num_ipf_iterations=1,
                                                                  time_step=0.25, max_gp_points=16,
                                                                  num_fit_iterations=2),
        "meta.NIWMeta.fit": lambda: meta.fit(K, (ex, ey)),
        "meta.NIWMetaResult.predict": meta_predict,
        "sde.fit_vi": lambda: bk.sde.fit_vi(K, sde, np.array([0.0]), np.array([2.0]), fixed_params=sde_params,
                                            control=bk.sde.AffineControl(), num_steps=4, num_samples=2,
                                            num_iterations=2, optimizer=sde_opt, progress_bar=False),
    }


FAST = {"smc.particle_filter", "smc.particle_gibbs(update)", "scaling.fkc_sample"}
CASES = {**_smc_cases(), **_scaling_cases(), **_other_cases()}


@pytest.fixture(scope="module")
def compiles():
    """A list that collects the name of every program XLA compiles while the module's tests run."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            seen.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow]) for n in CASES])
def test_second_call_compiles_nothing(name, compiles):
    run = CASES[name]
    jax.block_until_ready(jax.tree_util.tree_leaves(run()))
    compiles.clear()
    jax.block_until_ready(jax.tree_util.tree_leaves(run()))
    assert compiles == [], f"{name}: the second call compiled {compiles}"


def test_counter_sees_a_compile(compiles):
    """The listener does count: a program not compiled before shows up."""
    compiles.clear()
    def fresh(x):
        return x * 3.0 + 1.0

    jax.jit(fresh)(np.ones(7)).block_until_ready()
    assert compiles == ["jit(fresh)"]


@pytest.mark.slow
def test_bridges_refinements_and_repeated_fits_compile_nothing(compiles):
    """SBIRR with a nonlinear reference and the closed-form solver, and LightSB with another ``epsilon`` and other
    data of the same shapes, compile nothing on a second call; the vanilla pass after SBIRR compiles only its own
    (Brownian-reference) IPF program: the stitching simulation and the reference refit are shared."""
    rng = np.random.default_rng(0)
    times = [0.0, 0.5, 1.0]
    snaps = [rng.normal(m, 0.2, (12, 2)) for m in (1.0, 1.5, 2.0)]
    lv = bk.bridges.LotkaVolterra(sigma=0.1)
    kw = dict(num_ipf_iterations=1, time_step=0.25, max_gp_points=16, num_fit_iterations=3)

    def sbirr(key):
        return bk.bridges.multimarginal(key, snaps, times, reference=lv, num_refinements=2, **kw)

    def closed_form(key):
        return bk.bridges.multimarginal(key, snaps, times, reference=bk.bridges.OU(sigma=0.3), num_refinements=2,
                                        time_step=0.25, solver="lightsb",
                                        lightsb_options=dict(num_components=2, num_iterations=4, batch_size=8))

    x0, x1 = rng.normal(size=(16, 2)), rng.normal(size=(16, 2)) + 1.0

    def lightsb(key, eps, shift):
        return bk.bridges.LightSB.fit(key, x0 + shift, x1, epsilon=eps, num_components=2, num_iterations=4,
                                      batch_size=8).params

    compiles.clear()
    sbirr(jax.random.key(3))  # within one call, the refinements share one IPF program and one refit program
    assert compiles.count("jit(ipf_interval)") <= 1 and compiles.count("jit(_lbfgs_fit)") <= 1, compiles
    for first, second in ((lambda: sbirr(K), lambda: sbirr(jax.random.key(2))),
                          (lambda: closed_form(K), lambda: closed_form(jax.random.key(2))),
                          (lambda: lightsb(K, 0.5, 0.0), lambda: lightsb(jax.random.key(2), 0.3, 1.0))):
        jax.block_until_ready(jax.tree_util.tree_leaves(first()))
        compiles.clear()
        jax.block_until_ready(jax.tree_util.tree_leaves(second()))
        assert compiles == [], compiles
    sbirr(K)
    compiles.clear()
    bk.bridges.vanilla_sb(K, snaps, times, reference=lv, **kw)
    assert "jit(ipf_interval)" in compiles  # the counter sees the vanilla pass's own program
    assert "jit(simulate_gp_drift)" not in compiles and "jit(_lbfgs_fit)" not in compiles, compiles
