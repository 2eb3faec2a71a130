r"""The SMC sweep over a generator and a reward model, and the answer selection (kernels of
:mod:`bayeskit.inference.scaling`; public through :mod:`bayeskit.scaling.kernels`).

Log-potentials (option ``weights``; the target is
:math:`\pi(x_{1:T}) \propto p(x_{1:T}) \prod_t G_t(x_{1:t})^{1/\tau}`):

* ``"per_step"`` (the paper and its reference code): :math:`\log G_t = \operatorname{logit}(r_t)`,
  weights reset at every resampling, which happens at every step (``ess_threshold = 1``).
* ``"accumulated"``: the same potential, weights carried between resamplings, so resampling may be
  triggered by the ESS.
* ``"value_ratio"``: :math:`\log G_t = \log r_t - \log r_{t-1}`; the product telescopes to the
  final reward, so the target is the reward-tilted posterior :math:`p(x) r(x)^{1/\tau}`.

A finished particle is not extended (no generator call), keeps its reward and stays in the pool.
Once every particle has finished, weights are frozen and no more resampling happens.

**Masks.** With ``num_active = n`` (a traced int) only the first ``n`` of the ``N`` slots take part:
the others are never extended, never chosen as ancestors and carry log-weight :math:`-\infty`; the
named resampling schemes then draw ``n`` ancestors exactly as they would with ``n`` particles. One
compiled program of ``N`` slots then serves every particle count ``n <= N``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import ConfigurationError
from bayeskit.inference.scaling._generator import Generator, RewardModel, guarded_step
from bayeskit.inference.smc import FeynmanKac
from bayeskit.inference.smc import engine as smc_engine
from bayeskit.inference.smc.resampling import Strategy, adaptive, conditional, frozen
from bayeskit.inference.smc.resampling import ess as ess_fn

__all__ = ["Particles", "SweepOutput", "smc_sweep", "select_answer", "trace_path", "log_outcome", "WEIGHTS",
           "SELECTIONS", "MASKED_SCHEMES", "choice_code"]

WEIGHTS = ("per_step", "accumulated", "value_ratio")
SELECTIONS = ("argmax", "vote", "sample")
#: resampling schemes that support a traced particle count (``num_active``); a traced int picks one
MASKED_SCHEMES = ("multinomial", "systematic", "stratified")
_CLIP = 1e-7


def choice_code(value, choices, name):
    """The index of ``value`` in ``choices`` (a name), or ``value`` itself (an int, possibly traced)."""
    if isinstance(value, str):
        if value not in choices:
            raise ConfigurationError(f"`{name}` must be one of {list(choices)}, got {value!r}")
        return choices.index(value)
    return value

class Particles(NamedTuple):
    """Particles: the generator ``state`` pytree and the current process ``reward`` (N,)."""

    state: Any
    reward: jax.Array


class SweepOutput(NamedTuple):
    """One SMC sweep over ``T = max_steps`` steps.

    ``particles`` (final Particles), ``log_weights`` (N,) final, ``history`` (Particles with
    leading (T, N)), ``history_log_weights`` (T, N), ``potentials`` (T, N) untempered
    :math:`\\log G_t`, ``ancestors`` (T, N), ``resampled`` (T,), ``ess`` (T,), ``calls`` (T,)
    generator calls per step, ``bad_reward`` (T,) a reward outside [0, 1] or NaN at that step,
    ``bad_index`` (T,) first offending particle.
    """

    particles: Particles
    log_weights: jax.Array
    history: Particles
    history_log_weights: jax.Array
    potentials: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    ess: jax.Array
    calls: jax.Array
    bad_reward: jax.Array
    bad_index: jax.Array


def _logit(r):
    r = jnp.clip(r, _CLIP, 1.0 - _CLIP)
    return jnp.log(r) - jnp.log1p(-r)


def _log_potential(weights, prev: Particles, new: Particles, prev_done, first):
    """Untempered log-potential :math:`\\log G_t` of each particle (``weights``: a name or its
    index in ``WEIGHTS``, possibly traced)."""
    code = choice_code(weights, WEIGHTS, "weights")
    lr_new = jnp.log(jnp.clip(new.reward, 0.0, 1.0))
    lr_prev = jnp.where(first, 0.0, jnp.log(jnp.clip(prev.reward, 0.0, 1.0)))
    ratio = jnp.where(prev_done, 0.0, lr_new - lr_prev)
    ratio = jnp.where(jnp.isnan(ratio), -jnp.inf, ratio)
    return jnp.where(code == 2, ratio, _logit(new.reward))


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _set_slot(tree, slot, value):
    return jax.tree_util.tree_map(lambda a, v: a.at[slot].set(v), tree, value)


class _Slot(NamedTuple):
    """Engine particles: generation ``state``, process ``reward``, untempered potential ``phi``
    of the last step, and ``live`` (the slot was extended by a generator call at that step)."""

    state: Any
    reward: jax.Array
    phi: jax.Array
    live: jax.Array


# ------------------------------------------------------------------------ masked resampling


def _masked_cumulative(log_weights, num_active):
    """Cumulative weights over all slots, set to 1 from the last active slot on (robust to rounding:
    every point below 1 then lands on an active slot)."""
    c = jnp.cumsum(jax.nn.softmax(log_weights))
    return jnp.where(jnp.arange(c.shape[0]) >= num_active - 1, 1.0, c)


def _below(c, points):
    """``A_j = #{i : c_i <= p_j}``: the slot whose cumulative-weight interval holds point ``p_j``."""
    return jnp.searchsorted(c, points, side="right").astype(jnp.int32)


def _masked_multinomial(key, c, n):
    # n sorted uniforms from n + 1 exponential spacings (the spacings past n are zeroed)
    slots = c.shape[0]
    e = jax.random.exponential(key, (slots + 1,), dtype=c.dtype)
    cs = jnp.cumsum(jnp.where(jnp.arange(slots + 1) <= n, e, 0.0))
    return _below(c, cs[:slots] / cs[slots])


def _masked_systematic(key, c, n):
    u = jax.random.uniform(key, dtype=c.dtype)
    return _below(c, (jnp.arange(c.shape[0], dtype=c.dtype) + u) / n)


def _masked_stratified(key, c, n):
    u = jax.random.uniform(key, (c.shape[0],), dtype=c.dtype)
    return _below(c, (jnp.arange(c.shape[0], dtype=c.dtype) + u) / n)


_MASKED_FNS = (_masked_multinomial, _masked_systematic, _masked_stratified)


def _masked_strategy(code, threshold, num_active) -> Strategy:
    """Resample the first ``num_active`` slots (scheme ``MASKED_SCHEMES[code]``, ``code`` possibly traced)
    when ESS < ``threshold`` x ``num_active``; the other slots keep themselves and log-weight -inf."""

    def select(key, t, particles, log_weights, fk):
        slots = jnp.arange(log_weights.shape[0], dtype=jnp.int32)
        active = slots < num_active
        do = (threshold >= 1.0) | (ess_fn(log_weights) < threshold * num_active)

        def resample(_):
            c = _masked_cumulative(log_weights, num_active)
            if isinstance(code, int):
                idx = _MASKED_FNS[code](key, c, num_active)
            else:
                idx = jax.lax.switch(code, [lambda k, f=f: f(k, c, num_active) for f in _MASKED_FNS], key)
            idx = jnp.where(active, idx, slots)
            lw = jnp.where(active, 0.0, -jnp.inf).astype(log_weights.dtype)
            return idx, _take(particles, idx), lw

        def keep(_):
            return slots, particles, log_weights

        idx, x, lw = jax.lax.cond(do, resample, keep, None)
        return idx, do, x, lw

    return Strategy(select)


def smc_sweep(key, generator: Generator, reward_model: RewardModel, init_states, *, weights: str = "per_step",
              temperature=1.0, ess_threshold: float = 1.0, resampling="systematic", reference=None,
              resample: bool = True, num_active=None, progress_bar: bool = False) -> SweepOutput:
    """One (conditional) SMC sweep over a generator; pure, call inside ``jit`` / ``vmap``.

    Args:
        key: ``jax.random`` key.
        generator: a :class:`~bayeskit.inference.scaling.Generator`.
        reward_model: a :class:`~bayeskit.inference.scaling.RewardModel`.
        init_states: ``generator.init(prompt, N)``.
        weights: ``"per_step"``, ``"accumulated"`` or ``"value_ratio"`` (module docstring).
        temperature: softmax temperature :math:`\\tau` (may be traced).
        ess_threshold: resample when ESS < threshold × N (1: every step).
        resampling: scheme name or function ``(key, log_weights, num_samples) -> indices``; with a
            ``reference`` the free particles always resample multinomially over all N.
        reference: ``None`` or a Particles history with leading axis T: the conditional path,
            pinned to the last slot (conditional SMC).
        resample: ``False`` runs N independent rollouts (best-of-N); may be traced.
        num_active: ``None`` (every slot is a particle) or an int ``n <= N``, possibly traced: only the
            first ``n`` slots take part (module docstring, "Masks"); ``resampling`` is then one of
            ``MASKED_SCHEMES`` or its index (possibly traced), and there is no ``reference``.
        progress_bar: advance the open :func:`bayeskit.progress.progress` bar at each step (static).

    The sweep is the shared SMC engine (:func:`bayeskit.inference.smc.engine.init` /
    :func:`~bayeskit.inference.smc.engine.step`) over the Feynman–Kac model whose particles are
    generations: ``M_0`` is the first generator step from ``init_states``, ``M_t`` the guarded
    step (finished particles unchanged; with a ``reference``, the last slot is set to it and its
    ancestor is itself), ``log G_t`` the potential of ``weights`` divided by the temperature. Once
    every particle has finished, the engine step is skipped (weights frozen, no resampling).
    """
    masked = num_active is not None
    if masked:
        if reference is not None:
            raise ConfigurationError("`num_active` (a masked sweep) does not take a `reference`")
        if callable(resampling):
            raise ConfigurationError(f"a masked sweep (`num_active`) resamples with one of {list(MASKED_SCHEMES)}, "
                                     f"got the callable {resampling!r}")
        code = choice_code(resampling, MASKED_SCHEMES, "resampling")
        n_all = jax.tree_util.tree_leaves(init_states)[0].shape[0]
        active = jnp.arange(n_all) < num_active
        generator = generator._replace(is_done=lambda s, f=generator.is_done: f(s) | ~active)
    step = guarded_step(generator)
    num_steps = generator.max_steps
    n = jax.tree_util.tree_leaves(init_states)[0].shape[0]
    dtype = jnp.result_type(float)
    inv_temp = 1.0 / jnp.asarray(temperature, dtype)
    has_ref = reference is not None
    x0 = Particles(init_states, jnp.ones((n,), dtype))
    threshold = jnp.where(jnp.asarray(resample), jnp.asarray(ess_threshold, dtype), 0.0)

    def extend(k, t, prev: Particles, first):
        prev_done = generator.is_done(prev.state)
        new_state = step(k, prev.state)
        reward = reward_model.process(new_state).astype(dtype)
        reward = jnp.where(prev_done, prev.reward, reward)  # finished: keep the score, no new call
        new = Particles(new_state, reward)
        live = ~prev_done
        if has_ref:
            new = _set_slot(new, n - 1, _take(reference, t))
            live = live.at[n - 1].set(False)
        phi = _log_potential(weights, prev, new, prev_done, first)
        if masked:
            phi = jnp.where(active, phi, -jnp.inf)
        return _Slot(new.state, new.reward, phi, live)

    fk = FeynmanKac(
        num_steps,
        lambda k, num: extend(k, 0, x0, True),
        lambda k, t, xp: extend(k, t, Particles(xp.state, xp.reward), False),
        lambda t, xp, x: x.phi * inv_temp,
    )
    # the reference (last slot) is placed by `extend`, whose potential must see it
    if masked:
        inner = _masked_strategy(code, threshold, num_active)
    else:
        inner = (conditional(reference, slot=n - 1, pin=False) if has_ref else adaptive(resampling, threshold))
    strategy = frozen(inner, lambda x: generator.is_done(x.state),
                      lambda x: x._replace(phi=jnp.zeros_like(x.phi), live=jnp.zeros_like(x.live)))

    def record(particles, log_weights):
        bad = ~((particles.reward >= 0.0) & (particles.reward <= 1.0)) & particles.live
        return (Particles(particles.state, particles.reward), log_weights, particles.phi,
                jnp.sum(particles.live).astype(jnp.int32), jnp.any(bad), jnp.argmax(bad).astype(jnp.int32))

    stf, out = smc_engine.run(key, fk, n, strategy=strategy, accumulators=(smc_engine.summary(record),),
                              keep_ancestors=True, progress_bar=progress_bar)
    ((hist, hlw, phi, calls, bad, bad_idx),) = out.records
    xf = Particles(stf.particles.state, stf.particles.reward)
    return SweepOutput(xf, stf.log_weights, hist, hlw, phi, out.info.ancestors, out.info.resampled,
                       out.info.ess, calls, bad, bad_idx)


def trace_path(out: SweepOutput, index):
    """The path of final particle ``index`` traced back through the ancestors: ``(states (T, ...),
    score)`` with ``score`` the sum of its untempered log-potentials (-1e30 for -inf ones)."""
    b = smc_engine.trace_lineage(out.ancestors, index)
    t = jnp.arange(b.shape[0])
    states = jax.tree_util.tree_map(lambda a: a[t, b], out.history)
    score = jnp.sum(jnp.where(jnp.isfinite(out.potentials[t, b]), out.potentials[t, b], -1e30))
    return states, score


def log_outcome(outcome) -> np.ndarray:
    """log R_i in float64, with R_i = 0 mapped to the log of the smallest normal float64 (finite): in
    float32, ``log(max(R, 1e-300))`` is -inf and all-zero rewards gave NaN vote weights."""
    return np.log(np.maximum(np.asarray(outcome, np.float64), np.finfo(np.float64).tiny))


def select_answer(key, answers, log_weights, selection):
    """Choose the answer: ``argmax`` (highest weight), ``vote`` (weighted majority vote:
    :math:`\\arg\\max_a \\sum_i W_i 1[a_i = a]`) or ``sample`` (:math:`i \\sim W`); ``selection`` is a
    name or its index in ``SELECTIONS`` (may be traced). Returns ``(answer, index)``."""
    code = choice_code(selection, SELECTIONS, "selection")
    lw = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    w = jnp.exp(lw - jax.nn.logsumexp(lw))
    votes = jnp.sum(w[None, :] * (answers[:, None] == answers[None, :]), axis=1)
    i = jnp.stack([jnp.argmax(lw), jnp.argmax(votes), jax.random.categorical(key, lw)])[code]
    return answers[i], i.astype(jnp.int32)
