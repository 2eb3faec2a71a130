r"""Beam search guided by a process reward model (Snell et al. 2024 style), the baseline of the
inference-time-scaling drivers: the driver :func:`beam_search` and the pure kernel under it
(:func:`run_beam_search`, for ``jit`` / ``vmap`` over problems, budgets and beam widths)."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_positive_int
from bayeskit.inference.scaling._common import budget_particles, check_common, initial_states, raise_bad_reward
from bayeskit.inference.scaling._generator import Generator, RewardModel, guarded_step, raise_pending_errors
from bayeskit.inference.scaling._results import ScalingResult
from bayeskit.inference.scaling._sweep import Particles, log_outcome, select_answer
from bayeskit.inference.smc.resampling import ess as ess_fn

__all__ = ["BeamOutput", "run_beam_search", "beam_search"]


class BeamOutput(NamedTuple):
    """What :func:`run_beam_search` returns. Per final beam (B = ``num_beams`` entries, or one entry per
    slot, of which the first ``num_beams`` are ``valid``, when the pool is masked): ``answers``,
    ``outcome_rewards``, ``log_weights`` (log outcome reward; -inf for invalid entries), ``valid``,
    ``beam_states``; per step (T, N): ``ancestors``, ``process_rewards``; per step (T,):
    ``generator_calls``, ``bad_reward`` (a reward outside [0, 1] or NaN), ``bad_index``, ``ess``."""

    answers: jax.Array
    outcome_rewards: jax.Array
    log_weights: jax.Array
    valid: jax.Array
    beam_states: Any
    ancestors: jax.Array
    process_rewards: jax.Array
    generator_calls: jax.Array
    bad_reward: jax.Array
    bad_index: jax.Array
    ess: jax.Array


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def run_beam_search(key, generator: Generator, reward_model: RewardModel, init_states, *, num_beams,
                    expansions) -> BeamOutput:
    """Beam search on arrays: pure and traceable, for ``jax.jit`` and ``jax.vmap``.

    The kernel under :func:`beam_search` (no input checks here). The pool holds
    ``num_beams * expansions`` candidates; each step extends every live candidate once, and the top
    ``num_beams`` by process reward (a finished beam competes once) are copied ``expansions`` times into
    the next pool. When ``num_beams`` and ``expansions`` are Python ints whose product is the number of
    slots of ``init_states``, the pool is exactly those slots; otherwise (either may then be traced) the
    first ``num_beams * expansions`` slots are the pool and the others never run, so one compiled program
    of ``N`` slots serves every budget and beam width with ``num_beams * expansions <= N``.

    Args:
        key: ``jax.random`` key.
        generator: a :class:`Generator` (static).
        reward_model: a :class:`RewardModel` (static).
        init_states: ``generator.init(prompt, N)``.
        num_beams: beams kept per step (int, or traced with a masked pool).
        expansions: children per beam per step (int, or traced with a masked pool).

    Returns:
        :class:`BeamOutput`.
    """
    slots = jax.tree_util.tree_leaves(init_states)[0].shape[0]
    exact = isinstance(num_beams, int) and isinstance(expansions, int) and num_beams * expansions == slots
    n = num_beams * expansions
    index = jnp.arange(slots)
    if not exact:
        active = index < n
        generator = generator._replace(is_done=lambda s, f=generator.is_done: f(s) | ~active)
    step = guarded_step(generator)
    dtype = jnp.result_type(float)
    x0 = Particles(init_states, jnp.ones((slots,), dtype))
    parent_copy = index % expansions  # copy index within the parent's group

    def body(x, k):
        prev_done = generator.is_done(x.state)
        new_state = step(k, x.state)
        reward = jnp.where(prev_done, x.reward, reward_model.process(new_state).astype(dtype))
        live = ~prev_done
        bad = ~((reward >= 0) & (reward <= 1)) & live
        # a finished beam appears `expansions` times in the pool: only its first copy competes
        eligible = (~prev_done) | (parent_copy == 0)
        if not exact:
            eligible = eligible & active
        score = jnp.where(eligible, jnp.where(jnp.isnan(reward), -jnp.inf, reward), -jnp.inf)
        if exact:
            _, top = jax.lax.top_k(score, num_beams)
            keep = jnp.repeat(top, expansions, total_repeat_length=n).astype(jnp.int32)
        else:  # the same order as top_k (ties: the lower slot first), for a traced number of beams
            top = jnp.argsort(-score, stable=True)
            keep = jnp.where(active, top[index // expansions], index).astype(jnp.int32)
        new = Particles(new_state, reward)
        nxt = _take(new, keep)
        return nxt, (keep, reward, jnp.sum(live).astype(jnp.int32), jnp.any(bad), jnp.argmax(bad).astype(jnp.int32),
                     jnp.asarray(n, dtype) if not exact else ess_fn(jnp.zeros(n)))

    keys = jax.random.split(key, generator.max_steps)
    xf, (anc, rew, calls, bad, bad_idx, ess) = jax.lax.scan(body, x0, keys)
    # distinct final beams: the first copy of each group
    if exact:
        first = jnp.arange(num_beams) * expansions
        valid = jnp.ones((num_beams,), bool)
    else:
        valid = index < num_beams
        first = jnp.where(valid, index * expansions, 0)
    beams = _take(xf, first)
    answers = generator.answer(beams.state)
    outcome = reward_model.outcome_fn()(beams.state)
    tiny = jnp.finfo(jnp.result_type(outcome)).tiny
    log_w = jnp.where(valid, jnp.log(jnp.maximum(outcome, tiny)), -jnp.inf)
    return BeamOutput(answers, outcome, log_w, valid, beams.state, anc, rew, calls, bad, bad_idx, ess)


@partial(jax.jit, static_argnames=("generator", "reward_model", "num_beams", "expansions"))
def _beam_jit(key, init_states, generator, reward_model, num_beams, expansions):
    return run_beam_search(key, generator, reward_model, init_states, num_beams=num_beams, expansions=expansions)


def beam_search(key, generator: Generator, reward_model: RewardModel, prompt, *, budget: int,
                beam_width: int = 4, selection: str = "argmax") -> ScalingResult:
    """Beam search guided by the process reward, with budget N rollouts (Snell et al. 2024 style).

    The pool holds N = ``budget`` candidates: ``N // M`` beams, each extended ``M = beam_width``
    times per step (``M = min(beam_width, N)``); the top ``N // M`` candidates by process reward
    become the next beams. Finished beams stay in the pool without new calls. The answer is the
    final beam with the highest outcome reward (``argmax``) or the outcome-weighted vote.

    Args:
        key: ``jax.random`` key.
        generator: a :class:`Generator`.
        reward_model: a :class:`RewardModel`.
        prompt: passed to ``generator.init``.
        budget: in rollouts (the pool size).
        beam_width: expansions per beam ``M``.
        selection: ``"argmax"`` (highest outcome reward), ``"vote"`` (outcome-weighted vote) or
            ``"sample"``.

    Returns:
        :class:`ScalingResult`; ``extras`` holds ``num_beams`` and ``expansions``.
    """
    budget, _ = budget_particles(budget, None)
    beam_width = check_positive_int(beam_width, "beam_width")
    check_common(key, generator, reward_model, prompt, 1.0, selection, None, None, budget)
    expansions = min(beam_width, budget)
    num_beams = budget // expansions
    n = num_beams * expansions
    init_states = initial_states(generator, prompt, n)
    out = _beam_jit(key, init_states, generator, reward_model, num_beams, expansions)
    raise_pending_errors(generator, reward_model)
    raise_bad_reward(out.bad_reward, out.bad_index, out.process_rewards)
    outcome = np.asarray(out.outcome_rewards)
    lw = log_outcome(outcome)
    ans, idx = select_answer(key, jnp.asarray(out.answers), jnp.asarray(lw), selection)
    ncalls = int(np.sum(out.generator_calls))
    hist = {"ancestors": np.asarray(out.ancestors), "process_rewards": np.asarray(out.process_rewards),
            "generator_calls": np.asarray(out.generator_calls)}
    return ScalingResult("beam_search", int(ans), int(idx), np.asarray(out.answers), lw, outcome, n, ncalls, ncalls,
                         hist, out.beam_states, {"num_beams": num_beams, "expansions": expansions})
