"""Ground truths, benchmark problems, metrics and baselines (``bk.testing``): what the tests, benchmarks and
examples check the backends against, kept apart from the inference API.

* Schrödinger bridges: the Gaussian-mixture benchmark with a known entropic OT plan
  (:func:`gaussian_mixture_benchmark`), the closed-form Gaussian bridge (:func:`gaussian_bridge`), and the
  metrics :func:`bw2`, :func:`bw2_uvp`, :func:`cbw2_uvp`, :func:`emd`, :func:`gaussian_moments`
  (:func:`gaussian_bridge` and :func:`emd` are the building blocks of :mod:`bayeskit.bridges.kernels` of the
  same names).
* Meta-learning baselines: :mod:`meta_baselines` (no adaptation, fine-tuning, a compact MAML).
* Inference-time scaling: the Markov reasoner with an exact value function (:class:`MarkovWorld`,
  :func:`random_markov_world`, states :class:`ChainState`), the learned arithmetic reasoner with its noisy
  verifier and learned process reward model (:class:`ArithmeticWorld`, :class:`ArithState`,
  :class:`LearnedPRM`), and the Feynman–Kac-corrector toy targets (:class:`GaussianMixture` with exact
  diffused scores, :func:`product_of_mixtures`) with the metric :func:`mmd`.
"""

from bayeskit.inference.bridges.kernels import GaussianBridge, emd, gaussian_bridge
from bayeskit.testing import meta_baselines
from bayeskit.testing._bridges_benchmark import GaussianMixtureBenchmark, gaussian_mixture_benchmark
from bayeskit.testing._bridges_metrics import bw2, bw2_uvp, cbw2_uvp, gaussian_moments
from bayeskit.testing._arithmetic_world import ArithmeticWorld, ArithState, LearnedPRM
from bayeskit.testing._fkc_targets import GaussianMixture, mmd, product_of_mixtures
from bayeskit.testing._markov_world import ChainState, MarkovWorld, random_markov_world

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
    "MarkovWorld",
    "random_markov_world",
    "ChainState",
    "ArithmeticWorld",
    "ArithState",
    "LearnedPRM",
    "GaussianMixture",
    "product_of_mixtures",
    "mmd",
]
