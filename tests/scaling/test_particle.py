"""Particle filtering / Gibbs / tempering and baselines on the Markov world with exact answers."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayeskit as bk
from bayeskit.errors import ConfigurationError, DataError, ModelError

S = bk.scaling
WORLD = bk.testing.random_markov_world(jax.random.key(0))
GEN = WORLD.generator()
TARGET = 2
EXACT_RM = WORLD.exact_reward_model(TARGET)
M = WORLD.modulus


def test_value_function_matches_brute_force_enumeration():
    # enumerate every chain of the world, compute P(x) and R(x) exactly
    p = WORLD.transition
    k, t_max = WORLD.num_digits, WORLD.max_steps
    probs = np.zeros(M)

    def rec(last, total, t, prob):
        if t == t_max:
            probs[total] += prob
            return
        probs[total] += prob * p[last, k]
        for d in range(k):
            rec(d, (total + d) % M, t + 1, prob * p[last, d])

    rec(k, 0, 0, 1.0)
    np.testing.assert_allclose(probs, WORLD.answer_distribution(), atol=1e-12)
    r = WORLD.outcome_table(TARGET)
    v = WORLD.value_table(TARGET)
    assert v[0, k, 0] == pytest.approx(probs @ r, abs=1e-12)


def _tv_reps(n, reps, key, chunk=4000):
    init = GEN.init(TARGET, n)

    @jax.jit
    def run(k):
        def one(kk):
            out = S.kernels.smc_sweep(kk, GEN, EXACT_RM, init, weights="value_ratio", ess_threshold=1.0,
                              resampling="multinomial")
            a = GEN.answer(out.particles.state)
            return jnp.zeros(M).at[a].add(jax.nn.softmax(out.log_weights))

        return jax.vmap(one)(jax.random.split(k, min(reps, chunk)))

    keys = [key] + [jax.random.fold_in(key, c) for c in range(1, -(-reps // chunk))]
    p = np.concatenate([np.asarray(run(k)) for k in keys])[:reps]
    exact = WORLD.tilted_answer_distribution(TARGET)
    mean = p.mean(0)
    return 0.5 * np.abs(mean - exact).sum(), 0.5 * (p.std(0) / np.sqrt(reps)).sum()


def test_pf_answer_distribution_converges_to_tilted_posterior():
    # the output distribution (answer of a particle drawn from W_T) is E[pi^N]; its TV to the exact
    # reward-tilted posterior is the SMC bias, O(1/N)
    tv4, se4 = _tv_reps(4, 2000, jax.random.key(1))
    tv32, se32 = _tv_reps(32, 2000, jax.random.key(2))
    assert tv4 - tv32 > 4 * (se4 + se32)
    assert tv32 < 0.25 * tv4
    assert tv32 < 0.02


@pytest.mark.slow
def test_pf_tv_falls_with_n_full():
    # power: TV is ~0.008 at N = 32 and ~0.002 at N = 128 (float64; measured with the previous and the
    # engine-based sweep alike), so the N = 32 -> 128 step needs 3 (se32 + se128) < 0.006, i.e. well
    # over 4000 replications (se32 + se128 = 0.0022 there); 16000 give 0.0011
    tvs = [_tv_reps(n, 16000, jax.random.key(n)) for n in (2, 8, 32, 128)]
    for (a, sa), (b, sb) in zip(tvs[:-1], tvs[1:]):
        assert a - b > 3 * (sa + sb)
    assert tvs[-1][0] < 0.006


def _exact_target_paths(key, num):
    """Exact draws from p(x) R(x) / Z by rejection (R <= 1), with their Particles histories."""
    n = 4 * num
    init = GEN.init(TARGET, n)
    out = S.kernels.smc_sweep(key, GEN, EXACT_RM, init, weights="value_ratio", resample=False)
    r = EXACT_RM.outcome(out.particles.state)
    u = jax.random.uniform(jax.random.fold_in(key, 1), (n,))
    keep = np.flatnonzero(np.asarray(u < r))[:num]
    hist = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1)[keep], out.history)  # (num, T, ...)
    return hist


# slow tier: compile-bound (10 s in the fast suite); capability kept fast by:
# tests/smc/test_engine.py::test_conditional_keeps_the_reference_in_its_slot,
# tests/smc/test_csmc.py::test_csmc_jax_kernel_matches_enumeration
@pytest.mark.slow
def test_conditional_smc_leaves_target_invariant():
    # start from exact target draws, do one conditional-SMC update with N = 2: the new reference
    # is again an exact draw, for any N (Andrieu, Doucet & Holenstein 2010)
    num = 3000
    refs = _exact_target_paths(jax.random.key(3), num)
    assert jax.tree_util.tree_leaves(refs)[0].shape[0] == num
    init = GEN.init(TARGET, 2)

    @jax.jit
    def update(keys, refs):
        def one(k, ref):
            k1, k2 = jax.random.split(k)
            out = S.kernels.smc_sweep(k1, GEN, EXACT_RM, init, weights="value_ratio", reference=ref)
            i = jax.random.categorical(k2, out.log_weights)
            return GEN.answer(out.particles.state)[i]

        return jax.vmap(one)(keys, refs)

    ans = np.asarray(update(jax.random.split(jax.random.key(4), num), refs))
    freq = np.bincount(ans, minlength=M) / num
    exact = WORLD.tilted_answer_distribution(TARGET)
    se = np.sqrt(exact * (1 - exact) / num)
    assert np.all(np.abs(freq - exact) < 4 * se + 1e-12)


@pytest.mark.slow
def test_negative_control_plain_pf_with_two_particles_is_biased():
    # the band used for the conditional-SMC invariance test rejects an unconditional N = 2 filter
    num = 3000
    exact = WORLD.tilted_answer_distribution(TARGET)
    se = np.sqrt(exact * (1 - exact) / num)
    tv2, _ = _tv_reps(2, 2000, jax.random.key(5))
    assert tv2 > 10 * se.max()


@pytest.fixture(scope="module")
def small():
    key = jax.random.key(7)
    return {
        "pf": S.particle_filtering(key, GEN, EXACT_RM, TARGET, budget=8),
        "bon": S.best_of_n(key, GEN, EXACT_RM, TARGET, budget=8),
        "beam": S.beam_search(key, GEN, EXACT_RM, TARGET, budget=8, beam_width=4),
        "pt": S.parallel_tempering(key, GEN, EXACT_RM, TARGET, num_particles=2, temperatures=(1.0, 3.0), budget=9),
    }


@pytest.fixture(scope="module")
def pg_result():
    return S.particle_gibbs(jax.random.key(6), GEN, EXACT_RM, TARGET, num_particles=4, budget=1600,
                            weights="value_ratio")


@pytest.mark.slow
def test_particle_gibbs_driver_chain_targets_posterior(pg_result):
    res = pg_result
    ref = res.extras["reference_answers"][50:]
    exact = WORLD.tilted_answer_distribution(TARGET)
    freq = np.bincount(ref, minlength=M) / ref.size
    # autocorrelated chain: generous band from the iid SE inflated by 3
    se = 3 * np.sqrt(exact * (1 - exact) / ref.size)
    assert np.all(np.abs(freq - exact) < 4 * se)
    assert res.budget == 1600
    assert res.generator_calls <= 1600 * WORLD.max_steps


# slow tier: compile-bound (13 s in the fast suite); capability kept fast by: test_same_key_same_answer_and_selection_modes,
# test_budget.py::test_two_particle_filter_at_zero_temperature_is_beam_search_at_budget_two
@pytest.mark.slow
def test_budget_accounting_and_shapes(small):
    pf = small["pf"]
    assert pf.budget == 8 and pf.answers.shape == (8,) and pf.log_weights.shape == (8,)
    assert pf.history["log_weights"].shape == (WORLD.max_steps, 8)
    # calls = live particles per step (finished particles cost nothing)
    done = pf.history["done"]
    anc = pf.history["ancestors"]
    expected = 8 + sum(int(np.sum(~done[t - 1][anc[t]])) for t in range(1, WORLD.max_steps))
    assert pf.generator_calls == expected <= 8 * WORLD.max_steps
    bon = small["bon"]
    assert bon.budget == 8 and bon.generator_calls <= 8 * WORLD.max_steps
    beam = small["beam"]
    assert beam.budget == 8 and beam.answers.shape == (2,)
    pt = small["pt"]
    assert pt.budget == 8 and pt.history["log_weights"].shape == (2, 2, WORLD.max_steps, 2)
    assert pt.extras["swap_rate"].shape == (1,)


def test_same_key_same_answer_and_selection_modes():
    a = S.particle_filtering(jax.random.key(8), GEN, EXACT_RM, TARGET, budget=8, selection="vote")
    b = S.particle_filtering(jax.random.key(8), GEN, EXACT_RM, TARGET, budget=8, selection="vote")
    np.testing.assert_array_equal(a.answers, b.answers)
    assert a.answer == b.answer
    w = a.answer_distribution(M)
    assert a.answer == int(np.argmax(w))
    c = S.particle_filtering(jax.random.key(8), GEN, EXACT_RM, TARGET, budget=8, selection="argmax")
    assert c.answer == c.answers[np.argmax(c.log_weights)]


def test_accumulated_weights_with_ess_resampling():
    r = S.particle_filtering(jax.random.key(9), GEN, EXACT_RM, TARGET, budget=8, weights="accumulated",
                             ess_threshold=0.5)
    assert r.history["resampled"].dtype == bool
    assert not r.history["resampled"].all()


# slow tier: shares the runs of test_budget_accounting_and_shapes; capability kept fast by:
# tests/test_arviz.py[scaling.particle_filtering]
@pytest.mark.slow
def test_to_arviz(small):
    dt = small["pf"].to_arviz()
    assert dt["history"]["log_weights"].dims == ("step", "particle")
    assert dt.attrs["budget"] == 8
    dt = small["pt"].to_arviz()
    assert dt["posterior"]["answer"].shape == (1, 2)
    assert dt["history"]["log_weights"].dims == ("iteration", "replica", "step", "particle")


@pytest.mark.slow
def test_particle_gibbs_to_arviz(pg_result):
    dt = pg_result.to_arviz()
    assert dt["posterior"]["answer"].shape == (1, 400)
    assert dt["history"]["log_weights"].dims == ("iteration", "step", "particle")


def test_bad_input():
    key = jax.random.key(11)
    with pytest.raises(ConfigurationError, match="budget"):
        S.particle_filtering(key, GEN, EXACT_RM, TARGET, budget=4, num_particles=8)
    with pytest.raises(ConfigurationError, match="budget"):
        S.particle_gibbs(key, GEN, EXACT_RM, TARGET, num_particles=8, budget=4)
    with pytest.raises(ConfigurationError, match="budget"):
        S.parallel_tempering(key, GEN, EXACT_RM, TARGET, num_particles=2, temperatures=(1, 2, 4), budget=4)
    with pytest.raises(ConfigurationError, match="ess_threshold"):
        S.particle_filtering(key, GEN, EXACT_RM, TARGET, budget=4, weights="per_step", ess_threshold=0.5)
    with pytest.raises(ConfigurationError, match="weights"):
        S.particle_filtering(key, GEN, EXACT_RM, TARGET, budget=4, weights="bogus")
    with pytest.raises(ConfigurationError, match="temperature"):
        S.particle_filtering(key, GEN, EXACT_RM, TARGET, budget=4, temperature=0.0)
    bad_rm = S.RewardModel(lambda s: EXACT_RM.process(s) * 3.0)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        S.particle_filtering(key, GEN, bad_rm, TARGET, budget=8)
    nan_rm = S.RewardModel(lambda s: jnp.where(s.length > 1, jnp.nan, 0.5))
    with pytest.raises(DataError, match="NaN"):
        S.best_of_n(key, GEN, nan_rm, TARGET, budget=8)
    wrong = GEN._replace(step=lambda k, s: s._replace(total=s.total[:1]))
    with pytest.raises(ModelError, match="shape"):
        S.particle_filtering(key, wrong, EXACT_RM, TARGET, budget=4)
    wrong_rm = S.RewardModel(lambda s: jnp.zeros(3))
    with pytest.raises(ModelError, match="shape"):
        S.best_of_n(key, GEN, wrong_rm, TARGET, budget=4)


def test_vote_with_all_zero_float32_outcomes_is_a_plain_majority_vote():
    """All-zero outcome rewards in float32: finite, equal vote weights (log 0 was -inf, the weights NaN)."""
    zero_rm = S.RewardModel(EXACT_RM.process, outcome=lambda s: jnp.zeros_like(EXACT_RM.process(s), jnp.float32))
    res = S.best_of_n(jax.random.key(3), GEN, zero_rm, TARGET, budget=16, selection="vote")
    assert np.all(np.isfinite(res.log_weights)) and np.ptp(res.log_weights) == 0
    values, counts = np.unique(res.answers, return_counts=True)
    assert counts[values == res.answer][0] == counts.max()
