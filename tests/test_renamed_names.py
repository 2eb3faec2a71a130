"""Names renamed to follow the glossary (docs/api.md) keep working for one release: each old keyword or attribute
gives what the new one gives, with a DeprecationWarning naming the new name. Where a same-answer check would need
an expensive run, the old keyword is given a bad value: the error then names the *new* argument, which shows the
value reached it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError
from bayeskit.models import linear_gaussian as lg


@pytest.fixture(scope="module")
def lg_problem():
    return lg.example_params(1), jnp.sin(jnp.arange(6.0))[:, None]


def test_ffbs_num_paths(lg_problem):
    params, ys = lg_problem
    new = bk.smc.ffbs(jax.random.key(1), lg.ssm, params, ys, 8, num_samples=3)
    with pytest.warns(DeprecationWarning, match="`num_paths` of ffbs is renamed `num_samples`"):
        old = bk.smc.ffbs(jax.random.key(1), lg.ssm, params, ys, 8, num_paths=3)
    np.testing.assert_array_equal(old.paths, new.paths)
    assert new.num_samples == 3
    with pytest.warns(DeprecationWarning, match="`FFBSResult.num_paths` is renamed `num_samples`"):
        assert new.num_paths == 3


def test_backward_kernels_num_paths_and_num_draws(lg_problem):
    """The old keyword's value reaches the new one: the output shapes (traced with ``eval_shape``, no compile)
    follow it."""
    params, ys = lg_problem
    fk = bk.smc.bootstrap(lg.ssm, params, ys)
    K = bk.smc.kernels
    particles, log_weights = jnp.zeros((6, 8, 1)), jnp.zeros((6, 8))
    key = jax.random.key(2)
    with pytest.warns(DeprecationWarning, match="`num_paths` of backward_sample is renamed `num_samples`"):
        old = jax.eval_shape(lambda k: K.backward_sample(k, fk, particles, log_weights, num_paths=4), key)
    assert old == jax.eval_shape(lambda k: K.backward_sample(k, fk, particles, log_weights, 4), key)
    assert old[0].shape == (4, 6, 1)
    with pytest.warns(DeprecationWarning, match="`num_draws` of sample_backward is renamed `num_samples`"):
        old = jax.eval_shape(lambda k: K.sample_backward(k, fk, 1, particles[0], log_weights[0], particles[1],
                                                         num_draws=3, num_trials=0), key)
    assert old == jax.eval_shape(lambda k: K.sample_backward(k, fk, 1, particles[0], log_weights[0], particles[1], 3,
                                                             num_trials=0), key)
    assert old[0].shape == (8, 3)
    with pytest.raises(TypeError, match="num_samples"):
        K.backward_sample(key, fk, particles, log_weights)


def test_numpyro_update_num_steps():
    import numpyro

    new = bk.smc.NumPyroUpdate(numpyro.infer.NUTS, num_iterations=2)
    with pytest.warns(DeprecationWarning, match="`num_steps` of NumPyroUpdate is renamed `num_iterations`"):
        old = bk.smc.NumPyroUpdate(numpyro.infer.NUTS, num_steps=2)
    assert old == new and isinstance(old, bk.smc.NumPyroUpdate) and old.num_iterations == 2
    with pytest.warns(DeprecationWarning, match="`NumPyroUpdate.num_steps` is renamed `num_iterations`"):
        assert old.num_steps == 2
    assert bk.smc.NumPyroUpdate(numpyro.infer.NUTS, {}, 3).num_iterations == 3  # positional order unchanged


def test_gpdp_num_draws_and_num_posterior_draws():
    from bayeskit.model import gp as gpm

    x = jnp.linspace(0.5, 3.0, 6)
    data = gpm.make_gp_data(x, 0.8 * x, jnp.zeros(1), jnp.zeros(1), None)
    rng = np.random.default_rng(0)
    draws = {"lengthscale": jnp.asarray(rng.uniform(1.0, 2.0, (1, 10))), "amplitude": 1.0,
             "noise": jnp.asarray(rng.uniform(0.1, 0.3, (1, 10)))}
    post = bk.gpdp.GPPosterior(data, draws, jnp.zeros((1, 10), bool), gpm.KERNELS["squared_exponential"], "nuts")
    with pytest.warns(DeprecationWarning, match="`num_draws` of GPPosterior.flat_draws is renamed `num_samples`"):
        old = post.flat_draws(num_draws=4)
    np.testing.assert_array_equal(old["lengthscale"], post.flat_draws(num_samples=4)["lengthscale"])
    assert old["lengthscale"].shape == (4,)
    # predictions and tensors: the old keyword's value reaches the new one (output shapes by eval_shape, no compile)
    with pytest.warns(DeprecationWarning, match="`num_draws` of GPPosterior.predict is renamed `num_samples`"):
        old_mean, _ = jax.eval_shape(lambda x: post.predict(x, num_draws=3), x)
    assert old_mean.shape == (3, 6)
    grid = jnp.linspace(0.0, 3.0, 5)
    with pytest.warns(DeprecationWarning, match="`num_draws` of gp_transition_tensor is renamed `num_samples`"):
        old_t = jax.eval_shape(lambda g: bk.gpdp.gp_transition_tensor(post, g, g, num_draws=3), grid)
    assert old_t == jax.eval_shape(lambda g: bk.gpdp.gp_transition_tensor(post, g, g, num_samples=3), grid)
    # solve: the old keyword's bad value is reported under the new name, before any fit
    with pytest.warns(DeprecationWarning, match="`num_posterior_draws` of solve is renamed `num_transition_samples`"):
        with pytest.raises(ConfigurationError, match="num_transition_samples"):
            bk.gpdp.solve(jax.random.key(0), np.array([1.0, 2.0, 2.5]), np.array([2.0, 2.5, 2.6]), np.asarray(grid),
                          lambda s, h: jnp.minimum(s, h), num_posterior_draws=0)


def test_parametric_fit_tensor_num_draws():
    fit = bk.gpdp.ParametricFit.__new__(bk.gpdp.ParametricFit)
    object.__setattr__(fit, "growth", "ricker")
    object.__setattr__(fit, "draws", {"r": np.linspace(0.5, 1.0, 8)[None], "K": np.linspace(8.0, 10.0, 8)[None],
                                      "sigma": np.linspace(0.05, 0.1, 8)[None]})
    grid = jnp.linspace(0.0, 10.0, 5)
    with pytest.warns(DeprecationWarning, match="`num_draws` of ParametricFit.flat_draws is renamed `num_samples`"):
        assert fit.flat_draws(num_draws=3)["r"].shape == (3,)
    with pytest.warns(DeprecationWarning, match="`num_draws` of parametric_fit_tensor is renamed `num_samples`"):
        old = bk.gpdp.parametric_fit_tensor(fit, grid, grid, num_draws=3)
    np.testing.assert_array_equal(old, bk.gpdp.parametric_fit_tensor(fit, grid, grid, num_samples=3))


def test_multimarginal_fit_iterations():
    snaps = [np.zeros((4, 1)), np.ones((4, 1))]
    with pytest.warns(DeprecationWarning, match="`fit_iterations` of multimarginal is renamed `num_fit_iterations`"):
        with pytest.raises(ConfigurationError, match="num_fit_iterations"):
            bk.bridges.multimarginal(jax.random.key(0), snaps, [0.0, 1.0], fit_iterations=0)
    with pytest.warns(DeprecationWarning, match="`fit_iterations` of vanilla_sb is renamed `num_fit_iterations`"):
        with pytest.raises(ConfigurationError, match="num_fit_iterations"):
            bk.bridges.vanilla_sb(jax.random.key(0), snaps, [0.0, 1.0], fit_iterations=0)


def _linear_episode_model(d=2):
    return bk.meta.EpisodeModel(pointwise_log_likelihood=lambda th, x, y: jax.scipy.stats.norm.logpdf(y, x @ th, 0.5),
                                dim=d, predict_fn=lambda th, x: x @ th)


def test_meta_inner_and_vi_iterations():
    em = _linear_episode_model()
    kw = dict(covariance="diag", local_approximation="laplace", optimizer=optax.adam(0.05), batch_size=2,
              num_iterations=2, chunk_size=2)
    new = bk.meta.NIWMeta(em, num_inner_iterations=2, **kw)
    with pytest.warns(DeprecationWarning, match="`num_inner_steps` of NIWMeta is renamed `num_inner_iterations`"):
        old = bk.meta.NIWMeta(em, num_inner_steps=2, **kw)
    assert old == new
    with pytest.warns(DeprecationWarning, match="`NIWMeta.num_inner_steps` is renamed `num_inner_iterations`"):
        assert old.num_inner_steps == 2
    with pytest.warns(DeprecationWarning, match="`num_inner_steps` of build_step is renamed `num_inner_iterations`"):
        bk.meta.build_step(em, optimizer=optax.adam(0.1), covariance="diag", local_approximation="laplace",
                           curvature="hessian", num_inner_steps=1, inner_step_size=0.1, num_burnin=0,
                           num_sgld_samples=2, sgld_temperature=1.0, curvature_min=0.0, curvature_max=jnp.inf,
                           prior=None, dataset_size=None)
    x = jnp.array([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]])
    y = jnp.array([1.0, 0.5, -1.0])
    args = (em, x, y, jnp.zeros(2))
    with pytest.warns(DeprecationWarning, match="`num_steps` of laplace_approximation is renamed `num_iterations`"):
        old_q = bk.meta.laplace_approximation(*args, diagonal=True, num_steps=2, step_size=0.1)
    new_q = bk.meta.laplace_approximation(*args, diagonal=True, num_iterations=2, step_size=0.1)
    np.testing.assert_array_equal(old_q.center, new_q.center)
    assert not np.array_equal(new_q.center, np.zeros(2))  # the iterations ran
    # NIWMetaResult.predict(method="vi") (a fit costs seconds): the old keyword's bad value is reported under the
    # new name, before the result's fields are read (here an empty result)
    empty = object.__new__(bk.meta.NIWMetaResult)
    with pytest.warns(DeprecationWarning, match="`num_vi_steps` of NIWMetaResult.predict is renamed"):
        with pytest.raises(ConfigurationError, match="num_vi_iterations"):
            empty.predict(jax.random.key(1), None, None, method="vi", num_vi_steps=0)
