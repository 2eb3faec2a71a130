r"""The SMC engine: the one particle loop under every particle method of bayeskit.

At step 0 draw :math:`x_0^i \sim M_0` and weight :math:`w_0^i = G_0(x_0^i)`. At step :math:`t \ge 1` a
resampling *strategy* (:mod:`~bayeskit.inference.smc.resampling`: adaptive, always, never, conditional,
frozen) picks ancestors :math:`A_t^i` and the log-weights they carry (zero after a resampling, the old
ones otherwise); then :math:`x_t^i \sim M_t(x_{t-1}^{A_t^i}, \cdot)` and
:math:`\log w_t^i = \log \tilde w_{t-1}^{A_t^i} + \log G_t(x_{t-1}^{A_t^i}, x_t^i)`. The estimate

.. math::
    \log \hat L_t = \log \hat L_{t-1} + \log \sum_i \tilde w_{t-1}^{A_t^i} G_t^i
                    - \log \sum_i \tilde w_{t-1}^{A_t^i}

is unbiased on the natural scale, with or without resampling at a given step.

Methods plug into the loop with small pure pieces, in BlackJAX's style:

* a :class:`Strategy` (how ancestors are picked, which slots are pinned to a reference path, when the
  whole step is frozen);
* :class:`Accumulator`\ s ``(init, update)``, online statistics carried along the loop in the spirit of
  the ``particles`` library's collectors: filtering moments, PaRIS statistics, the O(N²) forward
  smoother, a score. Each returns a per-step *record* (stacked over time) and keeps a carry.

The loop is a ``lax.scan`` over time inside ``jit``; ``vmap`` over independent runs works; memory
stays O(N) unless ``history=True``. :func:`run_steps` runs a slice of the steps from a given state, so
that drivers can run long loops in jitted chunks with a progress bar between them.

For a random number of steps (adaptive tempering) :func:`run_while` is the same loop as a
``lax.while_loop`` over an :class:`AuxFeynmanKac` model, whose move and potential read and update an
auxiliary state (the tempering exponent, the move's tuning); it stops when the model says it is done.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.smc._engine_state import SMCState, StepInfo, weigh
from bayeskit.inference.smc._engine_while import (AuxFeynmanKac, WhileRun, advance_while, init_aux, run_while,
                                                  start_while, step_aux)
from bayeskit.inference.smc._feynman_kac import FeynmanKac
from bayeskit.inference.smc.resampling import Strategy, adaptive, weight_stats
from bayeskit.progress import tick

__all__ = ["SMCState", "StepInfo", "RunOutput", "Accumulator", "init", "step", "start", "run_steps", "run",
           "summary", "take", "trace_lineage", "AuxFeynmanKac", "WhileRun", "init_aux", "step_aux", "start_while",
           "advance_while", "run_while"]


class Accumulator(NamedTuple):
    """An online statistic carried along the SMC loop.

    Fields:
        init: ``(key, state, fk) -> (carry, record)`` at step 0 (``state``: the :class:`SMCState`).
        update: ``(key, t, carry, prev, state, info, fk) -> (carry, record)`` at step ``t >= 1``;
            ``prev`` is the state of step t-1 *before* resampling (its particles and log-weights),
            ``state`` the new one, ``info`` the step's :class:`StepInfo` (with its ancestors).

    ``record`` is any pytree (or None), stacked over time by :func:`run`; the final ``carry`` is
    returned too.
    """

    init: Callable
    update: Callable


class RunOutput(NamedTuple):
    """Outputs of :func:`run`.

    Fields: ``info`` (StepInfo stacked over T; its ``ancestors`` are None unless ``history=True`` or
    ``keep_ancestors=True``, so that memory stays O(N) in long runs), ``records`` (a tuple, one
    stacked record per accumulator), ``carries`` (a tuple, each accumulator's final carry),
    ``particles`` / ``log_weights`` (every step's cloud with ``history=True``, else None).
    """

    info: StepInfo
    records: tuple
    carries: tuple
    particles: Any
    log_weights: Any


def summary(fn: Callable) -> Accumulator:
    """A stateless :class:`Accumulator` recording ``fn(particles, log_weights)`` after every step
    (e.g. :func:`~bayeskit.smc.weighted_moments`: the filtering moments)."""

    def init_fn(key, state, fk):
        return None, fn(state.particles, state.log_weights)

    def update_fn(key, t, carry, prev, state, info, fk):
        return None, fn(state.particles, state.log_weights)

    return Accumulator(init_fn, update_fn)


def take(tree, idx):
    """``tree`` indexed by ``idx`` along every leaf's leading (particle) axis."""
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def trace_lineage(ancestors, final_index):
    """Slots ``b_t`` (T,) of the lineage ending in slot ``final_index`` at the last step:
    ``b_{t-1} = A_t[b_t]``. ``ancestors`` is (T, N) with row t the ancestors of step t (row 0, the
    initial step, is not used), as :func:`run` records them."""

    def back(b, anc_t):
        return anc_t[b], b

    _, path = jax.lax.scan(back, jnp.asarray(final_index, jnp.int32), ancestors, reverse=True)
    return path


def _constrain(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _replicated(a, sharding):
    """``a`` replicated on every device of ``sharding``: resampling then runs on each device on the
    (cheap, O(N)) global weights instead of being partitioned by XLA, which serialises the cumulative
    sum and the scatter of the offspring counts across shards."""
    if sharding is None:
        return a
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.lax.with_sharding_constraint(a, NamedSharding(sharding.mesh, PartitionSpec()))


def init(key, fk: FeynmanKac, num_particles: int, *, strategy: Strategy | None = None, sharding=None):
    """Step 0: draw from :math:`M_0` (pinned slots set by the strategy) and weight by :math:`G_0`.
    Returns ``(SMCState, StepInfo)``."""
    x = fk.init(key, num_particles)
    if strategy is not None and strategy.pin is not None:
        x = strategy.pin(0, x)
    x = _constrain(x, sharding)
    lw = _constrain(fk.log_potential(0, None, x), sharding)
    incr, info = weigh(lw, jnp.log(num_particles), False, jnp.arange(num_particles))
    return SMCState(x, lw, incr), info


def step(key, state: SMCState, fk: FeynmanKac, t, *, strategy: Strategy, sharding=None):
    """One step ``t >= 1``: the strategy's ancestors, move, pin, reweight. Returns ``(SMCState, StepInfo)``.

    With a strategy that ``halt``\\ s (frozen), a halted step returns the state unchanged (after the
    strategy's ``freeze``), with a zero evidence increment and identity ancestors.
    """

    def advance(st):
        num_particles = st.log_weights.shape[0]
        k_res, k_move = jax.random.split(key)
        lw_in = _replicated(st.log_weights, sharding)
        ancestors, resampled, x_prev, lw_prev = strategy.select(k_res, t, st.particles, lw_in, fk)
        ancestors = _replicated(ancestors, sharding)
        x_prev = _constrain(x_prev, sharding)
        lw_prev = _constrain(jnp.broadcast_to(lw_prev, (num_particles,)), sharding)
        x = fk.move(k_move, t, x_prev)
        if strategy.pin is not None:
            x = strategy.pin(t, x)
        x = _constrain(x, sharding)
        lw = _constrain(lw_prev + fk.log_potential(t, x_prev, x), sharding)
        incr, info = weigh(lw, weight_stats(lw_prev)[0], resampled, ancestors)
        return SMCState(x, lw, st.log_evidence + incr), info

    if strategy.halt is None:
        return advance(state)

    def halted(st):
        x = st.particles if strategy.freeze is None else strategy.freeze(st.particles)
        n = st.log_weights.shape[0]
        info = StepInfo(jnp.zeros((), st.log_evidence.dtype), weight_stats(st.log_weights)[1], jnp.array(False),
                        jnp.arange(n, dtype=jnp.int32), jnp.array(False))
        return st._replace(particles=x), info

    return jax.lax.cond(strategy.halt(state.particles), halted, advance, state)


def _keep(info: StepInfo, keep_ancestors: bool) -> StepInfo:
    return info if keep_ancestors else info._replace(ancestors=None)


def start(key, fk: FeynmanKac, num_particles: int, *, strategy: Strategy | None = None,
          accumulators=(), history: bool = False, keep_ancestors: bool = False, sharding=None):
    """Step 0 of :func:`run`: ``(state, carries, step-0 output)``, where the output is the tuple
    ``(info, records, (particles, log_weights) or (None, None))`` that :func:`run_steps` stacks."""
    strategy = adaptive() if strategy is None else strategy
    state, info = init(key, fk, num_particles, strategy=strategy, sharding=sharding)
    carries, records = [], []
    for i, acc in enumerate(accumulators):
        c, r = acc.init(jax.random.fold_in(key, i + 1), state, fk)
        carries.append(c)
        records.append(r)
    hist = (state.particles, state.log_weights) if history else (None, None)
    return state, tuple(carries), (_keep(info, history or keep_ancestors), tuple(records), hist)


def run_steps(state: SMCState, carries: tuple, fk: FeynmanKac, ts, keys, *, strategy: Strategy | None = None,
              accumulators=(), history: bool = False, keep_ancestors: bool = False, sharding=None,
              progress_bar: bool = False):
    """Steps ``ts`` (a 1-D array of t >= 1, with one key each in ``keys``) from ``state`` and the
    accumulators' ``carries``. Returns ``(state, carries, outputs)`` with outputs stacked along ``ts``.
    With ``progress_bar`` each step reports ``t + 1`` of ``fk.num_steps`` to the open progress bar."""
    strategy = adaptive() if strategy is None else strategy

    def body(carry, inp):
        st, cs = carry
        t, k = inp
        new, info = step(k, st, fk, t, strategy=strategy, sharding=sharding)
        new_cs, records = [], []
        for i, (acc, c) in enumerate(zip(accumulators, cs)):
            c, r = acc.update(jax.random.fold_in(k, i + 1), t, c, st, new, info, fk)
            new_cs.append(c)
            records.append(r)
        hist = (new.particles, new.log_weights) if history else (None, None)
        tick(t + 1, fk.num_steps, progress_bar)
        return (new, tuple(new_cs)), (_keep(info, history or keep_ancestors), tuple(records), hist)

    (state, carries), outs = jax.lax.scan(body, (state, carries), (ts, keys))
    return state, carries, outs


def run(key, fk: FeynmanKac, num_particles: int, *, strategy: Strategy | None = None, accumulators=(),
        history: bool = False, keep_ancestors: bool = False, sharding=None, progress_bar: bool = False):
    """Run the SMC engine over all ``fk.num_steps`` steps.

    Args:
        key: a ``jax.random`` key.
        fk: the :class:`FeynmanKac` model (hashable: a NamedTuple of functions).
        num_particles: N (static).
        strategy: the resampling :class:`~bayeskit.inference.smc.resampling.Strategy`; default
            ``resampling.adaptive("systematic", 0.5)``.
        accumulators: a sequence of :class:`Accumulator` run along the loop.
        history: store particles and log-weights at every step (needed for backward sampling).
        keep_ancestors: store every step's ancestors (needed to trace lineages); implied by ``history``.
        sharding: optional ``jax.sharding.Sharding`` for arrays with a leading particle axis.
        progress_bar: advance the progress bar that the calling driver opened as the time loop runs
            (static; traces to nothing when False).

    Returns:
        ``(final SMCState, RunOutput)``. Pure and traceable: call it inside ``jax.jit`` (with ``fk`` built
        inside the jitted function from traced parameters and data, so that new parameter values do not
        trigger recompilation) and ``vmap`` it over keys or parameters. No input validation here; the
        drivers (e.g. :func:`bayeskit.smc.particle_filter`) check inputs and the ``nonfinite`` flags.
    """
    strategy = adaptive() if strategy is None else strategy
    accumulators = tuple(accumulators)
    k0, kloop = jax.random.split(key)
    opts = dict(strategy=strategy, accumulators=accumulators, history=history, keep_ancestors=keep_ancestors,
                sharding=sharding)
    state, carries, out0 = start(k0, fk, num_particles, **opts)
    if fk.num_steps > 1:
        keys = jax.random.split(kloop, fk.num_steps - 1)
        state, carries, outs = run_steps(state, carries, fk, jnp.arange(1, fk.num_steps), keys, **opts,
                                         progress_bar=progress_bar)
        outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), out0, outs)
    else:
        outs = jax.tree_util.tree_map(lambda a: a[None], out0)
    info, records, (px, plw) = outs
    return state, RunOutput(info, records, carries, px, plw)
