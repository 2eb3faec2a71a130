r"""Metrics for Schrödinger bridges: Bures–Wasserstein UVP and conditional cBW²-UVP (the earth mover's distance
is :func:`bayeskit.bridges.kernels.emd`).

* :math:`\mathrm{BW}_2^2(\mathcal N(m_1,\Sigma_1), \mathcal N(m_2,\Sigma_2)) = \|m_1-m_2\|^2 + \operatorname{tr}\Sigma_1
  + \operatorname{tr}\Sigma_2 - 2\operatorname{tr}(\Sigma_2^{1/2}\Sigma_1\Sigma_2^{1/2})^{1/2}`;
* BW²-UVP (%) of an estimate :math:`\hat p` of :math:`p`: :math:`100\, \mathrm{BW}_2^2(\hat p, p) / (\tfrac12 \operatorname{Var}(p))`
  with :math:`\operatorname{Var}(p) = \operatorname{tr}\Sigma_p` (Korotin et al. 2021; Gushchin et al. 2023);
* cBW²-UVP (%) of a plan :math:`\hat\pi` against the true :math:`\pi^*` with marginal :math:`p_1`:
  :math:`\frac{100}{\frac12 \operatorname{Var}(p_1)} \int \mathrm{BW}_2^2(\hat\pi(\cdot\mid x), \pi^*(\cdot \mid x))\, dp_0(x)`,
  estimated on a sample of :math:`x`;
"""

from __future__ import annotations

import numpy as np

from bayeskit._linalg import sqrtm_psd

__all__ = ["bw2", "bw2_uvp", "cbw2_uvp", "gaussian_moments"]


def bw2(mean1, cov1, mean2, cov2) -> float:
    """Squared Bures–Wasserstein distance between two Gaussians."""
    m1, m2 = np.asarray(mean1, float), np.asarray(mean2, float)
    c1, c2 = np.atleast_2d(np.asarray(cov1, float)), np.atleast_2d(np.asarray(cov2, float))
    r2 = sqrtm_psd(c2)
    cross = sqrtm_psd(r2 @ c1 @ r2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(cross))


def gaussian_moments(samples):
    """Mean and covariance of samples (N, D)."""
    x = np.asarray(samples, float)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def bw2_uvp(mean, cov, true_mean, true_cov) -> float:
    """BW²-UVP (%) of a Gaussian (or moment-matched) estimate against the true moments."""
    return 100.0 * bw2(mean, cov, true_mean, true_cov) / (0.5 * float(np.trace(np.atleast_2d(true_cov))))


def cbw2_uvp(means, covs, true_means, true_covs, target_variance: float) -> float:
    """cBW²-UVP (%): conditional moments (N, D), (N, D, D) of the fitted and true plans at N points
    :math:`x_i \\sim p_0`, and ``target_variance`` = :math:`\\operatorname{tr}\\operatorname{Cov}(p_1)`."""
    means, covs = np.asarray(means, float), np.asarray(covs, float)
    true_means, true_covs = np.asarray(true_means, float), np.asarray(true_covs, float)
    vals = [bw2(means[i], covs[i], true_means[i], true_covs[i]) for i in range(means.shape[0])]
    return 100.0 * float(np.mean(vals)) / (0.5 * float(target_variance))
