r"""The closed-form Schrödinger bridge between two Gaussians (a ground truth for the bridge backends).

**Gaussian to Gaussian** (Janati et al. 2020; Bunne et al. 2023): for :math:`p_0 = \mathcal N(m_0,\Sigma_0)`,
:math:`p_1 = \mathcal N(m_1, \Sigma_1)` and reference :math:`\sqrt{\varepsilon} W`,
:math:`D = (4\Sigma_0^{1/2}\Sigma_1\Sigma_0^{1/2} + \varepsilon^2 I)^{1/2}`,
:math:`C = \operatorname{Cov}(X_0, X_1) = \tfrac12(\Sigma_0^{1/2} D \Sigma_0^{-1/2} - \varepsilon I)`, and
:math:`\Sigma_t = (1-t)^2\Sigma_0 + t^2\Sigma_1 + t(1-t)(C + C^\top + \varepsilon I)`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayeskit._linalg import sqrtm_psd

__all__ = ["GaussianBridge", "gaussian_bridge"]


class GaussianBridge(NamedTuple):
    """Closed-form SB between two Gaussians: cross-covariance ``cross_cov`` (C = Cov(X_0, X_1))."""

    mean0: np.ndarray
    cov0: np.ndarray
    mean1: np.ndarray
    cov1: np.ndarray
    epsilon: float
    cross_cov: np.ndarray

    def marginal(self, t: float):
        """Mean and covariance of :math:`X_t`."""
        c = self.cross_cov
        d = self.cov0.shape[0]
        cov = (1 - t) ** 2 * self.cov0 + t**2 * self.cov1 + t * (1 - t) * (c + c.T + self.epsilon * np.eye(d))
        return (1 - t) * self.mean0 + t * self.mean1, cov

    def conditional(self, x):
        """Mean (N, D) and covariance (D, D) of :math:`X_1 \\mid X_0 = x`."""
        a = np.linalg.solve(self.cov0, self.cross_cov).T  # C^T Sigma0^{-1}
        mean = self.mean1 + (np.asarray(x) - self.mean0) @ a.T
        return mean, self.cov1 - a @ self.cross_cov


def gaussian_bridge(mean0, cov0, mean1, cov1, epsilon: float) -> GaussianBridge:
    """Closed-form Gaussian Schrödinger bridge (module docstring)."""
    cov0, cov1 = np.atleast_2d(np.asarray(cov0, float)), np.atleast_2d(np.asarray(cov1, float))
    d = cov0.shape[0]
    r0 = sqrtm_psd(cov0)
    r0_inv = np.linalg.inv(r0)
    dmat = sqrtm_psd(4.0 * r0 @ cov1 @ r0 + epsilon**2 * np.eye(d))
    c = 0.5 * (r0 @ dmat @ r0_inv - epsilon * np.eye(d))
    return GaussianBridge(np.asarray(mean0, float), cov0, np.asarray(mean1, float), cov1, float(epsilon), c)
