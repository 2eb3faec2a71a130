"""PaRIS and PPG against the exact RTS smoother and the exact Kalman score (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc.paris import _paris_jit, _ppg_jit
from bayeskit.models import linear_gaussian as lg

T = 20
AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)
PARAMS = {"rho": jnp.array(0.9), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}


def lg_params(p):
    return {"A": p["rho"].reshape(1, 1), "Q": (p["sigma_x"] ** 2).reshape(1, 1), "H": jnp.ones((1, 1)),
            "R": (p["sigma_y"] ** 2).reshape(1, 1), "m0": jnp.zeros(1), "P0": jnp.ones((1, 1))}


def h_sum(t, x_prev, x):
    """The estimate is (sum_t E[x_t | y], sum_t E[x_t x_{t+1} | y])."""
    return {"x": x, "xx": jnp.zeros_like(x) if x_prev is None else x_prev * x}


@pytest.fixture(scope="module")
def problem():
    _, ys = AR.simulate(jax.random.key(0), PARAMS, T)
    sm = lg.rts_smoother(lg_params(PARAMS), ys[:, None])
    exact = {"x": sm.means.sum(), "xx": (sm.cross_covs[:, 0, 0] + sm.means[:-1, 0] * sm.means[1:, 0]).sum()}
    return ys, exact


def _check_runs(estimates, exact):
    for name in ("x", "xx"):
        e = np.array([float(r[name]) for r in estimates])
        se = e.std(ddof=1) / np.sqrt(len(e))
        assert abs(e.mean() - float(exact[name])) < 4 * se, (name, e.mean(), float(exact[name]), se)


def _vmapped_paris(ys, functional, R, seed, num_particles=200, online=False):
    """R independent PaRIS estimates in one vmapped, jitted call (the driver validates; this is its kernel)."""
    def one(key):
        st, infos = _paris_jit(key, AR, PARAMS, ys, 0.5, num_particles=num_particles, functional=functional,
                               num_backward=2, resampling="systematic", num_trials=10, log_transition_bound=None,
                               chunk_size=None, online=online)
        w = jax.nn.softmax(st.smc.log_weights)
        return jax.tree_util.tree_map(lambda s: jnp.tensordot(w, s, axes=1), st.stats)

    out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), R))
    return [jax.tree_util.tree_map(lambda a: a[r], out) for r in range(R)]


def test_paris_matches_rts(problem):
    ys, exact = problem
    _check_runs(_vmapped_paris(ys, h_sum, 16, 0), exact)
    res = bk.smc.paris(jax.random.key(0), AR, PARAMS, ys, 200, functional=h_sum, online=True)
    assert res.online_estimates["x"].shape == (T,)
    np.testing.assert_allclose(res.online_estimates["x"][-1], res.estimate["x"])
    # the online estimate at t = 0 is the filtering mean at 0
    kf = lg.kalman_filter(lg_params(PARAMS), ys[:, None])
    assert abs(float(res.online_estimates["x"][0] - kf.means[0, 0])) < 0.2
    tree = res.to_arviz()
    assert "smoothing" in tree.children and tree["sample_stats"]["ess"].shape == (T,)


def test_paris_score_matches_kalman_grad(problem):
    """Fisher identity: PaRIS estimate of E[sum_t grad log m g | y] = grad of the exact Kalman log-likelihood."""
    ys, _ = problem
    exact = jax.grad(lambda p: lg.kalman_filter(lg_params(p), ys[:, None]).log_likelihood)(PARAMS)

    def h_score(t, x_prev, x):
        return bk.smc.score(AR, PARAMS, ys, t, x_prev, x)

    runs = _vmapped_paris(ys, h_score, 16, 50)
    for name in PARAMS:
        e = np.array([float(r[name]) for r in runs])
        se = e.std(ddof=1) / np.sqrt(len(e))
        assert abs(e.mean() - float(exact[name])) < 4 * se, (name, e.mean(), float(exact[name]), se)


def test_ppg_matches_rts(problem):
    ys, exact = problem
    res = bk.smc.ppg(jax.random.key(3), AR, PARAMS, ys, num_particles=20, num_iterations=400, burn_in=40,
                     functional=h_sum)
    for name in ("x", "xx"):
        e = np.asarray(res.estimates[name])[40:]
        batches = e.reshape(20, -1).mean(axis=1)  # batch means for the chain's autocorrelation
        se = batches.std(ddof=1) / np.sqrt(len(batches))
        assert abs(float(res.estimate[name]) - float(exact[name])) < 4 * se, (name, float(res.estimate[name]), se)
    assert res.final_path.shape == (T,)
    tree = res.to_arviz()
    assert tree["posterior"]["estimate_x"].shape == (1, 400)


@pytest.mark.slow
def test_ppg_bias_falls_with_iterations(problem):
    """From a deliberately bad frozen path the per-iteration bias is large at iteration 1 and gone after a
    few sweeps (geometric ergodicity of the PPG chain); R independent chains give the standard errors."""
    ys, exact = problem
    R, k = 64, 12
    bad = jnp.full((T,), 4.0)
    run = jax.jit(jax.vmap(lambda key: _ppg_jit(key, AR, PARAMS, ys, bad, num_particles=8, functional=h_sum,
                                                num_backward=2, num_trials=10, log_transition_bound=None,
                                                chunk_size=None, num_iterations=k, keep_paths=False)[1]["x"]))
    ests = np.asarray(run(jax.random.split(jax.random.key(7), R)))  # (R, k)
    bias = ests.mean(0) - float(exact["x"])
    se = ests.std(0, ddof=1) / np.sqrt(R)
    assert bias[0] > 4 * se[0]  # the bad start shows
    assert abs(bias[-4:].mean()) < 4 * se[-4:].mean()


def test_paris_reproducible_and_jittable(problem):
    ys, _ = problem
    a = bk.smc.paris(jax.random.key(1), AR, PARAMS, ys, 200, functional=h_sum, online=True)
    b = bk.smc.paris(jax.random.key(1), AR, PARAMS, ys, 200, functional=h_sum, online=True)
    assert float(a.estimate["xx"]) == float(b.estimate["xx"])
    f = jax.jit(lambda key, p: bk.smc.paris(key, AR, p, ys, 200, functional=h_sum).estimate)
    np.testing.assert_allclose(f(jax.random.key(1), PARAMS)["xx"], a.estimate["xx"], rtol=1e-10)


def test_bad_inputs(problem):
    ys, _ = problem
    with pytest.raises(ConfigurationError, match="num_backward"):
        bk.smc.paris(jax.random.key(0), AR, PARAMS, ys, 50, num_backward=0)
    with pytest.raises(ConfigurationError, match="functional"):  # pytree structure changes with t
        bk.smc.paris(jax.random.key(0), AR, PARAMS, ys, 50,
                     functional=lambda t, xp, x: x if xp is None else jnp.stack([x, xp]))
    with pytest.raises(ConfigurationError, match="functional"):
        bk.smc.paris(jax.random.key(0), AR, PARAMS, ys, 50, functional=lambda t, xp, x: jnp.ones(3)[5.0])
    with pytest.raises(ConfigurationError, match="num_particles"):
        bk.smc.ppg(jax.random.key(0), AR, PARAMS, ys, num_particles=1)
    with pytest.raises(ConfigurationError, match="burn_in"):
        bk.smc.ppg(jax.random.key(0), AR, PARAMS, ys, num_particles=5, num_iterations=3, burn_in=3)

    class NoDensity(dist.Normal):
        def log_prob(self, value):
            raise NotImplementedError

    ssm = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0), lambda p, x, t: NoDensity(x, 1.0),
                             lambda p, x, t: dist.Normal(x, 1.0), vectorized=True)
    with pytest.raises(ModelError, match="transition"):
        bk.smc.paris(jax.random.key(0), ssm, {}, ys, 50)
    gamma = bk.StateSpaceModel(lambda p: dist.Gamma(2.0, 1.0), lambda p, x, t: dist.Gamma(2.0, 1.0 / x),
                               lambda p, x, t: dist.Normal(x, 1.0), vectorized=True)
    with pytest.raises(ModelError, match="log_transition_bound"):
        bk.smc.paris(jax.random.key(0), gamma, {}, jnp.abs(ys) + 1.0, 50)
    res = bk.smc.paris(jax.random.key(0), gamma, {}, jnp.abs(ys) + 1.0, 50, num_trials=0)  # exact draws: fine
    assert np.isfinite(float(res.estimate))


@pytest.mark.slow
def test_ppg_bias_below_paris_at_equal_cost(problem):
    """Bias of the roll-out PPG estimator (N particles, k sweeps, burn-in k0) vs PaRIS with N k particles
    (the same number of particle moves), both measured over R replicates against RTS."""
    ys, exact = problem
    R, N, k, k0 = 400, 8, 8, 2
    run_ppg = jax.jit(jax.vmap(lambda key: _ppg_jit(key, AR, PARAMS, ys, jnp.zeros(T), num_particles=N,
                                                    functional=h_sum, num_backward=2, num_trials=10,
                                                    log_transition_bound=None, chunk_size=None, num_iterations=k,
                                                    keep_paths=False)[1]["xx"][k0:].mean()))
    run_paris = jax.jit(jax.vmap(lambda key: _paris_jit(key, AR, PARAMS, ys, 0.5, num_particles=N * (k - k0),
                                                        functional=h_sum, num_backward=2, resampling="systematic",
                                                        num_trials=10, log_transition_bound=None, chunk_size=None,
                                                        online=False)[0]))
    e_ppg = np.asarray(run_ppg(jax.random.split(jax.random.key(1), R)))
    st = run_paris(jax.random.split(jax.random.key(2), R))
    w = jax.nn.softmax(st.smc.log_weights, axis=-1)
    e_paris = np.asarray(jnp.sum(w * st.stats["xx"], axis=-1))
    b_ppg, b_paris = e_ppg.mean() - float(exact["xx"]), e_paris.mean() - float(exact["xx"])
    se_ppg, se_paris = e_ppg.std() / np.sqrt(R), e_paris.std() / np.sqrt(R)
    assert abs(b_ppg) < 4 * se_ppg
    assert abs(b_ppg) < abs(b_paris), (b_ppg, se_ppg, b_paris, se_paris)


@pytest.mark.slow
def test_example_runs_quick(tmp_path):
    """examples/paris_ppg.py --quick runs end to end and writes its figure."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "paris_ppg.py"
    spec = importlib.util.spec_from_file_location("paris_ppg_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick", "--outdir", str(tmp_path)])
    assert (tmp_path / "paris_ppg.png").exists() and len(rows) == 4
