"""bayeskit: composable, JIT-compiled Bayesian inference over models written with NumPyro primitives.

Sub-packages are imported lazily so ``import bayeskit`` stays fast:

* ``bk.smc`` – particle filters, conditional SMC / particle Gibbs, PaRIS, PPG, learning, tempered SMC
* ``bk.scaling`` – inference-time scaling of generators weighted by reward models
* ``bk.gpdp`` – Gaussian-process dynamic programming
* ``bk.bridges`` – Light SB and multi-marginal Schrödinger bridges
* ``bk.meta`` – Normal-Inverse-Wishart hierarchical few-shot meta-learning
* ``bk.sde`` – variational inference for SDEs driven by (Markov-approximate) fractional noise
* ``bk.plots`` – states over time with bands, SMC diagnostics (ArviZ for the rest)
* ``bk.models`` – ready-made models; ``bk.datasets`` – shipped data; ``bk.model`` – the DSL
"""

from __future__ import annotations

import importlib

from bayeskit import errors
from bayeskit.model.ssm import StateSpaceModel

__version__ = "0.1.0"

_LAZY = {
    "model": "bayeskit.model",
    "smc": "bayeskit.inference.smc",
    "scaling": "bayeskit.inference.scaling",
    "gpdp": "bayeskit.inference.gpdp",
    "bridges": "bayeskit.inference.bridges",
    "meta": "bayeskit.inference.meta",
    "sde": "bayeskit.inference.sde",
    "models": "bayeskit.models",
    "datasets": "bayeskit.datasets",
    "diagnostics": "bayeskit.diagnostics",
    "plots": "bayeskit.plots",
    "distributed": "bayeskit.distributed",
    "testing": "bayeskit.testing",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'bayeskit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["StateSpaceModel", "errors", "__version__", *_LAZY]
