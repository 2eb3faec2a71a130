"""Dynamic programming pieces against exact ground truth (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linprog

from bayeskit.datasets import load_gpdp
from bayeskit.inference import gpdp
from bayeskit.models import fisheries as fish

GRID = np.linspace(0.0, 15.0, 50)


def profit(x, h):
    return jnp.minimum(x, h)


@pytest.fixture(scope="module")
def true_mdp():
    P = gpdp.parametric_transition_tensor("allen", fish.TRUE_PARAMS, fish.TRUE_SIGMA, GRID, GRID)
    R = gpdp.reward_matrix(profit, GRID, GRID)
    return np.asarray(P), np.asarray(R)


def _published(method):
    f3 = load_gpdp("figure3")
    return f3["value"][f3["method"] == method]


def test_true_policy_reproduces_figure3_value_iteration(true_mdp):
    P, R = true_mdp
    sol = gpdp.value_iteration(P, R, 0.99, tolerance=1e-12, max_iterations=100_000)
    assert bool(sol.converged)
    np.testing.assert_allclose(GRID[np.asarray(sol.policy)], _published("True"), atol=1e-9)
    # escapement 0 for x <= 3.06, no harvest on 4.59-6.12, escapement 6.73 above 7.65
    esc = GRID - GRID[np.asarray(sol.policy)]
    assert np.all(esc[GRID <= 3.07] == 0)
    mid = (GRID >= 4.58) & (GRID <= 6.13)
    np.testing.assert_allclose(esc[mid], GRID[mid])
    np.testing.assert_allclose(esc[GRID >= 7.64], GRID[22], atol=1e-12)


def test_true_policy_paper_value_iteration_quirk(true_mdp):
    """The paper's V <- max_h [P_h V + (1 - delta) min(x, h)], stopped at its 1000-iteration cap."""
    P, R = true_mdp
    fh = gpdp.finite_horizon(P, 0.99 * R, 999, discount=1.0)
    np.testing.assert_allclose(GRID[np.asarray(fh.policies[0])], _published("True"), atol=1e-9)
    sol = gpdp.solve_mdp(P, R, 1.0, horizon=999)
    np.testing.assert_array_equal(sol.policy, fh.policies[0])


def test_rows_sum_to_one_and_absorbing(true_mdp):
    P, _ = true_mdp
    assert P.shape == (50, 50, 50)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(P[:, 0, :], np.eye(50)[np.zeros(50, int)])
    # harvesting everything collapses the stock to 0
    for i in range(50):
        assert P[i, i, 0] == 1.0


def test_custom_absorbing_state_and_collapse():
    mean = np.array([[0.1, 5.0, 9.0]])
    P = np.asarray(gpdp.transition_tensor(mean, 0.5, np.array([0.0, 2.0, 4.0]), absorbing_states=(2,)))
    np.testing.assert_allclose(P[0, 0], [1, 0, 0])  # mean snaps to the first grid point
    np.testing.assert_allclose(P[0, 2], [0, 0, 1])  # absorbing
    np.testing.assert_allclose(P.sum(-1), 1.0)


def test_value_iteration_agrees_with_policy_iteration(true_mdp):
    P, R = true_mdp
    vi = gpdp.value_iteration(P, R, 0.99, tolerance=1e-12, max_iterations=100_000)
    pi = gpdp.policy_iteration(P, R, 0.99)
    assert bool(pi.converged)
    np.testing.assert_array_equal(vi.policy, pi.policy)
    np.testing.assert_allclose(vi.value, pi.value, rtol=1e-8, atol=1e-9)
    # exact evaluation of the VI policy reproduces its value
    v_eval = gpdp.policy_evaluation(jnp.asarray(P), jnp.asarray(R), vi.policy, 0.99)
    np.testing.assert_allclose(v_eval, vi.value, rtol=1e-8, atol=1e-9)


def _random_mdp(seed, A=3, N=6):
    rng = np.random.default_rng(seed)
    P = rng.random((A, N, N)) ** 3
    P /= P.sum(-1, keepdims=True)
    R = rng.normal(size=(A, N))
    return P, R


def test_value_iteration_matches_linear_program():
    """Independent ground truth: the LP  min sum V  s.t.  V >= R_a + gamma P_a V  (scipy linprog)."""
    P, R = _random_mdp(0)
    gamma = 0.9
    A, N, _ = P.shape
    A_ub = np.concatenate([gamma * P[a] - np.eye(N) for a in range(A)])
    b_ub = np.concatenate([-R[a] for a in range(A)])
    lp = linprog(np.ones(N), A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * N, method="highs")
    vi = gpdp.value_iteration(P, R, gamma, tolerance=1e-13, max_iterations=100_000)
    np.testing.assert_allclose(vi.value, lp.x, atol=1e-8)
    pi = gpdp.policy_iteration(P, R, gamma)
    np.testing.assert_allclose(pi.value, lp.x, atol=1e-8)


def test_finite_horizon_matches_brute_force():
    P, R = _random_mdp(1, A=2, N=3)
    T, gamma = 3, 0.8
    fh = gpdp.finite_horizon(P, R, T, discount=gamma)
    # brute force over all Markov policies: V_0(x) = max over decision rules, computed recursively by enumeration
    best = np.full(3, -np.inf)
    for rules in itertools.product(itertools.product(range(2), repeat=3), repeat=T):
        v = np.zeros(3)
        for t in reversed(range(T)):
            d = np.array(rules[t])
            v = R[d, np.arange(3)] + gamma * P[d, np.arange(3)] @ v
        best = np.maximum(best, v)
    np.testing.assert_allclose(fh.values[0], best, atol=1e-12)
    assert fh.values.shape == (T + 1, 3) and fh.policies.shape == (T, 3)


def test_transition_rows_match_scipy():
    grid = np.linspace(0, 10, 30)
    rows = np.asarray(gpdp.transition_rows(np.array([4.3, 7.1]), np.array([0.8, 1.5]), grid, family="normal"))
    for r, m, s in zip(rows, (4.3, 7.1), (0.8, 1.5)):
        ref = stats.norm.pdf(grid, m, s)
        np.testing.assert_allclose(r, ref / ref.sum(), rtol=1e-10)
    rows = np.asarray(gpdp.transition_rows(np.array([4.3]), np.array([0.1]), grid, family="lognormal"))
    ref = np.r_[0.0, stats.lognorm.pdf(grid[1:] / 4.3, 0.1)]  # the paper's dlnorm(grid / mu, 0, sigma)
    np.testing.assert_allclose(rows[0], ref / ref.sum(), rtol=1e-10)


def test_posterior_averaging_of_rows():
    grid = np.linspace(0, 10, 20)
    means = np.array([[[3.0]], [[6.0]]])
    P = np.asarray(gpdp.transition_tensor(means, 1.0, grid, absorbing_states=()))
    r1 = np.asarray(gpdp.transition_rows(3.0, 1.0, grid))
    r2 = np.asarray(gpdp.transition_rows(6.0, 1.0, grid))
    np.testing.assert_allclose(P[0, 0], (r1 + r2) / 2, rtol=1e-12)


def test_value_iteration_vmap_over_discounts(true_mdp):
    P, R = true_mdp
    sols = jax.vmap(lambda g: gpdp.value_iteration(P, R, g, tolerance=1e-10, max_iterations=20_000))(
        jnp.array([0.9, 0.99]))
    single = gpdp.value_iteration(P, R, 0.9, tolerance=1e-10, max_iterations=20_000)
    np.testing.assert_allclose(sols.value[0], single.value, rtol=1e-8)


def test_simulation_deterministic_and_common_random_numbers():
    grid = GRID

    def step(key, x, h):
        return fish.step(key, x, h, "allen", fish.TRUE_PARAMS, 0.0)

    no_harvest = np.zeros(50)
    sim = gpdp.simulate_policy(jax.random.key(0), no_harvest, grid, step, profit, 5.5, num_steps=5, num_replicates=2)
    x = 5.5
    for t in range(6):
        np.testing.assert_allclose(sim.states[:, t], x, rtol=1e-12)
        x = float(fish.growth("allen", x, fish.TRUE_PARAMS))
    np.testing.assert_allclose(sim.net_present_value, 0.0)

    def noisy(key, x, h):
        return fish.step(key, x, h, "allen", fish.TRUE_PARAMS, 0.05)

    a = gpdp.simulate_policy(jax.random.key(3), grid * 0.1, grid, noisy, profit, 10.0, num_steps=10, num_replicates=4)
    b = gpdp.simulate_policy(jax.random.key(3), grid * 0.1, grid, noisy, profit, 10.0, num_steps=10, num_replicates=4)
    np.testing.assert_array_equal(a.states, b.states)
    # npv = sum of rewards, and reward = min(x, h) with h the policy at the nearest grid point
    np.testing.assert_allclose(a.net_present_value, a.rewards.sum(1))
    idx = np.abs(grid[None, None, :] - np.asarray(a.states[:, :-1, None])).argmin(-1)
    np.testing.assert_allclose(a.actions, (grid * 0.1)[idx])


def test_simulation_one_step_mean_matches_lognormal():
    """E[x'] = exp(sigma^2 / 2) f(S): Monte Carlo within 4 standard errors."""

    def step(key, x, h):
        return fish.step(key, x, h, "allen", fish.TRUE_PARAMS, 0.05)

    sim = gpdp.simulate_policy(jax.random.key(1), np.zeros(50), GRID, step, profit, 7.0, num_steps=1,
                               num_replicates=4000)
    x1 = np.asarray(sim.states[:, 1])
    exact = np.exp(0.05**2 / 2) * float(fish.growth("allen", 7.0, fish.TRUE_PARAMS))
    assert abs(x1.mean() - exact) < 4 * x1.std() / np.sqrt(x1.size)
