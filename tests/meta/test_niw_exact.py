"""NIW-Meta closed forms against exact ground truth (linear-Gaussian episodes, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import numpyro.distributions as dist
import pytest
import scipy.optimize
import scipy.stats

import bayeskit as bk

M = bk.meta
SIGMA = 0.5


def linear_model(d, sigma=SIGMA):
    def pointwise(theta, x, y):
        return jax.scipy.stats.norm.logpdf(y, x @ theta, sigma)

    return M.EpisodeModel(pointwise_log_likelihood=pointwise, dim=d, predict_fn=lambda th, x: x @ th,
                          sample_fn=lambda k, th, x: x @ th + sigma * jax.random.normal(k, (x.shape[0],)))


def random_q(rng, d, diagonal):
    mean = rng.normal(size=d)
    if diagonal:
        scale = rng.uniform(0.3, 2.0, size=d)
    else:
        B = rng.normal(size=(d, d))
        scale = B @ B.T / d + 0.5 * np.eye(d)
    return M.NIWPosterior(jnp.asarray(mean), jnp.asarray(1.7), jnp.asarray(scale), jnp.asarray(d + 2.5))


def conjugate_posterior(x, y, prior_mean, prior_prec, sigma=SIGMA):
    prec = x.T @ x / sigma**2 + prior_prec
    mean = np.linalg.solve(prec, x.T @ y / sigma**2 + prior_prec @ prior_mean)
    return mean, prec


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("num_points", [1, 2, 8])
def test_local_posterior_equals_conjugate_posterior(diagonal, num_points):
    rng = np.random.default_rng(1)
    d = 4
    em = linear_model(d)
    q = random_q(rng, d, diagonal)
    x = rng.normal(size=(num_points, d))
    y = rng.normal(size=num_points)
    prior_prec = np.diag(q.dof * q.scale) if diagonal else q.dof * np.asarray(q.scale)
    mean, prec = conjugate_posterior(x, y, np.asarray(q.mean), prior_prec)
    # expansion point is irrelevant for a quadratic log-likelihood: use an arbitrary one
    quad = jax.jit(lambda x, y, s: M.laplace_approximation(em, x, y, s, diagonal=False))(
        x, y, jnp.asarray(rng.normal(size=d)))
    local = M.local_posterior(quad, q)
    np.testing.assert_allclose(local.mean, mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(local.precision, prec, rtol=1e-10, atol=1e-10)
    # expected negative log-likelihood under q*: exact Gaussian expectation
    cov = np.linalg.inv(prec)
    resid = y - x @ mean
    exact = 0.5 * (resid @ resid + np.trace(x @ cov @ x.T)) / SIGMA**2 + num_points * np.log(SIGMA * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(M.expected_neg_log_likelihood(quad, local), exact, rtol=1e-11)


def test_local_posterior_from_numpyro_model_matches():
    rng = np.random.default_rng(2)
    d = 3

    def model(x, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        numpyro.sample("y", dist.Normal(x @ w, SIGMA), obs=y)

    x = rng.normal(size=(5, d))
    y = rng.normal(size=5)
    em = M.EpisodeModel.from_numpyro(model, x, y)
    assert em.dim == d
    q = random_q(rng, d, diagonal=False)
    quad = jax.jit(lambda x, y: M.laplace_approximation(em, x, y, jnp.zeros(d), diagonal=False))(x, y)
    local = M.local_posterior(quad, q)
    mean, prec = conjugate_posterior(x, y, np.asarray(q.mean), q.dof * np.asarray(q.scale))
    np.testing.assert_allclose(local.mean, mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(local.precision, prec, rtol=1e-10, atol=1e-10)


def _sample_niw_scipy(rng, q, n):
    """Independent NIW sampler (scipy's Wishart / numpy's Gamma), vectorised."""
    d = q.mean.shape[0]
    if q.is_diagonal:
        lam = rng.gamma(float(q.dof) / 2.0, 2.0 * np.asarray(q.scale), size=(n, d))
        sigmas = np.einsum("nk,kl->nkl", 1.0 / lam, np.eye(d))
    else:
        lam = scipy.stats.wishart(df=float(q.dof), scale=np.asarray(q.scale)).rvs(size=n, random_state=rng)
        sigmas = np.linalg.inv(lam.reshape(n, d, d))
    chol = np.linalg.cholesky(sigmas / float(q.kappa))
    mus = np.asarray(q.mean) + np.einsum("nij,nj->ni", chol, rng.normal(size=(n, d)))
    return mus, sigmas


def _mvn_logpdf(x, mean, cov):
    d = x.shape[-1]
    diff = x - mean
    sol = np.linalg.solve(cov, diff[..., None])[..., 0]
    return -0.5 * (np.sum(diff * sol, -1) + np.linalg.slogdet(cov)[1] + d * np.log(2 * np.pi))


@pytest.mark.parametrize("diagonal", [False, True])
def test_expected_kl_matches_monte_carlo(diagonal):
    rng = np.random.default_rng(3)
    d = 3
    q = random_q(rng, d, diagonal)
    B = rng.normal(size=(d, d))
    prec = B @ B.T + np.eye(d)
    local = M.LocalPosterior(jnp.asarray(rng.normal(size=d)), jnp.asarray(prec if not diagonal else np.diag(prec)))
    V = np.linalg.inv(prec) if not diagonal else np.diag(1.0 / np.diag(prec))
    m = np.asarray(local.mean)
    mus, sigmas = _sample_niw_scipy(rng, q, 40000)
    Si = np.linalg.inv(sigmas)
    diff = mus - m
    vals = 0.5 * (np.einsum("nij,ji->n", Si, V) + np.einsum("ni,nij,nj->n", diff, Si, diff) - d
                  + np.linalg.slogdet(sigmas)[1] - np.linalg.slogdet(V)[1])
    se = vals.std() / np.sqrt(len(vals))
    assert abs(float(M.expected_kl_local(local, q)) - vals.mean()) < 4 * se


@pytest.mark.parametrize("diagonal", [False, True])
def test_niw_kl_matches_monte_carlo(diagonal):
    rng = np.random.default_rng(4)
    d = 2
    q = random_q(rng, d, diagonal)
    pr = random_q(rng, d, diagonal)
    p = M.NIWPrior(pr.mean, jnp.asarray(0.4), pr.scale, jnp.asarray(d + 0.7))
    n = 40000
    mus, sigmas = _sample_niw_scipy(rng, q, n)
    lam = np.linalg.inv(sigmas)

    def logpdf(niw):
        if diagonal:
            lp = sum(scipy.stats.gamma(float(niw.dof) / 2.0, scale=2.0 * float(niw.scale[k])).logpdf(lam[:, k, k])
                     for k in range(d))
        else:
            lp = scipy.stats.wishart(df=float(niw.dof), scale=np.asarray(niw.scale)).logpdf(np.moveaxis(lam, 0, -1))
        return lp + _mvn_logpdf(mus, np.asarray(niw.mean), sigmas / float(niw.kappa))

    vals = logpdf(q) - logpdf(p)
    se = vals.std() / np.sqrt(len(vals))
    assert abs(float(M.niw_kl(q, p)) - vals.mean()) < 4 * se


def test_niw_sampler_moments():
    rng = np.random.default_rng(5)
    q = random_q(rng, 3, diagonal=False)
    q = q._replace(dof=jnp.asarray(9.0))
    mu, sigma = q.sample(jax.random.key(0), 20000)
    lam = np.linalg.inv(np.asarray(sigma))
    expected = float(q.dof) * np.asarray(q.scale)
    # E[Λ] = dof * scale; Monte Carlo standard error from the draws
    se = lam.std(axis=0) / np.sqrt(lam.shape[0])
    assert np.all(np.abs(lam.mean(axis=0) - expected) < 4 * se + 1e-12)
    np.testing.assert_allclose(mu.mean(axis=0), q.mean, atol=4 * float(np.max(np.std(mu, axis=0))) / np.sqrt(20000))


# ------------------------------------------------------------------ ELBO versus exact marginal likelihood
def synthetic_episodes(rng, num_episodes, num_points, mu, Sigma, sigma=SIGMA):
    d = mu.shape[0]
    thetas = rng.multivariate_normal(mu, Sigma, size=num_episodes)
    x = rng.normal(size=(num_episodes, num_points, d))
    y = np.einsum("ind,id->in", x, thetas) + sigma * rng.normal(size=(num_episodes, num_points))
    return x, y


def exact_log_marginal(x, y, mu, Sigma, sigma=SIGMA):
    """sum_i log N(y_i; X_i mu, X_i Sigma X_i^T + sigma^2 I)."""
    cov = np.einsum("inj,jk,imk->inm", x, Sigma, x) + sigma**2 * np.eye(y.shape[1])
    return float(np.sum(_mvn_logpdf(y, x @ mu, cov)))


def gls_mean(x, y, Sigma, sigma=SIGMA):
    """Generalised least squares estimate of mu given Sigma and its exact sampling covariance."""
    cov = np.einsum("inj,jk,imk->inm", x, Sigma, x) + sigma**2 * np.eye(y.shape[1])
    ci = np.linalg.inv(cov)
    info = np.einsum("inj,inm,imk->jk", x, ci, x)
    rhs = np.einsum("inj,inm,im->j", x, ci, y)
    return np.linalg.solve(info, rhs), np.linalg.inv(info)


def type2_ml(x, y, d):
    """max_{mu, Sigma} of the exact log marginal likelihood (scipy L-BFGS on a Cholesky parametrisation)."""
    tril = np.tril_indices(d)

    def unpack(v):
        L = np.zeros((d, d))
        L[tril] = v[d:]
        L[np.diag_indices(d)] = np.exp(L[np.diag_indices(d)])
        return v[:d], L @ L.T

    res = scipy.optimize.minimize(lambda v: -exact_log_marginal(x, y, *unpack(v)), np.zeros(d + len(tril[0])),
                                  method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8})
    return -res.fun, unpack(res.x)


MU_STAR = np.array([1.0, -0.5])
SIGMA_STAR = np.array([[0.6, 0.2], [0.2, 0.3]])


def fit_linear(x, y, covariance="full", num_steps=2000, seed=0):
    d = x.shape[-1]
    cfg = M.NIWMeta(linear_model(d), covariance=covariance, local_approximation="laplace",
                    optimizer=optax.adam(optax.cosine_decay_schedule(0.2, num_steps, 0.01)), batch_size=x.shape[0],
                    num_iterations=num_steps,
                    chunk_size=num_steps)
    return cfg.fit(jax.random.key(seed), (x, y))


@pytest.fixture(scope="module")
def concentration_fits():
    """Fits on 10 and on 150 episodes (6 points each) of the same population, shared by the bound and the
    concentration tests (each fit compiles its own training program)."""
    rng = np.random.default_rng(9)
    out = []
    for n in (10, 150):
        x, y = synthetic_episodes(rng, n, 6, MU_STAR, SIGMA_STAR)
        out.append((x, y, fit_linear(x, y, num_steps=600)))
    return out


# slow tier: compile-bound (9 s in the fast suite); capability kept fast by: test_local_posterior_equals_conjugate_posterior,
# test_niw_kl_matches_monte_carlo
@pytest.mark.slow
def test_elbo_below_collapsed_bound_and_exact_marginal(concentration_fits):
    """ELBO(q) <= E_q[log p(D|phi)] - KL(q||p) (Monte Carlo) and <= max_phi log p(D|phi) (exact): bounds
    that hold for any q, here the fit on 10 episodes."""
    x, y, res = concentration_fits[0]
    elbo = float(res.elbo(jax.random.key(0), (x, y)))
    mus, sigmas = res.sample_global(jax.random.key(1), 300)
    vals = np.array([exact_log_marginal(x, y, m, S) for m, S in zip(np.asarray(mus), np.asarray(sigmas))])
    collapsed = vals.mean() - float(M.niw_kl(res.posterior, res.config.hyperprior()))
    se = vals.std() / np.sqrt(len(vals))
    assert elbo <= collapsed + 4 * se
    ml, _ = type2_ml(x, y, 2)
    assert elbo <= ml


def test_elbo_approaches_exact_marginal_as_q_concentrates():
    """With q(phi) -> point mass at (mu, Sigma), the per-episode ELBO -> exact log N(y_i; X mu, X Sigma X^T + s^2 I)."""
    rng = np.random.default_rng(7)
    x, y = synthetic_episodes(rng, 10, 4, MU_STAR, SIGMA_STAR)
    exact = exact_log_marginal(x, y, MU_STAR, SIGMA_STAR)
    em = linear_model(2)
    lap = jax.jit(lambda xi, yi: M.laplace_approximation(em, xi, yi, jnp.zeros(2), diagonal=False))
    loss = jax.jit(lambda quad, q: M.episode_loss(quad, q)[0])
    gaps = []
    for c in [10.0, 1e2, 1e3, 1e4, 1e6]:
        q = M.NIWPosterior(jnp.asarray(MU_STAR), jnp.asarray(c), jnp.asarray(np.linalg.inv(SIGMA_STAR) / c),
                           jnp.asarray(c))
        total = 0.0
        for xi, yi in zip(x, y):
            total -= float(loss(lap(xi, yi), q))
        gaps.append(exact - total)
    gaps = np.array(gaps)
    assert np.all(gaps > 0)
    assert np.all(np.diff(gaps) < 0)
    assert gaps[-1] < 1e-3


def _errors(res):
    q = res.posterior
    return (np.linalg.norm(np.asarray(q.mean) - MU_STAR),
            np.linalg.norm(np.asarray(q.expected_covariance()) - SIGMA_STAR))


# slow tier: uses the fixture of a slow-tier test; capability kept fast by: test_local_posterior_equals_conjugate_posterior
# (shares the fits of test_elbo_below_collapsed_bound_and_exact_marginal)
@pytest.mark.slow
def test_learned_niw_concentrates_fast(concentration_fits):
    """Fast version: pseudo-counts track N and the expected covariance error shrinks (10 -> 150 episodes)."""
    errs, gaps = [], []
    for x, y, res in concentration_fits:
        n = x.shape[0]
        assert 0.8 * n < float(res.posterior.kappa) < 1.2 * n + 1
        errs.append(_errors(res)[1])
        gaps.append((exact_log_marginal(x, y, MU_STAR, SIGMA_STAR) - float(res.elbo(jax.random.key(0), (x, y)))) / n)
    assert errs[1] < errs[0]
    assert gaps[1] < gaps[0]


@pytest.mark.slow
def test_learned_niw_concentrates_as_episodes_grow():
    rng = np.random.default_rng(8)
    out = {}
    for n in (20, 400):
        x, y = synthetic_episodes(rng, n, 6, MU_STAR, SIGMA_STAR)
        res = fit_linear(x, y)
        mean_err, cov_err = _errors(res)
        _, gls_cov = gls_mean(x, y, SIGMA_STAR)
        out[n] = dict(mean_abs_err=np.abs(np.asarray(res.posterior.mean) - MU_STAR), mean_se=np.sqrt(np.diag(gls_cov)),
                      cov_err=cov_err, kappa=float(res.posterior.kappa), dof=float(res.posterior.dof),
                      elbo=float(res.elbo(jax.random.key(0), (x, y))),
                      exact_true=exact_log_marginal(x, y, MU_STAR, SIGMA_STAR))
    print(out)
    # concentration: q(phi)'s pseudo-counts grow like the number of episodes (conjugate counts N + prior)
    assert 0.9 * 400 < out[400]["kappa"] < 1.1 * 400 and 0.9 * 400 < out[400]["dof"] < 1.1 * 400
    assert out[400]["kappa"] > 10 * out[20]["kappa"]
    # the learned mean is within 4 exact (GLS) standard errors of mu*, the expected covariance near Sigma*
    assert np.all(out[400]["mean_abs_err"] < 4 * out[400]["mean_se"])
    assert out[400]["cov_err"] < out[20]["cov_err"]
    assert out[400]["cov_err"] < 0.15
    # ELBO per episode approaches the exact log marginal likelihood at the truth
    gap20 = (out[20]["exact_true"] - out[20]["elbo"]) / 20
    gap400 = (out[400]["exact_true"] - out[400]["elbo"]) / 400
    assert gap400 < gap20
    assert gap400 < 0.1
