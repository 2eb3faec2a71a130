"""PaRIS and PPG against the exact RTS smoother and the exact Kalman score (float64)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, ModelError
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


def _check_runs(estimates, exact, names):
    """The mean of R independent estimates (leading axis R) within 4 standard errors of the exact value."""
    for name in names:
        e = np.asarray(estimates[name])
        se = e.std(ddof=1) / np.sqrt(len(e))
        assert abs(e.mean() - float(exact[name])) < 4 * se, (name, e.mean(), float(exact[name]), se)


@pytest.fixture(scope="module")
def paris_runs(problem):
    """R = 16 independent PaRIS runs (N = 200) in one vmapped, jitted call of the public driver, with one functional
    that gives both the smoothing sums of h_sum and the score (one compiled program for both checks), and the
    eager call with the first run's key and the same options (one more program, reused by every eager call)."""
    ys, _ = problem

    def h_both(t, x_prev, x):
        return {**h_sum(t, x_prev, x), "score": bk.smc.kernels.score(AR, PARAMS, ys, t, x_prev, x)}

    def one(key):
        return bk.smc.paris(key, AR, PARAMS, ys, 200, functional=h_both, ess_threshold=0.5, online=True)

    keys = jax.random.split(jax.random.key(0), 16)
    batched = jax.jit(jax.vmap(lambda k: (lambda r: (r.estimate, r.online_estimates))(one(k))))(keys)
    return keys, batched, one


def test_paris_matches_rts(problem, paris_runs):
    ys, exact = problem
    keys, (estimates, online), one = paris_runs
    _check_runs(estimates, exact, ("x", "xx"))
    res = one(keys[0])  # eager, host-side checks on
    assert res.online_estimates["x"].shape == (T,)
    np.testing.assert_allclose(res.online_estimates["x"][-1], res.estimate["x"])
    # the online estimate at t = 0 is the filtering mean at 0
    kf = lg.kalman_filter(lg_params(PARAMS), ys[:, None])
    assert abs(float(res.online_estimates["x"][0] - kf.means[0, 0])) < 0.2
    tree = res.to_arviz()
    assert "smoothing" in tree.children and tree["sample_stats"]["ess"].shape == (1, 1, T)


def test_paris_score_matches_kalman_grad(problem, paris_runs):
    """Fisher identity: PaRIS estimate of E[sum_t grad log m g | y] = grad of the exact Kalman log-likelihood."""
    ys, _ = problem
    exact = jax.grad(lambda p: lg.kalman_filter(lg_params(p), ys[:, None]).log_likelihood)(PARAMS)
    _check_runs(paris_runs[1][0]["score"], exact, tuple(PARAMS))


def test_paris_reproducible_and_jittable(paris_runs):
    """Same key, same answer; the call inside jax.jit(jax.vmap(...)) gives what the eager call with that key gives."""
    keys, (estimates, online), one = paris_runs
    a, b = one(keys[1]), one(keys[1])
    assert float(a.estimate["xx"]) == float(b.estimate["xx"])
    for got, want in ((estimates, a.estimate), (online, a.online_estimates)):
        for name in ("x", "xx"):
            np.testing.assert_allclose(np.asarray(got[name][1]), np.asarray(want[name]), rtol=1e-10)


@pytest.fixture(scope="module")
def ppg_run(problem):
    ys, _ = problem
    opts = dict(num_particles=20, num_iterations=400, burn_in=40, functional=h_sum)
    return bk.smc.ppg(jax.random.key(3), AR, PARAMS, ys, **opts), opts


def test_ppg_matches_rts(problem, ppg_run):
    _, exact = problem
    res, _ = ppg_run
    for name in ("x", "xx"):
        e = np.asarray(res.estimates[name])[40:]
        batches = e.reshape(20, -1).mean(axis=1)  # batch means for the chain's autocorrelation
        se = batches.std(ddof=1) / np.sqrt(len(batches))
        assert abs(float(res.estimate[name]) - float(exact[name])) < 4 * se, (name, float(res.estimate[name]), se)
    assert res.final_path.shape == (T,)
    tree = res.to_arviz()
    assert tree["posterior"]["estimate_x"].shape == (1, 400)


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


# slow tier: compile-bound (5 s in the fast suite); capability kept fast by:
# test_csmc.py::test_ppg_sweep_keeps_smoothing_distribution (exact draws, num_trials=0)
@pytest.mark.slow
def test_exact_draws_need_no_transition_bound(problem):
    """The model test_bad_inputs rejects for want of a log_transition_bound runs with exact draws (num_trials=0)."""
    ys, _ = problem
    gamma = bk.StateSpaceModel(lambda p: dist.Gamma(2.0, 1.0), lambda p, x, t: dist.Gamma(2.0, 1.0 / x),
                               lambda p, x, t: dist.Normal(x, 1.0), vectorized=True)
    res = bk.smc.paris(jax.random.key(0), gamma, {}, jnp.abs(ys) + 1.0, 50, num_trials=0)
    assert np.isfinite(float(res.estimate))


def _exact_posterior_path(key, params, ys):
    """One exact draw from p(x_{0:T-1} | y) of the scalar AR model (Kalman filter, backward sampling)."""
    kf = lg.kalman_filter(lg_params(params), ys[:, None])
    m, P = kf.means[:, 0], kf.covs[:, 0, 0]
    rho, q = params["rho"], params["sigma_x"] ** 2
    eps = jax.random.normal(key, m.shape)
    x_last = m[-1] + jnp.sqrt(P[-1]) * eps[-1]

    def step(x_next, inp):
        mt, pt, e = inp
        gain = pt * rho / (rho ** 2 * pt + q)
        x = mt + gain * (x_next - rho * mt) + jnp.sqrt(pt - gain * rho * pt) * e
        return x, x

    _, xs = jax.lax.scan(step, x_last, (m[:-1], P[:-1], eps[:-1]), reverse=True)
    return jnp.concatenate([xs, x_last[None]])


@partial(jax.jit, static_argnames=("num_particles", "num_iterations", "num_trials"))
def _ppg_from_paths(keys, paths, params, ys, num_particles, num_iterations, num_trials):
    """Per-iteration PPG estimates of independent chains started from ``paths`` (R, T): (R, num_iterations)."""
    return jax.vmap(lambda k, path: bk.smc.ppg(k, AR, params, ys, num_particles, functional=h_sum,
                                               num_trials=num_trials, num_iterations=num_iterations,
                                               initial_path=path).estimates)(keys, paths)


def _ppg_chains(key, params, ys, num_particles, num_iterations, R, start, num_trials=10):
    """Per-iteration PPG estimates of R independent chains (R, num_iterations); start = "exact" (an exact
    smoothing draw: the chain is stationary) or "ffbs" (one backward-sampled path of a bootstrap filter with the
    same N, as `bk.smc.ppg` starts)."""
    k_start, k_run = jax.random.split(key)
    if start == "exact":
        paths = jax.jit(jax.vmap(lambda k: _exact_posterior_path(k, params, ys)))(jax.random.split(k_start, R))
    else:
        paths = jax.jit(jax.vmap(lambda k: bk.smc.ffbs(k, AR, params, ys, num_particles, num_samples=1).paths[0]))(
            jax.random.split(k_start, R))
    out = _ppg_from_paths(jax.random.split(k_run, R), paths, params, ys, num_particles, num_iterations, num_trials)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.slow  # 12 s; PPG against the RTS smoother stays fast in test_ppg_matches_rts
def test_ppg_unbiased_at_stationarity_and_bias_falls(problem):
    """(a) Chains started from exact smoothing draws are stationary, so the PPG estimate of every iteration is
    unbiased (Cardoso et al. 2023): each iteration's mean over R chains is within 4 standard errors of RTS.
    (A kernel whose backward draws ignore the filter weights fails this at up to 9.5 standard errors.)
    (b) From a filter-drawn start (N = 8) the first iteration is biased and the bias falls with the iterations:
    the paired drop from iteration 1 to the mean of iterations 7-8 exceeds 4 standard errors."""
    ys, exact = problem
    R, N, k = 1024, 8, 8  # R = 1024 detects a backward kernel that ignores the filter weights (checked)
    # exact O(N^2) backward draws (num_trials=0): cheapest at N = 8; the rejection sampler is tested elsewhere
    stat = _ppg_chains(jax.random.key(11), PARAMS, ys, N, k, R, "exact", num_trials=0)
    for name in ("x", "xx"):
        e = stat[name]
        bias, se = e.mean(0) - float(exact[name]), e.std(0, ddof=1) / np.sqrt(R)
        assert np.all(np.abs(bias) < 4 * se), (name, bias, se)
    e = _ppg_chains(jax.random.key(12), PARAMS, ys, N, k, R, "ffbs", num_trials=0)["xx"]
    b1, se1 = e[:, 0].mean() - float(exact["xx"]), e[:, 0].std(ddof=1) / np.sqrt(R)
    assert b1 < -4 * se1, (b1, se1)  # the filter-drawn start is biased (towards PaRIS's bias at N = 8)
    drop = e[:, -2:].mean(1) - e[:, 0]
    assert drop.mean() > 4 * drop.std(ddof=1) / np.sqrt(R), (drop.mean(), drop.std(ddof=1) / np.sqrt(R))


@pytest.mark.slow
def test_ppg_bias_below_paris_at_equal_cost():
    """The example's model (T = 50): PPG with N = 32 particles, k = 4 iterations and burn-in k0 = 2 (roll-out over
    iterations 3-4) from a filter-drawn start costs N (k + 1) = 160 particle moves, burn-in and the initial
    filter included; PaRIS with 160 particles is significantly biased and PPG's bias is smaller in magnitude by
    more than 3 standard errors of the difference (R independent replicates of each)."""
    T50 = 50
    params = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
    _, ys = AR.simulate(jax.random.key(0), params, T50)
    sm = lg.rts_smoother(lg_params(params), ys[:, None])
    exact = float((sm.cross_covs[:, 0, 0] + sm.means[:-1, 0] * sm.means[1:, 0]).sum())
    R, N, k, k0 = 2048, 32, 4, 2
    e_ppg = _ppg_chains(jax.random.key(21), params, ys, N, k, R, "ffbs")["xx"][:, k0:].mean(1)

    def one(key):
        return bk.smc.paris(key, AR, params, ys, N * (k + 1), functional=h_sum, ess_threshold=0.5).estimate["xx"]

    e_paris = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(22), R)))
    b_ppg, b_paris = e_ppg.mean() - exact, e_paris.mean() - exact
    se_ppg, se_paris = e_ppg.std(ddof=1) / np.sqrt(R), e_paris.std(ddof=1) / np.sqrt(R)
    assert b_paris < -4 * se_paris, (b_paris, se_paris)
    assert abs(b_paris) - abs(b_ppg) > 3 * np.hypot(se_ppg, se_paris), (b_ppg, se_ppg, b_paris, se_paris)


@pytest.mark.slow
def test_example_runs_quick(tmp_path):
    """examples/paris_ppg.py --quick runs end to end and writes its figure."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "paris_ppg.py"
    spec = importlib.util.spec_from_file_location("paris_ppg_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick", "--no-progress", "--outdir", str(tmp_path)])
    assert (tmp_path / "paris_ppg.png").exists() and len(rows) == 3


# slow tier: compile-bound (9 s in the fast suite); capability kept fast by: test_paris_reproducible_and_jittable
# (PaRIS under jit; ffbs and ppg under vmap and jit only here)
@pytest.mark.slow
def test_smoothing_drivers_run_under_vmap_and_jit(problem, ppg_run):
    """ffbs and ppg called inside jax.vmap / jax.jit (as the examples batch replicates) skip their host-side checks
    and return the same values as the same call made eagerly (ffbs used to fail on a traced log-density). The
    options are those of ppg_run, whose eager call compiled both (ppg starts from one ffbs path); paris is
    checked the same way in test_paris_reproducible_and_jittable."""
    ys, _ = problem
    _, opts = ppg_run
    n = opts["num_particles"]
    keys = jax.random.split(jax.random.key(1), 2)
    batched = jax.jit(jax.vmap(lambda k: (bk.smc.ffbs(k, AR, PARAMS, ys, n, num_samples=1).paths,
                                          bk.smc.ppg(k, AR, PARAMS, ys, **opts).estimate)))(keys)
    eager = (bk.smc.ffbs(keys[1], AR, PARAMS, ys, n, num_samples=1).paths,
             bk.smc.ppg(keys[1], AR, PARAMS, ys, **opts).estimate)
    for b, e in zip(batched, eager):
        jax.tree_util.tree_map(lambda bb, ee: np.testing.assert_allclose(np.asarray(bb[1]), np.asarray(ee),
                                                                         rtol=1e-6), b, e)
