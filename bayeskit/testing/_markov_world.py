r"""The Markov reasoner: a validation world for inference-time scaling, with exact answers.

**The Markov reasoner** (:class:`MarkovWorld`). A "reasoning chain" is a sequence of digit tokens
:math:`x_1, x_2, \dots \in \{0, \dots, K-1\}` produced by a first-order Markov chain (a bigram
language model) with an end-of-sequence token ``EOS = K``; a chain stops at ``EOS`` or after
``max_steps`` digits. Its *answer* is :math:`a(x) = \sum_i x_i \bmod m`; a deterministic checker
declares it correct when :math:`a(x) = a^\star` (the prompt). The outcome reward is
:math:`R(x) = 1` if correct and :math:`\varepsilon` otherwise.

Because the chain is Markov and the answer is a running sum, the state ``(t, last token, partial sum
mod m)`` is sufficient and the **exact value function**

.. math:: V(x_{1:t}) = \mathbb{E}[R(X) \mid X_{1:t} = x_{1:t}]

follows from backward dynamic programming over ``t = max_steps, ..., 0``. With :math:`V` as the
process reward and the value-ratio potential :math:`G_t = V(x_{1:t}) / V(x_{1:t-1})`, the
Feynman–Kac target at the end is the **reward-tilted posterior** :math:`\pi(x) \propto p(x) R(x)`
whose answer marginal is :math:`\pi(a) \propto R(a) P(a(X) = a)` — known exactly here.
Noisy and biased PRMs, :math:`r = \sigma(\operatorname{logit} V + \epsilon)`, are built from the
same table (:meth:`MarkovWorld.noisy_reward_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import ConfigurationError
from bayeskit.inference.scaling import Generator, RewardModel

__all__ = ["ChainState", "MarkovWorld", "random_markov_world"]


class ChainState(NamedTuple):
    """Batch of partial chains: ``tokens`` (N, max_steps) int32 (−1 padded), ``length`` (N,) number
    of digits, ``last`` (N,) last token (``K`` = start), ``total`` (N,) partial sum mod m,
    ``done`` (N,) bool."""

    tokens: jax.Array
    length: jax.Array
    last: jax.Array
    total: jax.Array
    done: jax.Array


def _logit(p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True, eq=False)
class MarkovWorld:
    """A finite Markov "reasoner" with an exact value function.

    Args:
        transition: (K+1, K+1) row-stochastic matrix; row ``k < K`` is the next-token distribution
            after digit ``k``, row ``K`` the distribution of the first token; column ``K`` is EOS.
        modulus: m, answers are sums mod m.
        max_steps: maximal number of digits (a chain is cut there).
        epsilon: outcome reward of a wrong answer (0 gives the hard 0/1 checker).
    """

    transition: np.ndarray
    modulus: int
    max_steps: int
    epsilon: float = 0.05

    def __post_init__(self):
        p = np.asarray(self.transition, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 2:
            raise ConfigurationError(f"`transition` must be a square (K+1, K+1) matrix, got shape {p.shape}")
        if np.any(p < 0) or not np.allclose(p.sum(1), 1.0):
            raise ConfigurationError("`transition` must be row-stochastic (non-negative rows summing to 1)")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigurationError(f"`epsilon` must lie in [0, 1], got {self.epsilon}")
        object.__setattr__(self, "transition", p)

    # ---------------------------------------------------------------- structure
    @property
    def num_digits(self) -> int:
        return self.transition.shape[0] - 1

    @property
    def eos(self) -> int:
        return self.num_digits

    def outcome_table(self, target: int) -> np.ndarray:
        """R(s) for final answers s = 0..m-1."""
        r = np.full(self.modulus, self.epsilon)
        r[int(target) % self.modulus] = 1.0
        return r

    def _backward(self, terminal):
        """Backward DP: ``V[t, last, s, ...]`` for live states with t digits, given terminal values
        ``terminal[s, ...]`` of finished chains."""
        k, m, t_max = self.num_digits, self.modulus, self.max_steps
        p = self.transition
        term = np.asarray(terminal, dtype=np.float64)
        extra = term.shape[1:]
        v = np.zeros((t_max + 1, k + 1, m) + extra)
        v[t_max] = term[None]  # cut at max_steps: finished
        s_idx = np.arange(m)
        for t in range(t_max - 1, -1, -1):
            # next digit d: state (t+1, d, (s+d) % m); EOS: terminal(s)
            nxt = np.stack([v[t + 1, d][(s_idx + d) % m] for d in range(k)], axis=0)  # (K, m, ...)
            cont = np.einsum("ld,dm...->lm...", p[:, :k], nxt)
            v[t] = cont + p[:, k].reshape((k + 1, 1) + (1,) * len(extra)) * term[None]
        return v

    def value_table(self, target: int) -> np.ndarray:
        """Exact :math:`V(t, \\text{last}, s) = \\mathbb{E}[R \\mid \\text{state}]` of live states,
        shape (max_steps + 1, K + 1, m), float64."""
        return self._backward(self.outcome_table(target))

    def answer_distribution(self) -> np.ndarray:
        """Exact distribution of the answer under the generator, shape (m,)."""
        v = self._backward(np.eye(self.modulus))
        return v[0, self.eos, 0]

    def tilted_answer_distribution(self, target: int, temperature: float = 1.0) -> np.ndarray:
        r"""Answer marginal of :math:`\pi(x) \propto p(x) R(x)^{1/\tau}`: :math:`\propto R(a)^{1/\tau} P(a)`."""
        w = self.answer_distribution() * self.outcome_table(target) ** (1.0 / temperature)
        return w / w.sum()

    def success_probability(self, target: int) -> float:
        """P(a(X) = target) for an unguided chain."""
        return float(self.answer_distribution()[int(target) % self.modulus])

    # ---------------------------------------------------------------- generator
    def generator(self) -> Generator:
        """The JAX-native generator; the prompt is the target answer (unused by the chain)."""
        k, m, t_max = self.num_digits, self.modulus, self.max_steps
        logp = jnp.log(jnp.asarray(self.transition, dtype=jnp.result_type(float)))

        def init(prompt, num_particles):
            n = num_particles
            return ChainState(jnp.full((n, t_max), -1, jnp.int32), jnp.zeros((n,), jnp.int32),
                              jnp.full((n,), k, jnp.int32), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))

        def step(key, s: ChainState):
            tok = jax.random.categorical(key, logp[s.last], axis=-1).astype(jnp.int32)
            is_eos = tok == k
            pos = jnp.clip(s.length, 0, t_max - 1)
            write = (~is_eos) & (~s.done)
            rows = jnp.arange(s.tokens.shape[0])
            tokens = s.tokens.at[rows, pos].set(jnp.where(write, tok, s.tokens[rows, pos]))
            length = s.length + write.astype(jnp.int32)
            last = jnp.where(write, tok, s.last)
            total = jnp.where(write, (s.total + tok) % m, s.total)
            done = s.done | is_eos | (length >= t_max)
            return ChainState(tokens, length, last, total, done)

        def is_done(s):
            return s.done

        def answer(s):
            return self.check_answer(s.tokens)

        return Generator(init, step, is_done, answer, t_max)

    def check_answer(self, tokens):
        """Deterministic checker: the answer of each token row (sum of the digits mod m)."""
        tokens = jnp.asarray(tokens)
        return (jnp.sum(jnp.where(tokens >= 0, tokens, 0), axis=-1) % self.modulus).astype(jnp.int32)

    # ---------------------------------------------------------------- reward models
    def _lookup(self, table, s: ChainState, final):
        tbl = jnp.asarray(table, dtype=jnp.result_type(float))
        live = tbl[s.length, s.last, s.total]
        return jnp.where(s.done, jnp.asarray(final, tbl.dtype)[s.total], live)

    def exact_reward_model(self, target: int) -> RewardModel:
        """Process reward = the exact value function V(prefix); outcome reward = R(answer)."""
        v = self.value_table(target)
        r = self.outcome_table(target)

        def process(s):
            return self._lookup(v, s, r)

        def outcome(s):
            return jnp.asarray(r, jnp.result_type(float))[self.check_answer(s.tokens)]

        return RewardModel(process, outcome)

    def noisy_reward_model(self, key, target: int, *, noise_scale: float = 1.0, bias: float = 0.0,
                           length_bias: float = 0.0, noisy_outcome: bool = True) -> RewardModel:
        r"""A noisy / biased PRM :math:`r = \sigma(\operatorname{logit} V + \epsilon)`.

        :math:`\epsilon = b + \lambda t / T + s\, \xi(\text{state})` with :math:`\xi` a fixed standard
        normal per state ``(t, last, partial sum)`` (drawn once from ``key``: the same prefix always
        gets the same score), ``b = bias``, ``λ = length_bias`` (favours long chains when positive),
        ``s = noise_scale``. With ``noisy_outcome`` the outcome reward is the same noisy score of the
        finished chain, otherwise the exact checker.
        """
        r = self.outcome_table(target)
        live, final = self.noisy_tables(key, target, noise_scale=noise_scale, bias=bias, length_bias=length_bias)

        def process(s):
            # finished chains: score the final answer (length bias at its length)
            base = self._lookup(live, s, final)
            return base

        def outcome(s):
            if noisy_outcome:
                return jnp.asarray(final, jnp.result_type(float))[self.check_answer(s.tokens)]
            return jnp.asarray(r, jnp.result_type(float))[self.check_answer(s.tokens)]

        return RewardModel(process, outcome)

    def noisy_tables(self, key, target: int, *, noise_scale: float = 1.0, bias: float = 0.0,
                     length_bias: float = 0.0):
        """NumPy tables ``(live (T+1, K+1, m), final (m,))`` of the noisy PRM (see
        :meth:`noisy_reward_model`)."""
        v = self.value_table(target)
        r = self.outcome_table(target)
        xi = np.asarray(jax.random.normal(key, v.shape), dtype=np.float64)
        xi_final = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (self.modulus,)), dtype=np.float64)
        t = np.arange(v.shape[0]).reshape(-1, 1, 1) / self.max_steps
        live = 1 / (1 + np.exp(-(_logit(v) + bias + length_bias * t + noise_scale * xi)))
        final = 1 / (1 + np.exp(-(_logit(r) + bias + noise_scale * xi_final)))
        return live, final

    # ---------------------------------------------------------------- NumPy twin (benchmarks)
    def numpy_step(self, rng: np.random.Generator, tokens: list[int]) -> tuple[int, bool]:
        """One step of the chain for a single Python-list prefix (for plain-Python baselines)."""
        last = tokens[-1] if tokens else self.eos
        tok = int(rng.choice(self.num_digits + 1, p=self.transition[last]))
        if tok == self.eos:
            return tok, True
        return tok, len(tokens) + 1 >= self.max_steps


def random_markov_world(key, *, num_digits: int = 4, modulus: int = 5, max_steps: int = 6,
                        eos_probability: float = 0.1, concentration: float = 0.7,
                        epsilon: float = 0.05) -> MarkovWorld:
    """A random bigram reasoner: Dirichlet(concentration) rows over digits, fixed EOS probability
    (no EOS as the first token)."""
    k = int(num_digits)
    g = np.asarray(jax.random.gamma(key, concentration, (k + 1, k)), dtype=np.float64)
    rows = g / g.sum(1, keepdims=True)
    p = np.zeros((k + 1, k + 1))
    p[:k, :k] = rows[:k] * (1 - eos_probability)
    p[:k, k] = eos_probability
    p[k, :k] = rows[k]
    return MarkovWorld(p, int(modulus), int(max_steps), float(epsilon))
