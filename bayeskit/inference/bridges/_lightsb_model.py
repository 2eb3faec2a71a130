r"""Light Schrödinger Bridge (Korotin, Gushchin & Burnaev, ICLR 2024).

The entropic OT / Schrödinger bridge between :math:`p_0` and :math:`p_1` with Brownian reference
:math:`dX_t = \sqrt{\varepsilon}\, dW_t` on :math:`[0, 1]` has conditional plan
:math:`\pi(y \mid x) \propto \exp(\langle x, y\rangle / \varepsilon)\, v(y)` for an *adjusted potential*
:math:`v`. LightSB parameterises :math:`v` as an unnormalised Gaussian mixture

.. math::
    v_\theta(y) = \sum_{k=1}^K \alpha_k\, \mathcal N(y \mid r_k, \varepsilon S_k),

with :math:`S_k` diagonal or full (:math:`S_k = U_k \operatorname{diag}(s_k) U_k^\top`). Everything is then
in closed form:

* normalising constant of the plan (its log is :func:`log_evidence`)
  :math:`C_\theta(x) = \sum_k \alpha_k \exp\big((x^\top S_k x + 2 r_k^\top x) / (2\varepsilon)\big)`;
* conditional plan :math:`\pi_\theta(y \mid x) = \sum_k w_k(x)\, \mathcal N(y \mid r_k + S_k x, \varepsilon S_k)`,
  :math:`w_k(x) \propto \alpha_k \exp\big((x^\top S_k x + 2 r_k^\top x) / (2\varepsilon)\big)`;
* training loss (an upper bound of KL to the true plan, up to a constant)
  :math:`\mathcal L(\theta) = \mathbb E_{x\sim p_0} \log C_\theta(x) - \mathbb E_{y \sim p_1} \log v_\theta(y)`;
* SB drift of :math:`dX_t = g(X_t, t)\,dt + \sqrt{\varepsilon}\, dW_t`: with :math:`M_k(t) = t S_k + (1-t) I`,

  .. math::
      g(x, t) = \sum_k \tilde w_k(x, t)\, M_k(t)^{-1}\big(r_k + (S_k - I) x\big),\qquad
      \log \tilde w_k(x,t) = \log\alpha_k - \tfrac12 \log\det M_k
        + \tfrac{1}{2\varepsilon}\big[x^\top M_k^{-1}(S_k - I)x + 2 r_k^\top M_k^{-1} x - t\, r_k^\top M_k^{-1} r_k\big] + c(x,t),

  which is :math:`\varepsilon \nabla_x \log \int \mathcal N(y \mid x, (1-t)\varepsilon I)\, e^{\|y\|^2/2\varepsilon} v_\theta(y)\, dy`
  written so that it stays finite at :math:`t = 0`.

This module holds the closed forms on a :class:`LightSBParams` pytree (``bk.bridges.kernels``); the training
loop is in ``_lightsb_fit`` and the fitted result :class:`~bayeskit.bridges.LightSB` in ``_lightsb``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import ConfigurationError
from bayeskit.inference.bridges._gaussian import gaussian_bridge

__all__ = [
    "LightSBParams",
    "check_epsilon",
    "init_params",
    "gaussian_init_params",
    "covariances",
    "log_potential",
    "log_evidence",
    "loss",
    "conditional_components",
    "conditional_log_prob",
    "conditional_sample",
    "drift",
    "euler_maruyama",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


class LightSBParams(NamedTuple):
    """LightSB parameters (a pytree).

    Attributes:
        log_alpha: (K,) log mixture weights :math:`\\log\\alpha_k` (unnormalised).
        r: (K, D) component means :math:`r_k`.
        log_s: (K, D) log eigenvalues (diagonal case: log diagonal) of :math:`S_k`.
        rotation: (K, D, D) :math:`U_k` with :math:`S_k = U_k \\operatorname{diag}(e^{\\text{log\\_s}}) U_k^\\top`
            (full case), or ``None`` for diagonal covariances.
    """

    log_alpha: jax.Array
    r: jax.Array
    log_s: jax.Array
    rotation: Any = None


def check_epsilon(epsilon) -> float:
    """``epsilon`` as a positive float, or a :class:`~bayeskit.errors.ConfigurationError`."""
    try:
        e = float(epsilon)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"`epsilon` must be a positive number, got {epsilon!r}") from exc
    if not (np.isfinite(e) and e > 0):
        raise ConfigurationError(f"`epsilon` must be a positive number (the reference noise variance), got {epsilon}")
    return e


def init_params(key, target_samples, num_components: int, *, covariance: str = "diag",
                init_scale: float = 0.1) -> LightSBParams:
    """Initialise as the reference code does: :math:`r_k` at random target samples, :math:`S_k = 0.1 I`,
    equal weights, :math:`U_k = I`."""
    target_samples = jnp.asarray(target_samples)
    n, d = target_samples.shape
    idx = jax.random.choice(key, n, (num_components,), replace=num_components > n)
    dtype = target_samples.dtype
    log_alpha = jnp.full((num_components,), -jnp.log(num_components), dtype)
    log_s = jnp.full((num_components, d), jnp.log(init_scale), dtype)
    rotation = None
    if covariance == "full":
        rotation = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (num_components, d, d))
    return LightSBParams(log_alpha, target_samples[idx], log_s, rotation)


def gaussian_init_params(key, source_samples, target_samples, num_components: int, epsilon, *,
                         covariance: str = "full", jitter: float = 0.1) -> LightSBParams:
    """Start at the closed-form Gaussian SB between the samples' moment-matched Gaussians.

    With one full component this is the *exact* minimiser of the full-sample LightSB loss: for :math:`K = 1`,
    :math:`\\log C_\\theta(x)` is quadratic in :math:`x` and :math:`\\log v_\\theta(y)` a Gaussian log-density, so
    the loss depends on the samples only through their means and covariances, and the Gaussian SB between the
    moment-matched Gaussians minimises it. With :math:`K > 1` the components start at that solution with
    :math:`r_k` moved by ``jitter`` times (a random target sample minus the target mean) to break the symmetry.
    The diagonal case keeps the diagonal of :math:`S`.
    """
    x0 = np.asarray(source_samples, float)
    x1 = np.asarray(target_samples, float)
    m0, m1 = x0.mean(0), x1.mean(0)
    # the loss is an average over the samples: moments with 1/N (bias=True)
    c0 = np.atleast_2d(np.cov(x0, rowvar=False, bias=True))
    c1 = np.atleast_2d(np.cov(x1, rowvar=False, bias=True))
    gb = gaussian_bridge(m0, c0, m1, c1, float(epsilon))
    slope = np.linalg.solve(c0, gb.cross_cov).T  # E[y|x] = m1 + B (x - m0); B = Var(y|x) / eps, symmetric
    slope = 0.5 * (slope + slope.T)
    r = m1 - slope @ m0
    idx = np.asarray(jax.random.choice(key, x1.shape[0], (num_components,), replace=num_components > x1.shape[0]))
    rs = r[None] + (jitter if num_components > 1 else 0.0) * (x1[idx] - m1)
    dtype = jnp.asarray(target_samples).dtype
    log_alpha = jnp.full((num_components,), -np.log(num_components), dtype)
    if covariance == "diag":
        log_s = np.log(np.clip(np.diag(slope), 1e-12, None))
        return LightSBParams(log_alpha, jnp.asarray(rs, dtype), jnp.asarray(np.tile(log_s, (num_components, 1)), dtype))
    w, u = np.linalg.eigh(slope)
    log_s = np.log(np.clip(w, 1e-12, None))
    return LightSBParams(log_alpha, jnp.asarray(rs, dtype), jnp.asarray(np.tile(log_s, (num_components, 1)), dtype),
                         jnp.asarray(np.tile(u, (num_components, 1, 1)), dtype))


def covariances(params: LightSBParams) -> jax.Array:
    """The matrices :math:`S_k`, shape (K, D, D)."""
    s = jnp.exp(params.log_s)
    if params.rotation is None:
        return jax.vmap(jnp.diag)(s)
    u = params.rotation
    return jnp.einsum("kij,kj,klj->kil", u, s, u)


def _quad_terms(params: LightSBParams, x):
    """x^T S_k x and S_k x for x of shape (..., D): returns (..., K) and (..., K, D)."""
    s = jnp.exp(params.log_s)
    if params.rotation is None:
        sx = s * x[..., None, :]
    else:
        u = params.rotation
        ux = jnp.einsum("kji,...j->...ki", u, x)  # U_k^T x
        sx = jnp.einsum("kij,...kj->...ki", u, s * ux)
    return jnp.sum(x[..., None, :] * sx, -1), sx


def _log_weights_unnorm(params: LightSBParams, x, epsilon):
    xsx, sx = _quad_terms(params, x)
    return params.log_alpha + (xsx + 2.0 * jnp.einsum("kd,...d->...k", params.r, x)) / (2.0 * epsilon), sx


def log_evidence(params: LightSBParams, x, epsilon) -> jax.Array:
    """:math:`\\log C_\\theta(x)` for x of shape (..., D): the log normalising constant (log evidence) of the
    conditional plan :math:`\\pi_\\theta(y \\mid x) \\propto e^{\\langle x, y\\rangle/\\varepsilon} v_\\theta(y)`
    (called ``log_normaliser`` before this release)."""
    lw, _ = _log_weights_unnorm(params, x, epsilon)
    return jax.scipy.special.logsumexp(lw, axis=-1)


def _component_logpdf(params: LightSBParams, y, mean, epsilon):
    """log N(y | mean_k, eps S_k) for y (..., D), mean (..., K, D) -> (..., K)."""
    d = y.shape[-1]
    s = jnp.exp(params.log_s)
    diff = y[..., None, :] - mean
    if params.rotation is None:
        maha = jnp.sum(diff**2 / s, -1)
        logdet = jnp.sum(params.log_s, -1)
    else:
        cov = covariances(params)
        chol = jnp.linalg.cholesky(cov)
        # one triangular solve per component with all points as right-hand sides (K solves, not N x K)
        k = chol.shape[0]
        rhs = jnp.moveaxis(diff.reshape(-1, k, d), 0, -1)  # (K, D, M)
        sol = jax.scipy.linalg.solve_triangular(chol, rhs, lower=True)
        maha = jnp.sum(sol**2, -2).T.reshape(diff.shape[:-1])
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
    return -0.5 * (maha / epsilon + d * (_LOG_2PI + jnp.log(epsilon)) + logdet)


def log_potential(params: LightSBParams, y, epsilon) -> jax.Array:
    """:math:`\\log v_\\theta(y)` for y of shape (..., D)."""
    mean = jnp.broadcast_to(params.r, y.shape[:-1] + params.r.shape)
    return jax.scipy.special.logsumexp(params.log_alpha + _component_logpdf(params, y, mean, epsilon), axis=-1)


def loss(params: LightSBParams, x0, x1, epsilon) -> jax.Array:
    """LightSB objective :math:`\\mathbb E_{p_0}\\log C_\\theta(x) - \\mathbb E_{p_1}\\log v_\\theta(y)` on
    minibatches ``x0`` (B0, D), ``x1`` (B1, D)."""
    return jnp.mean(log_evidence(params, x0, epsilon)) - jnp.mean(log_potential(params, x1, epsilon))


def conditional_components(params: LightSBParams, x, epsilon):
    """Mixture components of :math:`\\pi_\\theta(\\cdot \\mid x)` for x of shape (..., D).

    Returns ``(log_weights (..., K) normalised, means (..., K, D), covariances (K, D, D))`` with
    means :math:`r_k + S_k x` and covariances :math:`\\varepsilon S_k`.
    """
    lw, sx = _log_weights_unnorm(params, x, epsilon)
    lw = lw - jax.scipy.special.logsumexp(lw, axis=-1, keepdims=True)
    return lw, params.r + sx, epsilon * covariances(params)


def conditional_log_prob(params: LightSBParams, x, y, epsilon) -> jax.Array:
    """:math:`\\log \\pi_\\theta(y \\mid x)` for x, y of shape (..., D) (broadcast together)."""
    x, y = jnp.broadcast_arrays(x, y)
    lw, means, _ = conditional_components(params, x, epsilon)
    return jax.scipy.special.logsumexp(lw + _component_logpdf(params, y, means, epsilon), axis=-1)


def conditional_sample(key, params: LightSBParams, x, epsilon) -> jax.Array:
    """One draw :math:`y \\sim \\pi_\\theta(\\cdot \\mid x)` per row of x (N, D): pick component
    :math:`k \\sim w(x)`, then :math:`y = r_k + S_k x + \\sqrt{\\varepsilon} S_k^{1/2} \\xi`."""
    key_k, key_z = jax.random.split(key)
    lw, means, _ = conditional_components(params, x, epsilon)
    k = jax.random.categorical(key_k, lw, axis=-1)
    z = jax.random.normal(key_z, x.shape, dtype=means.dtype)
    mean = jnp.take_along_axis(means, k[..., None, None], axis=-2)[..., 0, :]
    half = jnp.exp(0.5 * params.log_s[k])
    if params.rotation is None:
        noise = half * z
    else:
        u = params.rotation[k]
        noise = jnp.einsum("...ij,...j->...i", u, half * z)
    return mean + jnp.sqrt(epsilon) * noise


def drift(params: LightSBParams, x, t, epsilon) -> jax.Array:
    """Closed-form SB drift :math:`g(x, t)` (module docstring) for x of shape (..., D), t scalar in [0, 1]."""
    d = x.shape[-1]
    t = jnp.asarray(t, x.dtype)
    s = jnp.exp(params.log_s)
    if params.rotation is None:
        m = t * s + (1.0 - t)  # (K, D) diagonal of M_k
        minv = 1.0 / m
        xs = x[..., None, :]
        gk = minv * (params.r + (s - 1.0) * xs)  # (..., K, D)
        quad = jnp.sum(xs * minv * (s - 1.0) * xs, -1)
        lin = jnp.sum(params.r * minv * xs, -1)
        const = t * jnp.sum(params.r**2 * minv, -1)
        logdet = jnp.sum(jnp.log(m), -1)
    else:
        smat = covariances(params)
        eye = jnp.eye(d, dtype=x.dtype)
        mmat = t * smat + (1.0 - t) * eye
        minv = jnp.linalg.inv(mmat)
        a = jnp.einsum("kij,kjl->kil", minv, smat - eye)  # M^{-1}(S - I)
        minv_r = jnp.einsum("kij,kj->ki", minv, params.r)
        ax = jnp.einsum("kij,...j->...ki", a, x)
        gk = minv_r + ax
        quad = jnp.sum(x[..., None, :] * ax, -1)
        lin = jnp.einsum("ki,...i->...k", minv_r, x)  # r^T M^{-T} x = (M^{-1} r)^T x since M symmetric
        const = t * jnp.sum(params.r * minv_r, -1)
        logdet = jnp.linalg.slogdet(mmat)[1]
    lw = params.log_alpha - 0.5 * logdet + (quad + 2.0 * lin - const) / (2.0 * epsilon)
    w = jax.nn.softmax(lw, axis=-1)
    return jnp.sum(w[..., None] * gk, axis=-2)


def euler_maruyama(key, drift_fn, x0, *, t0: float = 0.0, t1: float = 1.0, num_steps: int = 100,
                   diffusion: float = 1.0):
    """Jitted-friendly Euler–Maruyama for :math:`dX = b(X, t) dt + \\sigma dW` on a uniform grid.

    ``drift_fn(x, t)`` maps (N, D) and a scalar time to (N, D). Returns the path (num_steps + 1, N, D).
    """
    dt = (t1 - t0) / num_steps
    keys = jax.random.split(key, num_steps)
    times = t0 + dt * jnp.arange(num_steps)

    def body(x, inp):
        k, t = inp
        x_new = x + drift_fn(x, t) * dt + diffusion * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype)
        return x_new, x_new

    _, path = jax.lax.scan(body, x0, (keys, times))
    return jnp.concatenate([x0[None], path], axis=0)
