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

from bayeskit.inference.smc._feynman_kac import FeynmanKac
from bayeskit.inference.smc.resampling import Strategy, adaptive
from bayeskit.inference.smc.resampling import weight_stats
from bayeskit.progress import tick

__all__ = ["SMCState", "StepInfo", "RunOutput", "Accumulator", "init", "step", "start", "run_steps", "run",
           "summary", "take", "trace_lineage", "AuxFeynmanKac", "WhileRun", "init_aux", "step_aux", "start_while",
           "advance_while", "run_while"]


class SMCState(NamedTuple):
    """State of the engine after step t.

    Fields: ``particles`` (pytree, leading axis N), ``log_weights`` (N,), ``log_evidence`` () —
    the running :math:`\\log \\hat L_t`.
    """

    particles: Any
    log_weights: jax.Array
    log_evidence: jax.Array


class StepInfo(NamedTuple):
    """Per-step diagnostics: ``log_evidence_increment``, ``ess`` (after weighting), ``resampled``
    (bool, whether the particles were resampled before this step's move), ``ancestors`` ((N,)
    indices into the previous step's particles; identity when not resampled), ``nonfinite`` (bool:
    a NaN log-weight or all weights zero at this step)."""

    log_evidence_increment: jax.Array
    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array
    nonfinite: jax.Array


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


def _weigh(lw, log_sum_prev, resampled, ancestors):
    # one pass over the new log-weights gives the evidence increment, the ESS and the flags; the carried
    # weights' log-sum (log_sum_prev) folds to log N at compile time after an unconditional resampling
    lse, ess, nonfinite = weight_stats(lw)
    incr = lse - log_sum_prev
    return incr, StepInfo(incr, ess, jnp.asarray(resampled), ancestors.astype(jnp.int32), nonfinite)


def init(key, fk: FeynmanKac, num_particles: int, *, strategy: Strategy | None = None, sharding=None):
    """Step 0: draw from :math:`M_0` (pinned slots set by the strategy) and weight by :math:`G_0`.
    Returns ``(SMCState, StepInfo)``."""
    x = fk.init(key, num_particles)
    if strategy is not None and strategy.pin is not None:
        x = strategy.pin(0, x)
    x = _constrain(x, sharding)
    lw = _constrain(fk.log_potential(0, None, x), sharding)
    incr, info = _weigh(lw, jnp.log(num_particles), False, jnp.arange(num_particles))
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
        incr, info = _weigh(lw, weight_stats(lw_prev)[0], resampled, ancestors)
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


# --------------------------------------------------------------------------------------------------
# the while variant: a random number of steps (tempering), with an auxiliary state
# --------------------------------------------------------------------------------------------------
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
    incr, info = _weigh(lw, jnp.log(num_particles), False, jnp.arange(num_particles))
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
    incr, info = _weigh(lw, weight_stats(lw_prev)[0], resampled, ancestors)
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
