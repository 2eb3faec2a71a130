"""The SMC engine's state and per-step diagnostics, shared by its ``lax.scan`` loop
(:mod:`bayeskit.smc.engine`) and its ``while_loop`` variant. Users find these names in
:mod:`bayeskit.smc.engine`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.smc.resampling import weight_stats

__all__ = ["SMCState", "StepInfo", "weigh"]


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


def weigh(lw, log_sum_prev, resampled, ancestors):
    """The weight statistics of one step: ``(log-evidence increment, StepInfo)``."""
    # one pass over the new log-weights gives the evidence increment, the ESS and the flags; the carried
    # weights' log-sum (log_sum_prev) folds to log N at compile time after an unconditional resampling
    lse, ess, nonfinite = weight_stats(lw)
    incr = lse - log_sum_prev
    return incr, StepInfo(incr, ess, jnp.asarray(resampled), ancestors.astype(jnp.int32), nonfinite)
