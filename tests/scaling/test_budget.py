"""Equal-budget accounting across methods, and the budget-2 relation between particle filtering and
beam search (beam search with one beam and two expansions is the zero-temperature limit of a
two-particle filter)."""

import jax
import numpy as np
import pytest

import bayeskit as bk

S = bk.scaling


def _world():
    world = bk.testing.ArithmeticWorld.random(jax.random.key(0), num_ops=5, hidden=(8,))
    prompt = bk.testing.ArithmeticWorld.sample_problems(jax.random.key(2), 1)[0][0]
    return world, world.generator(), world.verifier_reward_model(jax.random.key(1)), prompt


# slow tier: compile-bound (11 s in the fast suite); capability kept fast by:
# test_two_particle_filter_at_zero_temperature_is_beam_search_at_budget_two,
# test_particle.py::test_same_key_same_answer_and_selection_modes
@pytest.mark.slow
def test_equal_generator_calls_at_equal_budget():
    # fixed-length generations (5 steps): at budget B every method extends B partial generations
    # per step
    world, gen, rm, prompt = _world()
    key = jax.random.key(3)
    b = 8
    results = [S.particle_filtering(key, gen, rm, prompt, budget=b),
               S.best_of_n(key, gen, rm, prompt, budget=b),
               S.weighted_majority_vote(key, gen, rm, prompt, budget=b),
               S.beam_search(key, gen, rm, prompt, budget=b, beam_width=4)]
    for res in results:
        assert res.budget == b, res.method
        assert res.generator_calls == b * world.num_ops, res.method


@pytest.mark.slow
def test_particle_gibbs_generator_calls():
    world, gen, rm, prompt = _world()
    pg = S.particle_gibbs(jax.random.key(3), gen, rm, prompt, num_particles=4, budget=8)
    assert pg.budget == 8 and pg.generator_calls == 4 * 5 + 3 * 5  # the reference is not re-generated


def test_two_particle_filter_at_zero_temperature_is_beam_search_at_budget_two():
    # PF with N = 2 resamples both slots from softmax(logit(r) / tau): as tau -> 0 both become copies of
    # the better child, which is exactly beam search with one beam and two expansions (top-1 by the
    # process reward). Their answer distributions must agree (two-sample test, 4 SE), while PF at
    # tau = 1 may drop the better child; this is why beam search is hard to beat at budget 2.
    world = bk.testing.random_markov_world(jax.random.key(0))
    gen = world.generator()
    target = 2
    rm = world.noisy_reward_model(jax.random.key(1), target, noise_scale=1.0)
    reps = 4000
    init = gen.init(target, 2)

    @jax.jit
    def pf(keys):
        return jax.vmap(lambda k: S.kernels.run_particle_filtering(k, gen, rm, init, temperature=1e-4,
                                                                   resampling="multinomial").answer)(keys)

    @jax.jit
    def beam(keys):
        return jax.vmap(lambda k: S.kernels.run_beam_search(k, gen, rm, init, num_beams=1,
                                                            expansions=2).answers[0])(keys)

    a_pf = np.asarray(pf(jax.random.split(jax.random.key(10), reps)))
    a_beam = np.asarray(beam(jax.random.split(jax.random.key(11), reps)))
    m = world.modulus
    f_pf = np.bincount(a_pf, minlength=m) / reps
    f_beam = np.bincount(a_beam, minlength=m) / reps
    pooled = 0.5 * (f_pf + f_beam)
    se = np.sqrt(pooled * (1 - pooled) * 2 / reps)
    assert np.all(np.abs(f_pf - f_beam) <= 4 * se + 1e-12), (f_pf, f_beam)
    # both are far better than a single unguided rollout (P(correct) = 0.17)
    assert f_beam[target] > world.success_probability(target) + 0.2
