"""NIW-Meta API: shapes, keys, jit/vmap, streaming, to_arviz, baselines and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, DataError

M = bk.meta
SIGMA = 0.5


def linear_model(d):
    return M.EpisodeModel(pointwise_log_likelihood=lambda th, x, y: jax.scipy.stats.norm.logpdf(y, x @ th, SIGMA),
                          dim=d, predict_fn=lambda th, x: x @ th,
                          sample_fn=lambda k, th, x: x @ th + SIGMA * jax.random.normal(k, (x.shape[0],)))


def episodes(seed, n=6, k=4, d=2):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, d)) * 0.5 + 1.0
    x = rng.normal(size=(n, k, d))
    y = np.einsum("nkd,nd->nk", x, theta) + SIGMA * rng.normal(size=(n, k))
    return jnp.asarray(x), jnp.asarray(y)


def sampler(key, batch_size, d=2, k=4):
    kt, kx, ke = jax.random.split(key, 3)
    theta = 1.0 + 0.5 * jax.random.normal(kt, (batch_size, d))
    x = jax.random.normal(kx, (batch_size, k, d))
    return x, jnp.einsum("nkd,nd->nk", x, theta) + SIGMA * jax.random.normal(ke, (batch_size, k))


@pytest.fixture(scope="module")
def fitted():
    cfg = M.NIWMeta(linear_model(2), covariance="full", local_approximation="laplace", optimizer=optax.adam(0.05),
                    batch_size=4, num_iterations=40, chunk_size=20)
    return cfg.fit(jax.random.key(0), episodes(0))


def test_fit_shapes_history_and_key_reproducibility(fitted):
    assert fitted.posterior.mean.shape == (2,) and fitted.posterior.scale.shape == (2, 2)
    assert fitted.history["elbo"].shape == (40,)
    assert np.all(np.isfinite(fitted.history["elbo"]))
    again = fitted.config.fit(jax.random.key(0), episodes(0))
    np.testing.assert_array_equal(again.posterior.mean, fitted.posterior.mean)
    other = fitted.config.fit(jax.random.key(1), episodes(0))
    assert not np.array_equal(other.history["elbo"], fitted.history["elbo"])  # minibatches differ


# slow tier: compile-bound (4 s in the fast suite); capability kept fast by: test_predictive_mean_matches_conjugate_posterior
@pytest.mark.slow
def test_predict_shapes_and_uncertainty(fitted):
    sx, sy = episodes(1, n=3, k=3)
    qx, qy = episodes(2, n=3, k=7)
    pred = fitted.predict(jax.random.key(1), (sx, sy), (qx, qy), num_samples=64)
    assert pred.theta.shape == (64, 3, 2)
    assert pred.outputs.shape == (64, 3, 7) and pred.mean.shape == (3, 7)
    assert pred.log_predictive_density.shape == (3, 7)
    # the predictive std includes the observation noise
    assert np.all(np.asarray(pred.std) > 0.8 * SIGMA)
    same = fitted.predict(jax.random.key(1), (sx, sy), (qx, qy), num_samples=64)
    np.testing.assert_array_equal(same.theta, pred.theta)
    vi = fitted.predict(jax.random.key(1), (sx, sy), qx, method="vi", num_vi_iterations=20)
    assert vi.log_predictive_density is None and vi.mean.shape == (3, 7)


def test_predictive_mean_matches_conjugate_posterior(fitted):
    """With a linear-Gaussian model the Monte Carlo predictive mean is X m* within 4 standard errors."""
    sx, sy = episodes(3, n=2, k=3)
    qx, _ = episodes(4, n=2, k=5)
    q = fitted.posterior
    P = np.asarray(q.dof * q.scale)
    pred = fitted.predict(jax.random.key(2), (sx, sy), qx, num_samples=4000)
    for i in range(2):
        X, y = np.asarray(sx[i]), np.asarray(sy[i])
        prec = X.T @ X / SIGMA**2 + P
        m = np.linalg.solve(prec, X.T @ y / SIGMA**2 + P @ np.asarray(q.mean))
        exact = np.asarray(qx[i]) @ m
        sd = np.sqrt(np.einsum("qd,de,qe->q", np.asarray(qx[i]), np.linalg.inv(prec), np.asarray(qx[i])))
        assert np.all(np.abs(np.asarray(pred.mean[i]) - exact) < 4 * sd / np.sqrt(4000))


# slow tier: compile-bound (4 s in the fast suite); capability kept fast by: test_fit_shapes_history_and_key_reproducibility
@pytest.mark.slow
def test_streaming_generator_and_iterator_no_state_growth():
    cfg = M.NIWMeta(linear_model(2), covariance="diag", local_approximation="laplace", optimizer=optax.adam(0.05),
                    batch_size=8, num_iterations=30, chunk_size=10)
    r1 = cfg.fit(jax.random.key(0), sampler)
    r2 = cfg.fit(jax.random.key(1), sampler, init=r1)
    assert r2.num_episodes_seen == 2 * 30 * 8
    shapes = lambda st: [np.shape(l) for l in jax.tree_util.tree_leaves(st)]  # noqa: E731
    assert shapes(r1.state) == shapes(r2.state) == shapes(cfg.init())
    it = (sampler(jax.random.key(i), 8) for i in range(5))
    r3 = cfg.fit(jax.random.key(2), it, num_iterations=10)
    assert r3.history["elbo"].shape == (5,)


# slow tier: compile-bound (4 s in the fast suite); capability kept fast by: test_fit_shapes_history_and_key_reproducibility
@pytest.mark.slow
def test_sgld_approximation_runs_and_is_reproducible():
    em = linear_model(2)
    x, y = episodes(5)
    cfg = M.NIWMeta(em, local_approximation="sgld", inner_step_size=1e-2, num_iterations=5, batch_size=3)
    res = cfg.fit(jax.random.key(0), (x, y))
    q1 = jax.jit(lambda k: M.sgld_approximation(k, em, x[0], y[0], jnp.zeros(2), num_burnin=2, num_samples=3,
                                                step_size=1e-2))(jax.random.key(3))
    q2 = M.sgld_approximation(jax.random.key(3), em, x[0], y[0], jnp.zeros(2), num_burnin=2, num_samples=3,
                              step_size=1e-2)
    np.testing.assert_allclose(q1.center, q2.center, rtol=1e-10)
    assert np.all(np.asarray(q1.grad) == 0) and np.all(np.asarray(q1.curvature) >= 1e-4)
    assert np.isfinite(res.history["elbo"]).all()


def test_local_posterior_vmap_matches_loop(fitted):
    x, y = episodes(6)
    em = fitted.config.episode_model
    quads = jax.vmap(lambda xe, ye: M.laplace_approximation(em, xe, ye, jnp.zeros(2), diagonal=False))(x, y)
    batched = jax.jit(jax.vmap(lambda qa: M.local_posterior(qa, fitted.posterior)))(quads)
    for i in range(x.shape[0]):
        one = M.local_posterior(jax.tree_util.tree_map(lambda a: a[i], quads), fitted.posterior)
        np.testing.assert_allclose(batched.mean[i], one.mean, rtol=1e-9)


def test_to_arviz(fitted):
    dt = fitted.to_arviz(jax.random.key(0), num_samples=50)
    assert {"posterior", "niw_posterior", "training"} <= set(dt.children)
    assert dt["posterior"]["mu"].shape == (1, 50, 2)
    # the key is explicit (no hidden default key): without one, a clear error
    with pytest.raises(ConfigurationError, match="explicit `key`"):
        fitted.to_arviz()
    # `num_draws` (the old name of `num_samples`) warns for one release and gives the same draws
    with pytest.warns(DeprecationWarning, match="`num_draws` of NIWMetaResult.to_arviz is renamed `num_samples`"):
        old = fitted.to_arviz(jax.random.key(0), num_draws=50)
    np.testing.assert_array_equal(old["posterior"]["mu"].values, dt["posterior"]["mu"].values)
    # the sizes of the draws above and of test_predict_shapes_and_uncertainty: their compiled programs are reused
    with pytest.warns(DeprecationWarning, match="`num_draws` of NIWMetaResult.sample_global"):
        old_mu, _ = fitted.sample_global(jax.random.key(1), num_draws=50)
    np.testing.assert_array_equal(old_mu, fitted.sample_global(jax.random.key(1), num_samples=50)[0])
    sx, sy = episodes(1, n=3, k=3)
    qx, qy = episodes(2, n=3, k=7)
    pt = fitted.predict(jax.random.key(0), (sx, sy), (qx, qy), num_samples=64).to_arviz()
    assert {"posterior", "posterior_predictive", "predictions", "observed_data"} <= set(pt.children)


# slow tier: compile-bound (8 s in the fast suite); capability kept fast by: test_fit_shapes_history_and_key_reproducibility
@pytest.mark.slow
def test_network_and_equinox_episode_models():
    import equinox as eqx

    mlp = eqx.nn.MLP(1, "scalar", 8, 1, key=jax.random.key(0))
    em = M.EpisodeModel.from_network(lambda m, x: jax.vmap(m)(x), mlp, likelihood="normal", noise_scale=0.3)
    x = jnp.linspace(-1, 1, 10)[None, :, None].repeat(4, 0)
    y = jnp.sin(x[..., 0])
    cfg = M.NIWMeta(em, local_approximation="sgld", inner_step_size=1e-3, batch_size=4, num_iterations=10)
    res = cfg.fit(jax.random.key(0), (x, y))
    pred = res.predict(jax.random.key(1), (x[:, :3], y[:, :3]), x[:, 3:])
    assert pred.mean.shape == (4, 7)
    cls = M.EpisodeModel.from_network(lambda p, x: x @ p, jnp.zeros((3, 4)), likelihood="categorical")
    ll = cls.pointwise_log_likelihood(cls.init_theta, jnp.ones((5, 3)), jnp.arange(5) % 4)
    np.testing.assert_allclose(ll, -np.log(4.0) * np.ones(5), rtol=1e-6)


# slow tier: compile-bound (5 s in the fast suite); capability kept fast by: test_fit_shapes_history_and_key_reproducibility
@pytest.mark.slow
def test_baselines_reduce_loss():
    em = linear_model(2)
    B = bk.testing.meta_baselines
    maml = B.maml(jax.random.key(0), em, sampler, num_support=2, inner_steps=2, inner_learning_rate=0.05,
                  optimizer=optax.adam(0.05), batch_size=8, num_iterations=60)
    assert maml.history["loss"][-10:].mean() < maml.history["loss"][:10].mean()
    pooled = B.pretrain(jax.random.key(1), em, sampler, num_iterations=100, optimizer=optax.adam(0.05))
    np.testing.assert_allclose(pooled.theta, [1.0, 1.0], atol=0.3)
    x, y = sampler(jax.random.key(2), 4)
    loss = B.default_loss(em)
    adapted = B.fine_tune(jnp.zeros(2), em, (x, y), num_iterations=20, learning_rate=0.05)
    before = jax.vmap(loss, in_axes=(None, 0, 0))(jnp.zeros(2), x, y)
    after = jax.vmap(loss)(adapted, x, y)
    assert np.all(np.asarray(after) < np.asarray(before))


# slow tier: compile-bound (4 s in the fast suite); capability kept fast by:
# test_renamed_names.py::test_meta_inner_and_vi_iterations
@pytest.mark.slow
def test_renamed_num_steps_warns_and_gives_the_same_result():
    """`num_steps` (optimiser iterations) is renamed `num_iterations` (glossary); the old name warns for one
    release and gives the same result."""
    em = linear_model(2)
    kw = dict(covariance="diag", local_approximation="laplace", optimizer=optax.adam(0.05), batch_size=4)
    new = M.NIWMeta(em, num_iterations=6, **kw)
    with pytest.warns(DeprecationWarning, match="`num_steps` of NIWMeta is renamed `num_iterations`"):
        old = M.NIWMeta(em, num_steps=6, **kw)
    assert old == new
    with pytest.warns(DeprecationWarning, match="`NIWMeta.num_steps` is renamed `num_iterations`"):
        assert old.num_steps == 6
    x, y = episodes(5)
    r_new = new.fit(jax.random.key(0), (x, y), num_iterations=3)
    with pytest.warns(DeprecationWarning, match="`num_steps` of NIWMeta.fit is renamed `num_iterations`"):
        r_old = new.fit(jax.random.key(0), (x, y), num_steps=3)
    np.testing.assert_array_equal(r_old.history["elbo"], r_new.history["elbo"])
    B = bk.testing.meta_baselines
    with pytest.warns(DeprecationWarning, match="`num_steps` of pretrain"):
        p_old = B.pretrain(jax.random.key(1), em, (x, y), num_steps=5, batch_size=4)
    np.testing.assert_array_equal(p_old.theta, B.pretrain(jax.random.key(1), em, (x, y), num_iterations=5,
                                                          batch_size=4).theta)
    with pytest.warns(DeprecationWarning, match="`num_steps` of fine_tune"):
        f_old = B.fine_tune(jnp.zeros(2), em, (x, y), num_steps=3)
    np.testing.assert_array_equal(f_old, B.fine_tune(jnp.zeros(2), em, (x, y), num_iterations=3))
    with pytest.warns(DeprecationWarning, match="`num_steps` of maml"):
        m_old = B.maml(jax.random.key(2), em, (x, y), num_support=2, inner_steps=1, batch_size=4, num_steps=3)
    np.testing.assert_array_equal(m_old.theta, B.maml(jax.random.key(2), em, (x, y), num_support=2, inner_steps=1,
                                                      batch_size=4, num_iterations=3).theta)
    with pytest.raises(TypeError, match="num_step"):
        M.NIWMeta(em, num_step=6)


# ---------------------------------------------------------------- bad input
def test_bad_inputs(fitted):
    em = linear_model(2)
    x, y = episodes(0)
    with pytest.raises(DataError, match="empty"):
        fitted.predict(jax.random.key(0), (x[:, :0], y[:, :0]), x)
    with pytest.raises(DataError, match="agree"):
        fitted.predict(jax.random.key(0), (x, y[:, :2]), x)
    with pytest.raises(DataError, match="episodes"):
        fitted.predict(jax.random.key(0), (x, y), x[:2])
    with pytest.raises(DataError, match="must match"):
        fitted.predict(jax.random.key(0), (x, y), jnp.ones((6, 3, 5)))
    with pytest.raises(DataError, match="empty"):
        M.NIWMeta(em).fit(jax.random.key(0), (x[:, :0], y[:, :0]))
    with pytest.raises(DataError, match="NaN"):
        M.NIWMeta(em).fit(jax.random.key(0), (x.at[0, 0, 0].set(jnp.nan), y))
    with pytest.raises(ConfigurationError, match="positive definite"):
        M.NIWMeta(em, covariance="full", prior=M.NIWPrior(jnp.zeros(2), 1.0, jnp.array([[1.0, 2.0], [2.0, 1.0]]), 3.0))
    with pytest.raises(ConfigurationError, match="positive"):
        M.NIWMeta(em, covariance="diag", prior=M.NIWPrior(jnp.zeros(2), 1.0, jnp.array([1.0, -1.0]), 3.0))
    with pytest.raises(ConfigurationError, match="positive definite"):
        M.NIWMeta(em, covariance="full", init_scale=-jnp.eye(2))
    with pytest.raises(ConfigurationError, match="shape"):
        M.NIWMeta(em, covariance="full", init_scale=jnp.ones(2))
    with pytest.raises(ConfigurationError, match="covariance"):
        M.NIWMeta(em, covariance="banded")
    with pytest.raises(ConfigurationError, match="num_sgld_samples"):
        M.NIWMeta(em, num_sgld_samples=1)
    with pytest.raises(ConfigurationError, match="key"):
        M.NIWMeta(em).fit(0, (x, y))
    with pytest.raises(DataError, match="pair"):
        fitted.predict(jax.random.key(0), x, x)
    with pytest.raises(ConfigurationError, match="EpisodeModel"):
        M.NIWMeta(lambda th: th)
