"""Host adapters: any Python callable as generator / reward model, tested with a fake LM."""

import jax
import numpy as np
import pytest

import bayeskit as bk
from bayeskit.errors import DataError

S = bk.scaling
EOS = 9
MAX_LEN = 12


class FakeLM:
    """A stand-in for a Hugging Face model: a batched call appends one 'reasoning step' (two
    tokens) to every live prompt; it ends with EOS after a few steps."""

    def __init__(self, wrong_shape=False):
        self.calls = []
        self.wrong_shape = wrong_shape

    def __call__(self, seed, tokens, lengths):
        self.calls.append(tokens.shape[0])
        rng = np.random.default_rng(seed)
        n = tokens.shape[0]
        if self.wrong_shape:
            return tokens[:, :-1], lengths, np.zeros(n, bool)
        out = tokens.copy()
        step = rng.integers(0, 5, size=(n, 2))
        rows = np.arange(n)
        for j in range(2):  # two tokens per step, vectorised over the batch
            pos = np.minimum(lengths + j, MAX_LEN - 1)
            out[rows, pos] = step[:, j]
        new_len = np.minimum(lengths + 2, MAX_LEN)
        done = (new_len >= MAX_LEN - 1) | (rng.random(n) < 0.2)
        return out, new_len, done


def fake_prm(tokens, lengths):
    # prefer generations whose tokens sum to something even, softly
    s = tokens.sum(1)
    return np.where(s % 2 == 0, 0.8, 0.3)


def make(wrong_shape=False, prm=fake_prm):
    lm = FakeLM(wrong_shape)
    gen = S.host_generator(lm, max_length=MAX_LEN, max_steps=5,
                           answer_fn=lambda t, l: t[:, 1:].sum(1) % 3)
    return lm, gen, S.host_reward_model(prm)


def test_host_generator_drives_particle_filtering_batched():
    lm, gen, rm = make()
    prompt = np.array([7])
    res = S.particle_filtering(jax.random.key(0), gen, rm, prompt, budget=8)
    assert res.answers.shape == (8,)
    assert set(np.unique(res.answers)) <= {0, 1, 2}
    # one host call per step with the whole live batch: no per-particle Python loop
    assert len(lm.calls) <= gen.max_steps
    assert lm.calls[0] == 8
    assert sum(lm.calls) == res.generator_calls
    lm2, gen2, rm2 = make()
    res2 = S.particle_filtering(jax.random.key(0), gen2, rm2, prompt, budget=8)
    np.testing.assert_array_equal(res.answers, res2.answers)


def test_reward_model_raising_on_one_particle_keeps_the_others():
    def flaky(tokens, lengths):
        if np.any(tokens[:, 1] == 3):
            bad = np.flatnonzero(tokens[:, 1] == 3)
            if tokens.shape[0] > 1 or bad.size:
                raise RuntimeError("tokenizer crash")
        return fake_prm(tokens, lengths)

    lm, gen, rm = make(prm=flaky)
    with pytest.warns(RuntimeWarning, match="raised on one particle"):
        res = S.best_of_n(jax.random.key(1), gen, rm, np.array([7]), budget=16)
    assert rm.host.failures >= 1
    ok = res.final_states.tokens[:, 1] != 3
    assert ok.any()
    # the particles that did not raise kept their (nonzero) reward
    assert np.all(res.outcome_rewards[ok] > 0)
    assert np.all(res.outcome_rewards[~ok] == 0)


def test_host_generator_wrong_shape_is_a_clear_error():
    lm, gen, rm = make(wrong_shape=True)
    with pytest.raises(DataError, match="shape"):
        S.particle_filtering(jax.random.key(2), gen, rm, np.array([7]), budget=4)


def test_host_reward_out_of_range_is_a_clear_error():
    lm, gen, rm = make(prm=lambda t, l: np.full(t.shape[0], 1.5))
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        S.particle_filtering(jax.random.key(3), gen, rm, np.array([7]), budget=4)
