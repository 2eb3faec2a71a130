"""The model DSL: NumPyro primitives in, structured models out.

* :class:`StateSpaceModel` (``ssm.py``) — initial / transition / observation distributions;
* :func:`log_density` (``density.py``) — any NumPyro model's prior / likelihood split, unconstrained;
* ``SDE`` (``sde.py``) — drift, diffusion, driving noise (Brownian or Markov-approximate fBM);
  imported lazily (it pulls in diffrax);
* ``gp`` (``gp.py``) — Gaussian-process priors used by GP dynamic programming.
"""

import importlib

from bayeskit.model.density import LogDensity, log_density
from bayeskit.model.ssm import StateSpaceModel

_LAZY = {"SDE": ("bayeskit.model.sde", "SDE"), "sde": ("bayeskit.model.sde", None), "gp": ("bayeskit.model.gp", None)}


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayeskit.model' has no attribute {name!r}")


__all__ = ["LogDensity", "log_density", "StateSpaceModel", "SDE"]
