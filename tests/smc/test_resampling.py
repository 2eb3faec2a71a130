import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayeskit.errors import ConfigurationError
from bayeskit.inference.smc import _cumulative as C
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


@pytest.mark.parametrize("n, m", [(1, 1), (7, 7), (50, 13), (13, 50), (1000, 1000)])
def test_search_and_repeat_expansions_agree(n, m):
    # CPU finds the ancestors by binary search for small N; every other case marks where each particle's
    # offspring end and counts the marks (a scatter and a running sum). Both must return the same ancestors from the same running totals (including zero counts,
    # all mass on one particle and all mass on the last).
    rng = np.random.default_rng(n * 1000 + m)
    cases = [rng.multinomial(m, rng.dirichlet(np.full(n, 0.3))) for _ in range(20)]
    cases += [np.eye(n, dtype=int)[0] * m, np.eye(n, dtype=int)[-1] * m]
    for counts in cases:
        below = jnp.asarray(np.cumsum(counts), jnp.int32)
        rep = R._expand(jnp.asarray(counts, jnp.int32), m)
        searched = R._ancestors_from_below(below, m)  # binary search on this (CPU) backend
        np.testing.assert_array_equal(np.asarray(searched), np.asarray(rep))
        np.testing.assert_array_equal(np.asarray(rep), np.repeat(np.arange(n), counts))


@pytest.mark.parametrize("scheme", ["multinomial", "stratified", "systematic"])
def test_large_n_uses_the_linear_expansion_consistently(scheme, monkeypatch):
    # the same key gives the same ancestors whichever expansion runs
    lw = jax.random.normal(jax.random.key(3), (300,)) * 3
    small = np.asarray(R.get_scheme(scheme)(jax.random.key(4), lw, 300))
    monkeypatch.setattr(R, "SEARCH_MAX", 10)
    large = np.asarray(R.get_scheme(scheme)(jax.random.key(4), lw, 300))
    np.testing.assert_array_equal(small, large)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_sum_matches_cumsum(dtype, monkeypatch):
    # the blocked CPU running sum (block prefix sums by one matrix product) against NumPy's sequential one,
    # for lengths around the block size, 2-D rows, and both the blocked and the plain path
    rng = np.random.default_rng(0)
    monkeypatch.setattr(C, "BLOCKED_MIN", 64)
    for shape in [(64,), (65,), (95,), (1000,), (3, 257)]:
        x = rng.uniform(size=shape).astype(dtype)
        got = np.asarray(C.running_sum(jnp.asarray(x)))
        want = np.cumsum(x.astype(np.float64), axis=-1)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * want[..., -1:].max())
        assert got.dtype == dtype
    counts = jnp.asarray(rng.integers(0, 5, size=700), jnp.int32)
    np.testing.assert_array_equal(np.asarray(C.count_running_sum(counts, 4 * 700)), np.cumsum(np.asarray(counts)))


@pytest.mark.parametrize("scheme", ["stratified", "systematic"])
def test_vmapped_batch_takes_the_linear_expansion_with_the_same_ancestors(scheme, monkeypatch):
    # under vmap a batch with more particles in all than SEARCH_MAX expands by the scatter; one series alone
    # searches: both give the same ancestors for the same key
    monkeypatch.setattr(R, "SEARCH_MAX", 1000)
    lw = jax.random.normal(jax.random.key(1), (5, 300)) * 2
    fn = R.get_scheme(scheme)
    batched = jax.jit(jax.vmap(lambda l: fn(jax.random.key(2), l, 300)))(lw)
    one_by_one = np.stack([np.asarray(fn(jax.random.key(2), l, 300)) for l in lw])
    np.testing.assert_array_equal(np.asarray(batched), one_by_one)


def test_blocked_running_sum_never_decreases_and_keeps_zero_weights_undrawn():
    # nonnegative entries with runs of zeros across block boundaries, in float32 at a size on the blocked path:
    # the running sum must not decrease (an inverse-CDF draw would otherwise land on a zero-weight entry)
    rng = np.random.default_rng(1)
    n = C.BLOCKED_MIN + 77
    x = rng.exponential(size=n).astype(np.float32) * 1e3
    x[rng.random(n) < 0.5] = 0.0
    c = np.asarray(C.running_sum(jnp.asarray(x)))
    assert np.all(np.diff(c) >= 0)
    np.testing.assert_allclose(c, np.cumsum(x.astype(np.float64)), rtol=1e-5)
    logits = jnp.asarray(np.where(x[None, :] > 0, np.log(np.maximum(x, 1e-30)), -np.inf), jnp.float32)
    draws = np.asarray(jax.vmap(lambda k: R.categorical_rows(k, logits))(jax.random.split(jax.random.key(0), 4000)))
    assert np.all(x[draws.ravel()] > 0)


def test_gradients_flow_around_the_batched_ancestors(monkeypatch):
    # the ancestors are integers (no gradient), but a function that gathers with them stays differentiable,
    # with and without vmap, whichever expansion the batch takes
    monkeypatch.setattr(R, "SEARCH_MAX", 1000)
    lw = jax.random.normal(jax.random.key(1), (5, 300))

    def gathered(lw):
        return jnp.sum(jax.vmap(lambda l: l[R.systematic(jax.random.key(2), l, 300)])(lw))

    g = jax.grad(gathered)(lw)
    idx = np.stack([np.asarray(R.systematic(jax.random.key(2), l, 300)) for l in lw])
    want = np.stack([np.bincount(i, minlength=300) for i in idx]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(g), want)
