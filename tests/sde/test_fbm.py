"""Markov approximation of fBM: closed forms against independent quadrature, exact variances, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special

import bayeskit as bk
from bayeskit.errors import ConfigurationError, DataError


# c_H^2 quoted in the paper / PAPERS.md for H = 0.1, 0.2, 0.3, 0.5, 0.7, 0.8
PAPER_CH2 = {0.1: 3.52, 0.2: 1.92, 0.3: 1.38, 0.5: 1.00, 0.7: 0.995, 0.8: 1.19}


def test_mvn_constant_matches_paper_and_quadrature():
    for h, c in PAPER_CH2.items():
        assert abs(float(bk.sde.mvn_constant(h)) - c) < 0.006
        # independent: Var B_H(1) = Gamma(H+1/2)^-2 [ int_0^inf ((1+s)^{H-1/2} - s^{H-1/2})^2 ds + 1/(2H) ]
        a = h - 0.5
        integral, _ = scipy.integrate.quad(lambda s: ((1 + s) ** a - s**a) ** 2, 0, np.inf, limit=400)
        ref = (integral + 1 / (2 * h)) / scipy.special.gamma(h + 0.5) ** 2
        np.testing.assert_allclose(float(bk.sde.mvn_constant(h)), ref, rtol=1e-6)


def test_ou_speeds_geometric():
    g = np.asarray(bk.sde.ou_speeds(5, 20.0))
    np.testing.assert_allclose(g[0], 1 / 20.0)
    np.testing.assert_allclose(g[-1], 20.0)
    np.testing.assert_allclose(g[1:] / g[:-1], 20.0 ** (2 / 4))
    np.testing.assert_allclose(np.asarray(bk.sde.ou_speeds(1, 20.0)), [1.0])


@pytest.mark.parametrize("a", [0.6, 1.0, 1.2, 1.45])
def test_scaled_upper_gamma_against_scipy(a):
    z = np.array([0.01, 0.5, 3.0, 9.99, 10.0, 25.0, 100.0, 600.0])
    ref = np.exp(z + np.log(scipy.special.gammaincc(a, z)))
    np.testing.assert_allclose(np.asarray(bk.sde.scaled_upper_gamma(a, z)), ref, rtol=1e-10)
    # large z: asymptotic z^{a-1}/Gamma(a) (1 + (a-1)/z + (a-1)(a-2)/z^2)
    z = 2e4
    asym = z ** (a - 1) / scipy.special.gamma(a) * (1 + (a - 1) / z + (a - 1) * (a - 2) / z**2)
    np.testing.assert_allclose(float(bk.sde.scaled_upper_gamma(a, z)), asym, rtol=1e-10)


def _b_quadrature(h, gamma, T, kind):
    """b_k = int_0^T E[B_H(t) (Y(t) - Y(0))] dt by nested quadrature of the kernel products."""
    a = h + 0.5

    def cross(t):
        if kind == "I":
            f1, _ = scipy.integrate.quad(lambda s: ((t - s) ** (a - 1)) * np.exp(-gamma * (t - s)), 0, t, limit=200)
            f2, _ = scipy.integrate.quad(lambda s: ((t - s) ** (a - 1) - (-s) ** (a - 1))
                                         * (np.exp(-gamma * (t - s)) - np.exp(gamma * s)), -np.inf, 0, limit=400)
            return (f1 + f2) / scipy.special.gamma(a)
        f, _ = scipy.integrate.quad(lambda s: (t - s) ** (a - 1) * np.exp(-gamma * (t - s)), 0, t, limit=200)
        return f / scipy.special.gamma(a)

    val, _ = scipy.integrate.quad(cross, 0, T, limit=200)
    return val


@pytest.mark.parametrize("kind", ["I", "II"])
@pytest.mark.parametrize("h", [0.3, 0.7])
def test_weight_system_against_quadrature(kind, h):
    gammas = np.array([0.05, 0.7, 6.0])
    T = 2.0
    A, b, c = bk.sde.weight_system(h, gammas, T, kind)
    for k, g in enumerate(gammas):
        np.testing.assert_allclose(float(b[k]), _b_quadrature(h, g, T, kind), rtol=1e-6)
    # A_ij = int_0^T Cov(Y_i(t) - Y_i(0), Y_j(t) - Y_j(0)) dt from the approximate covariance at s = t
    for i in range(3):
        for j in range(3):
            e_i, e_j = np.eye(3)[i], np.eye(3)[j]
            f = lambda t: 0.5 * float(bk.sde.approximate_covariance(t, t, gammas, e_i + e_j, kind)
                                      - bk.sde.approximate_covariance(t, t, gammas, e_i, kind)
                                      - bk.sde.approximate_covariance(t, t, gammas, e_j, kind))
            ref = scipy.integrate.quad(f, 0, T)[0] if i != j else scipy.integrate.quad(
                lambda t: float(bk.sde.approximate_covariance(t, t, gammas, e_i, kind)), 0, T)[0]
            np.testing.assert_allclose(float(A[i, j]), ref, rtol=1e-8)
    var = bk.sde.fbm_variance if kind == "I" else bk.sde.riemann_liouville_variance
    np.testing.assert_allclose(float(c), scipy.integrate.quad(lambda t: float(var(t, h)), 0, T)[0], rtol=1e-8)


# slow tier: compile-bound (9 s in the fast suite); capability kept fast by: test_weight_system_against_quadrature,
# test_variance_error_within_half_percent_k20
@pytest.mark.slow
def test_optimal_weights_minimise_error_and_gradient_in_hurst():
    # jitted: a few compiled programs instead of many op-by-op compiles
    gammas = bk.sde.ou_speeds(5, 20.0)
    weights = jax.jit(lambda h: bk.sde.optimal_weights(h, gammas, 2.0))
    error = jax.jit(lambda w: bk.sde.approximation_error(0.3, gammas, w, 2.0))
    w = weights(0.3)
    e0 = float(error(w))
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert float(error(w + 1e-3 * rng.standard_normal(5))) > e0
    g = jax.jit(jax.jacfwd(lambda h: bk.sde.optimal_weights(h, gammas, 2.0)))(0.3)
    fd = (weights(0.3 + 1e-6) - weights(0.3 - 1e-6)) / 2e-6
    np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(lambda h: bk.sde.optimal_weights(h, gammas, 2.0).sum()))(0.7))))


@pytest.mark.parametrize("h", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
def test_variance_error_within_half_percent_k20(h):
    """Must-show: <= 0.5% relative L2 error of Var for K=20, gamma_max=1e4, T=2, H in [0.2, 0.7]."""
    fbm = bk.sde.FractionalBM(hurst=h, num_ou=20, gamma_max=1e4, time_horizon=2.0)
    err = float(fbm.relative_variance_error())
    assert err <= 0.005, err


def test_paper_setting_errors_are_larger():
    errs = {h: float(bk.sde.FractionalBM(hurst=h, num_ou=5, gamma_max=20.0, time_horizon=2.0).relative_variance_error())
            for h in (0.2, 0.5, 0.7)}
    assert errs[0.2] > 0.005 and errs[0.7] > 0.005
    assert max(errs.values()) < 0.2


def test_brownian_at_half():
    """H = 1/2: exact covariance is min(s, t); the approximation reproduces it (K=20)."""
    t = np.linspace(0.0, 2.0, 41)
    s, tt = np.meshgrid(t, t)
    np.testing.assert_allclose(np.asarray(bk.sde.fbm_covariance(s, tt, 0.5)), np.minimum(s, tt), atol=1e-14)
    np.testing.assert_allclose(np.asarray(bk.sde.fbm_covariance(s, tt, 0.5, convention="unit")), np.minimum(s, tt), atol=1e-14)
    fbm = bk.sde.FractionalBM(hurst=0.5, num_ou=20, gamma_max=1e4, time_horizon=2.0)
    np.testing.assert_allclose(np.asarray(fbm.covariance(s, tt)), np.minimum(s, tt), atol=2e-3)


def test_unit_convention():
    np.testing.assert_allclose(float(bk.sde.fbm_variance(1.0, 0.3, convention="unit")), 1.0)
    np.testing.assert_allclose(float(bk.sde.fbm_variance(2.0, 0.3)), float(bk.sde.mvn_constant(0.3)) * 2**0.6)


def test_sample_paths_covariance_monte_carlo():
    """Exact sampler: empirical covariance vs the closed-form covariance of the approximation (4 SE)."""
    fbm = bk.sde.FractionalBM(hurst=0.3, num_ou=5, gamma_max=20.0, time_horizon=2.0)
    times = np.array([0.1, 0.5, 1.3, 2.0])
    n = 20000
    x = np.asarray(fbm.sample(jax.random.key(0), times, n))
    assert x.shape == (n, 4)
    emp = x.T @ x / n
    exact = np.asarray(fbm.covariance(times[:, None], times[None, :]))
    se = np.sqrt((np.diag(exact)[:, None] * np.diag(exact)[None, :] + exact**2) / n)
    assert np.all(np.abs(emp - exact) < 4 * se)
    # type II too
    fbm2 = bk.sde.FractionalBM(hurst=0.7, num_ou=5, gamma_max=20.0, kind="II", time_horizon=2.0)
    x = np.asarray(fbm2.sample(jax.random.key(1), times, n))
    exact = np.asarray(fbm2.covariance(times[:, None], times[None, :]))
    emp = x.T @ x / n
    se = np.sqrt((np.diag(exact)[:, None] * np.diag(exact)[None, :] + exact**2) / n)
    assert np.all(np.abs(emp - exact) < 4 * se)


def test_sample_paths_keys_and_exact_sampler():
    fbm = bk.sde.FractionalBM(hurst=0.3, num_ou=5, gamma_max=20.0)
    t = np.linspace(0.1, 1.0, 5)
    a = fbm.sample(jax.random.key(3), t, 4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(fbm.sample(jax.random.key(3), t, 4)))
    assert not np.allclose(np.asarray(a), np.asarray(fbm.sample(jax.random.key(4), t, 4)))
    x = np.asarray(bk.sde.sample_exact_fbm(jax.random.key(0), t, 0.3, 20000))
    exact = np.asarray(bk.sde.fbm_covariance(t[:, None], t[None, :], 0.3))
    se = np.sqrt((np.diag(exact)[:, None] * np.diag(exact)[None, :] + exact**2) / 20000)
    assert np.all(np.abs(x.T @ x / 20000 - exact) < 4 * se)


def test_renamed_num_paths_warns_and_gives_the_same_draws():
    """`num_paths` (draws returned) is renamed `num_samples` (glossary); the old keyword warns for one release."""
    fbm = bk.sde.FractionalBM(hurst=0.3, num_ou=5, gamma_max=20.0)
    t = np.linspace(0.1, 1.0, 5)
    new = np.asarray(fbm.sample(jax.random.key(3), t, num_samples=4))
    with pytest.warns(DeprecationWarning, match="`num_paths` of FractionalBM.sample is renamed `num_samples`"):
        np.testing.assert_array_equal(np.asarray(fbm.sample(jax.random.key(3), t, num_paths=4)), new)
    with pytest.warns(DeprecationWarning, match="`num_paths` of sample_paths"):
        np.testing.assert_array_equal(np.asarray(bk.sde.sample_paths(jax.random.key(3), fbm, t, num_paths=4)), new)
    exact = np.asarray(bk.sde.sample_exact_fbm(jax.random.key(0), t, 0.3, num_samples=3))
    with pytest.warns(DeprecationWarning, match="`num_paths` of sample_exact_fbm"):
        old = bk.sde.sample_exact_fbm(jax.random.key(0), t, 0.3, num_paths=3)
    np.testing.assert_array_equal(np.asarray(old), exact)


def test_float32_weights_are_usable():
    """Weights computed in float32 (the package default) still give < 1% variance error for K=20."""
    fbm = bk.sde.FractionalBM(hurst=0.3, num_ou=20, gamma_max=1e4, time_horizon=2.0)
    om32 = fbm.omega(hurst=jnp.float32(0.3), dtype=jnp.float32)
    assert om32.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(om32)))
    t = np.linspace(0, 2.0, 2001)
    v_hat = np.asarray(bk.sde.approximate_variance(t, fbm.gammas(jnp.float64), jnp.asarray(om32, jnp.float64)))
    v = np.asarray(bk.sde.fbm_variance(t, 0.3))
    assert np.sqrt(np.trapezoid((v_hat - v) ** 2, t) / np.trapezoid(v**2, t)) < 0.01


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_bad_hurst(bad):
    with pytest.raises(ConfigurationError, match="hurst"):
        bk.sde.FractionalBM(hurst=bad)


def test_bad_options():
    with pytest.raises(ConfigurationError, match="num_ou"):
        bk.sde.FractionalBM(hurst=0.3, num_ou=0)
    with pytest.raises(ConfigurationError, match="kind"):
        bk.sde.FractionalBM(hurst=0.3, kind="III")
    with pytest.raises(ConfigurationError, match="gamma_max"):
        bk.sde.FractionalBM(hurst=0.3, gamma_max=0.5)
    with pytest.raises(DataError, match="sorted"):
        bk.sde.FractionalBM(hurst=0.3).sample(jax.random.key(0), [0.5, 0.2])
