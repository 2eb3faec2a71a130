"""The building blocks under :mod:`bayeskit.bridges`, for users who compose their own solvers.

* LightSB closed forms on a :class:`~bayeskit.bridges.LightSBParams` pytree: :func:`log_potential`
  (:math:`\\log v_\\theta`), :func:`log_evidence` (:math:`\\log C_\\theta(x)`, the plan's log normalising
  constant), :func:`loss`, :func:`conditional_components`, :func:`conditional_log_prob`,
  :func:`conditional_sample`, :func:`drift`, :func:`covariances`, and the initialisations :func:`init_params`,
  :func:`gaussian_init_params`; :func:`euler_maruyama` simulates any drift;
* SBIRR's per-interval solver: :func:`ipf_interval` (IPF with GP drift regression), :func:`gp_fit`,
  :func:`gp_predict`, :class:`GPDrift`, :func:`simulate_gp_drift` (the SDE with a fitted GP drift);
* references: :func:`simulate_reference` (Euler–Maruyama paths of a drift function), :func:`em_residual_loss`
  (the objective of a reference refit);
* the closed form of the Brownian-reference bridge between two Gaussians, :func:`gaussian_bridge` (a
  :class:`GaussianBridge`; LightSB's initialisation and :func:`~bayeskit.bridges.gaussian_bridge_linear` use it), and
  the earth mover's distance :func:`emd` (:meth:`~bayeskit.bridges.MultiMarginalResult.emd`). Both are also in
  :mod:`bayeskit.testing`, with the benchmark and the other metrics.
"""

from bayeskit.inference.bridges._emd import emd
from bayeskit.inference.bridges._gaussian import GaussianBridge, gaussian_bridge
from bayeskit.inference.bridges._gp import GPDrift, gp_fit, gp_predict, ipf_interval, simulate_gp_drift
from bayeskit.inference.bridges._lightsb_model import (conditional_components, conditional_log_prob,
                                                       conditional_sample, covariances, drift, euler_maruyama,
                                                       gaussian_init_params, init_params, log_evidence,
                                                       log_potential, loss)
from bayeskit.inference.bridges._reference import em_residual_loss
from bayeskit.inference.bridges._reference import simulate as simulate_reference

__all__ = [
    "log_potential",
    "log_evidence",
    "loss",
    "conditional_components",
    "conditional_log_prob",
    "conditional_sample",
    "drift",
    "covariances",
    "init_params",
    "gaussian_init_params",
    "euler_maruyama",
    "ipf_interval",
    "gp_fit",
    "gp_predict",
    "GPDrift",
    "simulate_gp_drift",
    "simulate_reference",
    "em_residual_loss",
    "gaussian_bridge",
    "GaussianBridge",
    "emd",
]

# names renamed in this release: reachable for one release, with a warning
_RENAMED = {"log_normaliser": "log_evidence"}


def __getattr__(name):
    if name in _RENAMED:
        import warnings

        warnings.warn(f"bayeskit.bridges.kernels.{name} is renamed {_RENAMED[name]}; the old name will be removed "
                      "in the next release", FutureWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'bayeskit.bridges.kernels' has no attribute {name!r}")
