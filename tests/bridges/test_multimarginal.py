"""Reference dynamics (EM maximum likelihood), metrics, and multi-marginal SB with iterative reference
refinement against known dynamics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial

import bayeskit as bk
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.testing import gaussian_bridge


def ou_snapshots(times, n, theta=1.0, sigma=0.3, m0=(3.0, -2.0), s0=0.1, seed=0):
    rng = np.random.default_rng(seed)
    m0 = np.asarray(m0)
    out = []
    for t in times:
        m = m0 * np.exp(-theta * t)
        v = s0**2 * np.exp(-2 * theta * t) + sigma**2 / (2 * theta) * (1 - np.exp(-2 * theta * t))
        out.append(m + np.sqrt(v) * rng.standard_normal((n, len(m0))))
    return out


# ----------------------------------------------------------------------------- reference refits
@pytest.mark.slow  # 24 s; the refit step stays in the fast suite via the Lotka-Volterra refit and IRR tests
def test_ou_and_linear_refit_recover_parameters():
    # EM MLE (closed-form weighted least squares) on simulated OU paths: error ~ 1/sqrt(N T)
    ref_true = bk.bridges.OU(sigma=0.5, theta=1.5, mean=jnp.array([1.0, -1.0]))
    x0 = jnp.zeros((2000, 2)) + jnp.array([3.0, 0.0])
    path = ref_true.simulate(jax.random.key(0), x0, t0=0.0, t1=2.0, num_steps=200)
    grid = np.linspace(0.0, 2.0, 201)
    fit = bk.bridges.OU(sigma=0.5).fit(path, grid)
    # sd of theta-hat ~ sigma / sqrt(sum x^2 dt) ~ 0.5 / sqrt(2000 * 2 * ~1) ~ 0.008; EM bias O(theta dt) ~ 0.01
    assert abs(float(fit.params["theta"]) - 1.5) < 4 * 0.008 + 0.02
    np.testing.assert_allclose(fit.params["mean"], [1.0, -1.0], atol=0.05)
    lin = bk.bridges.Linear(2, sigma=0.5).fit(path, grid)
    np.testing.assert_allclose(lin.params["A"], -1.5 * np.eye(2), atol=0.1)
    fit_s = bk.bridges.OU(sigma=1.0).fit(path, grid, fit_sigma=True)
    assert abs(fit_s.sigma - 0.5) < 0.01
    # the closed form is the least-squares optimum: the generic L-BFGS path agrees
    generic = bk.bridges.ParametricDrift(bk.bridges.OU().drift_fn, {"theta": jnp.asarray(0.5), "mean": jnp.zeros(2)},
                                         sigma=0.5).fit(path, grid, num_iterations=100)
    np.testing.assert_allclose(generic.params["theta"], fit.params["theta"], atol=1e-4)


def test_lotka_volterra_refit_recovers_parameters():
    lv = bk.models.lotka_volterra
    p = lv.example_params()
    x0 = jnp.asarray(np.random.default_rng(0).normal([5.0, 4.0], 0.1, (500, 2)))
    path = lv.simulate(jax.random.key(1), p, x0, t1=4.0, num_steps=400, sigma=0.1)
    fit = bk.bridges.LotkaVolterra(sigma=0.1, alpha=0.5, beta=0.5, gamma=0.5, delta=0.5).fit(
        path, np.linspace(0, 4, 401), num_iterations=300)
    got = {k: abs(float(v)) for k, v in fit.params.items()}
    for k, v in p.items():
        assert abs(got[k] - float(v)) < 0.03 * max(1.0, float(v)) + 0.01, (k, got[k], float(v))


# slow tier: compile-bound (4 s in the fast suite); capability kept fast by: test_ipf_gp_matches_gaussian_closed_form
@pytest.mark.slow
def test_gradient_field_and_repressilator_are_drifts():
    gf = bk.bridges.GradientField(jax.random.key(0), 3, num_hidden=8)
    x = jnp.ones((5, 3))
    assert gf.drift(x).shape == (5, 3)
    rep = bk.bridges.Repressilator(beta=2.0, gamma=1.0)
    d = rep.drift(jnp.array([[1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(d, [[2.0 / 2.0 - 1.0] * 3], atol=1e-6)
    path = gf.simulate(jax.random.key(1), x, num_steps=10)
    fitted = gf.fit(path, np.linspace(0, 1, 11), num_iterations=5)
    assert fitted.params["W1"].shape == (8, 3)


# ----------------------------------------------------------------------------- metrics
def test_emd_exact_against_brute_force_and_linprog():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 1
    import itertools

    cost = scipy.spatial.distance.cdist(x, y)
    brute = min(cost[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert abs(bk.testing.emd(x, y) - brute) < 1e-12
    assert abs(bk.testing.emd(x, y, method="linprog") - brute) < 1e-9
    # unequal sizes: duplicating every point of y leaves the measure unchanged
    assert abs(bk.testing.emd(x, np.concatenate([y, y])) - brute) < 1e-9
    with pytest.raises(DataError, match="same dimension"):
        bk.testing.emd(x, np.zeros((3, 3)))


def test_bw2_uvp_closed_form():
    m, c = np.array([1.0, 2.0]), np.array([[2.0, 0.3], [0.3, 1.0]])
    assert abs(bk.testing.bw2_uvp(m, c, m, c)) < 1e-10
    # shift only: BW2 = |dm|^2
    assert abs(bk.testing.bw2(m + 1.0, c, m, c) - 2.0) < 1e-10
    # commuting covariances: BW2 = sum (sqrt(a) - sqrt(b))^2
    assert abs(bk.testing.bw2(m, np.diag([4.0, 1.0]), m, np.diag([1.0, 9.0])) - (1.0 + 4.0)) < 1e-10


# ----------------------------------------------------------------------------- IPF with GP drifts
def test_ipf_gp_matches_gaussian_closed_form():
    # one interval, Brownian reference: the bridge marginal at t = 1/2 against the Gaussian SB closed form
    # SBIRR's regime: small diffusion relative to the drift (the GP regresses velocities whose noise variance
    # is sigma^2 / dt; with sigma = 0.5 the regression is too noisy for IPF to converge to the closed form)
    rng = np.random.default_rng(0)
    sigma, n = 0.2, 400
    m0, m1 = np.array([0.0]), np.array([1.0])
    c0, c1 = np.array([[0.2]]), np.array([[0.05]])
    x0 = jnp.asarray(rng.normal(m0, np.sqrt(c0[0, 0]), (n, 1)))
    x1 = jnp.asarray(rng.normal(m1, np.sqrt(c1[0, 0]), (n, 1)))
    ref = bk.bridges.Brownian(sigma)
    f64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    # GP with the explicit basis (1, x, tau, x tau) and a small residual kernel variance; with SBIRR's
    # zero-mean GP of variance 1/dt the regression fits the Euler noise and IPF drifts to a front-loaded bridge
    # (midpoint mean ~0.7 instead of 0.5), see docs/bridges.md
    kern = bk.bridges.kernels
    fwd, bwd = kern.ipf_interval(jax.random.key(0), x0, x1, ref.params, f64(0.0), f64(0.05), f64(sigma), f64(1.0),
                                 drift_fn=ref.drift_fn, num_steps=20, num_ipf_iterations=10, max_gp_points=600,
                                 linear_basis=True, kernel_variance=0.1)
    start = jnp.asarray(rng.normal(m0, np.sqrt(c0[0, 0]), (4000, 1)))
    path = kern.simulate_gp_drift(jax.random.key(1), fwd, start, ref.params, f64(0.0), f64(0.05), f64(sigma), f64(1.0),
                                  drift_fn=ref.drift_fn, num_steps=20, kind="exponential", use_reference_mean=False,
                                  direction="forward", kernel_variance=0.1)
    gb = gaussian_bridge(m0, c0, m1, c1, sigma**2)
    for k in (10, 20):
        mt, st = gb.marginal(k / 20)
        got = np.asarray(path[k, :, 0])
        # GP-regression and IPF-truncation error dominate Monte Carlo error (sd of the mean ~ 0.006): the
        # solver is approximate (midpoint errors 0.04-0.08 across seeds); tolerances 0.1 on the mean (the
        # bridge moves it by 1), 40 % on the variance
        assert abs(got.mean() - mt[0]) < 0.1, (k, got.mean(), mt)
        assert 0.6 < got.var() / st[0, 0] < 1.4, (k, got.var(), st)


# slow tier: compile-bound (6 s in the fast suite); capability kept fast by: test_ipf_gp_matches_gaussian_closed_form,
# test_arviz.py[multimarginal]
@pytest.mark.slow
def test_multimarginal_shapes_keys_arviz_and_vanilla():
    snaps = ou_snapshots([0.0, 0.5, 1.0], 20)
    kw = dict(num_refinements=2, num_ipf_iterations=2, time_step=0.1, max_gp_points=100)
    res = bk.bridges.multimarginal(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=bk.bridges.OU(sigma=0.3), **kw)
    assert res.trajectories.shape == (11, 60, 2)
    np.testing.assert_allclose(res.grid, np.linspace(0, 1, 11), atol=1e-12)
    # every snapshot's own particles sit on their trajectories at their time
    np.testing.assert_allclose(res.trajectories[5, 20:40], snaps[1], atol=1e-12)
    assert res.num_refinements == 2
    res2 = bk.bridges.multimarginal(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=bk.bridges.OU(sigma=0.3), **kw)
    np.testing.assert_array_equal(res.trajectories, res2.trajectories)
    assert res.marginal(0.25).shape == (60, 2)
    assert np.isfinite(res.emd(snaps[1], 0.5))
    dt = res.to_arviz()
    assert set(dt.children) == {"posterior", "reference"}
    assert dt["posterior"]["x"].dims == ("chain", "draw", "time", "dim")
    assert dt["reference"]["theta"].shape == (2,)
    van = bk.bridges.vanilla_sb(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=bk.bridges.OU(sigma=0.3),
                                num_ipf_iterations=2, time_step=0.1, max_gp_points=100)
    assert van.initial_reference.name == "brownian" and van.reference.name == "ou"


def test_bad_input():
    snaps = ou_snapshots([0.0, 1.0], 5)
    key = jax.random.key(0)
    with pytest.raises(DataError, match="same dimension"):
        bk.bridges.multimarginal(key, [snaps[0], np.zeros((5, 3))], [0.0, 1.0])
    with pytest.raises(DataError, match="at least 2"):
        bk.bridges.multimarginal(key, [snaps[0]], [0.0])
    with pytest.raises(DataError, match="strictly increasing"):
        bk.bridges.multimarginal(key, snaps, [1.0, 1.0])
    with pytest.raises(DataError, match="one entry per snapshot"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0, 2.0])
    with pytest.raises(ConfigurationError, match="sigma"):
        bk.bridges.OU(sigma=0.0)
    with pytest.raises(ConfigurationError, match="sigma"):
        bk.bridges.Brownian(-1.0)
    with pytest.raises(ConfigurationError, match="num_refinements"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0], num_refinements=0)
    with pytest.raises(ConfigurationError, match="reference"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0], reference="ou")
    with pytest.raises(DataError, match="NaN"):
        bk.bridges.multimarginal(key, [snaps[0], np.full((5, 2), np.nan)], [0.0, 1.0])
    with pytest.raises(ConfigurationError, match="solver"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0], solver="sinkhorn")
    with pytest.raises(ConfigurationError, match="not linear"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0], reference=bk.bridges.LotkaVolterra(), solver="lightsb")
    with pytest.raises(ConfigurationError, match="epsilon"):
        bk.bridges.multimarginal(key, snaps, [0.0, 1.0], solver="lightsb", lightsb_options={"epsilon": 1.0})


# ----------------------------------------------------------------------------- SBIRR ground truths
# Per-interval solver for the OU ground truth: solver="lightsb" (LightSB under the linear reference, exact
# reference bridges between the plan's end points). With one full component started at the moment-matched
# Gaussian SB and no training steps it is the exact minimiser of the LightSB loss on the snapshots
# (test_linear.py), so these tests measure the refinement itself, not an optimiser. Sources of error in
# theta, measured (10 data seeds each): the finite-sample error of the snapshots (sd across seeds), the
# Euler-Maruyama refit bias theta_EM = (1 - exp(-theta h)) / h ~ theta (1 - theta h / 2), and the geometric
# convergence of the refinement (contraction ~0.5 per pass: 0.77, 0.92, 0.96, 0.98, ...).
OU_LSB = dict(solver="lightsb", lightsb_options=dict(num_components=1, covariance="full", init="gaussian", num_iterations=0))


def test_irr_lightsb_recovers_ou_theta_vanilla_does_not():
    # fast version: 3 snapshots x 200 particles, step 0.02, 6 refinements. Over data seeds 0-9 the final
    # theta was 0.979 +- 0.021 (sd) and vanilla SB 0.677 +- 0.013. Tolerance: 4 sd + EM bias theta h / 2.
    theta, sigma, h = 1.0, 0.3, 0.02
    times = np.array([0.0, 1.0, 2.0])
    snaps = ou_snapshots(times, 200, theta=theta, sigma=sigma, seed=0)
    irr = bk.bridges.multimarginal(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma),
                                   num_refinements=6, time_step=h, **OU_LSB)
    van = bk.bridges.vanilla_sb(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma), time_step=h,
                                **OU_LSB)
    theta_irr = float(irr.reference.params["theta"])
    theta_van = float(van.reference.params["theta"])
    assert abs(theta_irr - theta) < 4 * 0.021 + theta * h / 2, [float(r["theta"]) for r in irr.reference_history]
    assert abs(theta_van - theta) > 0.323 - 4 * 0.013, theta_van  # vanilla's systematic error 0.32 +- 0.013
    # the IRR trajectories pass through the snapshots (each snapshot's particles sit on their trajectories)
    np.testing.assert_allclose(irr.trajectories[irr.snapshot_grid_index[1], 200:400], snaps[1], atol=1e-6)


@pytest.mark.slow
def test_irr_recovers_ou_theta_vanilla_does_not():
    # 4 snapshots x 400 particles, step 0.01, 10 refinements (converged: the last 5 passes move by < 0.01).
    # Over data seeds 0-9 the final theta was 0.985 +- 0.012 (sd; 0.990 +- 0.003 with 1600 particles, so the
    # error shrinks with the sample size) and vanilla SB 0.772 +- 0.007. Tolerance: 4 sd + EM bias theta h / 2
    # = 0.053. (With SBIRR's IPF-GP solver, see test_irr_ipf_gp_ou_theta, the refined theta is further off.)
    theta, sigma, h = 1.0, 0.3, 0.01
    times = np.array([0.0, 1.0, 2.0, 3.0])
    snaps = ou_snapshots(times, 400, theta=theta, sigma=sigma, seed=0)
    irr = bk.bridges.multimarginal(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma),
                                   num_refinements=10, time_step=h, **OU_LSB)
    van = bk.bridges.vanilla_sb(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma), time_step=h,
                                **OU_LSB)
    thetas = [float(r["theta"]) for r in irr.reference_history]
    assert abs(thetas[-1] - theta) < 4 * 0.012 + theta * h / 2, thetas
    assert abs(float(van.reference.params["theta"]) - theta) > 0.228 - 4 * 0.007
    # a trained mixture (3 full components, 1000 Adam steps from the reference code's initialisation) instead
    # of the exact one-component solve: final theta 0.982-0.987 on data seeds 0-3 (exact solve: 0.978-0.994)
    lsb = bk.bridges.multimarginal(jax.random.key(1), snaps, times, reference=bk.bridges.OU(sigma=sigma),
                                   num_refinements=10, time_step=h, solver="lightsb",
                                   lightsb_options=dict(num_components=3, num_iterations=1000))
    assert abs(float(lsb.reference.params["theta"]) - theta) < 4 * 0.012 + theta * h / 2


@pytest.mark.slow
def test_irr_ipf_gp_ou_theta():
    # SBIRR's own per-interval solver (IPF with GP drift regression) on the OU ground truth. Its refined theta
    # does not settle: on data seeds 0-2 (100 particles, step 0.05, 10 refinements) passes 2-10 gave
    # 0.93 +- 0.05, 0.94 +- 0.07, 0.93 +- 0.06 (pass-to-pass sd from the random GP subsets and the simulated
    # IPF paths) against vanilla SB's 0.77; of the ~0.065 bias, 0.025 is the Euler-Maruyama refit bias at
    # step 0.05 and the rest the GP regression (front-loaded bridges, docs/bridges.md). Hence a comparative
    # check here (IRR averaged over the refined passes halves vanilla's error: measured 0.06-0.07 vs 0.23);
    # recovery to a derived tolerance is shown with solver="lightsb" above.
    theta, sigma = 1.0, 0.3
    times = np.array([0.0, 1.0, 2.0, 3.0])
    snaps = ou_snapshots(times, 100, theta=theta, sigma=sigma)
    kw = dict(num_ipf_iterations=5, time_step=0.05, max_gp_points=600)
    irr = bk.bridges.multimarginal(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma),
                                   num_refinements=8, **kw)
    van = bk.bridges.vanilla_sb(jax.random.key(0), snaps, times, reference=bk.bridges.OU(sigma=sigma), **kw)
    thetas = [float(h["theta"]) for h in irr.reference_history]
    err_irr = abs(np.mean(thetas[1:]) - theta)
    err_van = abs(float(van.reference.params["theta"]) - theta)
    assert err_irr < err_van / 2, (thetas, err_van)


@pytest.mark.slow
def test_lv_heldout_emd_irr_below_vanilla():
    data = bk.datasets.load_sbirr("LV")
    train, held = data[0::2], data[1::2]
    times = 2.0 * np.arange(len(train))
    kw = dict(num_ipf_iterations=5, time_step=0.04, max_gp_points=500)
    irr = bk.bridges.multimarginal(jax.random.key(0), train, times, reference=bk.bridges.LotkaVolterra(sigma=0.1),
                                   num_refinements=5, **kw)
    van = bk.bridges.vanilla_sb(jax.random.key(0), train, times, reference=bk.bridges.LotkaVolterra(sigma=0.1), **kw)
    emd_irr = np.mean([irr.emd(h, t + 1.0) for h, t in zip(held, times[:-1])])
    emd_van = np.mean([van.emd(h, t + 1.0) for h, t in zip(held, times[:-1])])
    assert emd_irr < emd_van, (emd_irr, emd_van)


@pytest.mark.slow
def test_light_sb_example_quick_smoke(tmp_path):
    # the multimarginal example is too slow for the default run; the LightSB example helpers are exercised here
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "light_sb.py"
    spec = importlib.util.spec_from_file_location("light_sb_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run_instance(2, 1.0, num_train=512, num_steps=100, num_test=20)
    assert np.isfinite(res["cbw2_uvp"]) and res["seconds"] > 0
