r"""A learned arithmetic "reasoner" for inference-time scaling (the stand-in for an LLM and its PRM).

:class:`ArithmeticWorld`: a small JAX MLP trained on noisy worked solutions of multi-step modular
arithmetic, a noisy step verifier, and a learned (Math-Shepherd-style) process reward model
(:class:`LearnedPRM`) with its quality measures. Used by the scaling tests, benchmarks and
``bayeskit reproduce scaling``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_positive_int
from bayeskit.errors import ConfigurationError
from bayeskit.inference.scaling import Generator, RewardModel

__all__ = ["ArithState", "ArithmeticWorld", "LearnedPRM"]


class ArithState(NamedTuple):
    """Multi-step arithmetic: ``start`` (N,) a_0, ``digits`` (N, K) the increments d_i,
    ``values`` (N, K) written intermediate results (−1 = not yet), ``step`` (N,), ``done`` (N,)."""

    start: jax.Array
    digits: jax.Array
    values: jax.Array
    step: jax.Array
    done: jax.Array


def _mlp_init(key, sizes):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), jnp.zeros(b)))
    return params


def _mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.gelu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def _arith_features(prev, d, i, num_ops):
    return jnp.concatenate([jax.nn.one_hot(prev, 10), jax.nn.one_hot(d, 10), jax.nn.one_hot(i, num_ops)], -1)


def _arith_step(params, num_ops, key, s: ArithState) -> ArithState:
    """One step of the learned arithmetic generator with MLP ``params`` (finished rows unchanged)."""
    k = num_ops
    rows = jnp.arange(s.start.shape[0])
    i = jnp.clip(s.step, 0, k - 1)
    prev = jnp.where(s.step == 0, s.start, s.values[rows, jnp.clip(s.step - 1, 0, k - 1)])
    logits = _mlp(list(params), _arith_features(prev, s.digits[rows, i], i, k))
    a = jax.random.categorical(key, logits).astype(jnp.int32)
    values = s.values.at[rows, i].set(jnp.where(s.done, s.values[rows, i], a))
    new_step = s.step + (~s.done).astype(jnp.int32)
    return ArithState(s.start, s.digits, values, new_step, s.done | (new_step >= k))


@partial(jax.jit, static_argnums=1)
def _arith_trajectory(params, num_ops, key, s: ArithState) -> ArithState:
    """The prefixes after steps 1..K of one rollout per row, flattened step-major."""
    def body(s, t):
        s = _arith_step(params, num_ops, jax.random.fold_in(key, t), s)
        return s, s

    _, states = jax.lax.scan(body, s, jnp.arange(num_ops))
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), states)


@partial(jax.jit, static_argnums=(1, 5))
def _arith_mc_values(params, num_ops, key, states: ArithState, truth, rollouts):
    rep = jax.tree_util.tree_map(lambda a: jnp.repeat(a, rollouts, axis=0), states)
    rep = jax.lax.fori_loop(0, num_ops, lambda t, r: _arith_step(params, num_ops, jax.random.fold_in(key, t), r), rep)
    right = rep.values[:, num_ops - 1] == jnp.repeat(truth, rollouts)
    return jnp.mean(right.reshape(-1, rollouts), axis=1)


@partial(jax.jit, static_argnums=(4, 5))
def _fit_prm(params, key, states: ArithState, labels, num_ops, batch_size, num_iterations, learning_rate):
    """Adam on the sigmoid cross-entropy of the PRM logit against the soft labels (one compiled loop)."""
    import optax

    opt = optax.adam(learning_rate)
    n = labels.shape[0]

    def loss(p, idx):
        logits = _prm_logit(p, jax.tree_util.tree_map(lambda a: a[idx], states), num_ops)
        return optax.sigmoid_binary_cross_entropy(logits, labels[idx]).mean()

    def body(it, carry):
        p, s = carry
        idx = jax.random.randint(jax.random.fold_in(key, it), (batch_size,), 0, n)
        g = jax.grad(loss)(p, idx)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s

    params, _ = jax.lax.fori_loop(0, num_iterations, body, (params, opt.init(params)))
    return params


@dataclass(frozen=True, eq=False)
class ArithmeticWorld:
    r"""A learned "reasoner" for multi-step modular arithmetic (the stand-in for an LLM).

    Problem: :math:`a_0` and increments :math:`d_1..d_K` (digits); step i writes
    :math:`a_i = (a_{i-1} + d_i) \bmod 10`; the answer is :math:`a_K`. The generator is a small
    JAX MLP :math:`p_\theta(a_i \mid a_{i-1}, d_i, i)` trained (with optax) on noisy worked
    solutions (each written step is right with probability ``step_accuracy``), so it makes
    mistakes like a small language model. The reward is verifier-based: a step checker marks a
    prefix correct when every step so far satisfies the rule, and the PRM is
    :math:`\sigma(\pm c + s\,\xi(\text{prefix}))` (+ if correct, − otherwise) with a fixed
    pseudo-random :math:`\xi` per prefix (an imperfect verifier).
    """

    params: tuple
    num_ops: int = 5

    @staticmethod
    def sample_problems(key, num_problems: int, num_ops: int = 5):
        """Random prompts ``(num_problems, num_ops + 1)`` = (a_0, d_1..d_K) and their answers."""
        prompts = jax.random.randint(key, (num_problems, num_ops + 1), 0, 10)
        answers = jnp.sum(prompts, axis=1) % 10
        return prompts, answers

    @classmethod
    def random(cls, key, *, num_ops: int = 5, hidden=(64, 64)) -> "ArithmeticWorld":
        """An untrained world: the generator MLP (one-hot previous value, digit and step index ->
        ``hidden`` GELU layers -> 10 logits) with He-initialised weights drawn from ``key`` (the
        initialisation :meth:`train` starts from). Cheap: for tests of the plumbing, not of accuracy."""
        num_ops = check_positive_int(num_ops, "num_ops")
        sizes = [10 + 10 + num_ops, *(check_positive_int(h, "hidden") for h in hidden), 10]
        return cls(tuple(_mlp_init(key, sizes)), num_ops)

    @classmethod
    def train(cls, key, *, num_ops: int = 5, step_accuracy: float = 0.75, hidden: int = 64,
              num_iterations: int = 1500, batch_size: int = 256, learning_rate: float = 3e-3):
        """Fit the MLP by maximum likelihood (optax Adam) on noisy worked solutions."""
        import optax

        k_init, k_data = jax.random.split(key)
        params = _mlp_init(k_init, [10 + 10 + num_ops, hidden, hidden, 10])
        opt = optax.adam(learning_rate)
        state = opt.init(params)

        def loss(p, k):
            k1, k2, k3, k4 = jax.random.split(k, 4)
            prev = jax.random.randint(k1, (batch_size,), 0, 10)
            d = jax.random.randint(k2, (batch_size,), 0, 10)
            i = jax.random.randint(k3, (batch_size,), 0, num_ops)
            right = (prev + d) % 10
            noise = jax.random.randint(jax.random.fold_in(k4, 1), (batch_size,), 0, 10)
            y = jnp.where(jax.random.uniform(k4, (batch_size,)) < step_accuracy, right, noise)
            logits = _mlp(p, _arith_features(prev, d, i, num_ops))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def update(p, s, k):
            val, g = jax.value_and_grad(loss)(p, k)
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s, val

        for it in range(num_iterations):
            params, state, _ = update(params, state, jax.random.fold_in(k_data, it))
        return cls(tuple(params), num_ops)

    def _features(self, prev, d, i):
        return _arith_features(prev, d, i, self.num_ops)

    def step_accuracy(self):
        """Model probability of writing the right digit, averaged over (a_{i-1}, d_i, i)."""
        prev, d, i = jnp.meshgrid(jnp.arange(10), jnp.arange(10), jnp.arange(self.num_ops), indexing="ij")
        prev, d, i = prev.ravel(), d.ravel(), i.ravel()
        logp = jax.nn.log_softmax(_mlp(list(self.params), self._features(prev, d, i)))
        return float(jnp.mean(jnp.exp(logp[jnp.arange(prev.size), (prev + d) % 10])))

    def generator(self) -> Generator:
        k = self.num_ops
        params = list(self.params)

        def init(prompt, num_particles):
            return self.initial_states(jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (num_particles, k + 1)))

        def step(key, s: ArithState):
            return _arith_step(params, k, key, s)

        def is_done(s):
            return s.done

        def answer(s):
            return s.values[:, k - 1]

        return Generator(init, step, is_done, answer, k)

    @staticmethod
    def prefix_correct(s: ArithState):
        """Step checker: every written step satisfies :math:`a_i = (a_{i-1} + d_i) \\bmod 10`."""
        k = s.values.shape[1]
        prev = jnp.concatenate([s.start[:, None], s.values[:, :-1]], axis=1)
        ok = s.values == (prev + s.digits) % 10
        written = jnp.arange(k)[None, :] < s.step[:, None]
        return jnp.all(ok | ~written, axis=1)

    def verifier_reward_model(self, key, *, confidence: float = 2.0, noise_scale: float = 1.5) -> RewardModel:
        """Noisy verifier PRM :math:`\\sigma(\\pm c + s\\,\\xi)`, ``ξ`` a fixed standard normal per prefix
        (seeded by ``key`` and a hash of the prefix); the outcome reward is the same verifier on the
        finished chain."""
        k = self.num_ops

        def score(s: ArithState):
            ok = self.prefix_correct(s)
            coeffs = jnp.asarray(31 ** np.arange(k + 1 + k) % 1000003, jnp.int32)
            feats = jnp.concatenate([s.start[:, None], s.digits, s.values], axis=1)
            h = jnp.sum(((feats + 2) * coeffs) % 1000003, axis=1) % 1000003
            xi = jax.vmap(lambda hh: jax.random.normal(jax.random.fold_in(key, hh)))(h)
            return jax.nn.sigmoid(jnp.where(ok, confidence, -confidence) + noise_scale * xi)

        return RewardModel(score, score)

    # ---------------------------------------------------------------- learned PRM (Math-Shepherd style)
    def initial_states(self, prompts) -> ArithState:
        """Empty solutions of a batch of prompts ``(N, num_ops + 1)`` (one row per problem)."""
        prompts = jnp.asarray(prompts, jnp.int32)
        n, k = prompts.shape[0], self.num_ops
        return ArithState(prompts[:, 0], prompts[:, 1:], jnp.full((n, k), -1, jnp.int32), jnp.zeros((n,), jnp.int32),
                          jnp.zeros((n,), bool))

    def _check_prompts(self, prompts, name):
        arr = np.asarray(prompts)
        if arr.ndim != 2 or arr.shape[1] != self.num_ops + 1:
            raise ConfigurationError(f"`{name}` must be prompts of shape (M, {self.num_ops + 1}), got {arr.shape}")
        return arr

    def _heldout_problems(self, key, num_problems, exclude):
        """``num_problems`` random problems none of which is a row of ``exclude`` (redrawn from
        ``fold_in(key, round)`` until enough remain)."""
        banned = set() if exclude is None else {tuple(r) for r in self._check_prompts(exclude, "exclude").tolist()}
        kept = []
        for rnd in range(1000):
            prompts, _ = self.sample_problems(jax.random.fold_in(key, rnd), num_problems, self.num_ops)
            kept += [r for r in np.asarray(prompts).tolist() if tuple(r) not in banned]
            if len(kept) >= num_problems:
                break
        prompts = np.asarray(kept[:num_problems], np.int32)
        return prompts, prompts.sum(1) % 10

    def _prefixes(self, key, prompts):
        """One generator trajectory per problem; its prefixes after steps 1..K, flattened step-major:
        row ``t * N + p`` is problem ``p`` after ``t + 1`` steps."""
        return _arith_trajectory(tuple(self.params), self.num_ops, key, self.initial_states(prompts))

    def monte_carlo_values(self, key, states: ArithState, truth, rollouts: int):
        """Math-Shepherd soft labels: the fraction of ``rollouts`` generator completions of each
        prefix whose final answer equals ``truth`` (a finished prefix is its own completion)."""
        rollouts = check_positive_int(rollouts, "rollouts")
        return _arith_mc_values(tuple(self.params), self.num_ops, key, states, jnp.asarray(truth, jnp.int32),
                                rollouts)

    def train_reward_model(self, key, *, num_problems: int = 2048, rollouts_per_prefix: int = 4, hidden: int = 32,
                           num_iterations: int = 1500, batch_size: int = 256, learning_rate: float = 3e-3,
                           exclude=None) -> "LearnedPRM":
        r"""A learned process reward model, trained the way real PRMs are (Math-Shepherd style).

        ``num_problems`` training problems (none of them a row of ``exclude``) are solved once each
        by this world's generator; each prefix after steps 1..K is labelled by Monte-Carlo
        completion (the fraction of ``rollouts_per_prefix`` generator completions from that prefix
        that reach the right answer; a finished chain is labelled by its own answer), and a small
        network is fitted to these soft labels by sigmoid cross-entropy (optax Adam,
        ``num_iterations`` minibatches of ``batch_size``). The network reads every written step with
        the same weights (an MLP of width ``hidden`` on the one-hot previous value, digit, written
        value and step index, as a sequence model shares its weights across positions), sums the
        step encodings and maps them with the one-hot step count through a head MLP to a logit;
        the score is its sigmoid. The data and capacity are deliberately
        modest: the result is an *imperfect* PRM whose errors are a deterministic function of the
        state (the same for every particle in that state) and correlated across similar states.
        """
        for name, val in (("num_problems", num_problems), ("rollouts_per_prefix", rollouts_per_prefix),
                          ("hidden", hidden), ("num_iterations", num_iterations), ("batch_size", batch_size)):
            check_positive_int(val, name)
        if not (isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate) and learning_rate > 0):
            raise ConfigurationError(f"`learning_rate` must be a positive finite number, got {learning_rate!r}")
        k_prob, k_traj, k_mc, k_init, k_fit = jax.random.split(key, 5)
        prompts, truth = self._heldout_problems(k_prob, int(num_problems), exclude)
        states = self._prefixes(k_traj, prompts)
        truth_rows = np.tile(truth, self.num_ops)
        labels = self.monte_carlo_values(k_mc, states, truth_rows, int(rollouts_per_prefix))
        k_local, k_head = jax.random.split(k_init)
        h = int(hidden)
        params = (_mlp_init(k_local, [30 + self.num_ops, h, h]), _mlp_init(k_head, [h + self.num_ops + 1, h, 1]))
        params = _fit_prm(params, k_fit, states, labels, self.num_ops, int(batch_size), int(num_iterations),
                          float(learning_rate))
        return LearnedPRM(tuple(params), self.num_ops, prompts)

    def reward_model_quality(self, key, reward_model: RewardModel, *, num_problems: int = 512,
                             rollouts_per_prefix: int = 32, exclude=None) -> dict:
        r"""Quality of a PRM on held-out prefixes of this world's generator.

        ``num_problems`` fresh problems (none a row of ``exclude``), one generator trajectory each,
        prefixes after steps 1..K. Returns a dict of floats:

        * ``sibling_accuracy`` (± ``sibling_accuracy_se`` over parents): for every *correct* prefix
          with steps left, the probability that the PRM scores the right next step strictly above
          a wrong one (ties count ½), the wrong step drawn from the generator given that it is
          wrong — the decision a beam search or a resampling step makes;
        * ``auc`` (± ``auc_se``, Hanley–McNeil): P(score of a correct prefix > score of a wrong
          prefix at the same step), pooled over steps;
        * ``ece``: expected calibration error (10 equal-width bins) against the Monte-Carlo value
          of each prefix (``rollouts_per_prefix`` completions), and ``brier`` against that value;
        * ``sibling_error_rate`` (all wrong siblings, unweighted) and ``shared_error_rate``: the
          probability of a ranking error given an error on *another* prefix whose last step is the
          same (step index, previous value, digit, wrong value) — equal to ``sibling_error_rate``
          when errors are independent across states, larger when they are systematic;
        * ``same_state_agreement``: fraction of prefixes scored identically when they appear in
          another particle slot (1 for a PRM that is a function of the state).
        """
        for name, val in (("num_problems", num_problems), ("rollouts_per_prefix", rollouts_per_prefix)):
            check_positive_int(val, name, minimum=2)
        k = self.num_ops
        k_prob, k_traj, k_mc = jax.random.split(key, 3)
        prompts, truth = self._heldout_problems(k_prob, int(num_problems), exclude)
        n = prompts.shape[0]
        states = self._prefixes(k_traj, prompts)
        score = jax.jit(reward_model.process)
        r = np.asarray(score(states), np.float64)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 7), r.shape[0]))
        r_perm = np.asarray(score(jax.tree_util.tree_map(lambda a: a[perm], states)), np.float64)
        same = float(np.mean(r_perm == r[perm]))
        ok = np.asarray(self.prefix_correct(states))
        value = np.asarray(self.monte_carlo_values(k_mc, states, np.tile(truth, k), int(rollouts_per_prefix)))
        # AUC within steps (pairs at the same step), pooled
        wins = pairs = 0.0
        n_pos = n_neg = 0
        for t in range(k):
            rt, okt = r[t * n:(t + 1) * n], ok[t * n:(t + 1) * n]
            pos, neg = rt[okt], rt[~okt]
            if pos.size and neg.size:
                wins += np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
                pairs += pos.size * neg.size
                n_pos += pos.size
                n_neg += neg.size
        auc = wins / pairs if pairs else np.nan
        q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
        auc_se = np.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2))
                         / max(n_pos * n_neg, 1))
        bins = np.clip((r * 10).astype(int), 0, 9)
        ece = sum(np.sum(bins == b) / r.size * abs(r[bins == b].mean() - value[bins == b].mean())
                  for b in range(10) if np.any(bins == b))
        brier = float(np.mean((r - value) ** 2))
        # siblings: every correct, unfinished parent (the empty solution and the prefixes after 1..K-1 steps)
        par = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[: (k - 1) * n]], 0),
                                     self.initial_states(prompts), states)
        keep = np.asarray(self.prefix_correct(par) & ~par.done)
        par = jax.tree_util.tree_map(lambda a: a[keep], par)
        m = int(keep.sum())
        rows = jnp.arange(m)
        i = par.step
        prev = jnp.where(i == 0, par.start, par.values[rows, jnp.clip(i - 1, 0, k - 1)])
        d = par.digits[rows, i]
        probs = np.asarray(jax.nn.softmax(_mlp(list(self.params), self._features(prev, d, i)), axis=-1), np.float64)
        kids = jax.tree_util.tree_map(lambda a: jnp.repeat(a, 10, axis=0), par)
        cand = jnp.tile(jnp.arange(10, dtype=jnp.int32), m)
        kids_i = jnp.repeat(i, 10)
        values = kids.values.at[jnp.arange(10 * m), kids_i].set(cand)
        kids = kids._replace(values=values, step=kids_i + 1, done=kids_i + 1 >= k)
        s_kid = np.asarray(score(kids), np.float64).reshape(m, 10)
        right = np.asarray((prev + d) % 10)
        s_right = s_kid[np.arange(m), right][:, None]
        beat = (s_right > s_kid) + 0.5 * (s_right == s_kid)
        wrong = np.ones((m, 10), bool)
        wrong[np.arange(m), right] = False
        pw = probs * wrong
        acc_parent = np.sum(pw * beat, 1) / np.maximum(np.sum(pw, 1), 1e-300)
        err = (s_kid >= s_right)[wrong].reshape(m, 9).astype(float)
        w_idx = np.tile(np.arange(10), (m, 1))[wrong].reshape(m, 9)
        group = ((np.asarray(i)[:, None] * 10 + np.asarray(prev)[:, None]) * 10 + np.asarray(d)[:, None]) * 10 + w_idx
        g_ids, inv = np.unique(group.ravel(), return_inverse=True)
        n_g = np.bincount(inv, minlength=g_ids.size).astype(float)
        e_g = np.bincount(inv, weights=err.ravel(), minlength=g_ids.size)
        denom = np.sum(e_g * (n_g - 1))
        shared = float(np.sum(e_g * (e_g - 1)) / denom) if denom > 0 else np.nan
        return {
            "sibling_accuracy": float(acc_parent.mean()),
            "sibling_accuracy_se": float(acc_parent.std(ddof=1) / np.sqrt(m)),
            "num_parents": m,
            "auc": float(auc), "auc_se": float(auc_se),
            "ece": float(ece), "brier": brier,
            "mean_score": float(r.mean()), "mean_value": float(value.mean()),
            "sibling_error_rate": float(err.mean()), "shared_error_rate": shared,
            "same_state_agreement": same,
        }


def _prm_logit(params, s: ArithState, num_ops: int):
    """PRM logit of each prefix. Each written step i is read by the same small network from its
    one-hot local features (previous value, digit, written value, i); the step encodings are
    summed and a head network maps (sum, one-hot of the number of steps) to the logit."""
    local, head = params
    k = num_ops
    prev = jnp.concatenate([s.start[..., None], s.values[..., :-1]], -1)
    idx = jnp.broadcast_to(jnp.arange(k), s.values.shape)
    x = jnp.concatenate([jax.nn.one_hot(prev, 10), jax.nn.one_hot(s.digits, 10), jax.nn.one_hot(s.values, 10),
                         jax.nn.one_hot(idx, k)], -1)
    written = (idx < s.step[..., None]).astype(x.dtype)
    enc = jnp.sum(_mlp(list(local), x) * written[..., None], axis=-2)
    return _mlp(list(head), jnp.concatenate([jax.nn.gelu(enc), jax.nn.one_hot(s.step, k + 1)], -1))[..., 0]


@dataclass(frozen=True, eq=False)
class LearnedPRM:
    """A process reward model learned by :meth:`ArithmeticWorld.train_reward_model`: network
    ``params`` ``(step encoder, head)``, and the ``train_prompts`` it was trained on (to check that
    evaluation problems are disjoint from them)."""

    params: tuple
    num_ops: int
    train_prompts: np.ndarray

    def score(self, s: ArithState):
        """PRM score in (0, 1) of each prefix (a pure, jittable function of the state)."""
        return jax.nn.sigmoid(_prm_logit(self.params, s, self.num_ops))

    def reward_model(self) -> RewardModel:
        """The PRM as a :class:`RewardModel`; the outcome reward is the same model on the finished
        chain (no exact checker)."""
        return RewardModel(self.score, self.score)
