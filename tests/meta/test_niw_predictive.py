"""The linearised Student-t predictive against the conjugate Normal-Gamma closed form (linear-Gaussian, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import bayeskit as bk
from bayeskit.errors import ConfigurationError

M = bk.meta
SIGMA = 0.5
D = 3


def gaussian_linear_model():
    return M.EpisodeModel(pointwise_log_likelihood=lambda th, x, y: jax.scipy.stats.norm.logpdf(y, x @ th, SIGMA),
                          dim=D, predict_fn=lambda th, x: x @ th, noise_scale=SIGMA,
                          sample_fn=lambda k, th, x: x @ th + SIGMA * jax.random.normal(k, (x.shape[0],)))


def episodes(seed, n, k):
    rng = np.random.default_rng(seed)
    theta = 1.0 + 0.7 * rng.normal(size=(n, D))
    x = rng.normal(size=(n, k, D))
    return jnp.asarray(x), jnp.asarray(np.einsum("nkd,nd->nk", x, theta) + SIGMA * rng.normal(size=(n, k)))


@pytest.fixture(scope="module", params=["diag", "full"])
def fitted(request):
    """A NIW-Meta result with a hand-set q(φ) (heavy tails: ν = 3.5), no training needed."""
    rng = np.random.default_rng(7)
    diagonal = request.param == "diag"
    if diagonal:
        scale, dof = rng.uniform(0.3, 2.0, size=D), D * 0.0 + 3.5
    else:
        B = rng.normal(size=(D, D))
        scale, dof = B @ B.T / D + 0.5 * np.eye(D), D - 1.0 + 3.5
    q = M.NIWPosterior(jnp.asarray(rng.normal(size=D)), jnp.asarray(1.7), jnp.asarray(scale), jnp.asarray(dof))
    cfg = M.NIWMeta(gaussian_linear_model(), covariance=request.param, local_approximation="laplace")
    return M.NIWMetaResult(posterior=q, params=M.unconstrain(q), state=None, history={}, config=cfg)


def normal_gamma_predictive(q, X, y, Xq):
    """Weight-space closed form: θ | λ ~ N(m0, S0/λ), y | θ, λ ~ N(Xθ, σ²/λ), λ ~ Gamma(ν/2, ν/2)."""
    mean0, kappa, scale, dof = (np.asarray(v, dtype=float) for v in q)
    Gamma0 = np.diag(scale) if scale.ndim == 1 else scale
    nu = dof if scale.ndim == 1 else dof - D + 1
    S0inv = Gamma0 * nu / (1.0 + 1.0 / kappa)
    VNinv = S0inv + X.T @ X / SIGMA**2
    mN = np.linalg.solve(VNinv, S0inv @ mean0 + X.T @ y / SIGMA**2)
    aN = nu / 2 + len(y) / 2
    bN = nu / 2 + 0.5 * (y @ y / SIGMA**2 + mean0 @ S0inv @ mean0 - mN @ VNinv @ mN)
    var = SIGMA**2 + np.einsum("qd,de,qe->q", Xq, np.linalg.inv(VNinv), Xq)
    return Xq @ mN, np.sqrt(bN / aN * var), 2 * aN


def test_linearized_predictive_equals_normal_gamma_closed_form(fitted):
    sx, sy = episodes(1, 3, 4)
    qx, qy = episodes(2, 3, 6)
    pred = fitted.predict(jax.random.key(1), (sx, sy), (qx, qy), num_samples=4000)  # "auto": Gaussian model
    assert pred.predictive_scale is not None
    for i in range(3):
        loc, scale, df = normal_gamma_predictive(fitted.posterior, np.asarray(sx[i]), np.asarray(sy[i]),
                                                 np.asarray(qx[i]))
        np.testing.assert_allclose(pred.predictive_mean[i], loc, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(pred.predictive_scale[i], scale, rtol=1e-10)
        np.testing.assert_allclose(pred.predictive_df[i], df, rtol=1e-12)
        np.testing.assert_allclose(pred.log_predictive_density[i],
                                   scipy.stats.t.logpdf(np.asarray(qy[i]), df, loc, scale), rtol=1e-10)
    # the exact draws: coverage of the analytic 90% interval is binomial(S, 0.9) within 4 SE
    lo, hi = pred.interval(0.9)
    y = np.asarray(pred.y_samples)
    inside = ((y >= lo) & (y <= hi)).mean(0)  # (3, 6): fraction of 4000 draws, each independent
    assert np.all(np.abs(inside - 0.9) < 4 * np.sqrt(0.9 * 0.1 / y.shape[0]))
    # draws of θ: mean of the Normal-Gamma posterior within 4 SE (θ's marginal is Student-t, finite variance)
    th = np.asarray(pred.theta)
    mean_lin = np.asarray(pred.outputs).mean(0)
    se = np.asarray(pred.outputs).std(0) / np.sqrt(th.shape[0])
    assert np.all(np.abs(mean_lin - np.asarray(pred.predictive_mean)) < 4 * se)


def test_linearized_needs_gaussian_likelihood(fitted):
    em = fitted.config.episode_model.replace(noise_scale=None)
    cfg = M.NIWMeta(em, covariance=fitted.config.covariance, local_approximation="laplace", num_iterations=1)
    res = M.NIWMetaResult(fitted.posterior, fitted.params, fitted.state, {}, cfg)
    sx, sy = episodes(1, 2, 4)
    with pytest.raises(ConfigurationError, match="Gaussian likelihood"):
        res.predict(jax.random.key(0), (sx, sy), sx, method="linearized")
    pred = res.predict(jax.random.key(0), (sx, sy), sx, num_samples=8)  # "auto" falls back to Monte Carlo
    assert pred.predictive_scale is None and pred.mean.shape == (2, 4)
