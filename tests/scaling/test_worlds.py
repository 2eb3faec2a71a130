"""The learned arithmetic world and the example script."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayeskit as bk

S = bk.scaling


def test_step_checker_is_exact():
    start = jnp.array([3, 3, 3])
    digits = jnp.array([[4, 5, 9], [4, 5, 9], [4, 5, 9]])
    values = jnp.array([[7, 2, 1], [7, 3, -1], [7, -1, -1]])
    s = bk.testing.ArithState(start, digits, values, jnp.array([3, 2, 1]), jnp.array([True, False, False]))
    np.testing.assert_array_equal(bk.testing.ArithmeticWorld.prefix_correct(s), [True, False, True])


def test_arithmetic_generator_and_verifier_shapes():
    world = bk.testing.ArithmeticWorld.random(jax.random.key(0), num_ops=5, hidden=(8,))
    gen = world.generator()
    rm = world.verifier_reward_model(jax.random.key(1))
    prompts, answers = bk.testing.ArithmeticWorld.sample_problems(jax.random.key(2), 3)
    np.testing.assert_array_equal(answers, np.sum(np.asarray(prompts), 1) % 10)
    S.check_generator(gen, rm, prompts[0], 4)
    states = gen.init(prompts[0], 4)
    for t in range(5):
        states = gen.step(jax.random.key(t), states)
    assert bool(states.done.all())
    r = rm.process(states)
    assert r.shape == (4,) and bool(jnp.all((r > 0) & (r < 1)))


@pytest.mark.slow
def test_trained_model_makes_mistakes():
    world = bk.testing.ArithmeticWorld.train(jax.random.key(0), num_iterations=600)
    acc = world.step_accuracy()
    assert 0.6 < acc < 0.9  # trained on 75%-correct worked solutions


@pytest.mark.slow
def test_example_quick(tmp_path):
    out = subprocess.run([sys.executable, "examples/inference_scaling.py", "--quick", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy vs budget" in out.stdout
    assert (tmp_path / "scaling_accuracy_vs_budget.png").exists()
    assert (tmp_path / "fkc_gaussian_mixture.png").exists()
