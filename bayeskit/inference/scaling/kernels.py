"""The pure building blocks under the drivers of :mod:`bayeskit.scaling`, for ``jax.jit`` / ``jax.vmap``
over problems, settings and particle counts, or for composing another search:

* whole runs on arrays: :func:`run_particle_filtering` (also best-of-N with ``resample=False``),
  :func:`run_beam_search`, :func:`run_particle_gibbs` (also parallel tempering), with their outputs
  :class:`FilterOutput`, :class:`BeamOutput`, :class:`GibbsOutput`. A particle count (``num_particles``)
  or a beam pool (``num_beams`` x ``expansions``) smaller than the slots of ``init_states`` masks the
  other slots, so one compiled program serves a whole sweep of budgets;
* one SMC sweep over a generator: :func:`smc_sweep` (:class:`SweepOutput` of :class:`Particles`), and
  the answer selection :func:`select_answer`; the option names ``WEIGHTS``, ``SELECTIONS`` and
  ``MASKED_SCHEMES`` (an option may be passed as its index in these, traced);
* the Feynman–Kac model of the diffusion correctors: :func:`fkc_feynman_kac`.
"""

from bayeskit.inference.scaling._beam import BeamOutput, run_beam_search
from bayeskit.inference.scaling._fkc import fkc_feynman_kac
from bayeskit.inference.scaling._filtering import FilterOutput, run_particle_filtering
from bayeskit.inference.scaling._gibbs import GibbsOutput, run_particle_gibbs
from bayeskit.inference.scaling._sweep import (MASKED_SCHEMES, SELECTIONS, WEIGHTS, Particles, SweepOutput,
                                               select_answer, smc_sweep)

__all__ = [
    "run_particle_filtering",
    "FilterOutput",
    "run_beam_search",
    "BeamOutput",
    "run_particle_gibbs",
    "GibbsOutput",
    "smc_sweep",
    "SweepOutput",
    "Particles",
    "select_answer",
    "WEIGHTS",
    "SELECTIONS",
    "MASKED_SCHEMES",
    "fkc_feynman_kac",
]
