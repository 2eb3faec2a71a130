"""Sequential Monte Carlo: one engine, Feynman–Kac constructors, particle filters and more.

Public API (``bk.smc.*``): :func:`particle_filter`, the engine (:mod:`~bayeskit.inference.smc.engine`),
Feynman–Kac constructors (:class:`FeynmanKac`, :func:`bootstrap`, :func:`guided`, :class:`Proposal`),
resampling schemes (:mod:`~bayeskit.inference.smc.resampling`), smoothing (:func:`paris`, :func:`ppg`,
:func:`ffbs`, :func:`forward_smoother`), conditional SMC and particle Gibbs (:func:`csmc`,
:func:`particle_gibbs`) and learning (:func:`fit`).
"""

from bayeskit.inference.smc import engine, resampling
from bayeskit.inference.smc.csmc import (CSMCInfo, NumPyroUpdate, ParticleGibbsResult, conditional_resample, csmc,
                                         particle_gibbs, path_log_density, step_log_density)
from bayeskit.inference.smc.engine import RunOutput, SMCState, StepInfo
from bayeskit.inference.smc.feynman_kac import FeynmanKac, Proposal, bootstrap, guided
from bayeskit.inference.smc.filtering import ParticleFilterResult, particle_filter, weighted_moments
from bayeskit.inference.smc.learning import FitResult, fit, score
from bayeskit.inference.smc.paris import (PaRISInfo, PaRISResult, PaRISState, PPGResult, conditional_paris,
                                          paris, paris_init, paris_step, ppg, sample_backward,
                                          transition_log_bound)
from bayeskit.inference.smc.pmmh import PMMHResult, pmmh
from bayeskit.inference.smc.smoothing import FFBSResult, backward_sample, ffbs, forward_smoother, path_functional
# imported here, not lazily: the first import of a submodule binds its name on this package, so a lazy
# export of the function `tempered` from the module `tempered` returned the module from the second access
from bayeskit.inference.smc.tempered import TemperedSMCResult, tempered

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
    # smoothing
    "PaRISState",
    "PaRISInfo",
    "PaRISResult",
    "PPGResult",
    "paris",
    "paris_init",
    "paris_step",
    "ppg",
    "conditional_paris",
    "sample_backward",
    "transition_log_bound",
    "FFBSResult",
    "ffbs",
    "backward_sample",
    "forward_smoother",
    "path_functional",
    # conditional SMC, particle Gibbs
    "CSMCInfo",
    "csmc",
    "conditional_resample",
    "NumPyroUpdate",
    "ParticleGibbsResult",
    "particle_gibbs",
    "step_log_density",
    "path_log_density",
    # learning
    "FitResult",
    "fit",
    "score",
    # tempered SMC, PMMH
    "TemperedSMCResult",
    "tempered",
    "PMMHResult",
    "pmmh",
]

