"""Ground truths, benchmark problems, metrics and baselines (``bk.testing``): what the tests, benchmarks and
examples check the backends against, kept apart from the inference API.

* Schrödinger bridges: the Gaussian-mixture benchmark with a known entropic OT plan
  (:func:`gaussian_mixture_benchmark`), the closed-form Gaussian bridge (:func:`gaussian_bridge`), and the
  metrics :func:`bw2`, :func:`bw2_uvp`, :func:`cbw2_uvp`, :func:`emd`, :func:`gaussian_moments`.
* Meta-learning baselines: :mod:`meta_baselines` (no adaptation, fine-tuning, a compact MAML).
"""

from bayeskit.inference.bridges._benchmark import GaussianMixtureBenchmark, gaussian_mixture_benchmark
from bayeskit.inference.bridges._gaussian import GaussianBridge, gaussian_bridge
from bayeskit.inference.bridges._metrics import bw2, bw2_uvp, cbw2_uvp, emd, gaussian_moments
import bayeskit.inference.meta._baselines as meta_baselines

__all__ = [
    "GaussianMixtureBenchmark",
    "gaussian_mixture_benchmark",
    "GaussianBridge",
    "gaussian_bridge",
    "bw2",
    "bw2_uvp",
    "cbw2_uvp",
    "emd",
    "gaussian_moments",
    "meta_baselines",
]
