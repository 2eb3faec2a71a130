"""Schrödinger bridges (``bk.bridges``): Light SB, reference dynamics, multi-marginal SB with iterative
reference refinement (SBIRR), ground-truth constructions and metrics.

* :class:`LightSB` — Korotin, Gushchin & Burnaev, "Light Schrödinger Bridge" (ICLR 2024);
  :class:`LinearLightSB` — the same solver under a linear / OU reference (exact reduction to LightSB).
* :func:`multimarginal`, :func:`vanilla_sb` — Shen, Berlinghieri & Broderick, "Multi-marginal Schrödinger
  bridges with iterative reference refinement" (AISTATS 2025).
* References :func:`Brownian`, :func:`OU`, :func:`Linear`, :func:`LotkaVolterra`, :func:`Repressilator`,
  :func:`GradientField`, :class:`ParametricDrift`.
* Metrics :func:`bw2_uvp`, :func:`cbw2_uvp`, :func:`emd`; ground truths :func:`gaussian_mixture_benchmark`,
  :func:`gaussian_bridge`.
"""

from bayeskit.inference.bridges.benchmark import GaussianMixtureBenchmark, gaussian_mixture_benchmark
from bayeskit.inference.bridges.gaussian import GaussianBridge, gaussian_bridge
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
from bayeskit.inference.bridges.metrics import bw2, bw2_uvp, cbw2_uvp, emd, gaussian_moments
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
    "GaussianBridge", "GaussianMixtureBenchmark", "gaussian_bridge", "gaussian_mixture_benchmark",
    "LinearLightSB", "LinearGaussianBridge", "GaussianTransition", "gaussian_bridge_linear", "linear_transition",
    "bridge_paths",
    "bw2", "bw2_uvp", "cbw2_uvp", "emd", "gaussian_moments",
    "GPDrift", "MultiMarginalResult", "ipf_interval", "multimarginal", "vanilla_sb",
    "Reference", "ParametricDrift", "Brownian", "OU", "Linear", "LotkaVolterra", "Repressilator", "GradientField",
]
