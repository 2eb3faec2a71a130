"""NIW-Meta: Normal-Inverse-Wishart hierarchical Bayesian few-shot meta-learning (``bk.meta``).

Kim & Hospedales, "A Hierarchical Bayesian Model for Few-Shot Meta Learning", ICLR 2024. See
``docs/meta.md`` for the math (and which parts are reconstructed) and :mod:`.niw` for the kernels.
Baselines for comparison (no adaptation, fine-tuning, compact MAML) live in :mod:`.baselines`.
"""

from bayeskit.inference.meta import baselines
from bayeskit.inference.meta.episode import EpisodeModel
from bayeskit.inference.meta.niw import (
    LocalPosterior,
    MetaPrediction,
    NIWMeta,
    NIWMetaResult,
    NIWParams,
    NIWPosterior,
    NIWPrior,
    QuadraticApproximation,
    StepInfo,
    TrainState,
    build_step,
    constrain,
    episode_loss,
    expected_kl_local,
    expected_log_det_precision,
    expected_neg_log_likelihood,
    laplace_approximation,
    local_posterior,
    niw_kl,
    sgld_approximation,
    unconstrain,
)

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
    "baselines",
]
