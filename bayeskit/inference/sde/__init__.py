"""Variational inference for SDEs driven by fractional noise (``bk.sde``).

Markov approximation of fractional Brownian motion by OU mixtures (:mod:`~bayeskit.inference.sde.fbm`)
and the variational posterior SDE with Hurst-index learning (:mod:`~bayeskit.inference.sde.vi`),
after Daems, Opper, Crevecoeur and Birdal (ICLR 2024). The SDE model itself is
:class:`bayeskit.model.sde.SDE`, re-exported here.
"""

from bayeskit.inference.sde.fbm import (
    BrownianMotion,
    FractionalBM,
    approximate_covariance,
    approximate_variance,
    approximation_error,
    fbm_covariance,
    fbm_variance,
    mvn_constant,
    optimal_weights,
    ou_speeds,
    riemann_liouville_variance,
    sample_exact_fbm,
    sample_paths,
    scaled_upper_gamma,
    weight_system,
)
from bayeskit.inference.sde.vi import (
    AffineControl,
    MLPControl,
    VIInfo,
    VIResult,
    VIState,
    build_elbo,
    fit_vi,
    init,
    step,
)
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
