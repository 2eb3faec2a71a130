"""The building blocks under the particle drivers of :mod:`bayeskit.smc`, for users who compose their own
algorithms on the engine (:mod:`bayeskit.smc.engine`) or write a custom sweep.

* conditional SMC and one PPG iteration: :func:`csmc`, :func:`conditional_paris`;
* the backward kernel: :func:`sample_backward` (exact draws, hybrid rejection), :func:`backward_sample`
  (whole paths through a stored particle system), :func:`log_transition_matrix`,
  :func:`transition_log_bound`, :func:`log_bound_fn`;
* engine accumulators: :func:`paris_accumulator`, :func:`forward_smoother_accumulator`, and
  :func:`weighted_moments` (use it with :func:`bayeskit.smc.engine.summary`);
* tempered SMC: :func:`run_tempered` (the whole loop, pure), :func:`solve_next_tempering`,
  :func:`prior_and_likelihood_fn`, and the MCMC
  moves :func:`rwm_move`, :func:`hmc_move`, :func:`nuts_move`, :func:`blackjax_move`;
* densities and functionals: :func:`step_log_density`, :func:`path_log_density`, :func:`path_functional`,
  :func:`score`.
"""

from bayeskit.inference.smc._backward import (backward_sample, log_bound_fn, log_transition_matrix, sample_backward,
                                             transition_log_bound)
from bayeskit.inference.smc._csmc import CSMCInfo, csmc, path_log_density, step_log_density
from bayeskit.inference.smc._filtering import weighted_moments
from bayeskit.inference.smc._learning import score
from bayeskit.inference.smc._paris import forward_smoother_accumulator, paris_accumulator, run_paris
from bayeskit.inference.smc._ppg import ConditionalPaRISOutput, conditional_paris
from bayeskit.inference.smc._smoothing import path_functional
from bayeskit.inference.smc._tempered import (blackjax_move, hmc_move, nuts_move, prior_and_likelihood_fn, rwm_move,
                                             solve_next_tempering)
from bayeskit.inference.smc._tempered import run as run_tempered

__all__ = [
    "csmc",
    "CSMCInfo",
    "conditional_paris",
    "ConditionalPaRISOutput",
    "sample_backward",
    "backward_sample",
    "log_transition_matrix",
    "transition_log_bound",
    "log_bound_fn",
    "paris_accumulator",
    "forward_smoother_accumulator",
    "run_paris",
    "weighted_moments",
    "step_log_density",
    "path_log_density",
    "path_functional",
    "score",
    "run_tempered",
    "prior_and_likelihood_fn",
    "solve_next_tempering",
    "rwm_move",
    "hmc_move",
    "nuts_move",
    "blackjax_move",
]
