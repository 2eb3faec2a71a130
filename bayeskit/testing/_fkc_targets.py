"""Toy targets and a metric for the Feynman–Kac correctors (:func:`bayeskit.scaling.fkc_sample`):
Gaussian mixtures with exact diffused scores and densities under a variance-exploding SDE, the closed
form of a product of two mixtures, and the squared MMD between samples."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.scaling import VESDE

__all__ = ["GaussianMixture", "product_of_mixtures", "mmd"]


class GaussianMixture(NamedTuple):
    """A Gaussian mixture ``weights`` (K,), ``means`` (K, d), ``covs`` (K, d, d); exact diffused
    scores under a VE process: :math:`q_t = \\sum_k \\pi_k N(\\mu_k, \\Sigma_k + v(t) I)`."""

    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    def diffused(self, variance):
        d = self.means.shape[-1]
        return GaussianMixture(self.weights, self.means, self.covs + variance * jnp.eye(d))

    def log_prob(self, x):
        x = jnp.atleast_2d(x)
        d = self.means.shape[-1]
        chol = jnp.linalg.cholesky(self.covs)
        diff = x[:, None, :] - self.means[None]  # (N, K, d)
        sol = jax.scipy.linalg.solve_triangular(chol[None], diff[..., None], lower=True)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        comp = -0.5 * jnp.sum(sol**2, -1) - 0.5 * logdet - 0.5 * d * jnp.log(2 * jnp.pi)
        return jax.nn.logsumexp(comp + jnp.log(self.weights), axis=-1)

    def score(self, x):
        r"""Exact score :math:`\\sum_k r_k(x) \\Sigma_k^{-1}(\\mu_k - x)` with responsibilities
        :math:`r_k(x)`."""
        x = jnp.atleast_2d(x)
        d = self.means.shape[-1]
        prec = jnp.linalg.inv(self.covs)  # (K, d, d)
        diff = self.means[None] - x[:, None, :]  # (N, K, d)
        pd = jnp.einsum("kij,nkj->nki", prec, diff)
        logdet = jnp.linalg.slogdet(self.covs)[1]
        comp = -0.5 * jnp.sum(diff * pd, -1) - 0.5 * logdet - 0.5 * d * jnp.log(2 * jnp.pi) + jnp.log(self.weights)
        resp = jax.nn.softmax(comp, axis=-1)
        return jnp.einsum("nk,nki->ni", resp, pd)

    def sample(self, key, num_samples):
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (num_samples,), p=self.weights)
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(kn, (num_samples, self.means.shape[-1]))
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def score_fn(self, sde: VESDE) -> Callable:
        """Exact score ``(x, t) -> (N, d)`` of the diffused mixture at diffusion time ``t``."""
        return lambda x, t: self.diffused(sde.variance(t)).score(x)

    def log_density_fn(self, sde: VESDE) -> Callable:
        return lambda x, t: self.diffused(sde.variance(t)).log_prob(x)


def product_of_mixtures(a: GaussianMixture, b: GaussianMixture) -> GaussianMixture:
    r"""Closed form of the normalised product :math:`a(x) b(x)`: a mixture over pairs (i, j) with
    weights :math:`\propto \pi_i \rho_j N(\mu_i; \nu_j, \Sigma_i + \Lambda_j)`, covariances
    :math:`(\Sigma_i^{-1} + \Lambda_j^{-1})^{-1}` and means :math:`C(\Sigma_i^{-1}\mu_i + \Lambda_j^{-1}\nu_j)`."""
    w, m, c = [], [], []
    for i in range(a.weights.shape[0]):
        for j in range(b.weights.shape[0]):
            si, sj = a.covs[i], b.covs[j]
            pi_, pj = jnp.linalg.inv(si), jnp.linalg.inv(sj)
            cov = jnp.linalg.inv(pi_ + pj)
            mean = cov @ (pi_ @ a.means[i] + pj @ b.means[j])
            lz = GaussianMixture(jnp.ones(1), b.means[j][None], (si + sj)[None]).log_prob(a.means[i][None])[0]
            w.append(jnp.log(a.weights[i]) + jnp.log(b.weights[j]) + lz)
            m.append(mean)
            c.append(cov)
    w = jnp.stack(w)
    return GaussianMixture(jnp.exp(w - jax.nn.logsumexp(w)), jnp.stack(m), jnp.stack(c))


def mmd(x, y, bandwidth: float = 1.0, x_weights=None) -> float:
    r"""Squared maximum mean discrepancy with a Gaussian kernel :math:`k(a, b) = \exp(-\|a-b\|^2 / 2h^2)`
    (V-statistic; ``x_weights`` optional normalised weights of ``x``)."""
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    wx = jnp.full(x.shape[0], 1.0 / x.shape[0]) if x_weights is None else jnp.asarray(x_weights)
    wy = jnp.full(y.shape[0], 1.0 / y.shape[0])

    def k(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return jnp.exp(-d2 / (2 * bandwidth**2))

    return float(wx @ k(x, x) @ wx + wy @ k(y, y) @ wy - 2 * wx @ k(x, y) @ wy)
