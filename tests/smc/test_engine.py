"""The SMC engine's strategies and accumulators, each against its definition (public API: ``bk.smc.engine``,
``bk.smc.resampling``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bayeskit as bk

engine, R = bk.smc.engine, bk.smc.resampling

N, T = 5, 6
LOG_W = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15]))


def _random_walk_fk(num_steps=T, scale=1.0):
    """x_0 ~ N(0, 1), x_t = x_{t-1} + N(0, 1), log G_t = -(x_t - 0.5)^2 / 2 (scalar states)."""
    def init(key, n):
        return jax.random.normal(key, (n,))

    def move(key, t, x):
        return x + jax.random.normal(key, x.shape)

    def log_potential(t, xp, x):
        return -0.5 * scale * (x - 0.5) ** 2

    def log_transition(t, xp, x):
        return -0.5 * (x - xp) ** 2 - 0.5 * jnp.log(2 * jnp.pi)

    return bk.smc.FeynmanKac(num_steps, init, move, log_potential, log_transition)


FK = _random_walk_fk()


@pytest.fixture(scope="module")
def conditional_runs():
    ref = jnp.linspace(-1.0, 1.0, T)

    @jax.jit
    def one(key):
        st, out = engine.run(key, FK, N, strategy=R.conditional(ref, slot=2), history=True)
        return out.particles, out.info.ancestors, out.info.resampled

    return ref, jax.vmap(one)(jax.random.split(jax.random.key(0), 2000))


def test_conditional_keeps_the_reference_in_its_slot(conditional_runs):
    ref, (px, anc, resampled) = conditional_runs
    np.testing.assert_array_equal(np.asarray(px[:, :, 2]), np.broadcast_to(np.asarray(ref), px[:, :, 2].shape))
    assert np.all(np.asarray(anc[:, 1:, 2]) == 2)  # its ancestor is itself
    assert np.all(np.asarray(resampled[:, 1:]))


def test_conditional_free_slots_draw_from_all_particles(conditional_runs):
    """The N - 1 free slots' ancestors are i.i.d. Cat(W_{t-1}) over all N particles (the reference included):
    chi-square of their counts against the weights, computed from the stored clouds."""
    _, (px, anc, _) = conditional_runs
    x_prev = np.asarray(px[:, 0])  # (M, N) clouds at t = 0
    lw = -0.5 * (x_prev - 0.5) ** 2
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    free = np.delete(np.asarray(anc[:, 1]), 2, axis=1)  # (M, N - 1)
    # probability integral transform of each draw given its own weights: uniform if the law is right
    cdf = np.cumsum(w, axis=1)
    rows = np.repeat(np.arange(free.shape[0]), free.shape[1])
    a = free.ravel()
    lo = np.where(a > 0, cdf[rows, np.maximum(a - 1, 0)], 0.0)
    hi = cdf[rows, a]
    u = lo + (hi - lo) * np.random.default_rng(0).uniform(size=a.shape)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_ancestor_sampling_draws_with_the_backward_law():
    """With ancestor sampling, the pinned slot's ancestor j has probability proportional to
    W_{t-1}^j m_t(x_{t-1}^j, x*_t) (one step, a fixed cloud): chi-square over 20000 draws."""
    x_prev = jnp.array([-2.0, -0.5, 0.0, 0.7, 2.5])
    ref = jnp.array([0.0, 1.2])
    strategy = R.conditional(ref, slot=0, ancestor_sampling=True)
    draws = jax.jit(jax.vmap(lambda k: strategy.select(k, 1, x_prev, LOG_W, FK)[0][0]))(
        jax.random.split(jax.random.key(1), 20000))
    p = np.asarray(jax.nn.softmax(LOG_W + FK.log_transition(1, x_prev, jnp.full((N,), 1.2))))
    counts = np.bincount(np.asarray(draws), minlength=N)
    assert stats.chisquare(counts, 20000 * p).pvalue > 1e-3
    # the negative control: the filter weights alone are a different law, and the test sees it
    assert stats.chisquare(counts, 20000 * np.asarray(jax.nn.softmax(LOG_W))).pvalue < 1e-6


def test_never_and_always():
    key = jax.random.key(2)
    st, out = jax.jit(lambda k: engine.run(k, FK, N, strategy=R.never(), history=True))(key)
    assert not np.any(np.asarray(out.info.resampled))
    np.testing.assert_array_equal(np.asarray(out.info.ancestors), np.broadcast_to(np.arange(N), (T, N)))
    # without resampling the weights are the products of the potentials along each path
    expected = np.sum(-0.5 * (np.asarray(out.particles) - 0.5) ** 2, axis=0)
    np.testing.assert_allclose(np.asarray(st.log_weights), expected, rtol=1e-10)
    np.testing.assert_allclose(float(st.log_evidence),
                               float(jax.nn.logsumexp(jnp.asarray(expected)) - np.log(N)), rtol=1e-10)
    resampled = jax.jit(lambda k: engine.run(k, FK, N, strategy=R.always("systematic"))[1].info.resampled)(key)
    assert np.all(np.asarray(resampled[1:]))


def test_adaptive_resamples_exactly_when_the_ess_falls_below_the_threshold():
    fk = _random_walk_fk(num_steps=40, scale=0.3)
    traced = jax.jit(lambda k, thr: engine.run(k, fk, 64, strategy=R.adaptive("systematic", thr))[1].info)
    for threshold in (0.3, 0.7):
        info = traced(jax.random.key(3), threshold)
        ess = np.asarray(info.ess)
        resampled = np.asarray(info.resampled)
        np.testing.assert_array_equal(resampled[1:], ess[:-1] < threshold * 64)
        assert 0 < resampled.sum() < 39  # both branches are exercised
    # a static threshold takes the same decisions as the traced one
    static = jax.jit(lambda k: engine.run(k, fk, 64, strategy=R.adaptive("systematic", 0.7))[1].info.resampled)
    np.testing.assert_array_equal(np.asarray(static(jax.random.key(3))), resampled)


def test_frozen_skips_whole_steps_once_every_particle_is_done():
    """Particles are 'done' once x > 3 (an absorbing move keeps them there): after the step where all are
    done, the weights, the evidence and the particles stay as they were, and `freeze` marks them."""
    def init(key, n):
        return jnp.zeros((n,))

    def move(key, t, x):
        return jnp.where(x > 3.0, x, x + 1.0 + 0.1 * jax.random.uniform(key, x.shape))

    fk = bk.smc.FeynmanKac(10, init, move, lambda t, xp, x: -0.1 * x)
    strategy = R.frozen(R.adaptive("systematic", 0.5), lambda x: x > 3.0, lambda x: x + 100.0)
    st, out = jax.jit(lambda k: engine.run(k, fk, 8, strategy=strategy, history=True))(jax.random.key(4))
    px, lw = np.asarray(out.particles), np.asarray(out.log_weights)
    incr = np.asarray(out.info.log_evidence_increment)
    first_done = int(np.argmax(np.all(px > 3.0, axis=1)))
    assert 0 < first_done < 9
    for t in range(first_done + 1, 10):
        np.testing.assert_array_equal(lw[t], lw[first_done])
        assert incr[t] == 0.0
        np.testing.assert_allclose(px[t], px[first_done] + 100.0 * (t - first_done))


def test_accumulators_and_lineage():
    """A summary accumulator records what the stored history gives; a stateful one carries its state; the
    lineage tracer follows the recorded ancestors."""
    counter = engine.Accumulator(lambda k, st, fk: (jnp.int32(0), None),
                                 lambda k, t, c, prev, st, info, fk: (c + info.resampled.astype(jnp.int32), None))
    st, out = jax.jit(lambda k: engine.run(k, FK, N, strategy=R.adaptive("multinomial", 0.8), history=True,
                                           accumulators=(engine.summary(bk.smc.kernels.weighted_moments), counter)))(
        jax.random.key(5))
    mean, var = out.records[0]
    w = jax.nn.softmax(out.log_weights, axis=1)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(jnp.sum(w * out.particles, axis=1)), rtol=1e-10)
    assert int(out.carries[1]) == int(np.sum(np.asarray(out.info.resampled)))
    anc = np.asarray(out.info.ancestors)
    b = np.asarray(engine.trace_lineage(out.info.ancestors, 3))
    assert b[-1] == 3
    for t in range(T - 1, 0, -1):
        assert b[t - 1] == anc[t, b[t]]


def test_conditional_rejects_a_bad_slot():
    with pytest.raises(bk.errors.ConfigurationError, match="slot"):
        R.conditional(jnp.zeros(T), slot=-1)
