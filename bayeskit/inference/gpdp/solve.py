r"""The GPDP driver: GP posterior over unknown dynamics -> transition tensor -> optimal policy.

Boettiger, Mangel & Munch, "Avoiding tipping points in fisheries management through Gaussian process
dynamic programming", Proc. R. Soc. B 282 (2015). The unknown one-step map :math:`x' = f(S)`,
:math:`S = x - h`, gets a GP prior; its hyperparameters are sampled by NUTS; for every draw the GP
predictive (mean, latent variance) at the escapements :math:`S_{ai} = \max(x_i - h_a, 0)` of the grid
gives normal transition rows, averaged over draws into :math:`P_{aij}`; stochastic dynamic
programming then gives the policy that maximises expected discounted reward under the *posterior
predictive* dynamics, including the uncertainty far from the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import (check_choice, check_finite_array, check_in_interval, check_key, check_positive_int,
                              renamed_kwargs)
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError
from bayeskit.inference.gpdp import dp
from bayeskit.inference.gpdp.fit import GPPosterior, ParametricFit, fit_gp
from bayeskit.model import gp as gpm
from bayeskit.models import fisheries

__all__ = [
    "GPDPResult",
    "solve",
    "solve_mdp",
    "gp_transition_tensor",
    "parametric_transition_tensor",
    "evaluate_policies",
    "check_grid",
]


def check_grid(grid, name: str, *, covers=None, min_size: int = 2) -> np.ndarray:
    """Validate a strictly increasing finite 1-D grid; optionally that it covers ``covers`` (values)."""
    check_finite_array(grid, name, ndim=1)
    g = np.asarray(grid, dtype=float)
    if g.shape[0] < min_size:
        raise ConfigurationError(f"`{name}` must have at least {min_size} points, got {g.shape[0]}")
    if np.any(np.diff(g) <= 0):
        raise ConfigurationError(f"`{name}` must be strictly increasing")
    if covers is not None:
        lo, hi = float(np.min(covers)), float(np.max(covers))
        if g[0] > lo or g[-1] < hi:
            raise DataError(
                f"`{name}` spans [{g[0]:g}, {g[-1]:g}] but the data span [{lo:g}, {hi:g}]; "
                f"the state grid must cover every observed state"
            )
    return g


def solve_mdp(transitions, rewards, discount, *, solver: str = "policy_iteration", tolerance: float = 1e-6,
              max_iterations: int = 10_000, horizon: int | None = None) -> dp.DPSolution:
    """Solve the MDP and check the outcome (raises :class:`~bayeskit.errors.ConvergenceError` on
    non-finite values or a missed tolerance).

    ``horizon=None``: infinite-horizon discounted problem, γ in (0, 1), by ``solver``
    (``"value_iteration"`` or ``"policy_iteration"``). ``horizon=T``: backward induction over T steps
    with γ in (0, 1] (:func:`~bayeskit.inference.gpdp.dp.finite_horizon`), returning the first-step
    policy; ``discount=1, horizon=999`` is the paper's value iteration run to its 1000-iteration cap.
    """
    check_choice(solver, "solver", ("value_iteration", "policy_iteration"))
    if horizon is not None:
        horizon = check_positive_int(horizon, "horizon")
        discount = check_in_interval(discount, "discount", 0.0, 1.0, closed="right")
        fh = dp.finite_horizon(transitions, rewards, horizon, discount=discount)
        q = dp.bellman_q(jnp.asarray(transitions), jnp.asarray(rewards), fh.values[1], discount)
        res = jnp.max(jnp.abs(fh.values[0] - fh.values[1]))
        sol = dp.DPSolution(fh.values[0], fh.policies[0], q, jnp.asarray(horizon), res, jnp.asarray(True))
    else:
        discount = check_in_interval(discount, "discount", 0.0, 1.0, closed="neither")
        max_iterations = check_positive_int(max_iterations, "max_iterations")
        if solver == "value_iteration":
            sol = dp.value_iteration(transitions, rewards, discount, tolerance=tolerance,
                                     max_iterations=max_iterations)
        else:
            sol = dp.policy_iteration(transitions, rewards, discount, max_iterations=max_iterations)
    if not bool(jnp.all(jnp.isfinite(sol.value))):
        raise ConvergenceError(f"{solver} produced non-finite values; check the rewards and transitions")
    if not bool(sol.converged):
        raise ConvergenceError(
            f"{solver} did not converge in {int(sol.num_iterations)} iterations "
            f"(residual {float(sol.residual):.3g}); raise `max_iterations` or `tolerance`"
        )
    return sol


def gp_transition_tensor(posterior: GPPosterior, state_grid, actions_grid, *, num_samples: int | None = 100,
                         absorbing_states: tuple[int, ...] = (0,), escapement_fn: Callable = dp.escapement,
                         convention: str = "exact", **deprecated):
    """:math:`P_{aij}` from the GP predictive (normal rows with the latent variance), averaged over
    ``num_samples`` hyperparameter draws (the posterior's draws thinned evenly; None: all of them; ``num_draws``
    before this release, which warns). Returns (A, N, N).

    ``convention="exact"`` (default) evaluates the predictive at the escapement
    :math:`S_{ai} = \\max(x_i - h_a, 0)`, as the paper's text defines it. ``convention="paper"``
    reproduces the published code (``gp_calc_F`` in cboettig/nonparametric-bayes): the mean is taken
    one grid step *below* the escapement (grid index :math:`i - j - 1`, and 0 when :math:`i - j \\le 1`)
    and the variance at the pre-harvest state :math:`x_i`; it needs ``actions_grid`` on the state grid.
    """
    num_samples = renamed_kwargs("gp_transition_tensor", deprecated, {"num_draws": "num_samples"}).get(
        "num_samples", num_samples)
    check_choice(convention, "convention", ("exact", "paper"))
    grid = jnp.asarray(state_grid, jnp.result_type(float))
    acts = jnp.asarray(actions_grid, grid.dtype)
    if convention == "exact":
        s = escapement_fn(grid[None, :], acts[:, None])
        mean, var = posterior.predict(s, num_samples)
    else:
        m, v = posterior.predict(grid, num_samples)  # (D, N)
        j = jnp.argmin(jnp.abs(grid[None, :] - acts[:, None]), axis=1)  # (A,)
        k = jnp.arange(grid.shape[0])[None, :] - j[:, None]  # (A, N) grid index of x_i - h_a
        mean = jnp.where(k[None] <= 1, 0.0, m[:, jnp.clip(k - 1, 0, grid.shape[0] - 1)])
        var = jnp.broadcast_to(v[:, None, :], mean.shape)
    return dp.transition_tensor(mean, jnp.sqrt(var), grid, family="normal", absorbing_states=tuple(absorbing_states))


def parametric_transition_tensor(growth: str, params: Mapping, sigma, state_grid, actions_grid, *,
                                 absorbing_states: tuple[int, ...] = (0,), escapement_fn: Callable = dp.escapement):
    """:math:`P_{aij}` for :math:`x' = Z f(S)`, :math:`Z \\sim \\operatorname{LogNormal}(0, \\sigma)`.

    ``params`` maps names to scalars (a point estimate) or (D,) arrays (posterior draws, averaged
    over as in the paper's ``parameter_uncertainty_SDP``); ``sigma`` likewise.
    """
    grid = jnp.asarray(state_grid, jnp.result_type(float))
    acts = jnp.asarray(actions_grid, grid.dtype)
    s = escapement_fn(grid[None, :], acts[:, None])  # (A, N)
    p = {k: jnp.atleast_1d(jnp.asarray(v, grid.dtype))[:, None, None] for k, v in params.items()}
    mean = fisheries.growth(growth, s[None], p)
    sig = jnp.atleast_1d(jnp.asarray(sigma, grid.dtype))[:, None, None]
    return dp.transition_tensor(mean, jnp.broadcast_to(sig, mean.shape), grid, family="lognormal",
                                absorbing_states=tuple(absorbing_states))


def parametric_fit_tensor(fit: ParametricFit, state_grid, actions_grid, *, num_samples: int = 100, use_mle=False,
                          absorbing_states=(0,), **deprecated):
    """Transition tensor from a :class:`ParametricFit`: averaged over ``num_samples`` posterior draws (default;
    ``num_draws`` before this release, which warns) or from its MLE."""
    num_samples = renamed_kwargs("parametric_fit_tensor", deprecated, {"num_draws": "num_samples"}).get(
        "num_samples", num_samples)
    if use_mle:
        src = fit.mle
    else:
        src = fit.flat_draws(num_samples)
    params = {k: src[k] for k in fisheries.PARAMETER_NAMES[fit.growth]}
    return parametric_transition_tensor(fit.growth, params, src["sigma"], state_grid, actions_grid,
                                        absorbing_states=absorbing_states)


__all__.append("parametric_fit_tensor")


def evaluate_policies(key, policies: Mapping[str, np.ndarray], state_grid, transition_fn: Callable,
                      reward_fn: Callable, initial_state, *, num_steps: int = 49, num_replicates: int = 100,
                      discount: float = 1.0, reference: str | None = None) -> dict:
    """Simulate every policy (name -> (N,) action values) with the same key (common random numbers).

    Returns ``{name: SimulationResult}`` and, if ``reference`` names one of them, ``"npv_ratio"``:
    name -> (num_replicates,) ratios :math:`\\text{NPV}_\\pi / \\text{NPV}_\\text{reference}` per replicate
    (the paper's figure 5, reference = the true model's optimal policy).
    """
    key = check_key(key)
    out = {}
    for name, acts in policies.items():
        out[name] = dp.simulate_policy(key, jnp.asarray(acts), state_grid, transition_fn, reward_fn, initial_state,
                                       num_steps=num_steps, num_replicates=num_replicates, discount=discount)
    if reference is not None:
        if reference not in policies:
            raise ConfigurationError(f"`reference` must be one of {sorted(policies)}, got {reference!r}")
        ref = np.asarray(out[reference].net_present_value)
        out["npv_ratio"] = {n: np.asarray(r.net_present_value) / ref for n, r in out.items() if n != reference}
    return out


@dataclass(frozen=True)
class GPDPResult:
    """Result of :func:`solve`.

    Attributes:
        state_grid: (N,) states. actions_grid: (A,) actions.
        policy: (N,) optimal action index per state; policy_actions: (N,) the action values.
        value: (N,) optimal value; q_values: (A, N).
        transitions: (A, N, N) posterior-averaged transition tensor.
        predictive_mean, predictive_variance: (D, N) GP predictive of f on the state grid per draw.
        posterior: the :class:`GPPosterior` (hyperparameter draws).
        num_iterations, residual, converged: solver diagnostics. discount: the discount factor.
    """

    state_grid: np.ndarray
    actions_grid: np.ndarray
    policy: np.ndarray
    policy_actions: np.ndarray
    value: np.ndarray
    q_values: np.ndarray
    transitions: np.ndarray
    predictive_mean: np.ndarray
    predictive_variance: np.ndarray
    posterior: GPPosterior
    num_iterations: int
    residual: float
    converged: bool
    discount: float

    def to_arviz(self):
        """ArviZ DataTree: ``posterior`` (hyperparameters), ``sample_stats`` (diverging),
        ``observed_data`` (training pairs), ``policy`` (value, policy, predictive band on the grid)."""
        from bayeskit.diagnostics import to_datatree

        draws = {k: np.asarray(v) for k, v in self.posterior.draws.items() if np.ndim(v) >= 2}
        data = self.posterior.data
        return to_datatree(
            {"posterior": draws,
             "sample_stats": {"diverging": np.asarray(self.posterior.diverging)},
             "observed_data": {"input": np.asarray(data.inputs), "target": np.asarray(data.targets)},
             "policy": {"value": self.value, "policy_action": self.policy_actions,
                        "escapement": self.state_grid - np.minimum(self.policy_actions, self.state_grid),
                        "predictive_mean": self.predictive_mean.mean(0),
                        "predictive_sd": np.sqrt(self.predictive_variance.mean(0))}},
            dims={"input": ["observation"], "target": ["observation"], "value": ["state"],
                  "policy_action": ["state"], "escapement": ["state"], "predictive_mean": ["state"],
                  "predictive_sd": ["state"]},
            coords={"state": self.state_grid},
            attrs={"method": "bayeskit.gpdp.solve", "discount": self.discount, "gp_fit": self.posterior.method,
                   "num_iterations": self.num_iterations, "converged": int(self.converged)})


def solve(key, observed_states, next_states, actions_grid, reward_fn: Callable, *, discount: float = 0.99,
          observed_actions=None, state_grid=None, kernel: str | Callable = "squared_exponential",
          priors: Mapping | None = None, pseudo_observations=((0.0, 0.0),), pseudo_noise: float | None = None,
          method: str = "nuts", num_warmup: int = 500, num_samples: int = 500, num_chains: int = 1,
          num_transition_samples: int = 100, absorbing_states: tuple[int, ...] = (0,),
          solver: str = "policy_iteration", tolerance: float = 1e-6, max_iterations: int = 10_000,
          horizon: int | None = None, convention: str = "exact", progress_bar: bool = False,
          **deprecated) -> GPDPResult:
    """Gaussian-process dynamic programming, end to end.

    Args:
        key (jax.Array): ``jax.random`` key (NUTS).
        observed_states (array): (T,) states :math:`x_t` before the observed actions.
        next_states (array): (T,) the states :math:`x_{t+1}` that followed.
        actions_grid (array): (A,) increasing grid of actions (harvests).
        reward_fn (Callable): ``reward_fn(state, action)`` broadcasting, e.g. ``lambda x, h: jnp.minimum(x, h)``.
        discount (float): discount factor γ in (0, 1) (the paper's rate δ = 0.01 is γ = 0.99).
        observed_actions (array): (T,) actions taken (default 0: the GP input is then the state itself).
        state_grid (array): (N,) increasing state grid covering the data (default: ``actions_grid``, the paper's
            choice of identical stock and harvest grids).
        kernel (str | Callable): ``"squared_exponential"``, ``"matern32"``, ``"matern52"`` or a kernel function.
        priors (Mapping): hyperparameter priors (see :func:`bayeskit.model.gp.default_priors`).
        pseudo_observations (array): pairs (S, f(S)) added to the training data, default f(0) = 0.
        pseudo_noise (float | None): their noise sd (None: the observation noise, as in the paper).
        method (str): ``"nuts"`` or ``"map"``.
        num_transition_samples (int): hyperparameter draws (the NUTS draws thinned evenly) averaged in the
            transition tensor (``num_posterior_draws`` before this release; the old name warns).
        absorbing_states (tuple[int, ...]): grid indices that are absorbing (default: the first, stock 0).
        solver (str): ``"policy_iteration"`` (default: exact, a handful of linear solves) or
            ``"value_iteration"``.
        horizon (int | None): None (infinite horizon) or a number of steps for backward induction (then
            ``discount`` may be 1; ``discount=1, horizon=999`` is the paper's value iteration).
        convention (str): ``"exact"`` or ``"paper"`` (the published code's transition rows, see
            :func:`gp_transition_tensor`).

    Returns:
        GPDPResult: policy, value, transition tensor, GP posterior and diagnostics.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from bayeskit.models import fisheries as fish
        >>> xs = np.asarray(fish.simulate(jax.random.key(0), "allen", fish.TRUE_PARAMS, 0.05, 5.5, 30))
        >>> grid = np.linspace(0, 15, 30)
        >>> res = solve(jax.random.key(1), xs[:-1], xs[1:], grid, lambda x, h: jnp.minimum(x, h),
        ...             method="map")
        >>> res.policy.shape
        (30,)
    """
    num_transition_samples = renamed_kwargs("solve", deprecated, {"num_posterior_draws": "num_transition_samples"}).get(
        "num_transition_samples", num_transition_samples)
    key = check_key(key)
    check_finite_array(observed_states, "observed_states", ndim=1)
    n = np.shape(observed_states)[0]
    check_finite_array(next_states, "next_states", shape=(n,))
    if n < 2:
        raise DataError(f"`observed_states` must have at least 2 transitions, got {n}")
    acts = check_grid(actions_grid, "actions_grid", min_size=1)
    if not callable(reward_fn):
        raise ConfigurationError("`reward_fn` must be a callable reward_fn(state, action)")
    discount = check_in_interval(discount, "discount", 0.0, 1.0, closed="neither" if horizon is None else "right")
    check_choice(convention, "convention", ("exact", "paper"))
    if horizon is not None:
        check_positive_int(horizon, "horizon")
    check_choice(method, "method", ("nuts", "map"))
    check_choice(solver, "solver", ("value_iteration", "policy_iteration"))
    if isinstance(kernel, str):
        kernel_fn = gpm.KERNELS[check_choice(kernel, "kernel", tuple(gpm.KERNELS))]
    elif callable(kernel):
        kernel_fn = kernel
    else:
        raise ConfigurationError("`kernel` must be a kernel name or a callable kernel(x1, x2, **hyper)")
    for name, val in (("num_warmup", num_warmup), ("num_samples", num_samples), ("num_chains", num_chains),
                      ("num_transition_samples", num_transition_samples)):
        check_positive_int(val, name)
    x = np.asarray(observed_states, dtype=float)
    y = np.asarray(next_states, dtype=float)
    if observed_actions is not None:
        check_finite_array(observed_actions, "observed_actions", shape=(n,))
        s_obs = np.asarray(dp.escapement(x, np.asarray(observed_actions, dtype=float)))
    else:
        s_obs = x
    pseudo = np.asarray(pseudo_observations if pseudo_observations is not None else np.zeros((0, 2)), dtype=float)
    if pseudo.size and (pseudo.ndim != 2 or pseudo.shape[1] != 2):
        raise ConfigurationError(f"`pseudo_observations` must be (S, f(S)) pairs, got shape {pseudo.shape}")
    pseudo = pseudo.reshape(-1, 2)
    check_finite_array(pseudo, "pseudo_observations")
    grid = check_grid(acts if state_grid is None else state_grid, "state_grid",
                      covers=np.concatenate([x, y, s_obs, pseudo[:, 0]]))
    for idx in absorbing_states:
        if not (0 <= int(idx) < grid.shape[0]):
            raise ConfigurationError(f"`absorbing_states` must be indices into the state grid, got {idx}")
    rewards = dp.reward_matrix(reward_fn, grid, acts)
    if not bool(jnp.all(jnp.isfinite(rewards))):
        raise ConfigurationError("`reward_fn` returned non-finite rewards on the grid")

    dtype = jnp.result_type(float)
    data = gpm.make_gp_data(jnp.asarray(s_obs, dtype), jnp.asarray(y, dtype), pseudo[:, 0], pseudo[:, 1],
                            pseudo_noise)
    posterior = fit_gp(key, data, kernel=kernel_fn, priors=priors, method=method, num_warmup=num_warmup,
                       num_samples=num_samples, num_chains=num_chains, progress_bar=progress_bar)
    transitions = gp_transition_tensor(posterior, grid, acts, num_samples=num_transition_samples,
                                       absorbing_states=tuple(int(i) for i in absorbing_states), convention=convention)
    if not bool(jnp.all(jnp.isfinite(transitions))):
        raise ConvergenceError("the GP transition tensor has non-finite entries (degenerate hyperparameters?)")
    sol = solve_mdp(transitions, rewards, discount, solver=solver, tolerance=tolerance, max_iterations=max_iterations,
                    horizon=horizon)
    mean, var = posterior.predict(jnp.asarray(grid, dtype), num_transition_samples)
    pol = np.asarray(sol.policy)
    return GPDPResult(grid, acts, pol, acts[pol], np.asarray(sol.value), np.asarray(sol.q_values),
                      np.asarray(transitions), np.asarray(mean), np.asarray(var), posterior,
                      int(sol.num_iterations), float(sol.residual), bool(sol.converged), discount)
