r"""The SMC engine: one particle algorithm for every Feynman–Kac model.

At step 0 draw :math:`x_0^i \sim M_0` and weight :math:`w_0^i = G_0(x_0^i)`. At step :math:`t \ge 1`,
if :math:`\mathrm{ESS}(w_{t-1}) < \kappa N` resample ancestors :math:`A_t^i` and reset the weights,
otherwise keep :math:`A_t^i = i`; move :math:`x_t^i \sim M_t(x_{t-1}^{A_t^i}, \cdot)` and set
:math:`\log w_t^i = \log \tilde w_{t-1}^{A_t^i} + \log G_t(x_{t-1}^{A_t^i}, x_t^i)`. The estimate

.. math::
    \log \hat L_t = \log \hat L_{t-1} + \log \sum_i \tilde w_{t-1}^{A_t^i} G_t^i
                    - \log \sum_i \tilde w_{t-1}^{A_t^i}

is unbiased on the natural scale, with or without resampling at a given step. The loop is a
``lax.scan`` inside ``jit``; ``vmap`` over independent filters works; per-step summaries (e.g.
filtering moments) are computed inside the loop, so memory stays O(N) unless ``history=True``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.smc.feynman_kac import FeynmanKac
from bayeskit.inference.smc.resampling import ess as ess_fn
from bayeskit.inference.smc.resampling import get_scheme

__all__ = ["SMCState", "StepInfo", "RunOutput", "init", "step", "run"]


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


class RunOutput(NamedTuple):
    """Stacked outputs of :func:`run` with leading axis T: ``info`` (StepInfo; its ``ancestors`` are
    None unless ``history=True``, so that memory stays O(N) in long runs), ``summaries``
    (whatever ``summary_fn`` returned, or None), ``particles`` / ``log_weights`` (only with
    ``history=True``, else None)."""

    info: StepInfo
    summaries: Any
    particles: Any
    log_weights: Any


def _flags(log_weights):
    bad = jnp.any(jnp.isnan(log_weights)) | jnp.all(log_weights == -jnp.inf)
    return bad


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


def init(key, fk: FeynmanKac, num_particles: int, *, sharding=None):
    """Step 0: draw from :math:`M_0` and weight by :math:`G_0`. Returns ``(SMCState, StepInfo)``."""
    x = _constrain(fk.init(key, num_particles), sharding)
    lw = _constrain(fk.log_potential(0, None, x), sharding)
    incr = jax.nn.logsumexp(lw) - jnp.log(num_particles)
    info = StepInfo(incr, ess_fn(lw), jnp.array(False), jnp.arange(num_particles, dtype=jnp.int32), _flags(lw))
    return SMCState(x, lw, incr), info


def step(key, state: SMCState, fk: FeynmanKac, t, *, resampling: Callable, ess_threshold: float,
         sharding=None):
    """One step ``t >= 1`` of the engine: adaptive resampling, move, reweight.

    ``resampling`` has the signature ``(key, log_weights, num_samples) -> indices``.
    Returns ``(SMCState, StepInfo)``.
    """
    num_particles = state.log_weights.shape[0]
    k_res, k_move = jax.random.split(key)
    current_ess = ess_fn(state.log_weights)
    do_resample = (ess_threshold >= 1.0) | (current_ess < ess_threshold * num_particles)
    idx = _replicated(resampling(k_res, _replicated(state.log_weights, sharding), num_particles), sharding)
    ancestors = jnp.where(do_resample, idx, jnp.arange(num_particles, dtype=idx.dtype))
    x_prev = jax.tree_util.tree_map(lambda a: a[ancestors], state.particles)
    lw_prev = jnp.where(do_resample, jnp.zeros_like(state.log_weights), state.log_weights[ancestors])
    x_prev = _constrain(x_prev, sharding)
    x = _constrain(fk.move(k_move, t, x_prev), sharding)
    lw = lw_prev + fk.log_potential(t, x_prev, x)
    lw = _constrain(lw, sharding)
    incr = jax.nn.logsumexp(lw) - jax.nn.logsumexp(lw_prev)
    info = StepInfo(incr, ess_fn(lw), do_resample, ancestors.astype(jnp.int32), _flags(lw))
    return SMCState(x, lw, state.log_evidence + incr), info


def run(key, fk: FeynmanKac, num_particles: int, *, resampling: Callable | str = "systematic",
        ess_threshold: float = 0.5, history: bool = False, summary_fn: Callable | None = None,
        sharding=None):
    """Run the SMC engine over all ``fk.num_steps`` steps.

    Args:
        key: a ``jax.random`` key.
        fk: the :class:`FeynmanKac` model (hashable: a NamedTuple of functions).
        num_particles: N (static).
        resampling: a scheme name (``"multinomial"``, ``"stratified"``, ``"systematic"``,
            ``"residual"``) or a function ``(key, log_weights, num_samples) -> indices``.
        ess_threshold: resample when ESS < threshold * N (1: every step, 0: never).
        history: store particles and log-weights at every step (needed for smoothing).
        summary_fn: optional ``(particles, log_weights) -> pytree`` evaluated after every step.
        sharding: optional ``jax.sharding.Sharding`` for arrays with a leading particle axis.

    Returns:
        ``(final SMCState, RunOutput)``. Pure and traceable: call it inside ``jax.jit`` (with
        ``fk`` built inside the jitted function from traced parameters and data, so that new
        parameter values do not trigger recompilation) and ``vmap`` it over keys or parameters.
        No input validation here; the drivers (e.g. :func:`bayeskit.smc.particle_filter`) check
        inputs and the ``nonfinite`` flags.
    """
    resampling_fn = get_scheme(resampling)
    k0, kloop = jax.random.split(key)
    state, info0 = init(k0, fk, num_particles, sharding=sharding)

    def record(st, info):
        if not history:  # keep memory O(N): per-step ancestors (N,) are only stored with the history
            info = info._replace(ancestors=None)
        summ = summary_fn(st.particles, st.log_weights) if summary_fn is not None else None
        hist = (st.particles, st.log_weights) if history else (None, None)
        return info, summ, hist

    out0 = record(state, info0)

    def body(st, inp):
        t, k = inp
        st, info = step(k, st, fk, t, resampling=resampling_fn, ess_threshold=ess_threshold,
                        sharding=sharding)
        return st, record(st, info)

    if fk.num_steps > 1:
        keys = jax.random.split(kloop, fk.num_steps - 1)
        state, outs = jax.lax.scan(body, state, (jnp.arange(1, fk.num_steps), keys))
        outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), out0, outs)
    else:
        outs = jax.tree_util.tree_map(lambda a: a[None], out0)
    info, summ, (px, plw) = outs
    return state, RunOutput(info, summ, px, plw)
