"""Sequential Monte Carlo: one engine under every particle method.

Drivers (each returns a result with ``to_arviz()``): :func:`particle_filter`, :func:`paris`,
:func:`forward_smoother`, :func:`ffbs`, :func:`ppg`, :func:`particle_gibbs`, :func:`pmmh`, :func:`fit` and
:func:`tempered`. Models: :class:`FeynmanKac`, :func:`bootstrap`, :func:`guided`, :class:`Proposal`.
Composable pieces: :mod:`~bayeskit.smc.engine` (the one SMC loop), :mod:`~bayeskit.smc.resampling`
(schemes and strategies) and :mod:`~bayeskit.smc.kernels` (conditional SMC, backward kernels,
accumulators).
"""

from bayeskit.inference.smc import engine, kernels, resampling
from bayeskit.inference.smc._csmc import NumPyroUpdate, ParticleGibbsResult, particle_gibbs
from bayeskit.inference.smc._feynman_kac import FeynmanKac, Proposal, bootstrap, guided
from bayeskit.inference.smc._filtering import ParticleFilterResult, particle_filter
from bayeskit.inference.smc._learning import FitResult, fit
from bayeskit.inference.smc._paris import PaRISResult, forward_smoother, paris
from bayeskit.inference.smc._pmmh import PMMHResult, pmmh
from bayeskit.inference.smc._ppg import PPGResult, ppg
from bayeskit.inference.smc._smoothing import FFBSResult, ffbs
# imported here, not lazily: the first import of a submodule binds its name on this package, so a lazy
# export of the function `tempered` from the module `tempered` returned the module from the second access
from bayeskit.inference.smc._tempered import TemperedSMCResult, tempered

__all__ = [
    # composable pieces
    "engine",
    "resampling",
    "kernels",
    "FeynmanKac",
    "Proposal",
    "bootstrap",
    "guided",
    # drivers and their results
    "particle_filter",
    "ParticleFilterResult",
    "paris",
    "forward_smoother",
    "PaRISResult",
    "ffbs",
    "FFBSResult",
    "ppg",
    "PPGResult",
    "particle_gibbs",
    "ParticleGibbsResult",
    "NumPyroUpdate",
    "pmmh",
    "PMMHResult",
    "fit",
    "FitResult",
    "tempered",
    "TemperedSMCResult",
]

# names that moved in this release: still reachable here for one release, with a warning
_MOVED = {
    "csmc": "kernels", "conditional_paris": "kernels", "sample_backward": "kernels", "backward_sample": "kernels",
    "transition_log_bound": "kernels", "weighted_moments": "kernels", "path_functional": "kernels",
    "step_log_density": "kernels", "path_log_density": "kernels", "score": "kernels", "CSMCInfo": "kernels",
    "SMCState": "engine", "StepInfo": "engine", "RunOutput": "engine",
}
_REMOVED = {
    "paris_init": "engine.run(..., accumulators=(kernels.paris_accumulator(...),))",
    "paris_step": "engine.run(..., accumulators=(kernels.paris_accumulator(...),))",
    "PaRISState": "engine.run(..., accumulators=(kernels.paris_accumulator(...),))",
    "PaRISInfo": "engine.run(..., accumulators=(kernels.paris_accumulator(...),))",
    "conditional_resample": "resampling.conditional(reference, slot=...) (a strategy for engine.run)",
}


def __getattr__(name):
    import warnings

    if name in _MOVED:
        where = _MOVED[name]
        warnings.warn(f"bayeskit.smc.{name} moved to bayeskit.smc.{where}.{name}; the old name will be removed "
                      "in the next release", FutureWarning, stacklevel=2)
        return getattr(globals()[where], name)
    if name in _REMOVED:
        raise AttributeError(f"bayeskit.smc.{name} was replaced: use bayeskit.smc.{_REMOVED[name]}")
    raise AttributeError(f"module 'bayeskit.smc' has no attribute {name!r}")
