"""Particle filter against the exact Kalman filter (float64), plus API behaviour and bad input."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, DataError, DegenerateWeightsError, ModelError
from bayeskit.models import linear_gaussian as lg

SCHEMES = ["multinomial", "stratified", "systematic", "residual"]


def _data(state_dim, num_steps=30, seed=0):
    params = lg.example_params(state_dim, rho=0.8, sigma_x=1.0, sigma_y=1.0)
    _, ys = lg.ssm.simulate(jax.random.key(seed), params, num_steps)
    return params, ys


# the threshold is static: the driver picks its never / always / adaptive strategy from its value
@partial(jax.jit, static_argnames=("threshold", "num_particles", "scheme", "reps"))
def _runs_jit(key, params, ys, threshold, num_particles, scheme, reps):
    def one(k):
        pf = bk.smc.particle_filter(k, lg.ssm, params, ys, num_particles, resampling=scheme,
                                    ess_threshold=threshold)
        return pf.log_evidence, pf.filter_mean, pf.filter_var

    return jax.vmap(one)(jax.random.split(key, reps))


def _runs(params, ys, num_particles, scheme, threshold, reps, seed=1):
    """``reps`` independent filters in one vmapped call; the parameters and data are arguments of the compiled
    program, so calls that differ only in them share it."""
    return _runs_jit(jax.random.key(seed), params, ys, threshold, num_particles, scheme, reps)


# the fast suite keeps one case (2-D state, adaptive resampling); each scheme's correctness is also
# checked exactly in test_resampling.py, and every scheme x threshold x dimension runs in the slow suite
FAST_CASES = [("systematic", 0.5, 2)]
SLOW_CASES = [(s, 0.5, 1) for s in SCHEMES] + [(s, th, d) for s in SCHEMES for th in (0.0, 0.3, 1.0) for d in (1, 2)]


@pytest.mark.parametrize(
    "scheme,threshold,state_dim",
    FAST_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_CASES],
)
def test_unbiased_evidence_and_filtering_moments(scheme, threshold, state_dim):
    # threshold 0 never resamples (sequential importance sampling): its weights collapse to one path
    # within a few steps, so over T = 30 the evidence ratio is too heavy-tailed for a Monte Carlo check
    # (mean 2.5e-11 over 64 runs, measured); over T = 5 it is not. Its evidence is exactly unbiased, but
    # its filtering moments are self-normalised with an O(1/ESS) bias that is not small at ESS << N
    # (z = 7.2 at t = 4, d = 2, measured), so only the evidence is checked for it.
    never_resamples = threshold == 0.0
    params, ys = _data(state_dim, num_steps=5 if never_resamples else 30)
    kf = lg.kalman_filter(params, ys)
    reps, n = 64, 1000
    logz, means, variances = map(np.asarray, _runs(params, ys, n, scheme, threshold, reps))
    # E[Z_hat / Z] = 1: the mean of the ratio lies within 4 standard errors of 1
    ratio = np.exp(logz - float(kf.log_likelihood))
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / np.sqrt(reps), ratio.mean()
    if never_resamples:
        return
    # filtering means/variances: average over runs within 4.5 standard errors (per time and coordinate)
    kvar = np.diagonal(np.asarray(kf.covs), axis1=1, axis2=2)
    for est, exact in ((means, np.asarray(kf.means)), (variances, kvar)):
        se = est.std(0, ddof=1) / np.sqrt(reps)
        z = np.abs(est.mean(0) - exact) / se
        assert z.max() < 4.5, z.max()


def test_negative_control_wrong_model_fails_the_same_check():
    # a deliberately wrong observation scale must be detected by the evidence/moment checks above (the fast
    # case's model, data and sizes: the same compiled program)
    params, ys = _data(2)
    wrong = dict(params, R=params["R"] * 4.0)
    kf = lg.kalman_filter(params, ys)
    logz, means, _ = map(np.asarray, _runs(wrong, ys, 1000, "systematic", 0.5, 64))
    ratio = np.exp(logz - float(kf.log_likelihood))
    se = means.std(0, ddof=1) / np.sqrt(64)
    z = np.abs(means.mean(0) - np.asarray(kf.means)) / se
    assert abs(ratio.mean() - 1.0) > 4 * ratio.std(ddof=1) / np.sqrt(64) or z.max() > 4.5


# slow tier: compile-bound (7 s in the fast suite); capability kept fast by: test_unbiased_evidence_and_filtering_moments
# (a guided `proposal` only here)
@pytest.mark.slow
def test_guided_filter_with_locally_optimal_proposal():
    # 1-D LG model: q(x_t | x_{t-1}, y_t) proportional to m * g is Gaussian and known in closed form
    params, ys = _data(1)
    a, q, r = params["A"][0, 0], params["Q"][0, 0], params["R"][0, 0]
    h = params["H"][0, 0]
    m0, p0 = params["m0"][0], params["P0"][0, 0]

    def post(mean, var, y):
        v = 1.0 / (1.0 / var + h * h / r)
        return v * (mean / var + h * y[0] / r), v

    def q0(p, y):
        m, v = post(m0, p0, y)
        return dist.MultivariateNormal(jnp.atleast_1d(m), jnp.atleast_2d(v))

    def qt(p, x_prev, y, t):
        m, v = post(a * x_prev[0], q, y)
        return dist.MultivariateNormal(jnp.atleast_1d(m), jnp.atleast_2d(v))

    prop = bk.smc.Proposal(q0, qt)
    kf = lg.kalman_filter(params, ys)

    def one(k):
        return bk.smc.particle_filter(k, lg.ssm, params, ys, 200, proposal=prop).log_evidence

    logz = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 64)))
    ratio = np.exp(logz - float(kf.log_likelihood))
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / np.sqrt(64)
    # the guided filter is far more efficient than the bootstrap one at equal N
    boot = np.asarray(_runs(params, ys, 200, "systematic", 0.5, 64)[0])
    assert logz.std() < boot.std()


@pytest.fixture(scope="module")
def with_history():
    """One filter with history (2-D state, T = 12, N = 64), shared by the tests of its fields."""
    params, ys = _data(2, num_steps=12)
    return params, ys, bk.smc.particle_filter(jax.random.key(5), lg.ssm, params, ys, 64, history=True)


def test_same_key_same_answer_and_result_fields(with_history):
    params, ys, a = with_history
    b = bk.smc.particle_filter(jax.random.key(5), lg.ssm, params, ys, 64, history=True)
    c = bk.smc.particle_filter(jax.random.key(6), lg.ssm, params, ys, 64)
    assert float(a.log_evidence) == float(b.log_evidence)
    assert float(a.log_evidence) != float(c.log_evidence)
    assert a.filter_mean.shape == (12, 2) and a.ess.shape == (12,) and a.resampled.shape == (12,)
    assert a.particles_history.shape == (12, 64, 2) and a.ancestors.shape == (12, 64)
    np.testing.assert_allclose(np.sum(a.log_evidence_increments), a.log_evidence, rtol=1e-10)
    assert c.particles_history is None


def test_to_arviz_named_dims(with_history):
    tree = with_history[2].to_arviz()
    assert tree["filtering"]["filter_mean"].dims == ("time", "state_dim_0")
    assert tree["particles"]["particles_history"].dims == ("time", "particle", "state_dim_0")
    assert set(tree["sample_stats"].data_vars) >= {"ess", "log_evidence_increment", "resampled", "log_evidence"}
    assert tree["observed_data"]["y"].sizes["time"] == 12
    assert np.isfinite(tree.attrs["log_evidence"])


# slow tier: compile-bound (5 s in the fast suite); capability kept fast by: test_many_series_in_one_call_match_one_by_one
# (`sharding` only here)
@pytest.mark.slow
def test_sharded_filter_matches_unsharded():
    assert len(jax.devices()) >= 4, "tests/conftest.py sets --xla_force_host_platform_device_count=4"
    params, ys = _data(1, num_steps=25)
    sharding = bk.distributed.particle_sharding(jax.devices()[:4])
    for scheme in ("systematic",):
        ref = bk.smc.particle_filter(jax.random.key(2), lg.ssm, params, ys, 1024, resampling=scheme)
        sh = bk.smc.particle_filter(jax.random.key(2), lg.ssm, params, ys, 1024, resampling=scheme,
                                    sharding=sharding)
        np.testing.assert_allclose(sh.log_evidence, ref.log_evidence, rtol=1e-9)
        np.testing.assert_allclose(sh.filter_mean, ref.filter_mean, rtol=1e-8, atol=1e-10)
        assert len(sh.particles.sharding.device_set) == 4
    with pytest.raises(ConfigurationError, match="divisible"):
        bk.smc.particle_filter(jax.random.key(2), lg.ssm, params, ys, 1022, sharding=sharding)


def test_stochastic_volatility_runs_and_is_finite():
    sv = bk.models.stochastic_volatility
    p = sv.example_params()
    _, ys = sv.ssm.simulate(jax.random.key(0), p, 100)
    pf = bk.smc.particle_filter(jax.random.key(1), sv.ssm, p, ys, 500)
    assert np.isfinite(pf.log_evidence) and pf.filter_mean.shape == (100,)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small():
    return _data(1, num_steps=10)


def test_bad_observations(small):
    params, ys = small
    bad = np.asarray(ys).copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="ys.*NaN"):
        bk.smc.particle_filter(jax.random.key(0), lg.ssm, params, bad, 10)
    with pytest.raises(DataError, match="shape"):
        bk.smc.particle_filter(jax.random.key(0), lg.ssm, params, np.zeros((10, 3)), 10)
    with pytest.raises(DataError, match="shape"):
        bk.smc.particle_filter(jax.random.key(0), lg.ssm, params, np.zeros(10), 10)


def test_bad_options(small):
    params, ys = small
    key = jax.random.key(0)
    with pytest.raises(ConfigurationError, match="num_particles"):
        bk.smc.particle_filter(key, lg.ssm, params, ys, 0)
    with pytest.raises(ConfigurationError, match="resampling"):
        bk.smc.particle_filter(key, lg.ssm, params, ys, 10, resampling="bogus")
    with pytest.raises(ConfigurationError, match="ess_threshold"):
        bk.smc.particle_filter(key, lg.ssm, params, ys, 10, ess_threshold=1.5)
    with pytest.raises(ConfigurationError, match="key"):
        bk.smc.particle_filter(0, lg.ssm, params, ys, 10)


def test_params_the_model_rejects(small):
    _, ys = small
    sv = bk.models.stochastic_volatility
    with pytest.raises(ModelError, match="params"):
        bk.smc.particle_filter(jax.random.key(0), sv.ssm, {"mu": 0.0, "phi": 0.5, "sigma": -1.0}, ys[:, 0], 10)


def test_all_weights_vanish_raises():
    # uniform observation noise: y far outside the support has zero likelihood for every particle
    ssm = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, 1.0),
        transition=lambda p, x, t: dist.Normal(x, 0.1),
        observation=lambda p, x, t: dist.Uniform(x - 1.0, x + 1.0),
    )
    ys = jnp.array([0.1, 0.2, 50.0, 0.1])
    with pytest.raises(DegenerateWeightsError, match="time step 2"):
        bk.smc.particle_filter(jax.random.key(0), ssm, {}, ys, 100)


def test_model_validation_is_remembered_per_parameter_values():
    # the model checks run once per (model, parameter values); the data are checked on every call
    calls = []

    def initial(p):
        calls.append(1)
        return dist.Normal(0.0, p["s"])

    ssm = bk.StateSpaceModel(initial, lambda p, x, t: dist.Normal(0.9 * x, p["s"]),
                             lambda p, x, t: dist.Normal(x, 1.0), vectorized=True)
    ys = jnp.linspace(-1.0, 1.0, 12)
    good = {"s": jnp.float32(1.0)}
    bk.smc.particle_filter(jax.random.key(0), ssm, good, ys, 20)
    n_first = len(calls)
    bk.smc.particle_filter(jax.random.key(1), ssm, {"s": jnp.float32(1.0)}, ys, 20)
    assert len(calls) == n_first  # same values: no model re-check
    bad = np.asarray(ys).copy()
    bad[4] = np.inf
    with pytest.raises(DataError, match="ys"):
        bk.smc.particle_filter(jax.random.key(2), ssm, good, bad, 20)
    with pytest.raises(DataError, match="shape"):
        bk.smc.particle_filter(jax.random.key(2), ssm, good, np.zeros((12, 2)), 20)
    with pytest.raises(ModelError, match="params"):  # new values are checked again
        bk.smc.particle_filter(jax.random.key(3), ssm, {"s": jnp.float32(-1.0)}, ys, 20)
    bk.smc.particle_filter(jax.random.key(4), ssm, {"s": jnp.float32(2.0)}, ys, 20)
    assert len(calls) > n_first


def test_model_errors_name_what_is_wrong(small):
    params, ys = small
    key = jax.random.key(0)
    ar = bk.StateSpaceModel(initial=lambda p: dist.Normal(0.0, 1.0),
                            transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
                            observation=lambda p, x, t: dist.Normal(x, p["sigma_y"]))
    y1 = ys[:, 0]
    with pytest.raises(ModelError, match=r"`params` has no key 'sigma_y', which the model uses; "
                                         r"`params` has keys \['rho'\]"):
        bk.smc.particle_filter(key, ar, {"rho": 0.5}, y1, 10)
    with pytest.raises(ModelError, match="`ssm` must be a bayeskit.StateSpaceModel, got dict"):
        bk.smc.particle_filter(key, {"initial": ar.initial}, params, ys, 10)
    floats = bk.StateSpaceModel(initial=lambda p: dist.Normal(0.0, 1.0), transition=lambda p, x, t: 0.5 * x,
                                observation=lambda p, x, t: dist.Normal(x, 1.0))
    with pytest.raises(ModelError, match="`ssm.transition` must return a numpyro distribution, got"):
        bk.smc.particle_filter(key, floats, {}, y1, 10)
    with pytest.raises(ConfigurationError, match="num_particles"):
        bk.smc.paris(key, lg.ssm, params, ys, 1)


def test_many_series_in_one_call_match_one_by_one():
    # the batched workload (many series, PMMH over data sets): jax.vmap of the public driver over keys
    # and series inside jax.jit gives each series' own filter, here with resampling at every step
    params, _ = _data(1, num_steps=15)
    ys = jnp.stack([lg.ssm.simulate(jax.random.key(s), params, 15)[1] for s in range(3)])
    keys = jax.random.split(jax.random.key(9), 3)

    def one(k, y):
        return bk.smc.particle_filter(k, lg.ssm, params, y, 64, ess_threshold=1.0).log_evidence

    batched = np.asarray(jax.jit(jax.vmap(one))(keys, ys))
    looped = np.array([float(one(k, y)) for k, y in zip(keys, ys)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)
    assert len(set(np.round(batched, 6))) == 3  # three different series, three different estimates
