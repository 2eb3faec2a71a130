"""Input checks and bookkeeping shared by the inference-time-scaling drivers (budgets, initial states,
reward checks, the per-step history of a sweep)."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from bayeskit._checks import check_choice, check_in_interval, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference.scaling._generator import check_generator, raise_pending_errors
from bayeskit.inference.scaling._sweep import SELECTIONS, WEIGHTS, SweepOutput

__all__ = ["check_common", "budget_particles", "raise_bad_reward", "finish", "initial_states", "history"]


def check_common(key, generator, reward_model, prompt, temperature, selection, weights=None,
                 ess_threshold=None, num_particles=2):
    check_key(key)
    check_generator(generator, reward_model, prompt, num_particles)
    check_in_interval(temperature, "temperature", 0.0, np.inf, closed="right")
    check_choice(selection, "selection", SELECTIONS)
    if weights is not None:
        check_choice(weights, "weights", WEIGHTS)
    if ess_threshold is not None:
        check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
        if weights == "per_step" and ess_threshold < 1.0:
            raise ConfigurationError(
                "`weights='per_step'` resets the log-weights to logit(r_t) at every step and needs resampling "
                f"at every step (`ess_threshold=1.0`), got ess_threshold={ess_threshold}; use "
                "`weights='accumulated'` for ESS-triggered resampling")


def budget_particles(budget, num_particles, unit=1, what="num_particles"):
    if budget is None and num_particles is None:
        raise ConfigurationError(f"give `budget` (in rollouts) or `{what}`")
    if num_particles is not None:
        num_particles = check_positive_int(num_particles, what)
    if budget is not None:
        budget = check_positive_int(budget, "budget")
        if num_particles is not None and budget < num_particles * unit:
            raise ConfigurationError(
                f"`budget` = {budget} rollouts is smaller than what one pass needs ({what} = {num_particles}"
                + (f" x {unit}" if unit > 1 else "") + f" = {num_particles * unit} rollouts)")
    return budget, num_particles


def raise_bad_reward(bad, bad_index, rewards_hist, prefix=""):
    bad = np.asarray(bad)
    if bad.any():
        pos = np.argwhere(bad)[0]
        i = int(np.asarray(bad_index)[tuple(pos)])
        val = np.asarray(rewards_hist)[tuple(pos)][..., i] if np.ndim(rewards_hist) else rewards_hist
        raise DataError(
            f"{prefix}the reward model returned a value outside [0, 1] or NaN ({val!r}) at step {int(pos[-1])} "
            f"for particle {i}; process rewards must be probabilities in [0, 1]")


def finish(generator, reward_model, out: SweepOutput):
    raise_pending_errors(generator, reward_model)
    raise_bad_reward(out.bad_reward, out.bad_index, out.history.reward)


@partial(jax.jit, static_argnums=(0, 2))
def _init_jit(generator, prompt, num_particles):
    return generator.init(prompt, num_particles)


def initial_states(generator, prompt, num_particles: int):
    """``generator.init(prompt, N)``, compiled once per (generator, N) for JAX-native generators (run op
    by op it cost about as much as a whole small sweep); host generators, and prompts that cannot be
    traced, run it as it is."""
    if generator.host is None:
        try:
            return _init_jit(generator, prompt, num_particles)
        except Exception:  # e.g. a prompt that is not an array: same call, untraced (re-raises real errors)
            pass
    return generator.init(prompt, num_particles)


@partial(jax.jit, static_argnums=0)
def _done_history(generator, states):
    return jax.vmap(generator.is_done)(states)


def history(out: SweepOutput, generator):
    done = _done_history(generator, out.history.state) if generator.host is None else None
    h = {"log_weights": out.history_log_weights, "ancestors": out.ancestors,
         "process_rewards": out.history.reward, "ess": out.ess, "resampled": out.resampled,
         "generator_calls": out.calls}
    if done is not None:
        h["done"] = done
    return {k: np.asarray(v) for k, v in h.items()}
