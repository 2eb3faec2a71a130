"""The pure kernels of ``bk.scaling.kernels``: a masked particle count runs exactly the filter with that many
particles, in one compiled program for every count and setting (what ``reproduce scaling`` relies on)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError

K = bk.scaling.kernels
WORLD = bk.testing.random_markov_world(jax.random.key(0))
GEN = WORLD.generator()
NOISY = WORLD.noisy_reward_model(jax.random.key(1), 2, noise_scale=1.0)
EXACT = WORLD.exact_reward_model(2)


@pytest.fixture(scope="module")
def masked_pf():
    """One jitted, key-vmapped masked filter over 8 slots; every setting is an argument."""
    init = GEN.init(2, 8)

    def one(k, n, tau, rs, w, ess):
        return K.run_particle_filtering(k, GEN, NOISY, init, num_particles=n, temperature=tau, resampling=rs,
                                        weights=w, ess_threshold=ess, selection="vote")

    return jax.jit(jax.vmap(one, in_axes=(0,) + (None,) * 5))


# slow tier: compile-bound (5 s in the fast suite); capability kept fast by:
# test_particle.py::test_pf_answer_distribution_converges_to_tilted_posterior
@pytest.mark.slow
def test_one_program_serves_every_count_and_setting(masked_pf):
    keys = jax.random.split(jax.random.key(2), 8)
    for n, tau, rs, w, ess in [(1, 1.0, 0, 0, 1.0), (3, 0.5, 1, 1, 0.5), (8, 2.0, 2, 0, 1.0), (5, 1.0, 1, 2, 1.0)]:
        out = masked_pf(keys, n, tau, rs, w, ess)
        lw = np.asarray(out.log_weights)
        assert np.all(np.isneginf(lw[:, n:])) and np.all(np.isfinite(lw[:, :n]) | (w == 2))
        assert np.all(np.asarray(out.index) < n)
        # slots past n are never extended: every active slot is extended at step 0, at most once a step
        calls = np.asarray(out.generator_calls)
        assert np.all((calls >= n) & (calls <= n * WORLD.max_steps))
        assert np.all(np.asarray(out.sweep.ancestors)[:, :, n:] == np.arange(n, 8))
    assert masked_pf._cache_size() == 1


def _assert_full_mask_is_unmasked(masked_pf, scheme, weights, ess):
    keys = jax.random.split(jax.random.key(3), 16)
    init = GEN.init(2, 8)
    full = jax.jit(jax.vmap(lambda k: K.run_particle_filtering(k, GEN, NOISY, init, resampling=scheme, weights=weights,
                                                               ess_threshold=ess, selection="vote")))(keys)
    masked = masked_pf(keys, 8, 1.0, K.MASKED_SCHEMES.index(scheme), K.WEIGHTS.index(weights), ess)
    np.testing.assert_array_equal(masked.sweep.ancestors, full.sweep.ancestors)
    np.testing.assert_array_equal(masked.answers, full.answers)
    np.testing.assert_array_equal(masked.answer, full.answer)


# slow tier: compile-bound (9 s in the fast suite); capability kept fast by:
# test_particle.py::test_pf_answer_distribution_converges_to_tilted_posterior
@pytest.mark.slow
def test_all_slots_active_is_the_unmasked_filter(masked_pf):
    # with n = N the masked schemes draw the same ancestors from the same key: the same runs, bit for bit
    _assert_full_mask_is_unmasked(masked_pf, "systematic", "accumulated", 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("scheme,weights,ess", [("stratified", "accumulated", 0.5), ("stratified", "per_step", 1.0),
                                                ("systematic", "per_step", 1.0), ("multinomial", "accumulated", 0.5),
                                                ("multinomial", "per_step", 1.0)])
def test_all_slots_active_is_the_unmasked_filter_other_settings(masked_pf, scheme, weights, ess):
    _assert_full_mask_is_unmasked(masked_pf, scheme, weights, ess)


def _assert_masked_is_smaller_filter(masked_pf, scheme):
    keys = jax.random.split(jax.random.key(4), 16)
    init3 = GEN.init(2, 3)
    plain = jax.jit(jax.vmap(lambda k: K.run_particle_filtering(k, GEN, NOISY, init3, resampling=scheme,
                                                                selection="vote")))(keys)
    masked = masked_pf(keys, 3, 1.0, K.MASKED_SCHEMES.index(scheme), 0, 1.0)
    np.testing.assert_array_equal(masked.sweep.ancestors[:, :, :3], plain.sweep.ancestors)
    np.testing.assert_array_equal(masked.answers[:, :3], plain.answers)
    np.testing.assert_array_equal(masked.answer, plain.answer)
    np.testing.assert_array_equal(masked.generator_calls, plain.generator_calls)


PARTITIONABLE = pytest.mark.skipif(not jax.config.jax_threefry_partitionable,
                                   reason="a slot's draws do not depend on the number of slots only with "
                                   "partitionable threefry (JAX's default)")


# slow tier: compile-bound (7-9 s in the fast suite); capability kept fast by:
# test_particle.py::test_pf_answer_distribution_converges_to_tilted_posterior (the filter a masked run must equal)
@pytest.mark.slow
@PARTITIONABLE
def test_three_particles_in_eight_slots_are_the_three_particle_filter(masked_pf):
    # with partitionable threefry (JAX's default) slot i's draws do not depend on the number of slots and the
    # masked schemes use the first n + 1 (multinomial) or the same (systematic, stratified) uniforms: the masked
    # run is the 3-particle run, bit for bit, which is what lets `reproduce scaling` pad every budget to one
    # compiled program and print the same numbers
    _assert_masked_is_smaller_filter(masked_pf, "multinomial")


@PARTITIONABLE
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["systematic", "stratified"])
def test_three_particles_in_eight_slots_other_schemes(masked_pf, scheme):
    _assert_masked_is_smaller_filter(masked_pf, scheme)


def test_masked_sweep_rejects_what_it_cannot_mask():
    init = GEN.init(2, 4)
    with pytest.raises(ConfigurationError, match="resampling"):
        K.run_particle_filtering(jax.random.key(0), GEN, NOISY, init, num_particles=2, resampling="residual")
    with pytest.raises(ConfigurationError, match="callable"):
        K.run_particle_filtering(jax.random.key(0), GEN, NOISY, init, num_particles=2,
                                 resampling=bk.smc.resampling.systematic)


def _two_sample_ok(a, b, m, reps):
    fa, fb = np.bincount(a, minlength=m) / reps, np.bincount(b, minlength=m) / reps
    pooled = 0.5 * (fa + fb)
    se = np.sqrt(pooled * (1 - pooled) * 2 / reps)
    return np.all(np.abs(fa - fb) <= 4 * se + 1e-12), (fa, fb)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", K.MASKED_SCHEMES)
def test_four_particles_in_sixteen_slots_have_the_law_of_a_four_particle_filter(scheme):
    # value-ratio potentials with the exact value function: the answer law of a 4-particle filter is still
    # biased (TV ~0.07-0.09 from the tilted law; it shrinks with N), so a mask that leaked particles would
    # show. Two-sample test (4 SE) on the answers and on the mean generator calls.
    reps = 4000
    init4, init16 = GEN.init(2, 4), GEN.init(2, 16)
    plain = jax.jit(jax.vmap(lambda k: K.run_particle_filtering(k, GEN, EXACT, init4, weights="value_ratio",
                                                                resampling=scheme)))
    masked = jax.jit(jax.vmap(lambda k, n, rs: K.run_particle_filtering(k, GEN, EXACT, init16, num_particles=n,
                                                                        weights="value_ratio", resampling=rs),
                              in_axes=(0, None, None)))
    a = plain(jax.random.split(jax.random.key(10), reps))
    b = masked(jax.random.split(jax.random.key(11), reps), 4, K.MASKED_SCHEMES.index(scheme))
    ok, freqs = _two_sample_ok(np.asarray(a.answer), np.asarray(b.answer), WORLD.modulus, reps)
    assert ok, freqs
    ca, cb = np.asarray(a.generator_calls, float), np.asarray(b.generator_calls, float)
    assert abs(ca.mean() - cb.mean()) <= 4 * np.sqrt((ca.var() + cb.var()) / reps)


@pytest.mark.slow
def test_masked_beam_pool_has_the_law_of_the_exact_pool():
    reps = 4000
    init4, init16 = GEN.init(2, 4), GEN.init(2, 16)
    plain = jax.jit(jax.vmap(lambda k: K.run_beam_search(k, GEN, NOISY, init4, num_beams=2, expansions=2)))
    masked = jax.jit(jax.vmap(lambda k, b, m: K.run_beam_search(k, GEN, NOISY, init16, num_beams=b, expansions=m),
                              in_axes=(0, None, None)))
    a = plain(jax.random.split(jax.random.key(12), reps))
    b = masked(jax.random.split(jax.random.key(13), reps), 2, 2)
    assert np.all(~np.asarray(b.valid)[:, 2:]) and np.all(np.isneginf(np.asarray(b.log_weights)[:, 2:]))

    def chosen(out):
        return np.asarray(out.answers)[np.arange(reps), np.argmax(np.asarray(out.log_weights), 1)]

    ok, freqs = _two_sample_ok(chosen(a), chosen(b), WORLD.modulus, reps)
    assert ok, freqs
    ca = np.asarray(jnp.sum(a.generator_calls, 1), float)
    cb = np.asarray(jnp.sum(b.generator_calls, 1), float)
    assert abs(ca.mean() - cb.mean()) <= 4 * np.sqrt((ca.var() + cb.var()) / reps)
