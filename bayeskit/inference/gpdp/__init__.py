"""Gaussian-process dynamic programming (Boettiger, Mangel & Munch, Proc. R. Soc. B 2015).

``bk.gpdp.solve`` is the end-to-end driver (GP posterior by NUTS -> transition tensor -> policy); the
pieces are public: GP fitting (:func:`fit_gp`), parametric competitors (:func:`fit_parametric`,
:func:`model_selection`), transition tensors (:func:`transition_tensor`,
:func:`gp_transition_tensor`, :func:`parametric_transition_tensor`), solvers
(:func:`value_iteration`, :func:`policy_iteration`, :func:`finite_horizon`) and policy evaluation
by forward simulation (:func:`simulate_policy`, :func:`evaluate_policies`).
"""

from bayeskit.inference.gpdp.dp import (
    DPSolution,
    FiniteHorizonSolution,
    SimulationResult,
    bellman_q,
    escapement,
    finite_horizon,
    policy_evaluation,
    policy_iteration,
    reward_matrix,
    simulate_policy,
    transition_rows,
    transition_tensor,
    value_iteration,
)
from bayeskit.inference.gpdp.fit import GPPosterior, ParametricFit, fit_gp, fit_parametric, model_selection, waic
from bayeskit.inference.gpdp.solve import (
    GPDPResult,
    check_grid,
    evaluate_policies,
    gp_transition_tensor,
    parametric_fit_tensor,
    parametric_transition_tensor,
    solve,
    solve_mdp,
)

__all__ = [
    "solve",
    "GPDPResult",
    "solve_mdp",
    "fit_gp",
    "GPPosterior",
    "fit_parametric",
    "ParametricFit",
    "model_selection",
    "waic",
    "transition_rows",
    "transition_tensor",
    "gp_transition_tensor",
    "parametric_transition_tensor",
    "parametric_fit_tensor",
    "reward_matrix",
    "escapement",
    "bellman_q",
    "value_iteration",
    "policy_iteration",
    "policy_evaluation",
    "finite_horizon",
    "DPSolution",
    "FiniteHorizonSolution",
    "simulate_policy",
    "SimulationResult",
    "evaluate_policies",
    "check_grid",
]
