import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeskit.errors import ConfigurationError
from bayeskit.inference.smc import resampling as R

SCHEMES = ["multinomial", "stratified", "systematic", "residual"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_expected_offspring_equals_n_times_weight(scheme):
    # E[#offspring of i] = N W_i; checked over R replications within 4 standard errors.
    n, reps = 8, 20000
    w = np.array([0.31, 0.005, 0.2, 0.0, 0.12, 0.09, 0.175, 0.1])
    lw = jnp.log(jnp.asarray(w))
    fn = jax.jit(jax.vmap(lambda k: R.get_scheme(scheme)(k, lw, n)))
    idx = np.asarray(fn(jax.random.split(jax.random.key(0), reps)))
    assert idx.shape == (reps, n) and idx.min() >= 0 and idx.max() < n
    counts = np.stack([(idx == i).sum(1) for i in range(n)], axis=1)
    assert np.all(counts.sum(1) == n)
    mean = counts.mean(0)
    se = counts.std(0, ddof=1) / np.sqrt(reps)
    expected = n * w
    # deterministic parts have zero variance; allow float slack there
    assert np.all(np.abs(mean - expected) <= 4 * se + 1e-9), (mean, expected, se)
    assert np.all(counts[:, 3] == 0)  # zero weight never resampled


@pytest.mark.parametrize("scheme", ["stratified", "systematic", "residual"])
def test_low_variance_schemes_bound_offspring(scheme):
    # these schemes give floor(N W_i) or ceil(N W_i) copies (residual: at least floor)
    n = 50
    lw = jax.random.normal(jax.random.key(1), (n,)) * 2
    w = np.asarray(jax.nn.softmax(lw))
    idx = np.asarray(R.get_scheme(scheme)(jax.random.key(2), lw, n))
    counts = np.bincount(idx, minlength=n)
    assert np.all(counts >= np.floor(n * w) - 1e-9)
    if scheme != "residual":
        assert np.all(counts <= np.ceil(n * w) + 1e-9)


def test_ess_bounds_and_normalisation():
    lw = jnp.array([0.0, 0.0, 0.0, 0.0])
    assert np.isclose(R.ess(lw), 4.0)
    assert np.isclose(R.ess(jnp.array([0.0, -jnp.inf, -jnp.inf])), 1.0)
    w, lse = R.normalize_log_weights(jnp.log(jnp.array([1.0, 3.0])))
    np.testing.assert_allclose(w, [0.25, 0.75])
    np.testing.assert_allclose(lse, np.log(4.0))


def test_unknown_scheme_raises():
    with pytest.raises(ConfigurationError, match="resampling"):
        R.get_scheme("bogus")
