"""GP model and hyperparameter fits against dense-linear-algebra and quadrature ground truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayeskit.datasets import load_gpdp
from bayeskit.inference import gpdp
from bayeskit.model import gp as gpm


@pytest.fixture(scope="module")
def data():
    td = load_gpdp("training_data")
    return gpm.make_gp_data(td["x"][1:], td["y"][1:], [0.0], [0.0], None)


def _dense(x, y, noise_var, xs, ell, amp=1.0):
    k = lambda a, b: amp**2 * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / ell**2)
    K = k(x, x) + np.diag(noise_var)
    Ks = k(xs, x)
    mean = Ks @ np.linalg.solve(K, y)
    cov = k(xs, xs) - Ks @ np.linalg.solve(K, Ks.T)
    return mean, np.diag(cov), K


def test_predict_matches_dense_formula(data):
    xs = np.linspace(0, 15, 17)
    hyper = {"lengthscale": 2.3, "noise": 0.4, "amplitude": 1.7}
    m, v = gpm.predict(data, hyper, xs, jitter=0.0)
    x, y = np.asarray(data.inputs), np.asarray(data.targets)
    mean, var, K = _dense(x, y, np.full(x.size, 0.16), xs, 2.3, 1.7)
    np.testing.assert_allclose(m, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(v, var, rtol=1e-7, atol=1e-9)
    ll = gpm.log_evidence(data, hyper, jitter=0.0)
    np.testing.assert_allclose(ll, stats.multivariate_normal(np.zeros(x.size), K).logpdf(y), rtol=1e-10)
    # the old name (log_marginal_likelihood) warns for one release and gives the same value
    with pytest.warns(FutureWarning, match="log_marginal_likelihood is renamed log_evidence"):
        assert gpm.log_marginal_likelihood(data, hyper, jitter=0.0) == ll


def test_pseudo_observation_noise(data):
    d = gpm.make_gp_data(np.asarray(data.inputs)[1:], np.asarray(data.targets)[1:], [0.0], [0.0], pseudo_noise=1e-3)
    nv = np.asarray(gpm.noise_variances(d, 0.4))
    assert nv[0] == pytest.approx(1e-6) and np.allclose(nv[1:], 0.16)
    m, v = gpm.predict(d, {"lengthscale": 2.0, "noise": 0.4}, np.array([0.0]))
    assert abs(float(m[0])) < 1e-2 and float(v[0]) < 1e-5  # pinned f(0) = 0


def test_predict_draws_vectorised(data):
    draws = {"lengthscale": jnp.array([1.0, 2.0, 3.0]), "noise": jnp.array([0.3, 0.4, 0.5]), "amplitude": 1.0}
    xs = jnp.linspace(0, 10, 7).reshape(7, 1) * jnp.ones((1, 2))
    m, v = gpm.predict_draws(data, draws, xs)
    assert m.shape == (3, 7, 2) and v.shape == (3, 7, 2)
    m1, _ = gpm.predict(data, {"lengthscale": 2.0, "noise": 0.4, "amplitude": 1.0}, xs)
    np.testing.assert_allclose(m[1], m1, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(gpm.KERNELS))
def test_kernels_psd_and_unit_diagonal(name):
    x = jnp.linspace(0, 5, 12)
    K = np.asarray(gpm.KERNELS[name](x, x, lengthscale=1.3, amplitude=2.0))
    np.testing.assert_allclose(np.diag(K), 4.0, rtol=1e-10)
    assert np.linalg.eigvalsh(K + 1e-9 * np.eye(12)).min() > 0


def _grid_posterior(data):
    """Exact ground truth: the 2-D hyperparameter posterior on a fine grid (log-spaced quadrature)."""
    ells = np.exp(np.linspace(np.log(1.5), np.log(15.0), 90))
    noises = np.exp(np.linspace(np.log(0.15), np.log(0.9), 90))
    prior = gpm.default_priors()
    f = jax.jit(jax.vmap(jax.vmap(lambda l, s: gpm.log_evidence(data, {"lengthscale": l, "noise": s})
                                  + prior["lengthscale"].log_prob(l) + prior["noise"].log_prob(s)
                                  + jnp.log(l) + jnp.log(s), (None, 0)), (0, None)))
    lp = np.asarray(f(jnp.asarray(ells), jnp.asarray(noises)))  # density in log-space (Jacobian added)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    L, S = np.meshgrid(ells, noises, indexing="ij")
    return L, S, w, lp


# slow tier: compile-bound (6 s in the fast suite); capability kept fast by: test_predict_matches_dense_formula,
# test_solve.py::test_solve_map_shapes_and_policy
@pytest.mark.slow
def test_map_matches_grid_mode(data):
    L, S, w, lp = _grid_posterior(data)
    post = gpdp.fit_gp(jax.random.key(0), data, method="map")
    # the MAP in the original parameterisation maximises lp - log(l) - log(s)
    i = np.unravel_index(np.argmax(lp - np.log(L) - np.log(S)), lp.shape)
    assert float(post.draws["lengthscale"][0, 0]) == pytest.approx(L[i], rel=0.03)
    assert float(post.draws["noise"][0, 0]) == pytest.approx(S[i], rel=0.03)


@pytest.mark.slow
def test_nuts_posterior_means_match_quadrature(data):
    L, S, w, _ = _grid_posterior(data)
    exact = {"lengthscale": (w * L).sum(), "noise": (w * S).sum()}
    post = gpdp.fit_gp(jax.random.key(1), data, num_warmup=500, num_samples=2000)
    from numpyro.diagnostics import effective_sample_size

    for name in ("lengthscale", "noise"):
        d = np.asarray(post.draws[name])
        ess = float(effective_sample_size(d))
        se = d.std() / np.sqrt(ess)
        assert abs(d.mean() - exact[name]) < 4 * se, (name, d.mean(), exact[name], se)
