"""Variational inference for SDEs driven by fractional noise (``bk.sde``).

After Daems, Opper, Crevecoeur and Birdal (ICLR 2024). The model layer holds the SDE
(:class:`bayeskit.model.sde.SDE`), its driving noises (:mod:`bayeskit.model.noise`) and the Markov
approximation of fractional Brownian motion by OU mixtures (:mod:`bayeskit.model.fbm`), all re-exported
here. This package holds the variational posterior: controls (:mod:`~bayeskit.inference.sde.controls`),
the variational family and its ELBO (:mod:`~bayeskit.inference.sde.elbo`), the Hurst-index schedule
(:mod:`~bayeskit.inference.sde.hurst`) and the optax kernel and driver (:mod:`~bayeskit.inference.sde.vi`).
"""

from bayeskit.model.fbm import (
    approximate_covariance,
    approximate_variance,
    approximation_error,
    fbm_covariance,
    fbm_variance,
    mvn_constant,
    optimal_weights,
    ou_speeds,
    riemann_liouville_variance,
    scaled_upper_gamma,
    weight_system,
)
from bayeskit.model.noise import BrownianMotion, FractionalBM, sample_exact_fbm, sample_paths
from bayeskit.inference.sde.controls import AffineControl, MLPControl
from bayeskit.inference.sde.elbo import build_elbo
from bayeskit.inference.sde.vi import VIInfo, VIResult, VIState, fit_vi, init, step
from bayeskit.model.sde import SDE, solve_augmented

__all__ = [
    "SDE",
    "solve_augmented",
    "BrownianMotion",
    "FractionalBM",
    "ou_speeds",
    "optimal_weights",
    "weight_system",
    "approximation_error",
    "scaled_upper_gamma",
    "mvn_constant",
    "fbm_covariance",
    "fbm_variance",
    "riemann_liouville_variance",
    "approximate_covariance",
    "approximate_variance",
    "sample_paths",
    "sample_exact_fbm",
    "MLPControl",
    "AffineControl",
    "VIState",
    "VIInfo",
    "VIResult",
    "build_elbo",
    "init",
    "step",
    "fit_vi",
]
