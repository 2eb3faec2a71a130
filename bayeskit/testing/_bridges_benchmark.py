r"""Ground-truth Schrödinger bridges: the Gaussian-mixture benchmark construction.

**Gaussian-mixture benchmark** (Gushchin et al., "Building the bridge of Schrödinger: a continuous entropic
optimal transport benchmark", NeurIPS 2023, as used by LightSB). Take any :math:`p_0` (here a Gaussian
mixture) and a Gaussian-mixture potential :math:`\psi(y) = \sum_k p_k \mathcal N(y \mid \mu_k, \Sigma_k)`.
Define :math:`\pi^*(y \mid x) \propto \mathcal N(y \mid x, \varepsilon I)\, \psi(y)` and :math:`p_1` its
second marginal. Then :math:`\pi^*` is the entropic OT plan between :math:`p_0` and :math:`p_1`, with

.. math::
    \pi^*(y\mid x) = \sum_k \gamma_k(x)\, \mathcal N\big(y \mid C_k(\Sigma_k^{-1}\mu_k + x/\varepsilon), C_k\big),\quad
    \gamma_k(x) \propto p_k \mathcal N(x \mid \mu_k, \Sigma_k + \varepsilon I),\quad
    C_k = (I/\varepsilon + \Sigma_k^{-1})^{-1},

the SB drift :math:`g^*(x, t) = \varepsilon \nabla_x \log \sum_k p_k \mathcal N(x \mid \mu_k, \Sigma_k + (1-t)\varepsilon I)`,
and LightSB represents it exactly with :math:`S_k = C_k/\varepsilon`, :math:`r_k = C_k\Sigma_k^{-1}\mu_k`,
:math:`\alpha_k = p_k \mathcal N(\mu_k \mid 0, \Sigma_k + \varepsilon I)`.

The Gaussian-to-Gaussian closed form is in :func:`~bayeskit.testing.gaussian_bridge`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.inference.bridges import LightSBParams

__all__ = ["GaussianMixtureBenchmark", "gaussian_mixture_benchmark"]


def _mvn_logpdf(x, mean, cov):
    d = x.shape[-1]
    chol = jnp.linalg.cholesky(cov)
    diff = x - mean
    sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
    return -0.5 * (jnp.sum(sol**2, -1) + d * np.log(2 * np.pi)) - jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)


class GaussianMixtureBenchmark(NamedTuple):
    """One benchmark instance (all arrays jnp).

    Attributes:
        epsilon: reference noise variance.
        source_weights, source_means, source_covs: the Gaussian mixture :math:`p_0`.
        weights, means, covs: the potential :math:`\\psi` (p_k, mu_k, Sigma_k).
    """

    epsilon: float
    source_weights: jax.Array
    source_means: jax.Array
    source_covs: jax.Array
    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    def sample_source(self, key, num_samples: int):
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.source_weights), shape=(num_samples,))
        chol = jnp.linalg.cholesky(self.source_covs)[comp]
        z = jax.random.normal(kz, (num_samples, self.dim), self.means.dtype)
        return self.source_means[comp] + jnp.einsum("nij,nj->ni", chol, z)

    def conditional_components(self, x):
        """Exact :math:`\\pi^*(\\cdot\\mid x)`: (log weights (N, K), means (N, K, D), covs (K, D, D))."""
        eps = self.epsilon
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        lw = jnp.log(self.weights) + jax.vmap(lambda m, c: _mvn_logpdf(x, m, c + eps * eye), out_axes=-1)(
            self.means, self.covs)
        lw = lw - jax.scipy.special.logsumexp(lw, -1, keepdims=True)
        prec = jnp.linalg.inv(self.covs)
        ck = jnp.linalg.inv(eye / eps + prec)
        means = jnp.einsum("kij,...kj->...ki", ck, jnp.einsum("kij,kj->ki", prec, self.means) + x[..., None, :] / eps)
        return lw, means, ck

    def conditional_moments(self, x):
        lw, means, covs = self.conditional_components(x)
        w = jnp.exp(lw)
        mean = jnp.einsum("nk,nkd->nd", w, means)
        second = jnp.einsum("nk,kij->nij", w, covs) + jnp.einsum("nk,nki,nkj->nij", w, means, means)
        return mean, second - mean[:, :, None] * mean[:, None, :]

    def sample_conditional(self, key, x):
        kc, kz = jax.random.split(key)
        lw, means, covs = self.conditional_components(x)
        k = jax.random.categorical(kc, lw, axis=-1)
        chol = jnp.linalg.cholesky(covs)[k]
        z = jax.random.normal(kz, x.shape, x.dtype)
        return jnp.take_along_axis(means, k[:, None, None], 1)[:, 0] + jnp.einsum("nij,nj->ni", chol, z)

    def sample_target(self, key, num_samples: int):
        k0, k1 = jax.random.split(key)
        return self.sample_conditional(k1, self.sample_source(k0, num_samples))

    def drift(self, x, t):
        """Exact SB drift :math:`\\varepsilon\\nabla\\log\\sum_k p_k N(x\\mid\\mu_k, \\Sigma_k + (1-t)\\varepsilon I)`."""
        eps = self.epsilon
        eye = jnp.eye(self.dim, dtype=self.means.dtype)

        def log_h(xx):
            return jax.scipy.special.logsumexp(jnp.log(self.weights) + jax.vmap(
                lambda m, c: _mvn_logpdf(xx, m, c + (1.0 - t) * eps * eye))(self.means, self.covs))

        return eps * jax.vmap(jax.grad(log_h))(x)

    def lightsb_params(self, covariance: str = "full") -> LightSBParams:
        """The exact LightSB parameters of this instance (``covariance='diag'`` needs diagonal Sigma_k)."""
        eps = self.epsilon
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        prec = jnp.linalg.inv(self.covs)
        ck = jnp.linalg.inv(eye / eps + prec)
        s = ck / eps
        r = jnp.einsum("kij,kj->ki", ck, jnp.einsum("kij,kj->ki", prec, self.means))
        log_alpha = jnp.log(self.weights) + jax.vmap(lambda m, c: _mvn_logpdf(m, jnp.zeros_like(m), c + eps * eye))(
            self.means, self.covs)
        if covariance == "diag":
            return LightSBParams(log_alpha, r, jnp.log(jnp.diagonal(s, axis1=-2, axis2=-1)), None)
        evals, evecs = jnp.linalg.eigh(0.5 * (s + jnp.swapaxes(s, -1, -2)))
        return LightSBParams(log_alpha, r, jnp.log(evals), evecs)


def gaussian_mixture_benchmark(key, dim: int, epsilon: float, *, num_components: int = 5,
                               num_source_components: int = 3, diagonal: bool = False,
                               dtype=None) -> GaussianMixtureBenchmark:
    """Build a random benchmark instance in dimension ``dim``: source mixture of ``num_source_components``
    Gaussians (means in [-2, 2]^D, covariances 0.1–0.5 scale), potential of ``num_components`` Gaussians
    with means uniform on [-5, 5]^D (scaled by 1/sqrt(D/2) beyond D = 2) and random SPD covariances
    (eigenvalues in [0.1, 1])."""
    dtype = dtype or jnp.result_type(float)
    ks = jax.random.split(key, 8)
    scale = 1.0 / np.sqrt(max(dim / 2.0, 1.0))

    def spd(k, n, lo, hi):
        ke, kq = jax.random.split(k)
        ev = jax.random.uniform(ke, (n, dim), dtype, lo, hi)
        if diagonal:
            return jax.vmap(jnp.diag)(ev)
        q, _ = jnp.linalg.qr(jax.random.normal(kq, (n, dim, dim), dtype))
        return jnp.einsum("nij,nj,nlj->nil", q, ev, q)

    sw = jax.random.dirichlet(ks[0], jnp.full((num_source_components,), 5.0, dtype))
    sm = jax.random.uniform(ks[1], (num_source_components, dim), dtype, -2.0, 2.0) * scale
    sc = spd(ks[2], num_source_components, 0.1, 0.5)
    w = jax.random.dirichlet(ks[3], jnp.full((num_components,), 5.0, dtype))
    m = jax.random.uniform(ks[4], (num_components, dim), dtype, -5.0, 5.0) * scale
    c = spd(ks[5], num_components, 0.1, 1.0)
    return GaussianMixtureBenchmark(float(epsilon), sw.astype(dtype), sm, sc, w.astype(dtype), m, c)
