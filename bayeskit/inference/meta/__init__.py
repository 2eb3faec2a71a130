"""NIW-Meta: Normal-Inverse-Wishart hierarchical Bayesian few-shot meta-learning (``bk.meta``).

Kim & Hospedales, "A Hierarchical Bayesian Model for Few-Shot Meta Learning", ICLR 2024. See
``docs/meta.md`` for the math (and which parts are reconstructed). Modules: :mod:`.conjugate` (NIW
algebra), :mod:`.local` (quadratic approximations), :mod:`.training` (the optimisation step), :mod:`.niw`
(the configuration and ``fit``), :mod:`.result` (the fitted model), :mod:`.predictive` (predictions).
Baselines for comparison (no adaptation, fine-tuning, compact MAML) are ``bk.testing.meta_baselines``.
"""

from bayeskit.inference.meta.episode import EpisodeModel
from bayeskit.inference.meta.conjugate import (
    LocalPosterior,
    NIWParams,
    NIWPosterior,
    NIWPrior,
    QuadraticApproximation,
    constrain,
    episode_loss,
    expected_kl_local,
    expected_log_det_precision,
    expected_neg_log_likelihood,
    local_posterior,
    niw_kl,
    unconstrain,
)
from bayeskit.inference.meta.local import laplace_approximation, sgld_approximation
from bayeskit.inference.meta.niw import NIWMeta
from bayeskit.inference.meta.predictive import MetaPrediction
from bayeskit.inference.meta.result import NIWMetaResult
from bayeskit.inference.meta.training import StepInfo, TrainState, build_step

__all__ = [
    "EpisodeModel",
    "NIWMeta",
    "NIWMetaResult",
    "MetaPrediction",
    "NIWPosterior",
    "NIWParams",
    "NIWPrior",
    "QuadraticApproximation",
    "LocalPosterior",
    "TrainState",
    "StepInfo",
    "build_step",
    "constrain",
    "unconstrain",
    "episode_loss",
    "expected_kl_local",
    "expected_log_det_precision",
    "expected_neg_log_likelihood",
    "laplace_approximation",
    "local_posterior",
    "niw_kl",
    "sgld_approximation",
]


def __getattr__(name):
    if name == "baselines":
        import warnings

        import importlib

        baselines = importlib.import_module("bayeskit.testing.meta_baselines")
        warnings.warn("bayeskit.meta.baselines moved to bayeskit.testing.meta_baselines; the old name will be "
                      "removed in the next release", FutureWarning, stacklevel=2)
        return baselines
    raise AttributeError(f"module 'bayeskit.meta' has no attribute {name!r}")
