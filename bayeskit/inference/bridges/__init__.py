"""Schrödinger bridges (``bk.bridges``): Light SB, reference dynamics, multi-marginal SB with iterative
reference refinement (SBIRR).

* :class:`LightSB` — Korotin, Gushchin & Burnaev, "Light Schrödinger Bridge" (ICLR 2024), with its parameters
  :class:`LightSBParams`; :class:`LinearLightSB` — the same solver under a linear / OU reference (exact
  reduction to LightSB), with :func:`linear_transition`, :func:`bridge_paths` (exact reference bridges) and the
  Gaussian closed form :func:`gaussian_bridge_linear`.
* :func:`multimarginal`, :func:`vanilla_sb` and their :class:`MultiMarginalResult` — Shen, Berlinghieri &
  Broderick, "Multi-marginal Schrödinger bridges with iterative reference refinement" (AISTATS 2025).
* References :func:`Brownian`, :func:`OU`, :func:`Linear`, :func:`LotkaVolterra`, :func:`Repressilator`,
  :func:`GradientField`, :class:`ParametricDrift` (all :class:`Reference`).
* Building blocks (LightSB closed forms, IPF with GP drift regression): :mod:`~bayeskit.bridges.kernels`.
* Ground truths and metrics (the Gaussian-mixture benchmark, the Gaussian closed form, BW2-UVP, EMD) are in
  :mod:`bayeskit.testing`.
"""

from bayeskit.inference.bridges import kernels
from bayeskit.inference.bridges._lightsb import LightSB
from bayeskit.inference.bridges._lightsb_model import LightSBParams
from bayeskit.inference.bridges._linear import (
    GaussianTransition,
    LinearGaussianBridge,
    LinearLightSB,
    bridge_paths,
    gaussian_bridge_linear,
    linear_transition,
)
from bayeskit.inference.bridges._mm_result import MultiMarginalResult
from bayeskit.inference.bridges._multimarginal import multimarginal, vanilla_sb
from bayeskit.inference.bridges._reference import (
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
    "LightSB", "LightSBParams",
    "LinearLightSB", "LinearGaussianBridge", "GaussianTransition", "gaussian_bridge_linear", "linear_transition",
    "bridge_paths",
    "multimarginal", "vanilla_sb", "MultiMarginalResult",
    "Reference", "ParametricDrift", "Brownian", "OU", "Linear", "LotkaVolterra", "Repressilator", "GradientField",
    "kernels",
]

# names that moved in this release: still reachable here for one release, with a FutureWarning naming the new place
_MOVED_TO_TESTING = ("GaussianBridge", "GaussianMixtureBenchmark", "gaussian_bridge", "gaussian_mixture_benchmark",
                     "bw2", "bw2_uvp", "cbw2_uvp", "emd", "gaussian_moments")
_MOVED_TO_KERNELS = {"conditional_components": "conditional_components", "conditional_log_prob": "conditional_log_prob",
                     "conditional_sample": "conditional_sample", "drift": "drift", "euler_maruyama": "euler_maruyama",
                     "log_potential": "log_potential", "loss": "loss", "log_normaliser": "log_evidence",
                     "GPDrift": "GPDrift", "ipf_interval": "ipf_interval"}


def __getattr__(name):
    import warnings

    if name in _MOVED_TO_TESTING:
        import importlib

        warnings.warn(f"bayeskit.bridges.{name} moved to bayeskit.testing.{name}; the old name will be removed in "
                      "the next release", FutureWarning, stacklevel=2)
        # bayeskit.testing imports this package: resolved by name at call time, not by an import statement
        return getattr(importlib.import_module("bayeskit.testing"), name)
    if name in _MOVED_TO_KERNELS:
        new = _MOVED_TO_KERNELS[name]
        warnings.warn(f"bayeskit.bridges.{name} moved to bayeskit.bridges.kernels.{new}; the old name will be "
                      "removed in the next release", FutureWarning, stacklevel=2)
        return getattr(kernels, new)
    raise AttributeError(f"module 'bayeskit.bridges' has no attribute {name!r}")
