r"""The SMC engine's while variant: the loop of :func:`bayeskit.smc.engine.run` as a ``lax.while_loop``, for
a random number of steps (adaptive tempering), over an :class:`AuxFeynmanKac` model whose move and potential
read and update an auxiliary state. Users find these names in :mod:`bayeskit.smc.engine`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.smc._engine_state import SMCState, StepInfo, weigh
from bayeskit.inference.smc.resampling import Strategy, adaptive, weight_stats

__all__ = ["AuxFeynmanKac", "WhileRun", "init_aux", "step_aux", "start_while", "advance_while", "run_while"]


class AuxFeynmanKac(NamedTuple):
    """A Feynman–Kac model whose kernels and potentials read and update an auxiliary state ``aux`` (a
    pytree without a particle axis: the tempering exponent :math:`\\lambda`, the move's tuning, ...).

    Fields:
        init: ``(key, num_particles) -> (particles, aux)`` — draws from :math:`M_0` and the initial aux.
        move: ``(key, t, particles, aux) -> (particles, aux)`` — :math:`M_t`, which may read and adapt
            ``aux`` (e.g. an MCMC kernel invariant for :math:`\\pi_{\\lambda}` that tunes its scale).
        log_potential: ``(t, prev_particles, particles, aux) -> (log_potential (N,), aux)`` —
            :math:`\\log G_t`; ``prev`` is ``None`` at ``t = 0``. It may choose the next target and record
            it in ``aux`` (adaptive tempering chooses :math:`\\lambda_t` from the particles here).
        done: optional ``aux -> bool``: :func:`run_while` stops after the first step at which it holds.
    """

    init: Callable
    move: Callable
    log_potential: Callable
    done: Callable | None = None


class WhileRun(NamedTuple):
    """The carry and outputs of :func:`run_while` (valid entries: the first ``num_steps``).

    Fields: ``state`` (final :class:`SMCState`), ``aux`` (final auxiliary state), ``num_steps`` (steps
    taken, step 0 included), ``failed`` (a step had NaN or all-zero weights: the loop stopped there),
    ``info`` (:class:`StepInfo` padded to ``max_steps``; ancestors None), ``aux_history`` (``aux`` after
    every step, padded), ``records`` (one padded record per accumulator), ``carries`` (their carries).
    Padding repeats the zero/initial values; read only ``[:num_steps]``.
    """

    state: SMCState
    aux: Any
    num_steps: jax.Array
    failed: jax.Array
    info: StepInfo
    aux_history: Any
    records: tuple
    carries: tuple


def init_aux(key, model: AuxFeynmanKac, num_particles: int, *, strategy: Strategy | None = None):
    """Step 0 of an :class:`AuxFeynmanKac` model. Returns ``(SMCState, aux, StepInfo)``."""
    x, aux = model.init(key, num_particles)
    if strategy is not None and strategy.pin is not None:
        x = strategy.pin(0, x)
    lw, aux = model.log_potential(0, None, x, aux)
    incr, info = weigh(lw, jnp.log(num_particles), False, jnp.arange(num_particles))
    return SMCState(x, lw, incr), aux, info


def step_aux(key, state: SMCState, aux, model: AuxFeynmanKac, t, *, strategy: Strategy):
    """One step ``t >= 1`` of an :class:`AuxFeynmanKac` model: the strategy's ancestors, the move (which
    may update ``aux``), pin, reweight (the potential may update ``aux``). Returns ``(SMCState, aux,
    StepInfo)``; the evidence update is the one of :func:`step`."""
    num_particles = state.log_weights.shape[0]
    k_res, k_move = jax.random.split(key)
    ancestors, resampled, x_prev, lw_prev = strategy.select(k_res, t, state.particles, state.log_weights, model)
    lw_prev = jnp.broadcast_to(lw_prev, (num_particles,))
    x, aux = model.move(k_move, t, x_prev, aux)
    if strategy.pin is not None:
        x = strategy.pin(t, x)
    lpot, aux = model.log_potential(t, x_prev, x, aux)
    lw = lw_prev + lpot
    incr, info = weigh(lw, weight_stats(lw_prev)[0], resampled, ancestors)
    return SMCState(x, lw, state.log_evidence + incr), aux, info


def _pad(tree, max_steps: int):
    """Buffers of length ``max_steps`` holding ``tree`` (one step's values) at index 0."""
    return jax.tree_util.tree_map(lambda a: jnp.zeros((max_steps,) + jnp.shape(a), jnp.asarray(a).dtype)
                                  .at[0].set(a), tree)


def _put(buffers, t, tree):
    return jax.tree_util.tree_map(lambda b, a: b.at[t].set(a), buffers, tree)


def start_while(key, model: AuxFeynmanKac, num_particles: int, *, max_steps: int,
                strategy: Strategy | None = None, accumulators=()) -> WhileRun:
    """Step 0 of :func:`run_while` (pure): a :class:`WhileRun` with one step taken, to be continued by
    :func:`advance_while`. ``key`` is the key of the whole run (step t uses ``fold_in(key, t)``)."""
    strategy = adaptive() if strategy is None else strategy
    k0 = jax.random.fold_in(key, 0)
    state, aux, info = init_aux(k0, model, num_particles, strategy=strategy)
    carries, records = [], []
    for i, acc in enumerate(accumulators):
        c, r = acc.init(jax.random.fold_in(k0, i + 1), state, model)
        carries.append(c)
        records.append(r)
    info = info._replace(ancestors=None)
    return WhileRun(state, aux, jnp.ones((), jnp.int32), info.nonfinite, _pad(info, max_steps),
                    _pad(aux, max_steps), _pad(tuple(records), max_steps), tuple(carries))


def advance_while(key, run: WhileRun, model: AuxFeynmanKac, *, cond: Callable | None = None, stop=None,
                  strategy: Strategy | None = None, accumulators=()) -> WhileRun:
    """Continue a :class:`WhileRun` (pure, one ``lax.while_loop``) while ``cond(state, aux, num_steps)`` holds
    (default: ``not model.done(aux)``), no step has failed, and fewer than ``stop`` (default and at most:
    the buffers' ``max_steps``) steps are taken. Stopping at ``stop`` and continuing gives the same
    answer as one call: the keys are ``fold_in(key, t)``."""
    strategy = adaptive() if strategy is None else strategy
    accumulators = tuple(accumulators)
    if cond is None:
        if model.done is None:
            from bayeskit.errors import ConfigurationError

            raise ConfigurationError("`cond` is needed when the model has no `done` function")
        cond = lambda state, aux, num_steps: jnp.logical_not(model.done(aux))  # noqa: E731
    max_steps = jax.tree_util.tree_leaves(run.info)[0].shape[0]
    limit = max_steps if stop is None else jnp.minimum(stop, max_steps)

    def keep_going(r):
        return (r.num_steps < limit) & jnp.logical_not(r.failed) & cond(r.state, r.aux, r.num_steps)

    def body(r):
        t = r.num_steps
        k = jax.random.fold_in(key, t)
        state, aux, info = step_aux(k, r.state, r.aux, model, t, strategy=strategy)
        carries, records = [], []
        for i, (acc, c) in enumerate(zip(accumulators, r.carries)):
            c, rec = acc.update(jax.random.fold_in(k, i + 1), t, c, r.state, state, info, model)
            carries.append(c)
            records.append(rec)
        info = info._replace(ancestors=None)
        return WhileRun(state, aux, t + 1, r.failed | info.nonfinite, _put(r.info, t, info),
                        _put(r.aux_history, t, aux), _put(r.records, t, tuple(records)), tuple(carries))

    return jax.lax.while_loop(keep_going, body, run)


def run_while(key, model: AuxFeynmanKac, num_particles: int, *, max_steps: int, cond: Callable | None = None,
              strategy: Strategy | None = None, accumulators=()) -> WhileRun:
    """Run the SMC engine for a random number of steps: step 0, then steps while ``cond`` holds.

    The loop is a ``lax.while_loop`` (pure; ``jit``/``vmap``-able). It stops after the first step at
    which ``model.done(aux)`` holds (or ``cond(state, aux, num_steps)`` fails), after a step whose weights are NaN
    or all zero (``failed``), or after ``max_steps`` steps in all, whichever comes first. Outputs are
    padded to ``max_steps``.

    Args:
        key: a ``jax.random`` key.
        model: the :class:`AuxFeynmanKac` model.
        num_particles: N (static).
        max_steps: the cap on the number of steps, step 0 included (static: the buffers' length).
        cond: optional ``(SMCState, aux, num_steps) -> bool`` (``num_steps``: steps taken so far), continue
            while true; default ``not model.done(aux)``.
        strategy: the resampling strategy (default ``resampling.adaptive()``).
        accumulators: :class:`Accumulator`\\ s; their ``fk`` argument is ``model``.

    Returns:
        A :class:`WhileRun`.
    """
    accumulators = tuple(accumulators)
    run = start_while(key, model, num_particles, max_steps=max_steps, strategy=strategy,
                      accumulators=accumulators)
    return advance_while(key, run, model, cond=cond, strategy=strategy, accumulators=accumulators)
