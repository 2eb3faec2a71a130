"""The learned (Math-Shepherd-style) process reward model of the arithmetic world."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayeskit as bk
from bayeskit.errors import BayeskitError, ConfigurationError

S = bk.scaling


def exact_world(step_accuracy=0.75, num_ops=5):
    """An ArithmeticWorld whose MLP is set by hand: hidden unit (p, d) fires when the previous
    value is p and the digit d (GELU of +1; one match 0; none GELU(-1)), and votes with weight L
    for (p + d) mod 10. The right value's logit then exceeds every wrong one's by
    L (GELU(1) + 9 GELU(-1) - 8 GELU(-1)) = L (GELU(1) + GELU(-1)), and L is set so that the right
    value has probability ``step_accuracy`` (errors uniform over the 9 wrong values)."""
    gelu = lambda x: float(jax.nn.gelu(jnp.asarray(x)))  # noqa: E731
    gap = gelu(1.0) + gelu(-1.0)
    big_l = np.log(9 * step_accuracy / (1 - step_accuracy)) / gap
    w1 = np.zeros((20 + num_ops, 100))
    w2 = np.zeros((100, 10))
    for p in range(10):
        for d in range(10):
            w1[p, 10 * p + d] = w1[10 + d, 10 * p + d] = 1.0
            w2[10 * p + d, (p + d) % 10] = big_l
    params = ((jnp.asarray(w1), -jnp.ones(100)), (jnp.asarray(w2), jnp.zeros(10)))
    return bk.testing.ArithmeticWorld(params, num_ops)


@pytest.fixture(scope="module")
def world():
    return exact_world(0.75)


def test_hand_set_generator_has_the_intended_step_accuracy(world):
    assert abs(world.step_accuracy() - 0.75) < 1e-4


@pytest.fixture(scope="module")
def prm(world):
    return world.train_reward_model(jax.random.key(1))  # the defaults: 2048 problems, 1500 iterations


# slow tier: compile-bound (18 s in the fast suite); capability kept fast by:
# test_hand_set_generator_has_the_intended_step_accuracy, test_bad_training_arguments_raise (training the PRM is most
# of it)
@pytest.mark.slow
def test_learned_prm_ranks_right_steps_above_wrong_ones(world, prm):
    q = world.reward_model_quality(jax.random.key(2), prm.reward_model(), num_problems=256,
                                   rollouts_per_prefix=8, exclude=prm.train_prompts)
    # under "no skill" each parent's sibling accuracy has mean 1/2 and lies in [0, 1], so its
    # standard error is at most 0.5 / sqrt(#parents); demand 4 such standard errors above chance
    margin = 4 * 0.5 / np.sqrt(q["num_parents"])
    assert q["num_parents"] > 300
    assert q["sibling_accuracy"] > 0.5 + margin, q
    assert q["auc"] > 0.5 + 4 * q["auc_se"], q
    assert q["same_state_agreement"] == 1.0
    assert 0.0 <= q["ece"] <= 1.0 and 0.0 <= q["brier"] <= 1.0


# slow tier: compile-bound (9 s in the fast suite); capability kept fast by: test_bad_training_arguments_raise
@pytest.mark.slow
def test_learned_prm_outputs_and_training_problems(world, prm):
    gen = world.generator()
    prompts, _ = bk.testing.ArithmeticWorld.sample_problems(jax.random.key(3), 4)
    s = gen.init(prompts[0], 8)
    rm = prm.reward_model()
    for t in range(world.num_ops):
        s = gen.step(jax.random.fold_in(jax.random.key(4), t), s)
        r = np.asarray(jax.jit(rm.process)(s))
        assert r.shape == (8,) and np.all((r > 0) & (r < 1))
    np.testing.assert_array_equal(rm.outcome(s), rm.process(s))
    assert prm.train_prompts.shape == (2048, world.num_ops + 1)
    # a particle filter runs with it
    res = S.particle_filtering(jax.random.key(5), gen, rm, prompts[1], budget=4)
    assert 0 <= int(res.answer) < 10


# slow tier: uses the fixture of a slow-tier test; capability kept fast by:
# test_bad_training_arguments_raise (shares the PRM trained for test_learned_prm_ranks_right_steps_above_wrong_ones)
@pytest.mark.slow
def test_learned_prm_is_deterministic_and_respects_exclude(world, prm):
    kw = dict(num_iterations=5)  # the fixture's shapes: no recompilation
    a = world.train_reward_model(jax.random.key(7), **kw)
    b = world.train_reward_model(jax.random.key(7), **kw)
    for pa, pb in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(a.train_prompts, b.train_prompts)
    # excluding the very problems it would draw forces different (disjoint) training problems
    c = world.train_reward_model(jax.random.key(7), exclude=a.train_prompts, **kw)
    assert c.train_prompts.shape == a.train_prompts.shape
    assert not {tuple(p) for p in c.train_prompts.tolist()} & {tuple(p) for p in a.train_prompts.tolist()}
    # excluding half of them keeps the other half (in draw order, minus repeats of the excluded
    # half) and tops up with fresh problems
    d = world.train_reward_model(jax.random.key(7), exclude=a.train_prompts[:1024], **kw)
    first = {tuple(p) for p in a.train_prompts[:1024].tolist()}
    kept = np.array([p for p in a.train_prompts[1024:].tolist() if tuple(p) not in first])  # repeats dropped
    assert len(kept) > 1000
    np.testing.assert_array_equal(d.train_prompts[:len(kept)], kept)
    assert not {tuple(p) for p in d.train_prompts.tolist()} & {tuple(p) for p in a.train_prompts[:1024].tolist()}


# slow tier: uses the fixture of a slow-tier test; capability kept fast by:
# test_bad_training_arguments_raise (shares the PRM trained for test_learned_prm_ranks_right_steps_above_wrong_ones)
@pytest.mark.slow
def test_learned_prm_scores_a_state_the_same_in_every_slot(prm):
    start = jnp.array([3, 3, 1])
    digits = jnp.array([[4, 5, 9, 0, 2]] * 3)
    values = jnp.array([[7, 2, -1, -1, -1], [7, 3, -1, -1, -1], [7, 2, -1, -1, -1]])
    s = bk.testing.ArithState(start, digits, values, jnp.array([2, 2, 2]), jnp.zeros(3, bool))
    swapped = jax.tree_util.tree_map(lambda a: a[jnp.array([2, 0, 1])], s)
    score = jax.jit(prm.score)
    r, r2 = np.asarray(score(s)), np.asarray(score(swapped))
    np.testing.assert_array_equal(r2, r[[2, 0, 1]])
    # a duplicated state gets exactly the same score in another slot
    dup = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a[:1]]), s)
    rd = np.asarray(score(dup))
    assert rd[0] == rd[3]


@pytest.mark.parametrize("kwargs, name", [
    ({"num_problems": 0}, "num_problems"),
    ({"rollouts_per_prefix": 0}, "rollouts_per_prefix"),
    ({"hidden": -3}, "hidden"),
    ({"num_iterations": 1.5}, "num_iterations"),
    ({"batch_size": True}, "batch_size"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"exclude": np.zeros((3, 4), int)}, "exclude"),
])
def test_bad_training_arguments_raise(world, kwargs, name):
    with pytest.raises(ConfigurationError, match=name) as info:
        world.train_reward_model(jax.random.key(0), **kwargs)
    assert isinstance(info.value, BayeskitError)


# slow tier: uses the fixture of a slow-tier test; capability kept fast by:
# test_bad_training_arguments_raise (shares the PRM trained for test_learned_prm_ranks_right_steps_above_wrong_ones)
@pytest.mark.slow
def test_bad_quality_arguments_raise(world, prm):
    with pytest.raises(ConfigurationError, match="num_problems"):
        world.reward_model_quality(jax.random.key(0), prm.reward_model(), num_problems=1)
    with pytest.raises(ConfigurationError, match="rollouts_per_prefix"):
        world.reward_model_quality(jax.random.key(0), prm.reward_model(), rollouts_per_prefix=0)
