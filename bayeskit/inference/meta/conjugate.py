r"""NIW-Meta's conjugate algebra: the NIW containers, expectations, KLs and the closed-form local posterior.

Kim & Hospedales, *A Hierarchical Bayesian Model for Few-Shot Meta Learning*, ICLR 2024
(arXiv:2306.09702). The paper's body was not available to us: the equations below are our own
derivation of the model the abstract and reviews describe (see ``docs/meta.md``, "What is
reconstructed"); every closed form is checked in ``tests/meta`` against the exact conjugate
linear-Gaussian case.

**Model.** Global :math:`\phi = (\mu, \Sigma)`, episode parameters :math:`\theta_i \mid \phi \sim
\mathcal N(\mu, \Sigma)`, data :math:`D_i \mid \theta_i` from an :class:`EpisodeModel`. Hyperprior
:math:`p(\phi) = \mathrm{NIW}(\bar m, \bar l, \bar\Gamma, \bar n)`; variational posterior
:math:`q(\phi) = \mathrm{NIW}(m_0, l_0, \Gamma_0, n_0)`:
:math:`\Sigma^{-1} \sim \mathcal W(\Gamma_0, n_0)` (so :math:`E[\Sigma^{-1}] = n_0\Gamma_0`) and
:math:`\mu \mid \Sigma \sim \mathcal N(m_0, \Sigma / l_0)`. The diagonal variant puts an independent
one-dimensional Wishart (a Gamma) on each precision :math:`\Sigma_{kk}^{-1}` with a shared ``dof``.

**ELBO.**

.. math::
    \mathcal L = \sum_i \Big\{ E_{q_i}[\log p(D_i \mid \theta_i)]
      - E_{q(\phi)} \mathrm{KL}\big(q_i \,\|\, \mathcal N(\mu, \Sigma)\big) \Big\}
      - \mathrm{KL}\big(q(\phi) \,\|\, p(\phi)\big),

with, for :math:`q_i = \mathcal N(m, \Gamma^{-1})`,

.. math::
    2\,E_{q(\phi)}\mathrm{KL} = n_0 \operatorname{tr}(\Gamma_0\Gamma^{-1}) + n_0 (m - m_0)^\top\Gamma_0(m - m_0)
      + d / l_0 - d - E\log|\Sigma^{-1}| + \log|\Gamma|,\qquad
    E\log|\Sigma^{-1}| = \sum_{j=1}^d \psi\big(\tfrac{n_0 + 1 - j}{2}\big) + d\log 2 + \log|\Gamma_0| .

**Quadratic local approximation** (stop-gradient, computed once per episode, no per-episode state):
:math:`-\log p(D_i\mid\theta) \approx c_i - g_i^\top(\theta - \theta_i) + \tfrac12 (\theta-\theta_i)^\top
A_i(\theta-\theta_i)`, either by SGLD moments (the paper's choice: :math:`\theta_i` = mean of the SGLD
iterates after burn-in, :math:`A_i = \mathrm{diag}(\mathrm{clip}(1/\mathrm{var}))`, :math:`g_i = 0`)
or by a Laplace / Taylor expansion (:math:`A_i` = Hessian or Fisher, :math:`g_i` = gradient; exact for
a linear-Gaussian likelihood).

**Closed-form local posterior** (maximiser of the ELBO over :math:`q_i` under the quadratic approximation):

.. math::
    \Gamma_i^* = A_i + n_0\Gamma_0,\qquad m_i^* = \Gamma_i^{*-1}\big(A_i\theta_i + g_i + n_0\Gamma_0 m_0\big).

The per-episode loss :math:`f_i + E\,\mathrm{KL}_i` is then a function of :math:`(m_0, l_0, \Gamma_0,
n_0)` only (see :mod:`.training`); gradients reach the global parameters through :math:`m_i^*,
\Gamma_i^*`, never through the inner SGLD / gradient steps. This module holds the NIW containers and
this conjugate algebra; the quadratic approximations are in :mod:`.local`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, multigammaln

__all__ = [
    "NIWPosterior",
    "NIWParams",
    "NIWPrior",
    "QuadraticApproximation",
    "LocalPosterior",
    "constrain",
    "unconstrain",
    "expected_log_det_precision",
    "expected_kl_local",
    "niw_kl",
    "local_posterior",
    "expected_neg_log_likelihood",
    "episode_loss",
]


# ----------------------------------------------------------------------------- containers
class NIWPosterior(NamedTuple):
    """A Normal-Inverse-Wishart distribution over (mu, Sigma) (precision Wishart parametrisation).

    Fields: ``mean`` m0 (d,), ``kappa`` l0 (), ``scale`` Gamma0 ((d,) diagonal or (d, d)), ``dof`` n0 ().
    ``Sigma^{-1} ~ Wishart(scale, dof)``, ``mu | Sigma ~ N(mean, Sigma / kappa)``.
    """

    mean: jax.Array
    kappa: jax.Array
    scale: jax.Array
    dof: jax.Array

    @property
    def is_diagonal(self) -> bool:
        return self.scale.ndim == 1

    @property
    def expected_precision(self) -> jax.Array:
        """``E[Sigma^{-1}] = dof * scale``."""
        return self.dof * self.scale

    def expected_covariance(self) -> jax.Array:
        """``E[Sigma]``: ``(dof * scale)^{-1}`` scaled by ``dof / (dof - d - 1)`` (needs dof > d + 1)."""
        d = self.mean.shape[0]
        if self.is_diagonal:
            return 1.0 / (self.scale * (self.dof - 2.0))
        return jnp.linalg.inv(self.scale) / (self.dof - d - 1.0)

    def sample(self, key, num_samples: int):
        """Draws ``(mu (S, d), Sigma (S, d) or (S, d, d))``."""
        d = self.mean.shape[0]
        k1, k2 = jax.random.split(key)
        if self.is_diagonal:
            lam = jax.random.gamma(k1, self.dof / 2.0, (num_samples, d)) * 2.0 * self.scale
            sigma = 1.0 / lam
            mu = self.mean + jnp.sqrt(sigma / self.kappa) * jax.random.normal(k2, (num_samples, d))
            return mu, sigma
        # Bartlett decomposition of Wishart(scale, dof)
        chol = jnp.linalg.cholesky(self.scale)
        ka, kb = jax.random.split(k1)
        dfs = self.dof - jnp.arange(d)
        chi2 = 2.0 * jax.random.gamma(ka, dfs / 2.0, (num_samples, d))
        lower = jnp.tril(jax.random.normal(kb, (num_samples, d, d)), -1)
        bart = lower + jax.vmap(jnp.diag)(jnp.sqrt(chi2))
        factor = chol @ bart
        lam = factor @ jnp.swapaxes(factor, -1, -2)
        sigma = jnp.linalg.inv(lam)
        chol_sigma = jnp.linalg.cholesky(sigma / self.kappa)
        mu = self.mean + jnp.einsum("sij,sj->si", chol_sigma, jax.random.normal(k2, (num_samples, d)))
        return mu, sigma


class NIWParams(NamedTuple):
    """Unconstrained (optimised) parameters of q(phi); map with :func:`constrain`.

    ``mean`` (d,); ``log_kappa`` (); ``scale_raw`` (d,) = log of the diagonal of ``E[Σ^{-1}] = dof*scale``,
    or (d, d) whose lower triangle with exponentiated diagonal is the Cholesky factor of ``dof*scale``;
    ``log_dof_excess`` ():
    ``dof = exp(log_dof_excess)`` (diagonal) or ``d - 1 + exp(log_dof_excess)`` (full).
    """

    mean: jax.Array
    log_kappa: jax.Array
    scale_raw: jax.Array
    log_dof_excess: jax.Array


class NIWPrior(NamedTuple):
    """Hyperprior p(phi) = NIW(mean, kappa, scale, dof); same conventions as :class:`NIWPosterior`."""

    mean: jax.Array
    kappa: jax.Array
    scale: jax.Array
    dof: jax.Array


class QuadraticApproximation(NamedTuple):
    r"""``-log p(D | theta) ≈ value - grad·(theta - center) + ½ (theta - center)ᵀ curvature (theta - center)``.

    ``center`` (d,), ``value`` () = ``-log p(D | center)``, ``grad`` (d,) = ``∇ log p(D | center)``,
    ``curvature`` (d,) diagonal or (d, d).
    """

    center: jax.Array
    value: jax.Array
    grad: jax.Array
    curvature: jax.Array


class LocalPosterior(NamedTuple):
    """Gaussian local posterior ``N(mean, precision^{-1})``; ``precision`` (d,) diagonal or (d, d)."""

    mean: jax.Array
    precision: jax.Array


# ----------------------------------------------------------------------------- parametrisation
def constrain(params: NIWParams) -> NIWPosterior:
    """Map unconstrained :class:`NIWParams` to the :class:`NIWPosterior` they encode.

    ``scale_raw`` encodes the expected precision ``P = E[Σ^{-1}] = dof * scale`` (log-diagonal, or a
    Cholesky factor with log-diagonal), and ``scale = P / dof``: the scale of the expected precision
    does not shrink as the pseudo-count ``dof`` grows, which keeps the optimisation well conditioned.
    """
    d = params.mean.shape[0]
    kappa = jnp.exp(params.log_kappa)
    if params.scale_raw.ndim == 1:
        dof = jnp.exp(params.log_dof_excess)
        return NIWPosterior(params.mean, kappa, jnp.exp(params.scale_raw) / dof, dof)
    raw = params.scale_raw
    chol = jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))
    dof = d - 1.0 + jnp.exp(params.log_dof_excess)
    return NIWPosterior(params.mean, kappa, chol @ chol.T / dof, dof)


def unconstrain(posterior: NIWPosterior) -> NIWParams:
    """Inverse of :func:`constrain`."""
    d = posterior.mean.shape[0]
    scale = jnp.asarray(posterior.scale)
    dof = jnp.asarray(posterior.dof)
    if scale.ndim == 1:
        return NIWParams(jnp.asarray(posterior.mean), jnp.log(posterior.kappa), jnp.log(scale * dof), jnp.log(dof))
    chol = jnp.linalg.cholesky(scale * dof)
    raw = jnp.tril(chol, -1) + jnp.diag(jnp.log(jnp.diag(chol)))
    return NIWParams(jnp.asarray(posterior.mean), jnp.log(posterior.kappa), raw, jnp.log(dof - (d - 1.0)))


# ----------------------------------------------------------------------------- NIW expectations
def _logdet_pd(mat):
    return 2.0 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(mat))))


def expected_log_det_precision(q: NIWPosterior) -> jax.Array:
    r"""``E_q log|Sigma^{-1}| = sum_j ψ((n0 + 1 - j)/2) + d log 2 + log|Γ0|`` (diagonal: per-coordinate sum)."""
    d = q.mean.shape[0]
    if q.is_diagonal:
        return d * (digamma(q.dof / 2.0) + math.log(2.0)) + jnp.sum(jnp.log(q.scale))
    j = jnp.arange(1, d + 1)
    return jnp.sum(digamma((q.dof + 1.0 - j) / 2.0)) + d * math.log(2.0) + _logdet_pd(q.scale)


def expected_kl_local(local: LocalPosterior, q: NIWPosterior) -> jax.Array:
    r"""``E_{q(phi)} KL(N(m, Γ^{-1}) || N(mu, Sigma))`` in closed form (see module docstring)."""
    d = q.mean.shape[0]
    diff = local.mean - q.mean
    if q.is_diagonal and local.precision.ndim == 1:
        quad = q.dof * jnp.sum(q.scale * diff**2)
        trace = q.dof * jnp.sum(q.scale / local.precision)
        logdet_local = jnp.sum(jnp.log(local.precision))
    else:
        scale = jnp.diag(q.scale) if q.is_diagonal else q.scale
        prec = jnp.diag(local.precision) if local.precision.ndim == 1 else local.precision
        chol = jnp.linalg.cholesky(prec)
        quad = q.dof * diff @ scale @ diff
        cov = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=prec.dtype))
        trace = q.dof * jnp.sum(scale * cov)
        logdet_local = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    return 0.5 * (trace + quad + d / q.kappa - d - expected_log_det_precision(q) + logdet_local)


def niw_kl(q: NIWPosterior, p: NIWPrior) -> jax.Array:
    r"""``KL(NIW_q || NIW_p)`` (Wishart part plus expected Gaussian part).

    Wishart: ``(n_p/2)(log|Γ_p| - log|Γ_q|) + (n_q/2)(tr(Γ_p^{-1}Γ_q) - d) + log Γ_d(n_p/2) - log Γ_d(n_q/2)
    + ((n_q - n_p)/2) ψ_d(n_q/2)``; Gaussian: ``½[d l_p/l_q + l_p n_q (m_q-m_p)ᵀΓ_q(m_q-m_p) - d + d log(l_q/l_p)]``.
    The diagonal variant sums one-dimensional terms.
    """
    d = q.mean.shape[0]
    diff = q.mean - p.mean
    if q.is_diagonal:
        nq, np_ = q.dof, p.dof
        wish = (np_ / 2.0) * (jnp.log(p.scale) - jnp.log(q.scale)) + (nq / 2.0) * (q.scale / p.scale - 1.0) \
            + jax.scipy.special.gammaln(np_ / 2.0) - jax.scipy.special.gammaln(nq / 2.0) \
            + ((nq - np_) / 2.0) * digamma(nq / 2.0)
        wish = jnp.sum(wish)
        quad = jnp.sum(q.scale * diff**2)
    else:
        nq, np_ = q.dof, p.dof
        chol_p = jnp.linalg.cholesky(p.scale)
        ratio = jax.scipy.linalg.cho_solve((chol_p, True), q.scale)
        j = jnp.arange(1, d + 1)
        psi_d = jnp.sum(digamma((nq + 1.0 - j) / 2.0))
        wish = (np_ / 2.0) * (_logdet_pd(p.scale) - _logdet_pd(q.scale)) + (nq / 2.0) * (jnp.trace(ratio) - d) \
            + multigammaln(np_ / 2.0, d) - multigammaln(nq / 2.0, d) + ((nq - np_) / 2.0) * psi_d
        quad = diff @ q.scale @ diff
    gauss = 0.5 * (d * p.kappa / q.kappa + p.kappa * q.dof * quad - d + d * jnp.log(q.kappa / p.kappa))
    return wish + gauss


# ----------------------------------------------------------------------------- closed forms
def local_posterior(quad: QuadraticApproximation, q: NIWPosterior) -> LocalPosterior:
    r"""Closed-form local posterior ``Γ* = A + n0Γ0``, ``m* = Γ*^{-1}(A θ_c + g + n0Γ0 m0)``."""
    prior_prec = q.dof * q.scale
    A = quad.curvature
    if q.is_diagonal and A.ndim == 1:
        prec = A + prior_prec
        mean = (A * quad.center + quad.grad + prior_prec * q.mean) / prec
        return LocalPosterior(mean, prec)
    A_mat = jnp.diag(A) if A.ndim == 1 else A
    P_mat = jnp.diag(prior_prec) if q.is_diagonal else prior_prec
    prec = A_mat + P_mat
    rhs = A_mat @ quad.center + quad.grad + P_mat @ q.mean
    chol = jnp.linalg.cholesky(prec)
    mean = jax.scipy.linalg.cho_solve((chol, True), rhs)
    return LocalPosterior(mean, prec)


def expected_neg_log_likelihood(quad: QuadraticApproximation, local: LocalPosterior) -> jax.Array:
    r"""``E_{N(m*, Γ*^{-1})}[-log p(D|θ)]`` under the quadratic approximation:
    ``c - g·(m* - θ_c) + ½[(m* - θ_c)ᵀA(m* - θ_c) + tr(A Γ*^{-1})]``."""
    diff = local.mean - quad.center
    A = quad.curvature
    if A.ndim == 1 and local.precision.ndim == 1:
        quad_term = jnp.sum(A * diff**2)
        trace = jnp.sum(A / local.precision)
    else:
        A_mat = jnp.diag(A) if A.ndim == 1 else A
        prec = jnp.diag(local.precision) if local.precision.ndim == 1 else local.precision
        chol = jnp.linalg.cholesky(prec)
        quad_term = diff @ A_mat @ diff
        trace = jnp.trace(jax.scipy.linalg.cho_solve((chol, True), A_mat))
    return quad.value - quad.grad @ diff + 0.5 * (quad_term + trace)


def episode_loss(quad: QuadraticApproximation, q: NIWPosterior):
    """Negative per-episode ELBO term ``f_i + E KL_i`` at the closed-form local optimum; returns (loss, f, kl)."""
    quad = jax.tree_util.tree_map(jax.lax.stop_gradient, quad)
    local = local_posterior(quad, q)
    f = expected_neg_log_likelihood(quad, local)
    kl = expected_kl_local(local, q)
    return f + kl, f, kl


