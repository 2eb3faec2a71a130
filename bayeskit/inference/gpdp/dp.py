r"""Discretised stochastic dynamic programming: transition tensors, value/policy iteration, simulation.

States live on a grid :math:`x_1 < \dots < x_N`, actions (harvests) on a grid :math:`h_1, \dots, h_A`.
A model of the one-step dynamics gives, for every action :math:`a` and state :math:`i`, a predictive
distribution of the next state with mean :math:`\mu_{a i}` and scale :math:`s_{a i}` (per posterior
draw :math:`d`); the transition tensor is

.. math::

    P_{a i j} = \frac{1}{D} \sum_{d=1}^{D}
      \frac{p(x_j \mid \mu^{(d)}_{a i}, s^{(d)}_{a i})}{\sum_{k} p(x_k \mid \mu^{(d)}_{a i}, s^{(d)}_{a i})},

with :math:`p` a normal density (the GP predictive, latent variance) or a log-normal density
(multiplicative :math:`Z \sim \operatorname{LogNormal}(0, \sigma)` noise of the parametric models).
As in Boettiger, Mangel & Munch (2015, code ``gp_transition_matrix``/``par_F``), a row whose mean
snaps to the first grid point (a collapse) puts all its mass there, and designated *absorbing* states
(the stock 0) map to themselves under every action. The same builder serves the GP and every
parametric model, so their policies are solved by the same code.

The Bellman optimality equation with discount factor :math:`\gamma` and reward :math:`R_{a i}`,

.. math::

    V(x_i) = \max_a \Big\{ R_{a i} + \gamma \sum_j P_{a i j} V(x_j) \Big\},

is solved by value iteration (:func:`value_iteration`) or Howard's policy iteration
(:func:`policy_iteration`), both one jitted ``lax.while_loop``; :func:`finite_horizon` runs the
backward recursion for a fixed number of steps (the paper's "value iteration" is a 1000-step finite
horizon with undiscounted continuation and reward weight :math:`1 - \delta`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "DPSolution",
    "FiniteHorizonSolution",
    "SimulationResult",
    "escapement",
    "transition_rows",
    "transition_tensor",
    "reward_matrix",
    "bellman_q",
    "value_iteration",
    "policy_iteration",
    "policy_evaluation",
    "finite_horizon",
    "simulate_policy",
]


class DPSolution(NamedTuple):
    """Solution of an infinite-horizon discounted MDP.

    Fields:
        value: (N,) optimal value :math:`V(x_i)`.
        policy: (N,) int, index of the optimal action at each state (first maximiser on ties).
        q_values: (A, N) :math:`Q(a, x_i) = R_{ai} + \\gamma (P_a V)_i`.
        num_iterations: number of sweeps (value iteration) or improvement steps (policy iteration).
        residual: sup-norm of the last change of ``value`` (value iteration) or 0 (policy iteration).
        converged: whether the stopping rule was met before the iteration cap.
    """

    value: jax.Array
    policy: jax.Array
    q_values: jax.Array
    num_iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


class FiniteHorizonSolution(NamedTuple):
    """Backward induction over ``num_steps``: ``values`` (num_steps + 1, N) with ``values[t]`` the
    value-to-go at time t (``values[-1]`` terminal); ``policies`` (num_steps, N) action indices."""

    values: jax.Array
    policies: jax.Array


class SimulationResult(NamedTuple):
    """Replicated forward simulations of a policy.

    Fields:
        states: (num_replicates, num_steps + 1) stock trajectories.
        actions: (num_replicates, num_steps) actions applied.
        rewards: (num_replicates, num_steps) rewards earned.
        net_present_value: (num_replicates,) :math:`\\sum_t \\gamma^t R_t`.
    """

    states: jax.Array
    actions: jax.Array
    rewards: jax.Array
    net_present_value: jax.Array


def escapement(states, actions):
    """State after the action, :math:`S = \\max(x - h, 0)` (broadcasts)."""
    return jnp.maximum(states - actions, 0.0)


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def transition_rows(next_mean, next_scale, state_grid, *, family: str = "normal"):
    """Normalised transition rows for predictive means/scales of any shape ``(...,)`` -> ``(..., N)``.

    ``family="normal"``: :math:`p(x_j) \\propto \\exp(-(x_j - \\mu)^2 / (2 s^2))`;
    ``family="lognormal"``: :math:`p(x_j) \\propto \\operatorname{LogNormal}(x_j / \\mu; 0, s)` (zero at
    :math:`x_j \\le 0`). A mean that snaps to the first grid point, a zero scale's nearest point, and a row
    with no mass follow the paper: mass on the first grid point, or on the nearest point for ``s = 0``.
    """
    grid = _float(state_grid)
    mu = jnp.asarray(next_mean, grid.dtype)[..., None]
    s = jnp.asarray(next_scale, grid.dtype)[..., None]
    s_safe = jnp.where(s > 0, s, 1.0)
    if family == "normal":
        logw = -0.5 * ((grid - mu) / s_safe) ** 2
    elif family == "lognormal":
        pos = grid > 0
        mu_safe = jnp.where(mu > 0, mu, 1.0)
        z = jnp.where(pos, grid, 1.0) / mu_safe
        logz = jnp.log(z)
        logw = jnp.where(pos & (mu > 0), -logz - 0.5 * (logz / s_safe) ** 2, -jnp.inf)
    else:  # pragma: no cover - validated by callers
        raise ValueError(f"unknown family {family!r}")
    nearest = jnp.argmin(jnp.abs(grid - mu), axis=-1)
    num = grid.shape[0]
    first = jax.nn.one_hot(jnp.zeros_like(nearest), num, dtype=grid.dtype)
    point = jax.nn.one_hot(nearest, num, dtype=grid.dtype)
    mx = jnp.max(logw, axis=-1, keepdims=True)
    w = jnp.exp(logw - jnp.where(jnp.isfinite(mx), mx, 0.0))
    total = jnp.sum(w, axis=-1, keepdims=True)
    rows = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), first)
    rows = jnp.where(s > 0, rows, point)
    collapsed = (nearest == 0)[..., None]
    return jnp.where(collapsed, first, rows)


@partial(jax.jit, static_argnames=("family", "absorbing_states"))
def transition_tensor(next_mean, next_scale, state_grid, *, family: str = "normal",
                      absorbing_states: tuple[int, ...] = (0,)) -> jax.Array:
    """Transition tensor :math:`P_{aij}` averaged over posterior draws.

    Args:
        next_mean (jax.Array): (D, A, N) or (A, N) predictive mean of the next state for draw d, action a, state i.
        next_scale (jax.Array): same shape (or broadcastable), predictive standard deviation (``normal``) or
            log-normal scale (``lognormal``).
        state_grid (jax.Array): (N,) increasing state grid.
        family (str): ``"normal"`` (GP) or ``"lognormal"`` (parametric models).
        absorbing_states (tuple[int, ...]): indices i whose rows are :math:`e_i` for every action.

    Returns:
        The transition tensor, shape (A, N, N), every row summing to one.
    """
    grid = _float(state_grid)
    mean = jnp.asarray(next_mean, grid.dtype)
    if mean.ndim == 2:
        mean = mean[None]
    scale = jnp.broadcast_to(jnp.asarray(next_scale, grid.dtype), mean.shape)

    def add(acc, ms):
        return acc + transition_rows(ms[0], ms[1], grid, family=family), None

    zero = jnp.zeros(mean.shape[1:] + grid.shape, grid.dtype)
    total, _ = jax.lax.scan(add, zero, (mean, scale))
    tensor = total / jnp.sum(total, axis=-1, keepdims=True)
    num = grid.shape[0]
    for idx in absorbing_states:
        tensor = tensor.at[:, idx, :].set(jax.nn.one_hot(idx, num, dtype=grid.dtype))
    return tensor


def reward_matrix(reward_fn: Callable, state_grid, actions_grid):
    """Rewards :math:`R_{ai} = \\text{reward\\_fn}(x_i, h_a)` as an (A, N) array (``reward_fn`` must
    broadcast, e.g. ``lambda x, h: jnp.minimum(x, h)``)."""
    x = _float(state_grid)
    h = jnp.asarray(actions_grid, x.dtype)
    return jnp.broadcast_to(jnp.asarray(reward_fn(x[None, :], h[:, None]), x.dtype), (h.shape[0], x.shape[0]))


def bellman_q(transitions, rewards, value, discount):
    """:math:`Q_{ai} = R_{ai} + \\gamma \\sum_j P_{aij} V_j`."""
    num_actions, num_states, _ = transitions.shape
    expected = (transitions.reshape(num_actions * num_states, -1) @ value).reshape(num_actions, num_states)
    return rewards + discount * expected


@partial(jax.jit, static_argnames=("max_iterations",))
def value_iteration(transitions, rewards, discount, *, tolerance=1e-6, max_iterations: int = 10_000,
                    initial_value=None) -> DPSolution:
    """Value iteration :math:`V_{k+1} = \\max_a (R_a + \\gamma P_a V_k)` from ``initial_value`` (zeros).

    Stops when :math:`\\lVert V_{k+1} - V_k \\rVert_\\infty \\le \\text{tolerance} \\cdot \\max(1, \\lVert V_{k+1}
    \\rVert_\\infty)` (a relative rule that float32 can meet) or after ``max_iterations`` sweeps. For
    :math:`\\gamma < 1` the greedy policy of the last iterate is optimal once the residual is below the
    smallest action gap. The policy returned is the first maximiser of the final Q-values.
    """
    transitions = _float(transitions)
    rewards = jnp.asarray(rewards, transitions.dtype)
    discount = jnp.asarray(discount, transitions.dtype)
    v0 = jnp.zeros(rewards.shape[1], transitions.dtype) if initial_value is None else jnp.asarray(
        initial_value, transitions.dtype)

    def cond(carry):
        _, it, res = carry
        return (it < max_iterations) & (res > tolerance * jnp.maximum(1.0, jnp.max(jnp.abs(carry[0]))))

    def body(carry):
        v, it, _ = carry
        v_new = jnp.max(bellman_q(transitions, rewards, v, discount), axis=0)
        return v_new, it + 1, jnp.max(jnp.abs(v_new - v))

    v, it, res = jax.lax.while_loop(cond, body, (v0, jnp.asarray(0), jnp.asarray(jnp.inf, transitions.dtype)))
    q = bellman_q(transitions, rewards, v, discount)
    converged = res <= tolerance * jnp.maximum(1.0, jnp.max(jnp.abs(v)))
    return DPSolution(v, jnp.argmax(q, axis=0), q, it, res, converged)


def policy_evaluation(transitions, rewards, policy, discount):
    """Exact value of a stationary policy: solve :math:`(I - \\gamma P_\\pi) V = R_\\pi` (needs γ < 1)."""
    num = rewards.shape[1]
    idx = jnp.arange(num)
    p_pi = transitions[policy, idx, :]
    r_pi = rewards[policy, idx]
    return jnp.linalg.solve(jnp.eye(num, dtype=transitions.dtype) - discount * p_pi, r_pi)


@partial(jax.jit, static_argnames=("max_iterations",))
def policy_iteration(transitions, rewards, discount, *, max_iterations: int = 1000,
                     initial_policy=None) -> DPSolution:
    """Howard's policy iteration: exact evaluation by a linear solve, greedy improvement, until the
    policy is stable (the current action is kept on ties, so it cannot cycle). Needs γ < 1."""
    transitions = _float(transitions)
    rewards = jnp.asarray(rewards, transitions.dtype)
    discount = jnp.asarray(discount, transitions.dtype)
    pol0 = jnp.argmax(rewards, axis=0) if initial_policy is None else jnp.asarray(initial_policy)
    num = rewards.shape[1]
    eps = 64 * jnp.finfo(transitions.dtype).eps

    idx = jnp.arange(num)

    num_actions = rewards.shape[0]
    flat = transitions.reshape(num_actions * num, num)  # hoisted: one (A N, N) matrix for every sweep
    eye = jnp.eye(num, dtype=transitions.dtype)

    def body(carry):
        policy, _, _, it, _ = carry
        rows = policy * num + idx
        v = jnp.linalg.solve(eye - discount * flat[rows], rewards.reshape(-1)[rows])
        q = rewards + discount * (flat @ v).reshape(num_actions, num)
        best = jnp.argmax(q, axis=0)
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(q), axis=0))
        keep = q[policy, idx] >= q[best, idx] - eps * scale
        new = jnp.where(keep, policy, best)
        return new, v, q, it + 1, jnp.any(new != policy)

    def cond(carry):
        return carry[4] & (carry[3] < max_iterations)

    # (v, q) in the carry belong to the policy evaluated last: once it is stable they are its exact
    # value and Q-values, so no extra evaluation is needed after the loop.
    init = (pol0, jnp.zeros(num, transitions.dtype), jnp.zeros(rewards.shape, transitions.dtype),
            jnp.asarray(0), jnp.asarray(True))
    policy, v, q, it, changed = jax.lax.while_loop(cond, body, init)
    return DPSolution(v, jnp.argmax(q, axis=0), q, it, jnp.zeros((), transitions.dtype), ~changed)


@partial(jax.jit, static_argnames=("num_steps",))
def finite_horizon(transitions, rewards, num_steps: int, *, discount=1.0, terminal_value=None) -> FiniteHorizonSolution:
    """Backward induction :math:`V_t = \\max_a (R_a + \\gamma P_a V_{t+1})`, :math:`V_T` = ``terminal_value``.

    With ``discount=1``, rewards scaled by :math:`1-\\delta` and ``num_steps=999`` this is exactly what
    the paper's ``value_iteration`` computes (it stops at its 1000-iteration cap); ``policies[0]`` is its
    stationary policy.
    """
    transitions = _float(transitions)
    rewards = jnp.asarray(rewards, transitions.dtype)
    discount = jnp.asarray(discount, transitions.dtype)
    vT = jnp.zeros(rewards.shape[1], transitions.dtype) if terminal_value is None else jnp.asarray(
        terminal_value, transitions.dtype)

    def body(v, _):
        q = bellman_q(transitions, rewards, v, discount)
        return jnp.max(q, axis=0), (jnp.max(q, axis=0), jnp.argmax(q, axis=0))

    _, (vals, pols) = jax.lax.scan(body, vT, None, length=num_steps)
    values = jnp.concatenate([vals[::-1], vT[None]], axis=0)
    return FiniteHorizonSolution(values, pols[::-1])


@partial(jax.jit, static_argnames=("transition_fn", "reward_fn", "num_steps", "num_replicates"))
def simulate_policy(key, policy_actions, state_grid, transition_fn: Callable, reward_fn: Callable,
                    initial_state, *, num_steps: int, num_replicates: int, discount=1.0) -> SimulationResult:
    """Forward-simulate a stationary grid policy under a (true) model, replicated.

    At each step the stock is assessed to its nearest grid point :math:`i`, the action
    ``policy_actions[i]`` is applied, the reward ``reward_fn(x, h)`` earned, and the next stock drawn
    as ``transition_fn(key_t, x, h)``. The keys depend only on ``key``, the replicate and the step, so
    every policy simulated with the same ``key`` sees the same noise (common random numbers), as in the
    paper's ``set.seed(1)`` before each policy's replicates.
    """
    grid = _float(state_grid)
    acts = jnp.asarray(policy_actions, grid.dtype)
    discount = jnp.asarray(discount, grid.dtype)

    def one(rep_key):
        def body(x, t):
            i = jnp.argmin(jnp.abs(grid - x))
            h = acts[i]
            r = reward_fn(x, h)
            x_next = transition_fn(jax.random.fold_in(rep_key, t), x, h)
            return x_next, (x, h, r)

        x_last, (xs, hs, rs) = jax.lax.scan(body, jnp.asarray(initial_state, grid.dtype), jnp.arange(num_steps))
        return jnp.concatenate([xs, x_last[None]]), hs, rs

    states, actions, rewards = jax.vmap(one)(jax.random.split(key, num_replicates))
    npv = jnp.sum(rewards * discount ** jnp.arange(num_steps, dtype=grid.dtype), axis=1)
    return SimulationResult(states, actions, rewards, npv)
