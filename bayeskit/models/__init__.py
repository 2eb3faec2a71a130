"""Ready-made models. Submodules are imported lazily (``bk.models.linear_gaussian`` ...)."""

from __future__ import annotations

import importlib

_SUBMODULES = (
    "linear_gaussian",
    "stochastic_volatility",
    "fisheries",
    "lotka_volterra",
    "fractional_ou",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"bayeskit.models.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'bayeskit.models' has no attribute {name!r}")


__all__ = list(_SUBMODULES)
