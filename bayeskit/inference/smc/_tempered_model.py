r"""Tempered SMC as a Feynman–Kac model on the engine's while variant (:func:`bayeskit.smc.engine.run_while`).

The particles are ``(z, log_prior, log_likelihood)``; the auxiliary state (:class:`TemperedAux`) carries
the tempering exponent :math:`\lambda` and the move's tuning. Each engine step resamples (strategy
``resampling.always``), moves the cloud with an MCMC kernel invariant for :math:`\pi_{\lambda_t}`, chooses
:math:`\lambda_{t+1}` from the particles' log-likelihoods and weights by
:math:`(\lambda_{t+1} - \lambda_t)\ell^i`; the loop stops at :math:`\lambda = 1`, and one more
resample-and-move at :math:`\lambda = 1` leaves equally weighted draws. :func:`run` is the whole algorithm,
pure (``jit``/``vmap``-able); the checked driver for NumPyro models is :func:`bayeskit.smc.tempered`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.inference.smc import engine
from bayeskit.inference.smc._tempered_kernels import Move, solve_next_tempering, tempered_log_likelihood
from bayeskit.inference.smc.resampling import always

__all__ = ["TemperedState", "TemperedInfo", "TemperedAux", "tempered_model", "until_final", "finish_run", "run"]


# --------------------------------------------------------------------------------------------------
# states and infos
# --------------------------------------------------------------------------------------------------
class TemperedState(NamedTuple):
    """State after a tempering step (all particles equally weighted).

    Fields: ``particles`` (N, D) flat unconstrained positions; ``log_prior`` and ``log_likelihood``
    (N,) at those positions; ``tempering`` () the current :math:`\\lambda`; ``log_evidence`` () the running
    :math:`\\log \\hat Z_\\lambda`; ``log_tuning`` () log of the move's scale (RWM scale, HMC step size)
    to use at the next step.
    """

    particles: jax.Array
    log_prior: jax.Array
    log_likelihood: jax.Array
    tempering: jax.Array
    log_evidence: jax.Array
    log_tuning: jax.Array


class TemperedInfo(NamedTuple):
    """Per-step diagnostics: ``tempering`` (the new :math:`\\lambda_n`), ``log_evidence_increment``,
    ``ess`` (ESS of the incremental weights, before resampling), ``acceptance_rate`` (mean over particles
    and MCMC steps), ``move_scale`` (RWM scale or HMC/NUTS step size used), ``nonfinite`` (a NaN
    incremental weight, or all weights zero)."""

    tempering: jax.Array
    log_evidence_increment: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    move_scale: jax.Array
    nonfinite: jax.Array



class TemperedAux(NamedTuple):
    """The engine's auxiliary state for tempering (no particle axis).

    Fields: ``tempering`` () the current :math:`\\lambda` (chosen by the potential); ``log_tuning`` () log of
    the move's scale for its next application; ``acceptance_rate`` and ``move_scale`` () of the last move
    (NaN before the first); ``final`` () whether the last move ran at :math:`\\lambda = 1`.
    """

    tempering: jax.Array
    log_tuning: jax.Array
    acceptance_rate: jax.Array
    move_scale: jax.Array
    final: jax.Array


# --------------------------------------------------------------------------------------------------
# tempered SMC as a Feynman–Kac model on the engine
# --------------------------------------------------------------------------------------------------
def tempered_model(initial_particles, log_prior_and_likelihood: Callable, move: Move, *, target_ess=0.5,
                   schedule=None) -> engine.AuxFeynmanKac:
    r"""Tempered SMC as an :class:`~bayeskit.smc.engine.AuxFeynmanKac` model for :func:`engine.run_while`.

    Particles are ``(z, log_prior, log_likelihood)`` ((N, D), (N,), (N,)); ``aux`` is a :class:`TemperedAux`.
    Engine step :math:`t` moves the (resampled) cloud with ``move`` at :math:`\lambda_t` (step 0: the prior
    draws, :math:`\lambda_0 = 0`), then its potential chooses :math:`\lambda_{t+1}` from the particles'
    log-likelihoods (:func:`solve_next_tempering`, or ``schedule[t]``) and returns
    :math:`(\lambda_{t+1} - \lambda_t)\ell^i`. ``done`` is :math:`\lambda = 1`. Past the end the potential is
    zero (:math:`\delta = 0`), so one more step is a pure resample-and-move at :math:`\lambda = 1`
    (``final`` in the aux state): :func:`run` continues until then (:func:`until_final`).
    """
    dtype = initial_particles.dtype

    def init(key, num_particles):
        lp, ll = jax.vmap(log_prior_and_likelihood)(initial_particles)
        nan = jnp.full((), jnp.nan, dtype)
        aux = TemperedAux(jnp.zeros((), dtype), jnp.asarray(move.initial_log_tuning, dtype), nan, nan,
                          jnp.zeros((), bool))
        return (initial_particles, lp, ll), aux

    def move_fn(key, t, particles, aux):
        x, lp, ll, acc, scale, nxt = move.apply(key, *particles, aux.tempering, aux.log_tuning)
        return (x, lp, ll), TemperedAux(aux.tempering, jnp.asarray(nxt, dtype), jnp.asarray(acc, dtype),
                                        jnp.asarray(scale, dtype), aux.tempering >= 1.0)

    def log_potential(t, prev, particles, aux):
        ll = particles[2]
        if schedule is None:
            nxt = solve_next_tempering(ll, aux.tempering, target_ess)
        else:
            nxt = jnp.asarray(schedule, dtype)[jnp.minimum(t, jnp.shape(schedule)[0] - 1)]
        nxt = jnp.maximum(jnp.asarray(nxt, dtype), aux.tempering)
        return tempered_log_likelihood(nxt - aux.tempering, ll), aux._replace(tempering=nxt)

    return engine.AuxFeynmanKac(init, move_fn, log_potential, lambda aux: aux.tempering >= 1.0)


def until_final(max_steps: int) -> Callable:
    """The ``cond`` of :func:`engine.run_while` for tempering: go on until a move has run at
    :math:`\\lambda = 1`, with at most ``max_steps`` temperatures (the final move after them)."""

    def cond(state, aux, num_steps):
        return jnp.logical_not(aux.final) & ((aux.tempering >= 1.0) | (num_steps < max_steps))

    return cond


def finish_run(run: engine.WhileRun) -> tuple[TemperedState, TemperedInfo, jax.Array]:
    """The final state, the per-temperature infos (padded with NaN) and the number of temperatures K of a
    :func:`engine.run_while` run of :func:`tempered_model` with ``cond=until_final(K_max)`` (``max_steps`` K_max + 1).

    Engine step n < K chose :math:`\\lambda_{n+1}` (its evidence increment and ESS); the move at
    :math:`\\lambda_{n+1}` ran in step n + 1 (after :math:`\\lambda_K = 1`, the final step)."""
    max_steps = run.info.ess.shape[0] - 1
    k = run.num_steps - run.aux.final.astype(run.num_steps.dtype)
    idx = jnp.arange(max_steps)
    valid = idx < k

    def pad(a, ok=valid):
        return jnp.where(ok, a, jnp.nan)

    moved = idx + 1 < run.num_steps
    info = TemperedInfo(pad(run.aux_history.tempering[:-1]), pad(run.info.log_evidence_increment[:-1]),
                        pad(run.info.ess[:-1]), pad(run.aux_history.acceptance_rate[1:], moved),
                        pad(run.aux_history.move_scale[1:], moved), valid & run.info.nonfinite[:-1])
    x, lp, ll = run.state.particles
    aux = run.aux
    return TemperedState(x, lp, ll, aux.tempering, run.state.log_evidence, aux.log_tuning), info, k


def run(key, initial_particles, log_prior_and_likelihood: Callable, move: Move, *, target_ess: float = 0.5,
        schedule=None, resampling: Callable | str = "systematic", max_steps: int = 500):
    r"""The whole tempered SMC loop from prior draws to :math:`\lambda = 1` (pure; ``jit``/``vmap``-able).

    :func:`tempered_model` on :func:`bayeskit.smc.engine.run_while` with resampling at every step
    (``resampling.always``), ending with one resample-and-move at :math:`\lambda = 1` (equal weights).

    Args:
        key: ``jax.random`` key.
        initial_particles: (N, D) flat unconstrained draws from the prior.
        log_prior_and_likelihood: ``v -> (log_prior, log_likelihood)`` for one flat vector.
        move: a :class:`Move` (e.g. :func:`rwm_move`).
        target_ess: :math:`\rho`, the ESS fraction the adaptive temperatures aim at (ignored with a schedule).
        schedule: optional increasing temperatures :math:`\lambda_1 < \dots < \lambda_K = 1`.
        resampling: scheme name or ``(key, log_weights, num_samples) -> indices``.
        max_steps: the cap on the number of tempering steps (static; the length of the info arrays).

    Returns:
        ``(TemperedState, TemperedInfo, num_steps)``: the final state, per-step infos padded with NaN
        to ``max_steps`` (the first ``num_steps`` entries are valid), and the number of steps taken.
    """
    if schedule is not None:
        max_steps = int(np.shape(schedule)[0])
    model = tempered_model(initial_particles, log_prior_and_likelihood, move, target_ess=target_ess,
                           schedule=schedule)
    out = engine.run_while(key, model, initial_particles.shape[0], max_steps=max_steps + 1,
                           cond=until_final(max_steps),
                           strategy=always(resampling))
    return finish_run(out)
