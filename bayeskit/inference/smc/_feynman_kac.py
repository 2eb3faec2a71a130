r"""The Feynman–Kac protocol and its constructors from a :class:`~bayeskit.StateSpaceModel`.

A Feynman–Kac model over steps :math:`t = 0, \dots, T-1` is a Markov chain with initial law
:math:`M_0`, kernels :math:`M_t(x_{t-1}, \mathrm{d}x_t)` and log-potentials :math:`\log G_t(x_{t-1}, x_t)`
(notation of Chopin & Papaspiliopoulos 2020 and the ``particles`` library). It defines the sequence
of distributions

.. math::
    \mathbb{Q}_t(\mathrm{d}x_{0:t}) = \frac{1}{L_t} M_0(\mathrm{d}x_0) G_0(x_0)
        \prod_{s=1}^{t} M_s(x_{s-1}, \mathrm{d}x_s) G_s(x_{s-1}, x_s),

whose normalisers :math:`L_t` the particle filter estimates without bias. The *bootstrap* model of a
state-space model takes :math:`M_t = m_t`, :math:`G_t = g_t(\cdot, y_t)`, so :math:`L_T = p(y_{0:T-1})`;
a *guided* model moves with a proposal :math:`q_t(x_{t-1}, y_t, \cdot)` and corrects with
:math:`G_t = m_t g_t / q_t`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["FeynmanKac", "Proposal", "bootstrap", "guided"]


class FeynmanKac(NamedTuple):
    """A Feynman–Kac model. Particles are any pytree with a leading particle axis.

    Fields:
        num_steps: T, the number of steps (static).
        init: ``(key, num_particles) -> particles`` — draws from :math:`M_0`.
        move: ``(key, t, particles) -> particles`` — one draw from :math:`M_t(x_{t-1}, \\cdot)` per particle.
        log_potential: ``(t, prev_particles, particles) -> (N,)`` — :math:`\\log G_t`; ``prev`` is
            ``None`` at ``t = 0``.
        log_transition: optional ``(t, prev, particles) -> (N,)`` — :math:`\\log M_t(x_{t-1}, x_t)`
            for matching rows, needed by backward kernels (smoothing, backward sampling).
    """

    num_steps: int
    init: Callable
    move: Callable
    log_potential: Callable
    log_transition: Callable | None = None


class Proposal(NamedTuple):
    """A user proposal for a guided filter.

    ``initial(params, y0) -> Distribution`` of :math:`X_0`, and
    ``transition(params, x_prev, y_t, t) -> Distribution`` of :math:`X_t`, both for one state
    (vmapped over particles) unless ``vectorized=True``.
    """

    initial: Callable
    transition: Callable
    vectorized: bool = False


def bootstrap(ssm, params, ys) -> FeynmanKac:
    """The bootstrap Feynman–Kac model of ``ssm`` at ``params`` given observations ``ys`` (T, ...)."""
    ys = jnp.asarray(ys)

    def init(key, num_particles):
        return ssm.sample_initial(key, params, num_particles)

    def move(key, t, x_prev):
        return ssm.sample_transition(key, params, x_prev, t)

    def log_potential(t, x_prev, x):
        return ssm.log_observation(params, x, ys[t], t)

    def log_transition(t, x_prev, x):
        return ssm.log_transition(params, x_prev, x, t)

    return FeynmanKac(ys.shape[0], init, move, log_potential, log_transition)


def guided(ssm, params, ys, proposal: Proposal) -> FeynmanKac:
    """The guided Feynman–Kac model: move with ``proposal``, weight by ``m g / q``."""
    ys = jnp.asarray(ys)

    def _q_sample(key, d_fn, xs):
        if proposal.vectorized:
            return d_fn(xs).sample(key)
        keys = jax.random.split(key, xs.shape[0])
        return jax.vmap(lambda k, x: d_fn(x).sample(k))(keys, xs)

    def _q_logp(d_fn, xs, values):
        if proposal.vectorized:
            return d_fn(xs).log_prob(values)
        return jax.vmap(lambda x, v: d_fn(x).log_prob(v))(xs, values)

    def init(key, num_particles):
        return proposal.initial(params, ys[0]).sample(key, (num_particles,))

    def move(key, t, x_prev):
        return _q_sample(key, lambda xp: proposal.transition(params, xp, ys[t], t), x_prev)

    def log_potential(t, x_prev, x):
        logg = ssm.log_observation(params, x, ys[t], t)
        if x_prev is None:
            q0 = proposal.initial(params, ys[0])
            return ssm.log_initial(params, x) + logg - jax.vmap(q0.log_prob)(x)
        logm = ssm.log_transition(params, x_prev, x, t)
        logq = _q_logp(lambda xp: proposal.transition(params, xp, ys[t], t), x_prev, x)
        return logm + logg - logq

    def log_transition(t, x_prev, x):
        return ssm.log_transition(params, x_prev, x, t)

    return FeynmanKac(ys.shape[0], init, move, log_potential, log_transition)
