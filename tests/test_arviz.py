"""Every public result type through ArviZ: ``to_arviz()`` -> ``az.summary`` -> an ArviZ plot -> one netCDF
file -> ``az.from_netcdf``, values compared (docs/arviz.md). Small sizes: this checks the conversion, not
the algorithms (their own tests do)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import bayeskit as bk
from bayeskit.datasets import load_gpdp
from bayeskit.models import fractional_ou as fou
from bayeskit.models import linear_gaussian as lg

az = pytest.importorskip("arviz")

AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)
AR_PRIOR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0), lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
                              lambda p, x, t: dist.Normal(x, 0.5), vectorized=True,
                              prior=lambda: {"rho": numpyro.sample("rho", dist.Uniform(-1.0, 1.0))})
AR_PARAMS = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
T = 8


def h_sum(t, x_prev, x):
    return {"x": x, "xx": jnp.zeros_like(x) if x_prev is None else x_prev * x}


def _ar_data():
    return AR.simulate(jax.random.key(0), AR_PARAMS, T)


def _lg_data():
    params = lg.example_params(2, rho=0.9, sigma_x=0.5, sigma_y=0.7)
    return params, lg.ssm.simulate(jax.random.key(0), params, T)[1]


def _gaussian_model(y):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 3.0).to_event(1))
    numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def _niw():
    m = bk.meta

    def em():
        return m.EpisodeModel(pointwise_log_likelihood=lambda th, x, y: jax.scipy.stats.norm.logpdf(y, x @ th, 0.3),
                              dim=2, predict_fn=lambda th, x: x @ th,
                              sample_fn=lambda k, th, x: x @ th + 0.3 * jax.random.normal(k, (x.shape[0],)))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 2))
    y = np.einsum("nkd,nd->nk", x, rng.normal(size=(6, 2)) + 1.0) + 0.3 * rng.normal(size=(6, 4))
    cfg = m.NIWMeta(em(), covariance="full", local_approximation="laplace", optimizer=optax.adam(0.05),
                    batch_size=4, num_iterations=40, chunk_size=20)
    return cfg.fit(jax.random.key(0), (jnp.asarray(x), jnp.asarray(y))), (x[:1], y[:1])


def _ou_snapshots(times, n):
    rng = np.random.default_rng(0)
    return [np.array([3.0, -2.0]) * np.exp(-t) + 0.2 * rng.standard_normal((n, 2)) for t in times]


def _scaling_world():
    world = bk.testing.random_markov_world(jax.random.key(0))
    return world.generator(), world.exact_reward_model(2)


def _make(name):
    key = jax.random.key(1)
    S = bk.scaling
    if name == "particle_filter":
        params, ys = _lg_data()
        return bk.smc.particle_filter(key, lg.ssm, params, ys, 16, history=True)
    if name == "particle_filter_no_history":
        params, ys = _lg_data()
        return bk.smc.particle_filter(key, lg.ssm, params, ys, 16)
    if name == "ffbs":
        params, ys = _lg_data()
        return bk.smc.ffbs(key, lg.ssm, params, ys, 16, num_samples=8, functional=h_sum)
    if name == "particle_gibbs":
        params, ys = _lg_data()
        return bk.smc.particle_gibbs(key, lg.ssm, params, ys, num_particles=8, num_iterations=12)
    if name == "paris":
        return bk.smc.paris(key, AR, AR_PARAMS, _ar_data()[1], 16, functional=h_sum, online=True)
    if name == "ppg":
        return bk.smc.ppg(key, AR, AR_PARAMS, _ar_data()[1], num_particles=5, num_iterations=6, functional=h_sum,
                          keep_paths=True)
    if name == "pmmh":
        return bk.smc.pmmh(key, AR_PRIOR, _ar_data()[1], num_particles=16, num_iterations=12, num_chains=2)
    if name == "fit":
        return bk.smc.fit(key, AR, {"rho": 0.3}, _ar_data()[1], fixed_params={"sigma_x": 1.0, "sigma_y": 0.5},
                          num_iterations=6, num_particles=8)
    if name == "tempered":
        y = np.random.default_rng(0).normal(size=(5, 2))
        return bk.smc.tempered(key, _gaussian_model, y, num_particles=64)
    if name in ("scaling.particle_filtering", "scaling.best_of_n", "scaling.beam_search",
                "scaling.parallel_tempering", "scaling.particle_gibbs"):
        gen, rm = _scaling_world()
        k = jax.random.key(7)
        return {"scaling.particle_filtering": lambda: S.particle_filtering(k, gen, rm, 2, budget=8),
                "scaling.best_of_n": lambda: S.best_of_n(k, gen, rm, 2, budget=8),
                "scaling.beam_search": lambda: S.beam_search(k, gen, rm, 2, budget=8, beam_width=4),
                "scaling.parallel_tempering": lambda: S.parallel_tempering(k, gen, rm, 2, num_particles=2,
                                                                           temperatures=(1.0, 3.0), budget=9),
                "scaling.particle_gibbs": lambda: S.particle_gibbs(k, gen, rm, 2, num_particles=4, budget=24)}[name]()
    if name == "fkc_sample":
        gm = bk.testing.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-3.0, 0.0], [3.0, 0.0]]),
                               jnp.stack([jnp.eye(2), jnp.eye(2)]))
        sde = S.VESDE(0.01, 20.0)
        return S.fkc_sample(jax.random.key(5), [gm.score_fn(sde)], [1.0], num_particles=16, num_steps=10, sde=sde)
    if name == "gpdp.solve":
        td = load_gpdp("training_data")
        return bk.gpdp.solve(jax.random.key(0), td["x"][1:], td["y"][1:], np.linspace(0.0, 15.0, 30),
                             lambda x, h: jnp.minimum(x, h), discount=0.99, method="map")
    if name == "gpdp.fit_parametric":
        td = load_gpdp("training_data")
        return bk.gpdp.fit_parametric(key, np.r_[td["x"][1:], td["y"][-1]], "ricker", num_warmup=50, num_samples=100)
    if name == "sde.fit_vi":
        sde = fou.make_sde(hurst=0.3, num_ou=5, gamma_max=20.0, t1=2.0)
        return bk.sde.fit_vi(key, sde, np.array([0.0]), np.array([2.0]),
                             fixed_params=fou.example_params(theta=0.0, sigma=1.0, obs_sd=0.1),
                             control=bk.sde.AffineControl(), num_steps=10, refine=2, num_samples=4, num_iterations=4,
                             chunk_size=2, num_posterior_samples=8, progress_bar=False)
    if name in ("NIWMeta.fit", "NIWMeta.predict"):
        fitted, (sx, sy) = _niw()
        if name == "NIWMeta.fit":
            return fitted
        return fitted.predict(jax.random.key(0), (sx, sy), (sx, sy), num_samples=8)
    if name == "LightSB":
        x0 = jax.random.normal(jax.random.key(0), (32, 2))
        return bk.bridges.LightSB.fit(jax.random.key(2), x0, x0 + 2.0, epsilon=0.5, num_components=3, num_iterations=10,
                                      chunk_size=5)
    if name == "LinearLightSB":
        x0 = np.random.default_rng(0).normal(2.0, 0.3, (32, 1))
        return bk.bridges.LinearLightSB.fit(jax.random.key(0), x0, x0 - 1.5, reference=bk.bridges.OU(sigma=0.5),
                                            duration=1.0, num_components=1, covariance="full", num_iterations=10)
    if name == "multimarginal":
        snaps = _ou_snapshots([0.0, 0.5, 1.0], 10)
        return bk.bridges.multimarginal(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=bk.bridges.OU(sigma=0.3),
                                        num_refinements=2, num_ipf_iterations=2, time_step=0.1, max_gp_points=50)
    raise KeyError(name)


# the results whose build alone takes 4-13 s (compilation, contended 2-core machine) run with -m slow. The fast
# suite keeps particle_filter (a filter's declared dims), scaling.particle_filtering ((step, particle) histories),
# fkc_sample and the three bridges; ffbs, particle_gibbs, paris, ppg, pmmh and fit build their trees with the same
# declared-dims helper (bayeskit.diagnostics.to_datatree) as particle_filter. Only the slow tier round-trips those
# six, tempered (whose to_arviz the fast tests/smc/test_tempered.py::test_driver_gaussian_outputs_and_to_arviz
# calls, without summary or netCDF), the filter without history, and the scaling results with reference answers.
_SLOW = pytest.mark.slow
RESULTS = ["particle_filter", *(pytest.param(n, marks=_SLOW) for n in (
               "particle_filter_no_history", "ffbs", "particle_gibbs", "paris", "ppg", "pmmh", "fit")),
           pytest.param("tempered", marks=_SLOW), "scaling.particle_filtering",
           pytest.param("scaling.best_of_n", marks=_SLOW), pytest.param("scaling.beam_search", marks=_SLOW),
           pytest.param("scaling.parallel_tempering", marks=_SLOW), pytest.param("scaling.particle_gibbs", marks=_SLOW),
           "fkc_sample",
           pytest.param("gpdp.solve", marks=_SLOW),
           pytest.param("gpdp.fit_parametric", marks=_SLOW), pytest.param("sde.fit_vi", marks=_SLOW),
           pytest.param("NIWMeta.fit", marks=_SLOW), pytest.param("NIWMeta.predict", marks=_SLOW), "LightSB",
           "LinearLightSB", "multimarginal"]


@pytest.fixture(scope="module")
def results():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _make(name)
        return cache[name]

    return get


def test_every_result_type_is_covered():
    """Each class with a ``to_arviz`` method in the package appears among RESULTS (by its type)."""
    import pathlib
    import re

    root = pathlib.Path(bk.__file__).parent
    classes = set()
    for path in root.rglob("*.py"):
        current = None
        for line in path.read_text().splitlines():
            m = re.match(r"class (\w+)", line)
            current = m.group(1) if m else current
            if re.match(r"\s+def to_arviz\(", line):
                classes.add(current)
    assert len(classes) == 18, classes
    covered = {"ParticleFilterResult", "FFBSResult", "ParticleGibbsResult", "PaRISResult", "PPGResult", "PMMHResult",
               "FitResult", "TemperedSMCResult", "ScalingResult", "FKCResult", "GPDPResult", "ParametricFit",
               "VIResult", "NIWMetaResult", "MetaPrediction", "LightSB", "LinearLightSB", "MultiMarginalResult"}
    assert classes <= covered, classes - covered


def _compare(tree, back):
    assert set(back.children) == set(tree.children)
    for g, node in tree.children.items():
        ds, ds_back = node.to_dataset(), back[g].to_dataset()
        assert set(ds.data_vars) == set(ds_back.data_vars), g
        for v in ds.data_vars:
            assert ds[v].dims == ds_back[v].dims, (g, v)
            np.testing.assert_array_equal(ds[v].values, ds_back[v].values, err_msg=f"{g}/{v}")
        for c in ds.coords:
            np.testing.assert_array_equal(ds[c].values, ds_back[c].values, err_msg=f"{g} coord {c}")
    for k, v in tree.attrs.items():
        np.testing.assert_array_equal(np.asarray(back.attrs[k]), np.asarray(v), err_msg=k)


@pytest.mark.parametrize("name", RESULTS)
def test_to_arviz_summary_plot_and_netcdf_round_trip(name, results, tmp_path):
    import matplotlib.pyplot as plt

    res = results(name)
    # NIWMetaResult draws from q(phi) to build its posterior group: its key is explicit (no hidden default)
    tree = res.to_arviz(jax.random.key(0)) if name == "NIWMeta.fit" else res.to_arviz()
    post = tree["posterior"]
    assert post.sizes["chain"] >= 1 and post.sizes["draw"] >= 1
    table = az.summary(tree)
    assert len(table) >= 1 and np.all(np.isfinite(table["mean"].astype(float)))
    if "sample_stats" in tree.children:
        az.summary(tree, group="sample_stats")
    first = list(post.data_vars)[0]
    az.plot_forest(tree, var_names=[first])
    plt.close("all")
    path = tmp_path / "result.nc"
    tree.to_netcdf(path)
    assert path.is_file()
    _compare(tree, az.from_netcdf(path))


def test_equal_weight_draws_counts_are_floor_or_ceil_of_n_w():
    rng = np.random.default_rng(0)
    n, steps = 50, 4
    lw = rng.normal(scale=2.0, size=(steps, n))
    lw[0, :10] = -np.inf  # zero-weight particles never appear
    x = np.broadcast_to(np.arange(n)[None, :, None], (steps, n, 2)) + 100 * np.arange(steps)[:, None, None]
    draws = bk.diagnostics.equal_weight_draws(x, lw)
    assert draws.shape == (n, steps, 2)
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    for t in range(steps):
        idx = draws[:, t, 0] - 100 * t
        np.testing.assert_array_equal(draws[:, t, 0], draws[:, t, 1])
        counts = np.bincount(idx, minlength=n)
        assert counts.sum() == n
        assert np.all((counts >= np.floor(n * w[t] - 1e-9)) & (counts <= np.ceil(n * w[t] + 1e-9))), t
    assert np.all(np.bincount(draws[:, 0, 0], minlength=n)[:10] == 0)
    single = bk.diagnostics.equal_weight_draws(x[1], lw[1])
    np.testing.assert_array_equal(single, draws[:, 1])
    from bayeskit.errors import DataError

    with pytest.raises(DataError, match="finite"):
        bk.diagnostics.equal_weight_draws(x[0], np.full(n, -np.inf))
    with pytest.raises(DataError, match="match"):
        bk.diagnostics.equal_weight_draws(x[0], lw[0, :10])
    with pytest.raises(DataError, match="posterior"):
        bk.diagnostics.to_datatree({"sample_stats": {"ess": np.ones((1, 1, 3))}})


def test_filter_tree_holds_the_result_values(results):
    res = results("particle_filter")
    tree = res.to_arviz()
    stats = tree["sample_stats"]
    assert stats["ess"].dims == ("chain", "draw", "time")
    np.testing.assert_allclose(stats["ess"].values[0, 0], res.ess)
    np.testing.assert_array_equal(stats["resampled"].values[0, 0], np.asarray(res.resampled).astype(np.int8))
    assert stats["log_evidence"].item() == pytest.approx(float(res.log_evidence))
    # the per-observation log-likelihood increments add up to the log-evidence
    assert float(tree["log_likelihood"]["y"].sum()) == pytest.approx(float(res.log_evidence), rel=1e-10)
    x = tree["posterior"]["x"]
    assert x.dims == ("chain", "draw", "time", "state_dim_0") and x.shape == (1, 16, T, 2)
    np.testing.assert_array_equal(tree["posterior"]["x_final"].values[0], x.values[0, :, -1])


def test_plots_label_axes_and_reject_bad_input(results):
    import matplotlib.pyplot as plt

    from bayeskit.errors import ConfigurationError, DataError

    pf, pf_moments, ff = results("particle_filter"), results("particle_filter_no_history"), results("ffbs")
    truth = np.zeros((T, 2))
    fig = bk.plots.states([pf, pf_moments, ff], labels=["filter", "filter (moments)", "FFBS"], truth=truth, state=1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time step" and ax.get_ylabel() == "x[1]"
    assert len(ax.collections) == 3  # one band per result
    fig = bk.plots.smc_diagnostics(pf)
    assert [a.get_ylabel() for a in fig.axes] == ["ESS / N", "log-evidence increment"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), np.asarray(pf.ess) / 16)
    plt.close("all")
    with pytest.raises(ConfigurationError, match="state"):
        bk.plots.states(pf, state=2)
    with pytest.raises(ConfigurationError, match="prob"):
        bk.plots.states(pf, prob=1.5)
    with pytest.raises(ConfigurationError, match="labels"):
        bk.plots.states([pf, ff], labels=["one"])
    with pytest.raises(DataError, match="ess"):
        bk.plots.smc_diagnostics(results("LightSB"))
    with pytest.raises(DataError, match="result"):
        bk.plots.states(42)
