r"""Normal-Inverse-Wishart hierarchical Bayesian few-shot meta-learning (NIW-Meta).

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
n_0)` only, minimised with optax over minibatches of episodes; gradients reach the global parameters
through :math:`m_i^*, \Gamma_i^*`, never through the inner SGLD / gradient steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import digamma, multigammaln

from bayeskit._checks import check_choice, check_finite_array, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError
from bayeskit.inference.meta.episode import EpisodeModel

__all__ = [
    "NIWMeta",
    "NIWMetaResult",
    "MetaPrediction",
    "NIWPosterior",
    "NIWParams",
    "NIWPrior",
    "QuadraticApproximation",
    "LocalPosterior",
    "TrainState",
    "StepInfo",
    "constrain",
    "unconstrain",
    "expected_log_det_precision",
    "expected_kl_local",
    "niw_kl",
    "local_posterior",
    "expected_neg_log_likelihood",
    "episode_loss",
    "laplace_approximation",
    "sgld_approximation",
    "build_step",
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


class TrainState(NamedTuple):
    """State of the episodic optimisation: unconstrained params, optax state, step counter."""

    params: NIWParams
    opt_state: Any
    step: jax.Array


class StepInfo(NamedTuple):
    """Per-step diagnostics (minibatch averages per episode)."""

    elbo: jax.Array             # -(loss): per-episode ELBO estimate incl. hyperprior KL / dataset_size
    expected_nll: jax.Array     # mean_i E_{q_i*}[-log p(D_i | theta)] (quadratic approximation)
    expected_kl: jax.Array      # mean_i E_{q(phi)} KL(q_i* || N(mu, Sigma))
    hyper_kl: jax.Array         # KL(q(phi) || p(phi))
    grad_norm: jax.Array


# ----------------------------------------------------------------------------- parametrisation
def _tri(d):
    return jnp.tril(jnp.ones((d, d), dtype=bool))


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


# ----------------------------------------------------------------------------- local approximations
def _clip_curvature(H, minimum, maximum):
    if H.ndim == 1:
        return jnp.clip(H, minimum, maximum)
    H = 0.5 * (H + H.T)
    vals, vecs = jnp.linalg.eigh(H)
    vals = jnp.clip(vals, minimum, maximum)
    return (vecs * vals) @ vecs.T


def _clip_grad(g, max_norm):
    if max_norm is None:
        return g
    norm = jnp.linalg.norm(g)
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))


def laplace_approximation(episode_model: EpisodeModel, x, y, start, *, diagonal: bool, curvature: str = "hessian",
                          num_steps: int = 0, step_size: float = 0.0, curvature_min: float = 0.0,
                          curvature_max: float = jnp.inf, max_grad_norm: float | None = None
                          ) -> QuadraticApproximation:
    """Second-order expansion of ``-log p(D|θ)`` after ``num_steps`` gradient-ascent steps from ``start``.

    ``curvature="hessian"``: the exact Hessian (or its diagonal; computed densely, so for moderate d);
    ``"fisher"``: the empirical Fisher ``Σ_n ∇log p_n ∇log p_nᵀ`` (or its diagonal; cheap for networks).
    Exact for a likelihood quadratic in θ (linear-Gaussian) with ``"hessian"``, whatever the start.
    """
    loglik = lambda th: episode_model.log_likelihood(th, x, y)  # noqa: E731

    def body(_, th):
        return th + step_size * _clip_grad(jax.grad(loglik)(th), max_grad_norm)

    center = jax.lax.fori_loop(0, num_steps, body, start) if num_steps > 0 else start
    value, grad = jax.value_and_grad(loglik)(center)
    if curvature == "hessian":
        H = -jax.hessian(loglik)(center)
        H = jnp.diag(H) if diagonal else H
    else:
        G = jax.jacrev(lambda th: episode_model.pointwise_log_likelihood(th, x, y))(center)  # (N, d)
        H = jnp.sum(G**2, axis=0) if diagonal else G.T @ G
    return QuadraticApproximation(center, -value, grad, _clip_curvature(H, curvature_min, curvature_max))


def sgld_approximation(key, episode_model: EpisodeModel, x, y, start, *, num_burnin: int, num_samples: int,
                       step_size: float, temperature: float = 1.0, curvature_min: float = 1e-4,
                       curvature_max: float = 1e6, max_grad_norm: float | None = None) -> QuadraticApproximation:
    r"""SGLD-moment quadratic approximation (the paper's): run SGLD on ``log p(D|θ)`` from ``start``,

    ``θ ← θ + η ∇log p(D|θ) + sqrt(2 η T) ε``; center = mean of the ``num_samples`` iterates after
    ``num_burnin``; curvature = ``clip(1 / var, curvature_min, curvature_max)`` per coordinate; grad = 0.
    ``max_grad_norm`` clips the gradient's norm in each step (guards against divergent episodes).
    """
    loglik = lambda th: episode_model.log_likelihood(th, x, y)  # noqa: E731
    noise = jnp.sqrt(2.0 * step_size * temperature)

    def body(th, k):
        th = th + step_size * _clip_grad(jax.grad(loglik)(th), max_grad_norm) \
            + noise * jax.random.normal(k, th.shape, th.dtype)
        return th, th

    keys = jax.random.split(key, num_burnin + num_samples)
    _, iterates = jax.lax.scan(body, start, keys)
    kept = iterates[num_burnin:]
    center = jnp.mean(kept, axis=0)
    var = jnp.var(kept, axis=0)
    A = jnp.clip(1.0 / jnp.maximum(var, 1.0 / curvature_max), curvature_min, curvature_max)
    return QuadraticApproximation(center, -loglik(center), jnp.zeros_like(center), A)


# ----------------------------------------------------------------------------- configuration
def _batch_episodes(x, y, name="episodes"):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim < 2:
        raise DataError(f"`{name}` x must have shape (num_episodes, num_points, ...), got {x.shape}")
    if y.ndim < 2:
        raise DataError(f"`{name}` y must have shape (num_episodes, num_points, ...), got {y.shape}")
    if x.shape[:2] != y.shape[:2]:
        raise DataError(f"`{name}`: x and y must agree on (num_episodes, num_points), got {x.shape[:2]} and {y.shape[:2]}")
    if x.shape[0] == 0:
        raise DataError(f"`{name}` holds no episodes (leading axis of size 0)")
    if x.shape[1] == 0:
        raise DataError(f"`{name}` episodes are empty (0 data points per episode); every support set needs >= 1 point")
    check_finite_array(np.asarray(x), f"{name} x")
    check_finite_array(np.asarray(y), f"{name} y")
    return x, y


def _check_pd(mat, name):
    arr = np.asarray(mat, dtype=float)
    if arr.ndim == 1:
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ConfigurationError(f"`{name}` must be positive (a diagonal scale), got min {arr.min()}")
        return
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ConfigurationError(f"`{name}` must be a square matrix, got shape {arr.shape}")
    if not np.allclose(arr, arr.T, rtol=1e-6, atol=1e-10):
        raise ConfigurationError(f"`{name}` must be symmetric")
    if not np.all(np.isfinite(arr)) or np.linalg.eigvalsh(arr).min() <= 0:
        raise ConfigurationError(f"`{name}` must be positive definite; smallest eigenvalue "
                                 f"{np.linalg.eigvalsh(arr).min() if np.all(np.isfinite(arr)) else 'nan'}")


def build_step(episode_model: EpisodeModel, *, optimizer, covariance: str, local_approximation: str,
               curvature: str, num_inner_steps: int, inner_step_size: float, num_burnin: int,
               num_sgld_samples: int, sgld_temperature: float, curvature_min: float, curvature_max: float,
               prior: NIWPrior | None, dataset_size: float | None, max_grad_norm: float | None = None):
    """Build the pure episodic-optimisation kernel ``step(key, state, (x, y)) -> (state, StepInfo)``.

    Each call: quadratic approximations of the minibatch's episodes (stop-gradient, from the current
    global mean), closed-form local posteriors, loss ``mean_i (f_i + E KL_i) + KL(q||p)/dataset_size``,
    one optax update. Nothing about past episodes is stored.
    """
    diagonal = covariance == "diag"

    def quad_fn(key, q_mean, x, y):
        start = jax.lax.stop_gradient(q_mean)
        if local_approximation == "sgld":
            return sgld_approximation(key, episode_model, x, y, start, num_burnin=num_burnin,
                                      num_samples=num_sgld_samples, step_size=inner_step_size,
                                      temperature=sgld_temperature, curvature_min=curvature_min,
                                      curvature_max=curvature_max, max_grad_norm=max_grad_norm)
        return laplace_approximation(episode_model, x, y, start, diagonal=diagonal, curvature=curvature,
                                     num_steps=num_inner_steps, step_size=inner_step_size,
                                     curvature_min=curvature_min, curvature_max=curvature_max,
                                     max_grad_norm=max_grad_norm)

    def loss_fn(params, quads):
        q = constrain(params)
        losses, fs, kls = jax.vmap(lambda qa: episode_loss(qa, q))(quads)
        hyper = niw_kl(q, prior) if prior is not None else jnp.zeros(())
        weight = 0.0 if (prior is None or dataset_size is None) else 1.0 / dataset_size
        loss = jnp.mean(losses) + weight * hyper
        return loss, (jnp.mean(fs), jnp.mean(kls), hyper)

    def step(key, state: TrainState, batch):
        x, y = batch
        keys = jax.random.split(key, x.shape[0])
        quads = jax.vmap(quad_fn, in_axes=(0, None, 0, 0))(keys, state.params.mean, x, y)
        (loss, (f, kl, hyper)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, quads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = StepInfo(-loss, f, kl, hyper, optax.global_norm(grads))
        return TrainState(params, opt_state, state.step + 1), info

    return step, quad_fn


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class MetaPrediction:
    """Monte Carlo predictive of new episodes.

    Attributes:
        theta: (num_samples, num_episodes, d) draws from the local posteriors.
        outputs: (num_samples, num_episodes, num_query, ...) ``predict_fn`` outputs (regression means /
            class probabilities) per draw, or ``None`` if the episode model has no ``predict_fn``.
        y_samples: posterior-predictive draws of y (same leading axes) or ``None``.
        log_predictive_density: (num_episodes, num_query) ``log mean_s p(y_q | x_q, θ_s)`` if query y was given.
        local: the :class:`LocalPosterior` of each episode (batched).
    """

    theta: jax.Array
    outputs: jax.Array | None
    y_samples: jax.Array | None
    log_predictive_density: jax.Array | None
    local: LocalPosterior
    query_y: jax.Array | None = None

    @property
    def mean(self) -> jax.Array:
        """Predictive mean of the outputs (regression mean / class probabilities), (num_episodes, num_query, ...)."""
        if self.outputs is None:
            raise ConfigurationError("the episode model has no `predict_fn`: no outputs to average")
        return jnp.mean(self.outputs, axis=0)

    @property
    def std(self) -> jax.Array:
        """Predictive standard deviation of y (from ``y_samples``; of the outputs if none)."""
        src = self.y_samples if self.y_samples is not None else self.outputs
        return jnp.std(src, axis=0)

    def to_arviz(self):
        """DataTree: ``posterior`` θ draws (chain=1), ``posterior_predictive`` y draws, ``log_likelihood``-like
        predictive densities and the query data as ``observed_data``."""
        from bayeskit.diagnostics import to_datatree

        groups = {"posterior": {"theta": np.asarray(self.theta)[None]}, "predictions": {}}
        if self.outputs is not None:
            groups["predictions"]["outputs_mean"] = np.asarray(self.mean)
        dims = {"theta": ["episode", "theta_dim"], "outputs_mean": ["episode", "query"],
                "y": ["episode", "query"], "log_predictive_density": ["episode", "query"]}
        if self.y_samples is not None:
            groups["posterior_predictive"] = {"y": np.asarray(self.y_samples)[None]}
        if self.log_predictive_density is not None:
            groups["predictions"]["log_predictive_density"] = np.asarray(self.log_predictive_density)
        if self.query_y is not None:
            groups["observed_data"] = {"y": np.asarray(self.query_y)}
        return to_datatree(groups, dims=dims, attrs={"method": "NIW-Meta predictive"})


@dataclass(frozen=True)
class NIWMetaResult:
    """A fitted NIW-Meta model: the learned q(phi) and what it needs to adapt to new episodes.

    Attributes:
        posterior: learned :class:`NIWPosterior` q(phi) = NIW(m0, l0, Γ0, n0).
        params: its unconstrained :class:`NIWParams`; ``state`` the final :class:`TrainState` (to continue).
        history: dict of per-step arrays (``elbo``, ``expected_nll``, ``expected_kl``, ``hyper_kl``,
            ``grad_norm``) and ``seconds_per_step`` per chunk.
        config: the :class:`NIWMeta` that produced it.
    """

    posterior: NIWPosterior
    params: NIWParams
    state: TrainState
    history: dict
    config: "NIWMeta"
    num_episodes_seen: int = 0

    # ---- local posteriors and ELBO
    def quadratic_approximations(self, key, x, y):
        """Quadratic approximations of a batch of episodes from the learned global mean (jitted, cached)."""
        keys = jax.random.split(key, x.shape[0])
        return self.config._jitted("quads")(keys, self.posterior.mean, x, y)

    def local_posterior(self, key, support) -> LocalPosterior:
        """Closed-form local posteriors ``N(m_i*, Γ_i*^{-1})`` of a batch of support sets ``(x, y)``."""
        key = check_key(key)
        x, y = _batch_episodes(*_as_pair(support, "support"), name="support")
        quads = self.quadratic_approximations(key, x, y)
        return _batched_local_posterior(quads, self.posterior)

    def elbo(self, key, episodes) -> jax.Array:
        """Total ELBO of a batch of episodes: ``Σ_i [-f_i - E KL_i] - KL(q(φ) || p(φ))`` (no KL if no prior).

        Exact (not an estimate) for a linear-Gaussian episode model with the Laplace approximation."""
        x, y = _batch_episodes(*_as_pair(episodes, "episodes"))
        quads = self.quadratic_approximations(check_key(key), x, y)
        losses = _batched_episode_loss(quads, self.posterior)
        hyper = niw_kl(self.posterior, self.config._prior()) if self.config._prior() is not None else 0.0
        return -jnp.sum(losses) - hyper

    # ---- prediction
    def predict(self, key, support, query, *, num_samples: int = 32, method: str = "closed_form",
                num_vi_steps: int = 100, vi_learning_rate: float = 1e-2, num_vi_samples: int = 4) -> MetaPrediction:
        """Adapt to new episodes from their support sets and predict their queries.

        Args:
            key: a ``jax.random`` key.
            support: ``(x, y)`` with shapes ``(num_episodes, K, ...)`` (K >= 1).
            query: ``x`` of shape ``(num_episodes, Q, ...)``, or ``(x, y)`` to also get log predictive densities.
            num_samples: Monte Carlo draws of θ from each local posterior.
            method: ``"closed_form"`` (the quadratic-approximation local posterior) or ``"vi"`` (start
                there, then ``num_vi_steps`` Adam steps of reparameterised VI on
                ``E_q log p(S|θ) - E_{q(φ)} KL(q || N(μ, Σ))`` with a diagonal Gaussian q).
        """
        key = check_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        check_choice(method, "method", ("closed_form", "vi"))
        model = self.config.episode_model
        sx, sy = _batch_episodes(*_as_pair(support, "support"), name="support")
        if isinstance(query, (tuple, list)):
            qx, qy = _batch_episodes(*_as_pair(query, "query"), name="query")
        else:
            qx, qy = jnp.asarray(query), None
            if qx.ndim < 2 or qx.shape[1] == 0:
                raise DataError(f"`query` x must have shape (num_episodes, num_query >= 1, ...), got {qx.shape}")
            check_finite_array(np.asarray(qx), "query x")
        if qx.shape[0] != sx.shape[0]:
            raise DataError(f"`support` has {sx.shape[0]} episodes but `query` has {qx.shape[0]}")
        if qx.shape[2:] != sx.shape[2:]:
            raise DataError(f"query x points have shape {qx.shape[2:]}, support x points {sx.shape[2:]}: they must match")
        k_quad, k_vi, k_draw, k_pred = jax.random.split(key, 4)
        local = self.local_posterior(k_quad, (sx, sy))
        q = self.posterior
        if method == "vi":
            local = _vi_refine(k_vi, model, q, local, sx, sy, num_vi_steps, vi_learning_rate, num_vi_samples)

        theta, outputs, y_samples, lpd = self.config._jitted("predict")(k_draw, k_pred, local, qx, qy, num_samples)
        return MetaPrediction(theta, outputs, y_samples, lpd, local, qy)

    def sample_global(self, key, num_draws: int = 1000):
        """Draws ``(mu, Sigma)`` from q(phi)."""
        return self.posterior.sample(check_key(key), check_positive_int(num_draws, "num_draws"))

    def to_arviz(self, key=None, num_draws: int = 500):
        """DataTree: ``posterior`` draws of ``mu`` and ``Sigma`` (diagonal: variances) from q(phi);
        ``sample_stats`` (not per draw) holds the learned NIW parameters; ``training`` the per-step history."""
        from bayeskit.diagnostics import to_datatree

        key = jax.random.key(0) if key is None else key
        mu, sigma = self.sample_global(key, num_draws)
        q = self.posterior
        dims = {"mu": ["theta_dim"], "Sigma": ["theta_dim", "theta_dim_b"] if not q.is_diagonal else ["theta_dim"],
                "m0": ["theta_dim"], "Gamma0": ["theta_dim"] if q.is_diagonal else ["theta_dim", "theta_dim_b"]}
        train = {k: np.asarray(v) for k, v in self.history.items() if np.ndim(v) == 1 and k != "seconds_per_step"}
        for k in train:
            dims[k] = ["step"]
        groups = {
            "posterior": {"mu": np.asarray(mu)[None], "Sigma": np.asarray(sigma)[None]},
            "niw_posterior": {"m0": np.asarray(q.mean), "l0": np.asarray(q.kappa), "Gamma0": np.asarray(q.scale),
                              "n0": np.asarray(q.dof)},
            "training": train,
        }
        return to_datatree(groups, dims=dims, attrs={"method": "NIW-Meta", "covariance": self.config.covariance,
                                                     "local_approximation": self.config.local_approximation,
                                                     "num_episodes_seen": int(self.num_episodes_seen)})


_batched_local_posterior = jax.jit(jax.vmap(local_posterior, in_axes=(0, None)))
_batched_episode_loss = jax.jit(jax.vmap(lambda qa, q: episode_loss(qa, q)[0], in_axes=(0, None)))


def _as_pair(data, name):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"`{name}` must be a pair (x, y) of arrays with a leading episode axis")
    return data[0], data[1]


def _vi_refine(key, model, q, local, x, y, num_steps, learning_rate, num_mc):
    """Reparameterised VI for the local posteriors (diagonal Gaussian q), started at the closed form."""
    if local.precision.ndim == local.mean.ndim:  # batched diagonal precisions (B, d)
        var0 = 1.0 / local.precision
    else:
        var0 = jax.vmap(lambda P: jnp.diag(jnp.linalg.inv(P)))(local.precision)
    opt = optax.adam(learning_rate)

    def neg_elbo(params, k, xe, ye):
        mean, log_std = params
        eps = jax.random.normal(k, (num_mc, mean.shape[0]), mean.dtype)
        th = mean + jnp.exp(log_std) * eps
        ell = jnp.mean(jax.vmap(lambda t: model.log_likelihood(t, xe, ye))(th))
        prec = jnp.exp(-2.0 * log_std)
        kl = expected_kl_local(LocalPosterior(mean, prec), q)
        return -(ell - kl)

    def one(k, mean, var, xe, ye):
        params = (mean, 0.5 * jnp.log(var))
        state = opt.init(params)

        def body(carry, kk):
            p, s = carry
            g = jax.grad(neg_elbo)(p, kk, xe, ye)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, state), jax.random.split(k, num_steps))
        return LocalPosterior(p[0], jnp.exp(-2.0 * p[1]))

    keys = jax.random.split(key, x.shape[0])
    return jax.jit(jax.vmap(one))(keys, local.mean, var0, x, y)


def _predict_core(model, k_draw, k_pred, local, qx, qy, num_samples):
    """θ draws from the local posteriors, outputs, predictive draws and log predictive densities."""

    def draw(k, loc):
        eps = jax.random.normal(k, (num_samples, loc.mean.shape[0]), loc.mean.dtype)
        if loc.precision.ndim == 1:
            return loc.mean + eps / jnp.sqrt(loc.precision)
        chol = jnp.linalg.cholesky(loc.precision)  # Γ = L Lᵀ -> θ = m + L^{-T} ε
        return loc.mean + jax.scipy.linalg.solve_triangular(chol.T, eps.T, lower=False).T

    B = qx.shape[0]
    theta = jnp.swapaxes(jax.vmap(draw)(jax.random.split(k_draw, B), local), 0, 1)  # (S, B, d)
    outputs = None
    if model.predict_fn is not None:
        outputs = jax.vmap(jax.vmap(model.predict_fn, in_axes=(0, 0)), in_axes=(0, None))(theta, qx)
    y_samples = None
    if model.sample_fn is not None:
        keys = jax.random.split(k_pred, (num_samples, B))
        y_samples = jax.vmap(jax.vmap(model.sample_fn, in_axes=(0, 0, 0)), in_axes=(0, 0, None))(keys, theta, qx)
    lpd = None
    if qy is not None:
        ll = jax.vmap(jax.vmap(model.pointwise_log_likelihood, in_axes=(0, 0, 0)), in_axes=(0, None, None))(
            theta, qx, qy)
        lpd = jax.scipy.special.logsumexp(ll, axis=0) - math.log(num_samples)
    return theta, outputs, y_samples, lpd


@dataclass(frozen=True)
class NIWMeta:
    r"""NIW-Meta configuration; :meth:`fit` runs the episodic optimisation.

    Args:
        episode_model: an :class:`EpisodeModel` (likelihood of one episode as a function of flat θ).
        covariance: ``"diag"`` (diagonal Γ0, per-coordinate Gamma precisions) or ``"full"`` (Wishart).
        local_approximation: ``"sgld"`` (the paper's SGLD moments; diagonal curvature) or ``"laplace"``
            (Taylor expansion, exact for linear-Gaussian likelihoods).
        curvature: for ``"laplace"``: ``"hessian"`` (exact, dense) or ``"fisher"`` (empirical Fisher).
        num_inner_steps: Laplace: gradient-ascent steps before the expansion (0 = expand at the global
            mean).
        inner_step_size: the step size of those gradient steps (Laplace) or the step size η of the SGLD
            iterations (SGLD).
        num_burnin: SGLD iterations discarded.
        num_sgld_samples: SGLD iterations kept.
        sgld_temperature: SGLD noise temperature.
        curvature_min: lower clip of the curvature (default 1e-4 for SGLD, 0 for Laplace).
        curvature_max: upper clip of the curvature (default 1e6 for SGLD, inf for Laplace).
        max_grad_norm: clip the norm of the likelihood gradient in the inner SGLD / gradient steps (None: no clip).
        optimizer: an optax transformation for the global parameters (default ``optax.adam(1e-2)``).
        batch_size: episodes per step.
        num_steps: optimisation steps.
        dataset_size: number of training episodes N weighting ``KL(q(φ)||p(φ))/N``; default: the number of
            episodes given as arrays, ``None`` (no hyperprior term: type-II-ML-like) for generators.
        prior: hyperprior :class:`NIWPrior`; default weak: mean 0 (or ``init_mean``), kappa 1e-2,
            dof d + 1 (diag: 2), ``E[Σ^{-1}] = I / prior_std**2``.
        init_mean: initial mean of q(φ) (default: the episode model's ``init_theta``).
        init_prior_std: initial ``E[Σ^{-1}] = I / init_prior_std**2`` of q(φ).
        init_kappa: initial κ of q(φ).
        init_dof: initial degrees of freedom of q(φ).
        init_scale: overrides the initial Γ0 given by ``init_prior_std``.
        chunk_size: steps per jitted ``lax.scan`` chunk.
        progress_bar: a tqdm bar between chunks.
    """

    episode_model: EpisodeModel
    covariance: str = "diag"
    local_approximation: str = "sgld"
    curvature: str = "hessian"
    num_inner_steps: int = 0
    inner_step_size: float = 1e-3
    num_burnin: int = 2
    num_sgld_samples: int = 3
    sgld_temperature: float = 1.0
    curvature_min: float | None = None
    curvature_max: float | None = None
    max_grad_norm: float | None = None
    optimizer: Any = None
    batch_size: int = 16
    num_steps: int = 1000
    dataset_size: float | None = None
    prior: NIWPrior | None = None
    prior_std: float = 1.0
    init_mean: Any = None
    init_prior_std: float = 1.0
    init_kappa: float = 1.0
    init_dof: float | None = None
    init_scale: Any = None
    chunk_size: int = 100
    progress_bar: bool = False

    def __post_init__(self):
        if not isinstance(self.episode_model, EpisodeModel):
            raise ConfigurationError("`episode_model` must be a bayeskit.meta.EpisodeModel "
                                     "(EpisodeModel.from_network / from_numpyro / EpisodeModel(...))")
        check_choice(self.covariance, "covariance", ("diag", "full"))
        check_choice(self.local_approximation, "local_approximation", ("sgld", "laplace"))
        check_choice(self.curvature, "curvature", ("hessian", "fisher"))
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.num_steps, "num_steps")
        check_positive_int(self.chunk_size, "chunk_size")
        check_positive_int(self.num_inner_steps, "num_inner_steps", minimum=0)
        check_positive_int(self.num_burnin, "num_burnin", minimum=0)
        check_positive_int(self.num_sgld_samples, "num_sgld_samples", minimum=2)
        for name in ("inner_step_size", "init_prior_std", "init_kappa", "prior_std"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0) and not (name == "inner_step_size" and v == 0):
                raise ConfigurationError(f"`{name}` must be positive, got {v}")
        if self.dataset_size is not None and not self.dataset_size > 0:
            raise ConfigurationError(f"`dataset_size` must be positive, got {self.dataset_size}")
        d = self.episode_model.dim
        if self.init_dof is not None:
            low = 0.0 if self.covariance == "diag" else d - 1.0
            if not self.init_dof > low:
                raise ConfigurationError(f"`init_dof` must exceed {low} for covariance={self.covariance!r}, got {self.init_dof}")
        if self.init_scale is not None:
            arr = np.asarray(self.init_scale, dtype=float)
            want = (d,) if self.covariance == "diag" else (d, d)
            if arr.shape != want:
                raise ConfigurationError(f"`init_scale` must have shape {want} for covariance={self.covariance!r}, got {arr.shape}")
            _check_pd(arr, "init_scale")
        if self.init_mean is not None and np.shape(self.init_mean) != (d,):
            raise ConfigurationError(f"`init_mean` must have shape ({d},), got {np.shape(self.init_mean)}")
        if self.prior is not None:
            p = self.prior
            want = (d,) if self.covariance == "diag" else (d, d)
            if np.shape(p.scale) != want:
                raise ConfigurationError(f"`prior.scale` must have shape {want}, got {np.shape(p.scale)}")
            _check_pd(p.scale, "prior.scale")
            if np.shape(p.mean) != (d,):
                raise ConfigurationError(f"`prior.mean` must have shape ({d},), got {np.shape(p.mean)}")
            if not float(p.kappa) > 0:
                raise ConfigurationError(f"`prior.kappa` must be positive, got {p.kappa}")
            low = 0.0 if self.covariance == "diag" else d - 1.0
            if not float(p.dof) > low:
                raise ConfigurationError(f"`prior.dof` must exceed {low}, got {p.dof}")

    # ---- pieces
    def _prior(self) -> NIWPrior:
        d = self.episode_model.dim
        if self.prior is not None:
            return NIWPrior(*(jnp.asarray(v) for v in self.prior))
        dof = 2.0 if self.covariance == "diag" else d + 1.0
        scale = jnp.ones(d) / (dof * self.prior_std**2)
        if self.covariance == "full":
            scale = jnp.diag(scale)
        mean = jnp.asarray(self.init_mean) if self.init_mean is not None else jnp.zeros(d)
        return NIWPrior(mean, jnp.asarray(1e-2), scale, jnp.asarray(dof))

    def init_params(self) -> NIWParams:
        """Initial unconstrained parameters of q(φ)."""
        d = self.episode_model.dim
        mean = jnp.asarray(self.init_mean if self.init_mean is not None else self.episode_model.init_theta)
        mean = mean.astype(jnp.result_type(float))
        dof = self.init_dof if self.init_dof is not None else (2.0 if self.covariance == "diag" else d + 1.0)
        if self.init_scale is not None:
            scale = jnp.asarray(self.init_scale, dtype=mean.dtype)
        else:
            scale = jnp.ones(d, dtype=mean.dtype) / (dof * self.init_prior_std**2)
            if self.covariance == "full":
                scale = jnp.diag(scale)
        return unconstrain(NIWPosterior(mean, jnp.asarray(self.init_kappa, mean.dtype), scale,
                                        jnp.asarray(dof, mean.dtype)))

    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else optax.adam(1e-2)

    def _build(self, dataset_size):
        sgld = self.local_approximation == "sgld"
        cmin = self.curvature_min if self.curvature_min is not None else (1e-4 if sgld else 0.0)
        cmax = self.curvature_max if self.curvature_max is not None else (1e6 if sgld else float("inf"))
        return build_step(self.episode_model, optimizer=self._optimizer(), covariance=self.covariance,
                          local_approximation=self.local_approximation, curvature=self.curvature,
                          num_inner_steps=self.num_inner_steps, inner_step_size=self.inner_step_size,
                          num_burnin=self.num_burnin, num_sgld_samples=self.num_sgld_samples,
                          sgld_temperature=self.sgld_temperature, curvature_min=cmin, curvature_max=cmax,
                          prior=self._prior() if dataset_size is not None else None, dataset_size=dataset_size,
                          max_grad_norm=self.max_grad_norm)

    def _jitted(self, name: str):
        """Jitted helpers, compiled once per configuration (cached on the instance)."""
        cache = self.__dict__.setdefault("_jit_cache", {})
        if name not in cache:
            if name == "quads":
                _, quad_fn = self._build(dataset_size=None)
                cache[name] = jax.jit(jax.vmap(quad_fn, in_axes=(0, None, 0, 0)))
            elif name == "predict":
                model = self.episode_model
                cache[name] = jax.jit(lambda kd, kp, loc, qx, qy, n: _predict_core(model, kd, kp, loc, qx, qy, n),
                                      static_argnums=5)
        return cache[name]

    def init(self, params: NIWParams | None = None) -> TrainState:
        """Initial :class:`TrainState`."""
        params = self.init_params() if params is None else params
        return TrainState(params, self._optimizer().init(params), jnp.zeros((), jnp.int32))

    # ---- driver
    def fit(self, key, episodes, *, num_steps: int | None = None, init: "NIWMetaResult | TrainState | None" = None
            ) -> NIWMetaResult:
        """Learn q(φ) from episodes by one-time episodic optimisation.

        Args:
            key: a ``jax.random`` key.
            episodes: one of
                * ``(x, y)`` arrays with leading axes ``(num_episodes, num_points)``: minibatches of
                  ``batch_size`` episodes drawn uniformly each step;
                * a JAX-traceable generator ``sample(key, batch_size) -> (x, y)`` (an endless stream; it is
                  called inside the jitted loop);
                * a Python iterator yielding ``(x, y)`` minibatches (host-side data; one jitted step each).
            num_steps: overrides the configured ``num_steps``.
            init: a previous result or :class:`TrainState` to continue from (streaming in several calls).
        """
        key = check_key(key)
        num_steps = check_positive_int(self.num_steps if num_steps is None else num_steps, "num_steps")
        mode, data = self._episode_source(episodes)
        dataset_size = self.dataset_size
        if dataset_size is None and mode == "arrays":
            dataset_size = float(data[0].shape[0])
        step_fn, _ = self._build(dataset_size)
        if isinstance(init, NIWMetaResult):
            state = init.state
            seen0 = init.num_episodes_seen
        elif isinstance(init, TrainState):
            state, seen0 = init, 0
        elif init is None:
            state, seen0 = self.init(), 0
        else:
            raise ConfigurationError("`init` must be None, a NIWMetaResult or a TrainState")
        B = self.batch_size

        if mode == "iterator":
            jstep = jax.jit(step_fn)
            infos, timings = [], []
            it = iter(data)
            for i in range(num_steps):
                try:
                    batch = next(it)
                except StopIteration:
                    if i == 0:
                        raise DataError("`episodes` iterator yielded no minibatch")
                    break
                bx, by = _batch_episodes(*_as_pair(batch, "episodes minibatch"), name="episodes minibatch")
                t0 = time.perf_counter()
                state, info = jstep(jax.random.fold_in(key, i), state, (bx, by))
                jax.block_until_ready(info.elbo)
                timings.append(time.perf_counter() - t0)
                infos.append(info)
            info = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *infos)
            seconds = np.asarray(timings)
            steps_done = len(infos)
        else:
            if mode == "arrays":
                X, Y = data
                n = X.shape[0]

                def get_batch(k):
                    if B >= n:
                        return X, Y
                    idx = jax.random.choice(k, n, (B,), replace=False)
                    return X[idx], Y[idx]
            else:
                sampler = data

                def get_batch(k):
                    return sampler(k, B)

            def body(st, k):
                kb, ks = jax.random.split(k)
                return step_fn(ks, st, get_batch(kb))

            @jax.jit
            def run_chunk(st, keys):
                return jax.lax.scan(body, st, keys)

            chunk = min(self.chunk_size, num_steps)
            bar = None
            if self.progress_bar:
                from tqdm.auto import tqdm

                bar = tqdm(total=num_steps, desc="NIW-Meta")
            infos, seconds = [], []
            done = 0
            while done < num_steps:
                size = min(chunk, num_steps - done)
                keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(done, done + size))
                t0 = time.perf_counter()
                state, info = run_chunk(state, keys)
                jax.block_until_ready(info.elbo)
                seconds.extend([(time.perf_counter() - t0) / size] * size)
                infos.append(info)
                done += size
                if bar is not None:
                    bar.update(size)
                    bar.set_postfix(elbo=float(info.elbo[-1]))
            if bar is not None:
                bar.close()
            info = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *infos)
            seconds = np.asarray(seconds)
            steps_done = num_steps
        if not bool(jnp.all(jnp.isfinite(info.elbo))):
            bad = int(np.argmax(~np.isfinite(np.asarray(info.elbo))))
            raise ConvergenceError(f"the ELBO became non-finite at step {bad}: lower the optimizer's learning rate "
                                   "or `inner_step_size`, or raise `curvature_min`")
        history = {k: np.asarray(v) for k, v in info._asdict().items()}
        history["seconds_per_step"] = seconds
        return NIWMetaResult(posterior=constrain(state.params), params=state.params, state=state, history=history,
                             config=self, num_episodes_seen=seen0 + steps_done * B)

    def _episode_source(self, episodes):
        if isinstance(episodes, (tuple, list)):
            x, y = _batch_episodes(*_as_pair(episodes, "episodes"))
            return "arrays", (x, y)
        if callable(episodes):
            return "generator", episodes
        if isinstance(episodes, Iterator) or hasattr(episodes, "__iter__"):
            return "iterator", episodes
        raise DataError("`episodes` must be a pair (x, y) of arrays, a generator function sample(key, batch_size) "
                        "-> (x, y), or an iterator of (x, y) minibatches")
