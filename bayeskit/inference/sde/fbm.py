"""The fBM noise of ``bk.sde`` under its former module path.

The Markov approximation of fractional Brownian motion is part of the model layer: its closed forms
live in :mod:`bayeskit.model.fbm` and the driving-noise objects and samplers in
:mod:`bayeskit.model.noise`. This module re-exports them so that ``bayeskit.inference.sde.fbm.X``
keeps working; new code should use ``bk.sde.X`` or the model-layer modules.
"""

from bayeskit.model.fbm import (
    approximate_covariance,
    approximate_variance,
    approximation_error,
    fbm_covariance,
    fbm_variance,
    mvn_constant,
    optimal_weights,
    ou_initial_covariance,
    ou_speeds,
    ou_transition_covariance,
    psd_sqrt,
    riemann_liouville_variance,
    scaled_upper_gamma,
    weight_system,
)
from bayeskit.model.noise import BrownianMotion, FractionalBM, sample_exact_fbm, sample_paths

__all__ = [
    "ou_speeds",
    "scaled_upper_gamma",
    "mvn_constant",
    "fbm_covariance",
    "fbm_variance",
    "riemann_liouville_variance",
    "weight_system",
    "optimal_weights",
    "approximation_error",
    "ou_initial_covariance",
    "ou_transition_covariance",
    "approximate_covariance",
    "approximate_variance",
    "psd_sqrt",
    "BrownianMotion",
    "FractionalBM",
    "sample_paths",
    "sample_exact_fbm",
]
