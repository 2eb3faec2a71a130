"""Schrödinger bridges (``bk.bridges``): Light SB, reference dynamics, multi-marginal SB with iterative
reference refinement (SBIRR), ground-truth constructions and metrics.

* :class:`LightSB` — Korotin, Gushchin & Burnaev, "Light Schrödinger Bridge" (ICLR 2024);
  :class:`LinearLightSB` — the same solver under a linear / OU reference (exact reduction to LightSB).
* :func:`multimarginal`, :func:`vanilla_sb` — Shen, Berlinghieri & Broderick, "Multi-marginal Schrödinger
  bridges with iterative reference refinement" (AISTATS 2025).
* References :func:`Brownian`, :func:`OU`, :func:`Linear`, :func:`LotkaVolterra`, :func:`Repressilator`,
  :func:`GradientField`, :class:`ParametricDrift`.
* Ground truths and metrics (the Gaussian-mixture benchmark, the Gaussian closed form, BW2-UVP, EMD) are in
  :mod:`bayeskit.testing`.
"""

from bayeskit.inference.bridges.lightsb import (
    LightSB,
    LightSBParams,
    conditional_components,
    conditional_log_prob,
    conditional_sample,
    drift,
    euler_maruyama,
    log_normaliser,
    log_potential,
    loss,
)
from bayeskit.inference.bridges.linear import (
    GaussianTransition,
    LinearGaussianBridge,
    LinearLightSB,
    bridge_paths,
    gaussian_bridge_linear,
    linear_transition,
)
from bayeskit.inference.bridges.multimarginal import (
    GPDrift,
    MultiMarginalResult,
    ipf_interval,
    multimarginal,
    vanilla_sb,
)
from bayeskit.inference.bridges.reference import (
    OU,
    Brownian,
    GradientField,
    Linear,
    LotkaVolterra,
    ParametricDrift,
    Reference,
    Repressilator,
)

__all__ = [
    "LightSB", "LightSBParams", "conditional_components", "conditional_log_prob", "conditional_sample", "drift",
    "euler_maruyama", "log_normaliser", "log_potential", "loss",
    "LinearLightSB", "LinearGaussianBridge", "GaussianTransition", "gaussian_bridge_linear", "linear_transition",
    "bridge_paths",
    "GPDrift", "MultiMarginalResult", "ipf_interval", "multimarginal", "vanilla_sb",
    "Reference", "ParametricDrift", "Brownian", "OU", "Linear", "LotkaVolterra", "Repressilator", "GradientField",
]

_MOVED_TO_TESTING = ("GaussianBridge", "GaussianMixtureBenchmark", "gaussian_bridge", "gaussian_mixture_benchmark",
                     "bw2", "bw2_uvp", "cbw2_uvp", "emd", "gaussian_moments")


def __getattr__(name):
    if name in _MOVED_TO_TESTING:
        import warnings

        import importlib

        warnings.warn(f"bayeskit.bridges.{name} moved to bayeskit.testing.{name}; the old name will be removed in "
                      "the next release", FutureWarning, stacklevel=2)
        for module in ("benchmark", "gaussian", "metrics"):
            module = importlib.import_module(f"bayeskit.inference.bridges.{module}")
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module 'bayeskit.bridges' has no attribute {name!r}")
