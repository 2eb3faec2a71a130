"""The driver, parametric fits, model selection, bad input, keys, ArviZ export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import bayeskit as bk
from bayeskit.datasets import load_gpdp
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference import gpdp
from bayeskit.models import fisheries as fish

GRID = np.linspace(0.0, 15.0, 30)


def profit(x, h):
    return jnp.minimum(x, h)


@pytest.fixture(scope="module")
def training():
    td = load_gpdp("training_data")
    return td["x"][1:], td["y"][1:]


@pytest.fixture(scope="module")
def map_result(training):
    x, y = training
    return bk.gpdp.solve(jax.random.key(0), x, y, GRID, profit, discount=0.99, method="map")


def test_solve_map_shapes_and_policy(map_result):
    r = map_result
    assert r.policy.shape == (30,) and r.value.shape == (30,) and r.transitions.shape == (30, 30, 30)
    np.testing.assert_allclose(r.transitions.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(r.policy_actions, GRID[r.policy])
    assert r.converged and r.policy[0] == 0
    # the GP sees the data near the stable state ~7.5: no harvest just below it, harvest above it
    esc = GRID - np.minimum(r.policy_actions, GRID)
    assert 5.0 < esc[-1] < 7.5


def test_solve_value_is_bellman_fixed_point(map_result):
    r = map_result
    R = np.asarray(gpdp.reward_matrix(profit, GRID, GRID))
    q = R + 0.99 * np.einsum("aij,j->ai", r.transitions, r.value)
    # atol for the absorbing state, whose value is 0 up to linear-solve round-off
    np.testing.assert_allclose(q.max(0), r.value, rtol=1e-5, atol=1e-12 * np.abs(r.value).max())


@pytest.fixture(scope="module")
def nuts_result(training):
    x, y = training
    return bk.gpdp.solve(jax.random.key(3), x, y, GRID, profit, discount=0.95, num_warmup=30, num_samples=20,
                         num_transition_samples=10)


# slow tier: compile-bound (10 s in the fast suite); capability kept fast by: test_solve_map_shapes_and_policy
@pytest.mark.slow
def test_to_arviz(nuts_result):
    tree = nuts_result.to_arviz()
    assert {"posterior", "sample_stats", "observed_data", "policy"} <= set(tree.children)
    assert tree["posterior"]["lengthscale"].shape == (1, 20)
    assert tree["policy"]["escapement"].dims == ("state",)
    assert nuts_result.predictive_mean.shape == (10, 30)
    np.testing.assert_allclose(nuts_result.transitions.sum(-1), 1.0, atol=1e-12)


def test_paper_convention_and_policy_iteration(map_result, training):
    post = map_result.posterior
    P = gpdp.gp_transition_tensor(post, GRID, GRID, convention="paper")
    np.testing.assert_allclose(np.asarray(P).sum(-1), 1.0, atol=1e-12)
    R = gpdp.reward_matrix(profit, GRID, GRID)
    vi = gpdp.solve_mdp(P, R, 0.99)
    pi = gpdp.solve_mdp(P, R, 0.99, solver="policy_iteration")
    np.testing.assert_array_equal(vi.policy, pi.policy)


@pytest.mark.slow
def test_nuts_key_reproducibility(training, nuts_result):
    x, y = training
    b = bk.gpdp.solve(jax.random.key(3), x, y, GRID, profit, discount=0.95, num_warmup=30, num_samples=20,
                      num_transition_samples=10)
    np.testing.assert_array_equal(nuts_result.posterior.draws["lengthscale"], b.posterior.draws["lengthscale"])
    np.testing.assert_array_equal(nuts_result.policy, b.policy)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(state_grid=np.linspace(0, 5, 30)), DataError, "state_grid"),
        (dict(discount=-0.5), ConfigurationError, "discount"),
        (dict(discount=1.0), ConfigurationError, "discount"),
        (dict(solver="newton"), ConfigurationError, "solver"),
        (dict(kernel="rbf"), ConfigurationError, "kernel"),
        (dict(state_grid=GRID[::-1]), ConfigurationError, "increasing"),
        (dict(absorbing_states=(99,)), ConfigurationError, "absorbing"),
        (dict(pseudo_observations=[(0.0, np.nan)]), DataError, "pseudo"),
    ],
)
def test_bad_options(training, kwargs, error, match):
    x, y = training
    with pytest.raises(error, match=match):
        bk.gpdp.solve(jax.random.key(0), x, y, GRID, profit, **kwargs)


def test_bad_data(training):
    x, y = training
    bad = np.array(x)
    bad[3] = np.nan
    with pytest.raises(DataError, match="observed_states"):
        bk.gpdp.solve(jax.random.key(0), bad, y, GRID, profit)
    with pytest.raises(DataError, match="next_states"):
        bk.gpdp.solve(jax.random.key(0), x, np.r_[y, 1.0], GRID, profit)
    with pytest.raises(DataError, match="next_states"):
        bk.gpdp.solve(jax.random.key(0), x, np.where(np.arange(y.size) == 0, np.inf, y), GRID, profit)
    with pytest.raises(DataError, match="state_grid"):  # the actions grid is the default state grid
        bk.gpdp.solve(jax.random.key(0), x, y, np.linspace(1.0, 15.0, 30), profit)
    with pytest.raises(ConfigurationError, match="key"):
        bk.gpdp.solve(42, x, y, GRID, profit)
    with pytest.raises(ConfigurationError, match="reward_fn"):
        bk.gpdp.solve(jax.random.key(0), x, y, GRID, "min")
    with pytest.raises(ConfigurationError, match="horizon"):
        gpdp.solve_mdp(np.ones((1, 2, 2)) / 2, np.zeros((1, 2)), 1.0, horizon=0)


# slow tier: compile-bound (6 s in the fast suite); capability kept fast by: test_parametric_tensor_point_vs_draws,
# test_waic_formula
@pytest.mark.slow
def test_parametric_fit_mle_and_criteria(training):
    x, y = training
    series = np.r_[x, y[-1]]
    fit = gpdp.fit_parametric(jax.random.key(0), series, "ricker", num_warmup=100, num_samples=100)
    # independent MLE with scipy (Nelder-Mead on log-parameters, numpy likelihood)
    def negll(z):
        r, K, s = np.exp(z)
        loc = np.log(series[:-1]) + r * (1 - series[:-1] / K)
        lx = np.log(series[1:])
        return -np.sum(-0.5 * ((lx - loc) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi) - lx)

    ref = minimize(negll, np.log([0.3, 8.0, 0.05]), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert fit.max_log_likelihood == pytest.approx(-ref.fun, abs=1e-4)
    n, k = series.size - 1, 3
    assert fit.criteria["aic"] == pytest.approx(2 * ref.fun + 2 * k, abs=1e-3)
    assert fit.criteria["bic"] == pytest.approx(2 * ref.fun + k * np.log(n), abs=1e-3)
    assert abs(fit.criteria["waic"] - fit.criteria["loo"]) < 1.0
    assert fit.log_likelihood.shape == (1, 100, n)
    tree = fit.to_arviz()
    assert "log_likelihood" in tree.children
    table = gpdp.model_selection({"Ricker": fit})
    assert table["selected"]["aic"] == "Ricker"


def test_waic_formula():
    rng = np.random.default_rng(0)
    ll = rng.normal(-1.0, 0.1, size=(400, 5))
    w, p = gpdp.waic(ll)
    lppd = np.log(np.exp(ll).mean(0)).sum()
    assert p == pytest.approx(ll.var(0, ddof=1).sum())
    assert w == pytest.approx(-2 * (lppd - p))


def test_parametric_tensor_point_vs_draws():
    P1 = gpdp.parametric_transition_tensor("allen", fish.TRUE_PARAMS, 0.05, GRID, GRID)
    draws = {k: np.full(4, v) for k, v in fish.TRUE_PARAMS.items()}
    P2 = gpdp.parametric_transition_tensor("allen", draws, np.full(4, 0.05), GRID, GRID)
    np.testing.assert_allclose(P1, P2, rtol=1e-12)


def test_fisheries_models():
    s = jnp.array([0.0, 2.0, 5.0, 8.0])
    np.testing.assert_allclose(np.asarray(fish.growth("allen", s, fish.TRUE_PARAMS))[[0, 2, 3]], [0.0, 5.0, 8.0], rtol=1e-12)
    np.testing.assert_allclose(fish.growth("ricker", 3.0, {"r": 1.0, "K": 6.0}), 3 * np.exp(0.5))
    np.testing.assert_allclose(fish.growth("myers", 2.0, {"r": 1.5, "theta": 3.0, "K": 10.0}), 1.5 * 8 / 1.8)
    with pytest.raises(ConfigurationError, match="growth"):
        fish.growth("gompertz", s, {})
    xs = fish.simulate(jax.random.key(0), "allen", fish.TRUE_PARAMS, 0.05, 5.5, 20)
    assert xs.shape == (20,) and float(xs[0]) == 5.5
