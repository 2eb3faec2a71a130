r"""Particle filtering and best-of-N over a generator and a reward model (Puri et al. 2025), as drivers
(:func:`particle_filtering`, :func:`best_of_n`, :func:`weighted_majority_vote`) and as the pure kernel
under them (:func:`run_particle_filtering`, for ``jit`` / ``vmap`` over problems, settings and particle
counts)."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import DataError
from bayeskit.inference.scaling._common import budget_particles, check_common, finish, history, initial_states
from bayeskit.inference.scaling._generator import Generator, RewardModel
from bayeskit.inference.scaling._results import ScalingResult
from bayeskit.progress import progress
from bayeskit.inference.scaling._sweep import SELECTIONS, WEIGHTS, SweepOutput, log_outcome, select_answer, smc_sweep
from bayeskit.inference.smc.resampling import get_scheme

__all__ = ["FilterOutput", "run_particle_filtering", "particle_filtering", "best_of_n", "weighted_majority_vote"]


class FilterOutput(NamedTuple):
    """What :func:`run_particle_filtering` returns (arrays; with ``num_particles = n`` the slots past
    ``n`` have log-weight -inf and are never selected).

    Fields: ``answer`` () the chosen answer, ``index`` () its slot, ``answers`` (N,) and
    ``outcome_rewards`` (N,) of the final pool, ``log_weights`` (N,) final, ``generator_calls`` ()
    particle extensions made, ``sweep`` the whole :class:`~bayeskit.scaling.kernels.SweepOutput`.
    """

    answer: jax.Array
    index: jax.Array
    answers: jax.Array
    outcome_rewards: jax.Array
    log_weights: jax.Array
    generator_calls: jax.Array
    sweep: SweepOutput


def run_particle_filtering(key, generator: Generator, reward_model: RewardModel, init_states, *, num_particles=None,
                           weights="per_step", temperature=1.0, ess_threshold=1.0, resampling="multinomial",
                           selection="argmax", resample=True, progress_bar: bool = False) -> FilterOutput:
    """Particle filtering on arrays: pure and traceable, for ``jax.jit`` and ``jax.vmap``.

    The kernel under :func:`particle_filtering` (which checks inputs, raises on bad rewards and host
    errors, and returns a :class:`ScalingResult`); here nothing is checked. Every setting but the
    generator and reward model may be traced, so one compiled program serves a whole sweep of settings
    and particle counts: give ``init_states`` for the largest count ``N`` and the count of this run as
    ``num_particles``.

    Args:
        key: ``jax.random`` key.
        generator: a :class:`Generator` (static: hashable, closed over).
        reward_model: a :class:`RewardModel` (static).
        init_states: ``generator.init(prompt, N)``: ``N`` slots.
        num_particles: ``None`` (all ``N`` slots are particles) or the particle count ``n <= N``, a
            (traced) int: only the first ``n`` slots run, and ``resampling`` must then be one of
            ``"multinomial"``, ``"systematic"``, ``"stratified"`` or its index in that list (traced).
        weights: ``"per_step"``, ``"accumulated"`` or ``"value_ratio"``, or its index (traced).
        temperature: softmax temperature (traced).
        ess_threshold: resample when ESS < threshold × n (traced).
        resampling: scheme name (static) or, with ``num_particles``, an index (traced).
        selection: ``"argmax"``, ``"vote"`` or ``"sample"``, or its index (traced).
        resample: ``False`` gives ``n`` independent rollouts (best-of-N; traced).
        progress_bar: advance the open :func:`bayeskit.progress.progress` bar at each step (static).

    Returns:
        :class:`FilterOutput`.

    Example:
        >>> import jax, bayeskit as bk
        >>> world = bk.testing.random_markov_world(jax.random.key(0))
        >>> gen, prm = world.generator(), world.exact_reward_model(2)
        >>> init = gen.init(2, 16)                       # 16 slots serve every count up to 16
        >>> run = jax.jit(jax.vmap(lambda k, n: bk.scaling.kernels.run_particle_filtering(
        ...     k, gen, prm, init, num_particles=n).answer))
        >>> run(jax.random.split(jax.random.key(1), 3), jax.numpy.array([2, 8, 16])).shape
        (3,)
    """
    k_run, k_sel = jax.random.split(key)
    out = smc_sweep(k_run, generator, reward_model, init_states, weights=weights, temperature=temperature,
                    ess_threshold=ess_threshold, resampling=resampling, resample=resample,
                    num_active=num_particles, progress_bar=progress_bar)
    answers = generator.answer(out.particles.state)
    outcome = reward_model.outcome_fn()(out.particles.state)
    ans, idx = select_answer(k_sel, answers, out.log_weights, selection)
    return FilterOutput(ans, idx, answers, outcome, out.log_weights, jnp.sum(out.calls), out)


@partial(jax.jit, static_argnames=("generator", "reward_model", "resampling", "progress_bar"))
def _pf_jit(key, init_states, temperature, generator, reward_model, weights, ess_threshold, resampling, selection,
            resample=True, progress_bar=False):
    return run_particle_filtering(key, generator, reward_model, init_states, weights=weights, temperature=temperature,
                                  ess_threshold=ess_threshold, resampling=resampling, selection=selection,
                                  resample=resample, progress_bar=progress_bar)


def particle_filtering(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles=None,
                       budget=None, weights: str = "per_step", temperature: float = 1.0,
                       ess_threshold: float = 1.0, resampling="multinomial",
                       selection: str = "argmax", progress_bar: bool = False) -> ScalingResult:
    """Particle filtering over a generator weighted by a process reward model (Puri et al. 2025).

    Args:
        key: ``jax.random`` key.
        generator: a :class:`~bayeskit.inference.scaling.Generator`.
        reward_model: a :class:`~bayeskit.inference.scaling.RewardModel`.
        prompt: passed to ``generator.init``.
        num_particles: N (default: ``budget``).
        budget: in rollouts; must be >= ``num_particles``.
        weights: ``"per_step"`` (logit of the current reward, resample every step, the paper),
            ``"accumulated"`` (weights carried, ESS-triggered resampling allowed) or
            ``"value_ratio"`` (:math:`G_t = r_t / r_{t-1}`, exact reward tilting).
        temperature: softmax temperature :math:`\\tau` of the resampling probabilities.
        ess_threshold: resample when ESS < threshold × N; 1.0 resamples at every step.
        resampling: resampling scheme (see :mod:`bayeskit.inference.smc.resampling`); the paper
            samples multinomially.
        selection: ``"argmax"`` (highest final weight), ``"vote"`` (weighted majority vote) or
            ``"sample"``.
        progress_bar: show a tqdm bar of the generation steps.

    Returns:
        :class:`ScalingResult` with the final pool, per-step history, budget and generator calls.

    Example:
        >>> import jax, bayeskit as bk
        >>> world = bk.testing.random_markov_world(jax.random.key(0))
        >>> res = bk.scaling.particle_filtering(jax.random.key(1), world.generator(),
        ...                                     world.exact_reward_model(2), 2, budget=8)
        >>> res.budget, res.answers.shape
        (8, (8,))
    """
    budget, num_particles = budget_particles(budget, num_particles)
    n = num_particles if num_particles is not None else budget
    check_common(key, generator, reward_model, prompt, temperature, selection, weights, ess_threshold, n)
    get_scheme(resampling)
    init_states = initial_states(generator, prompt, n)
    with progress(progress_bar, generator.max_steps, "particle filtering"):
        res = _pf_jit(key, init_states, float(temperature), generator, reward_model, WEIGHTS.index(weights),
                      float(ess_threshold), resampling, SELECTIONS.index(selection), progress_bar=bool(progress_bar))
        jax.block_until_ready(res)
    out = res.sweep
    finish(generator, reward_model, out)
    calls = int(np.sum(out.calls))
    return ScalingResult("particle_filtering", int(res.answer), int(res.index), np.asarray(res.answers),
                         np.asarray(out.log_weights), np.asarray(res.outcome_rewards), n, calls, calls,
                         history(out, generator), out.particles.state)


def best_of_n(key, generator: Generator, reward_model: RewardModel, prompt, *, budget: int,
              selection: str = "argmax") -> ScalingResult:
    """Best-of-N: ``budget`` independent rollouts scored by the outcome reward; the answer is the
    highest-reward rollout (``selection="argmax"``) or the weighted majority vote
    (``selection="vote"``: :math:`\\arg\\max_a \\sum_i R_i 1[a_i = a]`)."""
    budget, _ = budget_particles(budget, None)
    check_common(key, generator, reward_model, prompt, 1.0, selection, None, None, budget)
    init_states = initial_states(generator, prompt, budget)
    res = _pf_jit(key, init_states, 1.0, generator, reward_model, 0, 1.0, "multinomial", 0, resample=False)
    out, answers = res.sweep, res.answers
    finish(generator, reward_model, out)
    outcome = np.asarray(res.outcome_rewards)
    if np.any(~((outcome >= 0) & (outcome <= 1))):
        raise DataError("the reward model's outcome reward returned a value outside [0, 1] or NaN")
    lw = log_outcome(outcome)  # vote weights W_i are then proportional to R_i
    ans, idx = select_answer(jax.random.fold_in(key, 7), jnp.asarray(answers), jnp.asarray(lw), selection)
    calls = int(np.sum(out.calls))
    return ScalingResult("best_of_n" if selection != "vote" else "weighted_majority_vote", int(ans), int(idx),
                         np.asarray(answers), lw, outcome, budget, calls, calls, history(out, generator),
                         out.particles.state)


def weighted_majority_vote(key, generator, reward_model, prompt, *, budget: int) -> ScalingResult:
    """Best-of-N rollouts aggregated by weighted majority vote (weights = outcome rewards)."""
    return best_of_n(key, generator, reward_model, prompt, budget=budget, selection="vote")
