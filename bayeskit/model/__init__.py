"""The model DSL: NumPyro primitives in, structured models out."""

from bayeskit.model.density import LogDensity, log_density
from bayeskit.model.ssm import StateSpaceModel

__all__ = ["LogDensity", "log_density", "StateSpaceModel"]
