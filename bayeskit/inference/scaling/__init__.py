"""Inference-time scaling by SMC (``bk.scaling``): particle filtering, particle Gibbs and parallel
tempering over generators and reward models, baselines (best-of-N, weighted majority vote, beam
search), validation worlds with exact answers, and Feynman–Kac correctors for diffusion models."""

from bayeskit.inference.scaling.generator import (
    Generator,
    RewardModel,
    TokenState,
    check_generator,
    host_generator,
    host_reward_model,
)
from bayeskit.inference.scaling.particle import (
    Particles,
    ScalingResult,
    SweepOutput,
    beam_search,
    best_of_n,
    parallel_tempering,
    particle_filtering,
    particle_gibbs,
    select_answer,
    smc_sweep,
    weighted_majority_vote,
)
from bayeskit.inference.scaling.worlds import (
    ArithmeticWorld,
    ArithState,
    ChainState,
    LearnedPRM,
    MarkovWorld,
    random_markov_world,
)

__all__ = [
    "Generator",
    "RewardModel",
    "TokenState",
    "check_generator",
    "host_generator",
    "host_reward_model",
    "Particles",
    "ScalingResult",
    "SweepOutput",
    "beam_search",
    "best_of_n",
    "parallel_tempering",
    "particle_filtering",
    "particle_gibbs",
    "select_answer",
    "smc_sweep",
    "weighted_majority_vote",
    "ChainState",
    "ArithState",
    "ArithmeticWorld",
    "LearnedPRM",
    "MarkovWorld",
    "random_markov_world",
]

from bayeskit.inference.scaling.fkc import (  # noqa: E402
    FKCResult,
    GaussianMixture,
    VESDE,
    fkc_feynman_kac,
    fkc_sample,
    mmd,
    product_of_mixtures,
)

__all__ += ["FKCResult", "GaussianMixture", "VESDE", "fkc_feynman_kac", "fkc_sample", "mmd", "product_of_mixtures"]
