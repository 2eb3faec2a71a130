"""Sequential Monte Carlo: one engine, Feynman–Kac constructors, particle filters and more.

Public API (``bk.smc.*``): :func:`particle_filter`, the engine (:mod:`~bayeskit.inference.smc.engine`),
Feynman–Kac constructors (:class:`FeynmanKac`, :func:`bootstrap`, :func:`guided`, :class:`Proposal`)
and resampling schemes (:mod:`~bayeskit.inference.smc.resampling`).
"""

from bayeskit.inference.smc import engine, resampling
from bayeskit.inference.smc.engine import RunOutput, SMCState, StepInfo
from bayeskit.inference.smc.feynman_kac import FeynmanKac, Proposal, bootstrap, guided
from bayeskit.inference.smc.filtering import ParticleFilterResult, particle_filter, weighted_moments

__all__ = [
    "engine",
    "resampling",
    "SMCState",
    "StepInfo",
    "RunOutput",
    "FeynmanKac",
    "Proposal",
    "bootstrap",
    "guided",
    "ParticleFilterResult",
    "particle_filter",
    "weighted_moments",
]
