"""Exceptions raised by bayeskit.

Every error names the offending argument and what was expected, and is raised in the Python
driver before any long computation (or right after a jitted loop, from the diagnostic flags it
carried out). All derive from :class:`BayeskitError`, so ``except bk.errors.BayeskitError`` catches
everything the package raises on purpose.
"""

from __future__ import annotations


class BayeskitError(Exception):
    """Base class of every exception raised by bayeskit."""


class ModelError(BayeskitError, ValueError):
    """A model is malformed or rejects its parameters (wrong support, missing sites, ...)."""


class DataError(BayeskitError, ValueError):
    """Observed data are malformed: wrong shape or dtype, NaN or infinite values."""


class ConfigurationError(BayeskitError, ValueError):
    """An algorithm option is invalid (e.g. ``num_particles < 1``, unknown resampling scheme)."""


class DegenerateWeightsError(BayeskitError, FloatingPointError):
    """All importance weights vanished or became non-finite during a run."""


class ConvergenceError(BayeskitError, RuntimeError):
    """An iterative algorithm did not converge or produced non-finite values."""


__all__ = [
    "BayeskitError",
    "ModelError",
    "DataError",
    "ConfigurationError",
    "DegenerateWeightsError",
    "ConvergenceError",
]
