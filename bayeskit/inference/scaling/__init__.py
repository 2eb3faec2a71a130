r"""Inference-time scaling by SMC (``bk.scaling``): spend a larger inference budget on a generator weighted
by a reward model, probabilistically (Puri et al. 2025), and sample annealed / product / guided diffusion
targets with Feynman–Kac correctors (Skreta et al. 2025).

Generation is a state-space model: the generator is the transition :math:`M_t(x_{1:t-1}, \cdot)` (one
reasoning step), a process reward model scores the prefix, :math:`r_t = r(x_{1:t}) \in [0, 1]`, and the
particle methods target :math:`\pi(x_{1:T}) \propto p(x_{1:T}) \prod_t G_t(x_{1:t})^{1/\tau}`.

Drivers (each returns a result with ``to_arviz()``): :func:`particle_filtering`, :func:`particle_gibbs`,
:func:`parallel_tempering`, and the baselines :func:`best_of_n`, :func:`weighted_majority_vote` and
:func:`beam_search` (:class:`ScalingResult`); :func:`fkc_sample` (:class:`FKCResult`, with the
:class:`VESDE` its scores belong to). Generators and reward models: :class:`Generator`,
:class:`RewardModel`, :func:`host_generator` / :func:`host_reward_model` (any Python callable, e.g. a
language model on disk, with :class:`TokenState`), :func:`check_generator`. The pure pieces under the
drivers (whole runs on arrays for ``jit`` / ``vmap`` with masked particle counts, one SMC sweep, answer
selection): :mod:`~bayeskit.scaling.kernels`. Validation worlds with exact answers and the FKC toy
targets are in :mod:`bayeskit.testing`.

**Budget.** ``budget`` counts *rollouts*: one rollout is one particle carried to the end, i.e. up to
``max_steps`` generator calls. Every result also reports ``generator_calls``: the number of
(particle, step) extensions actually made (finished particles and pinned reference particles cost
nothing), which is the number of calls a batched LLM server would answer.
"""

from bayeskit.inference.scaling import kernels
from bayeskit.inference.scaling._beam import beam_search
from bayeskit.inference.scaling._fkc import VESDE, FKCResult, fkc_sample
from bayeskit.inference.scaling._filtering import best_of_n, particle_filtering, weighted_majority_vote
from bayeskit.inference.scaling._generator import (Generator, RewardModel, TokenState, check_generator,
                                                   host_generator, host_reward_model)
from bayeskit.inference.scaling._gibbs import parallel_tempering, particle_gibbs
from bayeskit.inference.scaling._results import ScalingResult

__all__ = [
    # drivers and their results
    "particle_filtering",
    "particle_gibbs",
    "parallel_tempering",
    "best_of_n",
    "weighted_majority_vote",
    "beam_search",
    "ScalingResult",
    "fkc_sample",
    "FKCResult",
    "VESDE",
    # generators and reward models
    "Generator",
    "RewardModel",
    "TokenState",
    "host_generator",
    "host_reward_model",
    "check_generator",
    # composable pieces
    "kernels",
]

# names that moved in this release: still reachable here for one release, with a warning
_MOVED = {
    "smc_sweep": "kernels", "select_answer": "kernels", "Particles": "kernels", "SweepOutput": "kernels",
    "fkc_feynman_kac": "kernels",
    "MarkovWorld": "testing", "random_markov_world": "testing", "ChainState": "testing",
    "ArithmeticWorld": "testing", "ArithState": "testing", "LearnedPRM": "testing",
    "GaussianMixture": "testing", "product_of_mixtures": "testing", "mmd": "testing",
}


def __getattr__(name):
    import importlib
    import warnings

    if name in _MOVED:
        where = _MOVED[name]
        full = "bayeskit.testing" if where == "testing" else f"bayeskit.scaling.{where}"
        warnings.warn(f"bayeskit.scaling.{name} moved to {full}.{name}; the old name will be removed in the next "
                      "release", FutureWarning, stacklevel=2)
        # bayeskit.testing imports this package: resolved by name at call time, not by an import statement
        module = kernels if where == "kernels" else importlib.import_module("bayeskit.testing")
        return getattr(module, name)
    raise AttributeError(f"module 'bayeskit.scaling' has no attribute {name!r}")
