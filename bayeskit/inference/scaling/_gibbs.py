r"""Particle Gibbs and parallel tempering over a generator (Puri et al. 2025 §3.2): drivers and the pure
kernel under them (:func:`run_particle_gibbs`).

**Particle Gibbs** (Andrieu, Doucet & Holenstein 2010): iterate conditional SMC; the reference
trajectory of the previous iteration is pinned to the last slot and survives resampling (its ancestor
is itself), the other particles resample multinomially over all :math:`N`; the next reference is drawn
:math:`\propto W_T` and traced back through the ancestors. Budget = iterations × N.

**Parallel tempering**: ``K`` particle-Gibbs chains at temperatures :math:`\tau_1 < \dots < \tau_K`;
after each sweep adjacent chains propose to swap references (even/odd pairs alternating), accepted with
probability :math:`\min\{1, \exp[(1/\tau_k - 1/\tau_{k+1})(S(x_{k+1}) - S(x_k))]\}` where
:math:`S(x) = \sum_t \log G_t(x_{1:t})` (the generator's density cancels). Budget = iterations × K × N.
The answer is read from the chain at :math:`\tau_1`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_in_interval, check_positive_int
from bayeskit.errors import ConfigurationError
from bayeskit.inference.scaling._common import budget_particles, check_common, initial_states, raise_bad_reward
from bayeskit.inference.scaling._generator import Generator, RewardModel, raise_pending_errors
from bayeskit.inference.scaling._results import ScalingResult
from bayeskit.inference.scaling._sweep import SELECTIONS, WEIGHTS, choice_code, select_answer, smc_sweep, trace_path
from bayeskit.progress import progress, tick

__all__ = ["GibbsOutput", "run_particle_gibbs", "particle_gibbs", "parallel_tempering"]


class GibbsOutput(NamedTuple):
    """What :func:`run_particle_gibbs` returns: per iteration (leading axis I) and chain (K), the final
    pool's ``log_weights`` (I, K, N), ``answers`` (I, K, N) and ``outcome_rewards`` (I, K, N); per step
    (I, K, T, ...) ``history_log_weights``, ``ancestors``, ``process_rewards``, ``ess``,
    ``generator_calls``, ``bad_reward``, ``bad_index``; ``reference_answers`` (I, K) the answer of the
    reference drawn after each iteration; ``swap_accepted`` (I, K) accepted swaps with the next chain;
    ``final_states`` the generator states of the last iteration's pools (leading K, N)."""

    log_weights: jax.Array
    history_log_weights: jax.Array
    ancestors: jax.Array
    process_rewards: jax.Array
    ess: jax.Array
    generator_calls: jax.Array
    bad_reward: jax.Array
    bad_index: jax.Array
    answers: jax.Array
    outcome_rewards: jax.Array
    reference_answers: jax.Array
    swap_accepted: jax.Array
    final_states: Any


def run_particle_gibbs(key, generator: Generator, reward_model: RewardModel, init_states, temperatures, *,
                       num_iterations: int, weights="per_step", progress_bar: bool = False) -> GibbsOutput:
    """Particle Gibbs (one temperature) or parallel tempering (several) on arrays: pure and traceable.

    The kernel under :func:`particle_gibbs` and :func:`parallel_tempering` (no input checks here).

    Args:
        key: ``jax.random`` key.
        generator: a :class:`Generator` (static).
        reward_model: a :class:`RewardModel` (static).
        init_states: ``generator.init(prompt, N)``.
        temperatures: (K,) softmax temperatures, the target first (traced); K = 1 is particle Gibbs.
        num_iterations: iterations (static); the first is unconditional SMC.
        weights: ``"per_step"``, ``"accumulated"`` or ``"value_ratio"``, or its index (traced).
        progress_bar: advance the open :func:`bayeskit.progress.progress` bar at each iteration (static).

    Returns:
        :class:`GibbsOutput`.
    """
    weights = choice_code(weights, WEIGHTS, "weights")
    temperatures = jnp.asarray(temperatures, jnp.result_type(float))
    num_chains = temperatures.shape[0]

    def sweep(k, temp, ref):
        return smc_sweep(k, generator, reward_model, init_states, weights=weights, temperature=temp,
                         ess_threshold=1.0, resampling="multinomial", reference=ref)

    def pick(k, out):
        i = jax.random.categorical(k, out.log_weights)
        path, score = trace_path(out, i)
        return path, score, i

    # iteration 0: unconditional SMC in every chain
    k0, kloop = jax.random.split(key)
    ks = jax.random.split(k0, (num_chains, 2))
    out0 = jax.vmap(lambda k, tp: smc_sweep(k, generator, reward_model, init_states, weights=weights,
                                            temperature=tp, ess_threshold=1.0,
                                            resampling="multinomial"))(ks[:, 0], temperatures)
    refs, scores, idx0 = jax.vmap(pick)(ks[:, 1], out0)

    def swap(k, parity, refs, scores):
        # adjacent pairs (c, c+1) with c % 2 == parity
        beta = 1.0 / temperatures
        c = jnp.arange(num_chains)
        partner = jnp.where(c % 2 == parity, c + 1, c - 1)
        valid = (partner >= 0) & (partner < num_chains)
        partner = jnp.clip(partner, 0, num_chains - 1)
        lo = jnp.minimum(c, partner)
        hi = jnp.maximum(c, partner)
        log_acc = (beta[lo] - beta[hi]) * (scores[hi] - scores[lo])
        u = jax.random.uniform(k, (num_chains,))
        accept_pair = jnp.log(u[lo]) < log_acc
        accept = valid & accept_pair
        new_refs = jax.tree_util.tree_map(lambda a: jnp.where(
            accept.reshape((-1,) + (1,) * (a.ndim - 1)), a[partner], a), refs)
        new_scores = jnp.where(accept, scores[partner], scores)
        return new_refs, new_scores, accept & (c == lo)

    def body(carry, inp):
        refs, scores = carry
        it, k = inp
        k_sw, k_run, k_pick = jax.random.split(k, 3)
        tick(it + 1, num_iterations, progress_bar)
        out = jax.vmap(sweep)(jax.random.split(k_run, num_chains), temperatures, refs)
        new_refs, new_scores, _ = jax.vmap(pick)(jax.random.split(k_pick, num_chains), out)
        acc = jnp.zeros((num_chains,), bool)
        if num_chains > 1:
            new_refs, new_scores, acc = swap(k_sw, it % 2, new_refs, new_scores)
        summary = (out.log_weights, out.history_log_weights, out.ancestors, out.history.reward, out.ess,
                   out.calls, out.bad_reward, out.bad_index,
                   jax.vmap(generator.answer)(out.particles.state),
                   jax.vmap(reward_model.outcome_fn())(out.particles.state),
                   generator.answer(jax.tree_util.tree_map(lambda a: a[:, -1], new_refs.state)),
                   acc)
        return (new_refs, new_scores), (summary, out.particles.state)

    if num_iterations > 1:
        keys = jax.random.split(kloop, num_iterations - 1)
        (refs_f, _), (summ, last_states) = jax.lax.scan(body, (refs, scores),
                                                         (jnp.arange(1, num_iterations), keys))
    else:
        summ, last_states = None, None
    first = (out0.log_weights, out0.history_log_weights, out0.ancestors, out0.history.reward, out0.ess,
             out0.calls, out0.bad_reward, out0.bad_index, jax.vmap(generator.answer)(out0.particles.state),
             jax.vmap(reward_model.outcome_fn())(out0.particles.state),
             generator.answer(jax.tree_util.tree_map(lambda a: a[:, -1], refs.state)),
             jnp.zeros((num_chains,), bool))
    if summ is None:
        summ = jax.tree_util.tree_map(lambda a: a[None], first)
        final_states = out0.particles.state
    else:
        summ = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], 0), first, summ)
        final_states = jax.tree_util.tree_map(lambda a: a[-1], last_states)
    return GibbsOutput(*summ, final_states)


@partial(jax.jit, static_argnames=("generator", "reward_model", "num_iterations", "progress_bar"))
def _pg_jit(key, init_states, temperatures, generator, reward_model, weights, num_iterations, progress_bar=False):
    return run_particle_gibbs(key, generator, reward_model, init_states, temperatures, weights=weights,
                              num_iterations=num_iterations, progress_bar=progress_bar)


def _pg_driver(method, key, generator, reward_model, prompt, num_particles, num_iterations, budget, weights,
               temperatures, selection, progress_bar=False):
    k_run, k_sel = jax.random.split(key)
    init_states = initial_states(generator, prompt, num_particles)
    temps = jnp.asarray(temperatures, jnp.result_type(float))
    with progress(progress_bar, num_iterations, method.replace("_", " ")):
        out = _pg_jit(k_run, init_states, temps, generator, reward_model, WEIGHTS.index(weights), num_iterations,
                      progress_bar=bool(progress_bar))
        jax.block_until_ready(out)
    raise_pending_errors(generator, reward_model)
    final_states = out.final_states
    (lw, hlw, anc, rew, ess, calls, bad, bad_idx, answers, outcome, ref_ans, acc) = (np.asarray(a) for a in out[:-1])
    raise_bad_reward(bad, bad_idx, rew)
    # answer from chain 0 (the target temperature), last iteration
    lw_last = lw[-1, 0]
    ans_last = answers[-1, 0]
    ans, idx = select_answer(k_sel, jnp.asarray(ans_last), jnp.asarray(lw_last), SELECTIONS.index(selection))
    ncalls = int(calls.sum())
    chain0 = jax.tree_util.tree_map(lambda a: np.asarray(a)[0], final_states)
    hist = {"log_weights": hlw, "ancestors": anc, "process_rewards": rew, "ess": ess, "generator_calls": calls}
    if len(temperatures) == 1:
        hist = {k: v[:, 0] for k, v in hist.items()}
    extras = {"reference_answers": ref_ans[:, 0], "all_answers": answers, "all_log_weights": lw,
              "all_outcome_rewards": outcome, "temperatures": np.asarray(temperatures)}
    if len(temperatures) > 1:
        extras["swap_accepted"] = acc
        its = np.arange(1, num_iterations)
        attempts = np.array([np.sum(its % 2 == c % 2) for c in range(len(temperatures) - 1)])
        extras["swap_rate"] = acc[1:, :-1].sum(0) / np.maximum(attempts, 1)
    used = num_iterations * num_particles * len(temperatures)
    return ScalingResult(method, int(ans), int(idx), ans_last, lw_last, outcome[-1, 0], used, ncalls, ncalls, hist,
                         chain0, extras)


def particle_gibbs(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles: int = 4,
                   num_iterations=None, budget=None, weights: str = "per_step", temperature: float = 1.0,
                   selection: str = "argmax", progress_bar: bool = False) -> ScalingResult:
    """Particle Gibbs over a generator (iterated conditional SMC, Puri et al. 2025 §3.2).

    Budget = ``num_iterations`` × ``num_particles`` rollouts; give ``budget`` (then
    ``num_iterations = budget // num_particles``) or ``num_iterations``. The reference trajectory
    drawn :math:`\\propto W_T` at the end of an iteration is pinned to the last slot of the next
    iteration and survives its resampling; the answer is chosen (``selection``) from the last
    iteration's pool. ``extras["reference_answers"]`` holds the reference's answer after every
    iteration: a Markov chain that leaves the Feynman–Kac target invariant. ``progress_bar`` shows a
    tqdm bar of the iterations (default False).
    """
    num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
    if num_iterations is None:
        budget, _ = budget_particles(budget, num_particles)
        num_iterations = budget // num_particles
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    check_common(key, generator, reward_model, prompt, temperature, selection, weights, 1.0, num_particles)
    return _pg_driver("particle_gibbs", key, generator, reward_model, prompt, num_particles, num_iterations,
                      budget, weights, [float(temperature)], selection, progress_bar)


def parallel_tempering(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles: int = 4,
                       temperatures=(1.0, 2.0, 4.0), num_iterations=None, budget=None,
                       weights: str = "per_step", selection: str = "argmax",
                       progress_bar: bool = False) -> ScalingResult:
    """Parallel tempering of particle-Gibbs chains at several softmax temperatures.

    Chain ``k`` targets :math:`\\pi_k(x) \\propto p(x)\\prod_t G_t^{1/\\tau_k}`; after each sweep,
    adjacent chains swap references with the Metropolis probability of the module docstring. The
    first temperature is the target (the answer is read from it). Budget = iterations ×
    len(temperatures) × num_particles rollouts. ``progress_bar`` shows a tqdm bar of the iterations
    (default False).
    """
    num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
    temps = [float(check_in_interval(t, "temperatures", 0.0, np.inf, closed="right")) for t in temperatures]
    if len(temps) < 2:
        raise ConfigurationError(f"`temperatures` must hold at least 2 temperatures, got {temps}")
    if num_iterations is None:
        budget, _ = budget_particles(budget, num_particles, unit=len(temps))
        num_iterations = budget // (num_particles * len(temps))
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    check_common(key, generator, reward_model, prompt, temps[0], selection, weights, 1.0, num_particles)
    return _pg_driver("parallel_tempering", key, generator, reward_model, prompt, num_particles, num_iterations,
                      budget, weights, temps, selection, progress_bar)
