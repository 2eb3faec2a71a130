r"""Linear-Gaussian state-space model and its exact Kalman filter / RTS smoother.

.. math::
    X_0 \sim \mathcal N(m_0, P_0), \quad X_t = A X_{t-1} + \mathcal N(0, Q), \quad
    Y_t = H X_t + \mathcal N(0, R).

Parameters are a dict with keys ``A (d,d), Q (d,d), H (p,d), R (p,p), m0 (d,), P0 (d,d)``. The
Kalman filter and the Rauch–Tung–Striebel smoother (with lag-one cross-covariances) are exact and
differentiable (``jax.grad`` of :func:`kalman_filter`'s log-likelihood is the exact score): they are
the ground truth against which the particle methods are tested, in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from bayeskit.model.ssm import StateSpaceModel

__all__ = ["ssm", "example_params", "KalmanFilterResult", "kalman_filter", "rts_smoother", "SmootherResult"]


def _initial(p):
    return dist.MultivariateNormal(p["m0"], p["P0"])


def _transition(p, x_prev, t):
    return dist.MultivariateNormal(x_prev @ p["A"].T, p["Q"])


def _observation(p, x, t):
    return dist.MultivariateNormal(x @ p["H"].T, p["R"])


#: The linear-Gaussian model as a (vectorized) StateSpaceModel; states have shape (d,), observations (p,).
ssm = StateSpaceModel(_initial, _transition, _observation, vectorized=True)


def example_params(state_dim: int = 1, obs_dim: int | None = None, *, rho: float = 0.9, sigma_x: float = 1.0,
                   sigma_y: float = 0.5, dtype=None) -> dict:
    """A stable example: ``A = rho * I`` (with a small rotation when d > 1), ``H`` ones-ish, diagonal noise."""
    obs_dim = state_dim if obs_dim is None else obs_dim
    dtype = dtype or jnp.result_type(float)
    A = rho * jnp.eye(state_dim, dtype=dtype)
    if state_dim > 1:
        A = A + 0.05 * (jnp.eye(state_dim, k=1) - jnp.eye(state_dim, k=-1))
    H = jnp.eye(obs_dim, state_dim, dtype=dtype) + 0.2 * jnp.ones((obs_dim, state_dim), dtype) * (state_dim > 1)
    return {
        "A": A,
        "Q": sigma_x**2 * jnp.eye(state_dim, dtype=dtype),
        "H": H,
        "R": sigma_y**2 * jnp.eye(obs_dim, dtype=dtype),
        "m0": jnp.zeros(state_dim, dtype),
        "P0": sigma_x**2 * jnp.eye(state_dim, dtype=dtype),
    }


class KalmanFilterResult(NamedTuple):
    """``log_likelihood`` (), filtered ``means`` (T,d) / ``covs`` (T,d,d), predicted ones, and the
    per-step log-likelihood increments (T,)."""

    log_likelihood: jax.Array
    means: jax.Array
    covs: jax.Array
    predicted_means: jax.Array
    predicted_covs: jax.Array
    log_likelihood_increments: jax.Array


class SmootherResult(NamedTuple):
    """Smoothed ``means`` (T,d), ``covs`` (T,d,d), and ``cross_covs`` (T-1,d,d) with
    ``cross_covs[t] = Cov(X_t, X_{t+1} | y)``."""

    means: jax.Array
    covs: jax.Array
    cross_covs: jax.Array


def _update(m_pred, P_pred, y, H, R):
    S = H @ P_pred @ H.T + R
    S = 0.5 * (S + S.T)
    chol = jnp.linalg.cholesky(S)
    resid = y - H @ m_pred
    K = jax.scipy.linalg.cho_solve((chol, True), H @ P_pred).T
    m = m_pred + K @ resid
    P = P_pred - K @ S @ K.T
    P = 0.5 * (P + P.T)
    ll = jax.scipy.stats.multivariate_normal.logpdf(y, H @ m_pred, S)
    return m, P, ll


@jax.jit
def kalman_filter(params, ys) -> KalmanFilterResult:
    """Exact Kalman filter; ``ys`` of shape (T, p). Differentiable in ``params``; one compiled program per shape."""
    A, Q, H, R = params["A"], params["Q"], params["H"], params["R"]
    ys = jnp.asarray(ys)
    m0, P0, ll0 = _update(params["m0"], params["P0"], ys[0], H, R)

    def body(carry, y):
        m, P = carry
        m_pred = A @ m
        P_pred = A @ P @ A.T + Q
        m_new, P_new, ll = _update(m_pred, P_pred, y, H, R)
        return (m_new, P_new), (m_new, P_new, m_pred, P_pred, ll)

    _, (ms, Ps, mps, Pps, lls) = jax.lax.scan(body, (m0, P0), ys[1:])
    cat = lambda a, b: jnp.concatenate([a[None], b], axis=0)  # noqa: E731
    lls = cat(ll0, lls)
    return KalmanFilterResult(jnp.sum(lls), cat(m0, ms), cat(P0, Ps), cat(params["m0"], mps),
                              cat(params["P0"], Pps), lls)


@jax.jit
def rts_smoother(params, ys) -> SmootherResult:
    """Exact Rauch–Tung–Striebel smoother with lag-one cross-covariances; one compiled program per shape."""
    A = params["A"]
    kf = kalman_filter(params, ys)

    def body(carry, inp):
        ms_next, Ps_next = carry
        m, P, mp_next, Pp_next = inp
        G = jnp.linalg.solve(Pp_next.T, (P @ A.T).T).T  # P A^T Pp^{-1}
        ms = m + G @ (ms_next - mp_next)
        Ps = P + G @ (Ps_next - Pp_next) @ G.T
        cross = G @ Ps_next  # Cov(X_t, X_{t+1} | y)
        return (ms, 0.5 * (Ps + Ps.T)), (ms, 0.5 * (Ps + Ps.T), cross)

    inputs = (kf.means[:-1], kf.covs[:-1], kf.predicted_means[1:], kf.predicted_covs[1:])
    _, (ms, Ps, cross) = jax.lax.scan(body, (kf.means[-1], kf.covs[-1]), inputs, reverse=True)
    means = jnp.concatenate([ms, kf.means[-1:]], axis=0)
    covs = jnp.concatenate([Ps, kf.covs[-1:]], axis=0)
    return SmootherResult(means, covs, cross)
