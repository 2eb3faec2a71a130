r"""Inference-time scaling by particle methods over a generator and a reward model.

Puri, Sudalairaj, Xu, Xu & Srivastava (2025), "A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods". Generation is a
state-space model: the generator is the transition :math:`M_t(x_{1:t-1}, \cdot)` (one reasoning
step), a process reward model scores the prefix, :math:`r_t = r(x_{1:t}) \in [0, 1]`, and the target
is the Feynman–Kac measure

.. math:: \pi(x_{1:T}) \propto p(x_{1:T}) \prod_{t} G_t(x_{1:t})^{1/\tau}.

Log-potentials (option ``weights``):

* ``"per_step"`` (the paper and its reference code): :math:`\log G_t = \operatorname{logit}(r_t)`,
  weights reset at every resampling, which happens at every step (``ess_threshold = 1``).
* ``"accumulated"``: the same potential, weights carried between resamplings
  (:math:`\log w_t = \log w_{t-1} + \operatorname{logit}(r_t)/\tau`), so resampling may be triggered
  by the ESS.
* ``"value_ratio"``: :math:`\log G_t = \log r_t - \log r_{t-1}`; the product telescopes to the
  final reward, so the target is the reward-tilted posterior :math:`p(x) r(x)^{1/\tau}` — exact when
  :math:`r` is the value function :math:`V(x_{1:t}) = \mathbb{E}[R \mid x_{1:t}]`.

Resampling probabilities are :math:`\operatorname{softmax}(\log w / \tau)`. A finished particle
is not extended (no generator call), keeps its reward and stays in the pool: under ``per_step`` /
``accumulated`` it is re-weighted by :math:`\operatorname{logit}(r_{\text{final}})` at every
later step, as in the reference code; under ``value_ratio`` its potential is 1. Once every particle
has finished, weights are frozen and no more resampling happens; unlike the reference code (its_hub),
the final pool is not resampled after the last step (that could only lose the highest-weight
particle and add noise to a weighted vote).

**Answer selection.** With a noisy verifier, the single highest-weight particle (``argmax``, the
reference code's default) is increasingly often a wrong generation with an outlying score as N
grows; a weighted majority vote over the final pool (``selection="vote"``) is robust (see the
learned-world results in ``docs/scaling.md``). With N = 2, beam search with one beam and two
expansions is the :math:`\tau \to 0` limit of the filter.

**Particle Gibbs** (Andrieu, Doucet & Holenstein 2010; Puri et al. §3.2): iterate conditional SMC;
the reference trajectory of the previous iteration is pinned to the last slot and survives
resampling (its ancestor is itself), the other particles resample multinomially over all
:math:`N`; the next reference is drawn :math:`\propto W_T` and traced back through the ancestors.
Budget = iterations × N.

**Parallel tempering**: ``K`` particle-Gibbs chains at temperatures :math:`\tau_1 < \dots <
\tau_K`; after each sweep adjacent chains propose to swap references (even/odd pairs alternating),
accepted with probability
:math:`\min\{1, \exp[(1/\tau_k - 1/\tau_{k+1})(S(x_{k+1}) - S(x_k))]\}` where
:math:`S(x) = \sum_t \log G_t(x_{1:t})` (the generator's density cancels). Budget = iterations ×
K × N. The answer is read from the chain at :math:`\tau_1`.

**Baselines** with the same budget accounting: best-of-N (highest outcome reward, or weighted
majority vote), and beam search (keep ``N / M`` beams, expand each ``M`` times, keep the top by
process reward).

**Budget.** ``budget`` counts *rollouts*: one rollout is one particle carried to the end, i.e. up to
``max_steps`` generator calls. Every result also reports ``generator_calls``: the number of
(particle, step) extensions actually made (finished particles and pinned reference particles cost
nothing), which is the number of calls a batched LLM server would answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_choice, check_in_interval, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference.scaling.generator import (
    Generator,
    RewardModel,
    check_generator,
    guarded_step,
    raise_pending_errors,
)
from bayeskit.inference.smc import engine as smc_engine
from bayeskit.inference.smc import FeynmanKac
from bayeskit.inference.smc.resampling import ess as ess_fn
from bayeskit.inference.smc.resampling import adaptive, conditional, frozen, get_scheme
from bayeskit.progress import progress, tick

__all__ = [
    "Particles",
    "SweepOutput",
    "smc_sweep",
    "select_answer",
    "ScalingResult",
    "particle_filtering",
    "particle_gibbs",
    "parallel_tempering",
    "best_of_n",
    "weighted_majority_vote",
    "beam_search",
]

WEIGHTS = ("per_step", "accumulated", "value_ratio")
SELECTIONS = ("argmax", "vote", "sample")
_CLIP = 1e-7


class Particles(NamedTuple):
    """Particles: the generator ``state`` pytree and the current process ``reward`` (N,)."""

    state: Any
    reward: jax.Array


class SweepOutput(NamedTuple):
    """One SMC sweep over ``T = max_steps`` steps.

    ``particles`` (final Particles), ``log_weights`` (N,) final, ``history`` (Particles with
    leading (T, N)), ``history_log_weights`` (T, N), ``potentials`` (T, N) untempered
    :math:`\\log G_t`, ``ancestors`` (T, N), ``resampled`` (T,), ``ess`` (T,), ``calls`` (T,)
    generator calls per step, ``bad_reward`` (T,) a reward outside [0, 1] or NaN at that step,
    ``bad_index`` (T,) first offending particle.
    """

    particles: Particles
    log_weights: jax.Array
    history: Particles
    history_log_weights: jax.Array
    potentials: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    ess: jax.Array
    calls: jax.Array
    bad_reward: jax.Array
    bad_index: jax.Array


def _logit(r):
    r = jnp.clip(r, _CLIP, 1.0 - _CLIP)
    return jnp.log(r) - jnp.log1p(-r)


def _log_potential(weights, prev: Particles, new: Particles, prev_done, first):
    """Untempered log-potential :math:`\\log G_t` of each particle (``weights``: a name or its
    index in ``WEIGHTS``, possibly traced)."""
    code = WEIGHTS.index(weights) if isinstance(weights, str) else weights
    lr_new = jnp.log(jnp.clip(new.reward, 0.0, 1.0))
    lr_prev = jnp.where(first, 0.0, jnp.log(jnp.clip(prev.reward, 0.0, 1.0)))
    ratio = jnp.where(prev_done, 0.0, lr_new - lr_prev)
    ratio = jnp.where(jnp.isnan(ratio), -jnp.inf, ratio)
    return jnp.where(code == 2, ratio, _logit(new.reward))


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _set_slot(tree, slot, value):
    return jax.tree_util.tree_map(lambda a, v: a.at[slot].set(v), tree, value)


class _Slot(NamedTuple):
    """Engine particles: generation ``state``, process ``reward``, untempered potential ``phi``
    of the last step, and ``live`` (the slot was extended by a generator call at that step)."""

    state: Any
    reward: jax.Array
    phi: jax.Array
    live: jax.Array


def smc_sweep(key, generator: Generator, reward_model: RewardModel, init_states, *, weights: str = "per_step",
              temperature=1.0, ess_threshold: float = 1.0, resampling="systematic", reference=None,
              resample: bool = True, progress_bar: bool = False) -> SweepOutput:
    """One (conditional) SMC sweep over a generator; pure, call inside ``jit`` / ``vmap``.

    Args:
        key: ``jax.random`` key.
        generator: a :class:`~bayeskit.inference.scaling.generator.Generator`.
        reward_model: a :class:`~bayeskit.inference.scaling.generator.RewardModel`.
        init_states: ``generator.init(prompt, N)``.
        weights: ``"per_step"``, ``"accumulated"`` or ``"value_ratio"`` (module docstring).
        temperature: softmax temperature :math:`\\tau` (may be traced).
        ess_threshold: resample when ESS < threshold × N (1: every step).
        resampling: scheme name or function ``(key, log_weights, num_samples) -> indices``; with a
            ``reference`` the free particles always resample multinomially over all N.
        reference: ``None`` or a Particles history with leading axis T: the conditional path,
            pinned to the last slot (conditional SMC).
        resample: ``False`` runs N independent rollouts (best-of-N).

    The sweep is the shared SMC engine (:func:`bayeskit.inference.smc.engine.init` /
    :func:`~bayeskit.inference.smc.engine.step`) over the Feynman–Kac model whose particles are
    generations: ``M_0`` is the first generator step from ``init_states``, ``M_t`` the guarded
    step (finished particles unchanged; with a ``reference``, the last slot is set to it and its
    ancestor is itself), ``log G_t`` the potential of ``weights`` divided by the temperature. Once
    every particle has finished, the engine step is skipped (weights frozen, no resampling).
    """
    step = guarded_step(generator)
    num_steps = generator.max_steps
    n = jax.tree_util.tree_leaves(init_states)[0].shape[0]
    dtype = jnp.result_type(float)
    inv_temp = 1.0 / jnp.asarray(temperature, dtype)
    has_ref = reference is not None
    x0 = Particles(init_states, jnp.ones((n,), dtype))
    threshold = jnp.where(jnp.asarray(resample), jnp.asarray(ess_threshold, dtype), 0.0)

    def extend(k, t, prev: Particles, first):
        prev_done = generator.is_done(prev.state)
        new_state = step(k, prev.state)
        reward = reward_model.process(new_state).astype(dtype)
        reward = jnp.where(prev_done, prev.reward, reward)  # finished: keep the score, no new call
        new = Particles(new_state, reward)
        live = ~prev_done
        if has_ref:
            new = _set_slot(new, n - 1, _take(reference, t))
            live = live.at[n - 1].set(False)
        phi = _log_potential(weights, prev, new, prev_done, first)
        return _Slot(new.state, new.reward, phi, live)

    fk = FeynmanKac(
        num_steps,
        lambda k, num: extend(k, 0, x0, True),
        lambda k, t, xp: extend(k, t, Particles(xp.state, xp.reward), False),
        lambda t, xp, x: x.phi * inv_temp,
    )
    # the reference (last slot) is placed by `extend`, whose potential must see it
    inner = (conditional(reference, slot=n - 1, pin=False) if has_ref else adaptive(resampling, threshold))
    strategy = frozen(inner, lambda x: generator.is_done(x.state),
                      lambda x: x._replace(phi=jnp.zeros_like(x.phi), live=jnp.zeros_like(x.live)))

    def record(particles, log_weights):
        bad = ~((particles.reward >= 0.0) & (particles.reward <= 1.0)) & particles.live
        return (Particles(particles.state, particles.reward), log_weights, particles.phi,
                jnp.sum(particles.live).astype(jnp.int32), jnp.any(bad), jnp.argmax(bad).astype(jnp.int32))

    stf, out = smc_engine.run(key, fk, n, strategy=strategy, accumulators=(smc_engine.summary(record),),
                              keep_ancestors=True, progress_bar=progress_bar)
    ((hist, hlw, phi, calls, bad, bad_idx),) = out.records
    xf = Particles(stf.particles.state, stf.particles.reward)
    return SweepOutput(xf, stf.log_weights, hist, hlw, phi, out.info.ancestors, out.info.resampled,
                       out.info.ess, calls, bad, bad_idx)


def _path(out: SweepOutput, index):
    b = smc_engine.trace_lineage(out.ancestors, index)
    t = jnp.arange(b.shape[0])
    states = jax.tree_util.tree_map(lambda a: a[t, b], out.history)
    score = jnp.sum(jnp.where(jnp.isfinite(out.potentials[t, b]), out.potentials[t, b], -1e30))
    return states, score


def _log_outcome(outcome) -> np.ndarray:
    """log R_i in float64, with R_i = 0 mapped to the log of the smallest normal float64 (finite): in
    float32, ``log(max(R, 1e-300))`` is -inf and all-zero rewards gave NaN vote weights."""
    return np.log(np.maximum(np.asarray(outcome, np.float64), np.finfo(np.float64).tiny))


def select_answer(key, answers, log_weights, selection):
    """Choose the answer: ``argmax`` (highest weight), ``vote`` (weighted majority vote:
    :math:`\\arg\\max_a \\sum_i W_i 1[a_i = a]`) or ``sample`` (:math:`i \\sim W`); ``selection`` is a
    name or its index in ``SELECTIONS`` (may be traced). Returns ``(answer, index)``."""
    code = SELECTIONS.index(selection) if isinstance(selection, str) else selection
    lw = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    w = jnp.exp(lw - jax.nn.logsumexp(lw))
    votes = jnp.sum(w[None, :] * (answers[:, None] == answers[None, :]), axis=1)
    i = jnp.stack([jnp.argmax(lw), jnp.argmax(votes), jax.random.categorical(key, lw)])[code]
    return answers[i], i.astype(jnp.int32)


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScalingResult:
    """Result of an inference-time-scaling algorithm.

    Attributes:
        method: algorithm name.
        answer: the chosen answer.
        selected_index: index of the chosen particle in the final pool.
        answers: (N,) answers of the final pool; ``log_weights`` (N,) their final log-weights;
            ``outcome_rewards`` (N,).
        budget: budget spent, in rollouts; ``generator_calls``: particle extensions made;
            ``reward_calls``: process-reward evaluations made.
        history: dict of arrays over steps (and iterations / chains for particle Gibbs and
            parallel tempering): ``log_weights``, ``ancestors``, ``process_rewards``, ``ess``,
            ``resampled``, ``generator_calls``, ``done``.
        final_states: the generator states of the final pool.
        extras: method-specific arrays (reference answers per iteration, swap acceptance, ...).
    """

    method: str
    answer: int
    selected_index: int
    answers: np.ndarray
    log_weights: np.ndarray
    outcome_rewards: np.ndarray
    budget: int
    generator_calls: int
    reward_calls: int
    history: dict = field(repr=False)
    final_states: Any = field(repr=False)
    extras: dict = field(default_factory=dict, repr=False)

    @property
    def weights(self) -> np.ndarray:
        """Normalised final weights (N,)."""
        lw = np.asarray(self.log_weights, dtype=float)
        lw = np.where(np.isnan(lw), -np.inf, lw)
        w = np.exp(lw - np.max(lw))
        return w / w.sum()

    def answer_distribution(self, num_answers: int) -> np.ndarray:
        """Weighted answer distribution :math:`\\sum_i W_i \\delta_{a_i}` over ``0..num_answers-1``."""
        return np.bincount(np.asarray(self.answers), weights=self.weights, minlength=num_answers)[:num_answers]

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (``answer`` draws: the reference's answer per
        iteration for particle Gibbs / parallel tempering, else the final pool resampled to equal weights),
        ``sample_stats`` (per-step ess, resampled, generator_calls: the run as one draw, or one draw per
        iteration), ``particles`` (final pool), ``history`` (per-particle arrays per step), attrs (method,
        answer, budget, generator calls)."""
        from bayeskit.diagnostics import equal_weight_draws, one_chain, one_run, to_datatree

        lead = {2: ["step", "particle"], 3: ["iteration", "step", "particle"],
                4: ["iteration", "replica", "step", "particle"]}
        lead1 = {1: ["step"], 2: ["iteration", "step"], 3: ["iteration", "replica", "step"]}
        per_particle = {"log_weights", "ancestors", "process_rewards", "done"}
        hist = {k: np.asarray(v) for k, v in self.history.items() if k in per_particle}
        stats = {k: np.asarray(v) for k, v in self.history.items() if k not in per_particle}
        dims = {"particles/answer": ["particle"], "log_weight": ["particle"], "outcome_reward": ["particle"]}
        for k, v in {**hist, **stats}.items():
            dims[k] = (lead if k in per_particle else lead1).get(v.ndim, [])[: v.ndim]
        if "reference_answers" in self.extras:  # a Markov chain over iterations: draws are iterations
            posterior = one_chain({"answer": self.extras["reference_answers"]})
            stats = one_chain(stats)
            for k in stats:
                dims[k] = dims[k][1:]
        else:
            posterior = one_chain({"answer": equal_weight_draws(self.answers, self.log_weights)})
            stats = one_run(stats)
        groups = {"posterior": posterior, "sample_stats": stats,
                  "particles": {"answer": self.answers, "log_weight": self.log_weights,
                                "outcome_reward": self.outcome_rewards},
                  "history": hist}
        return to_datatree(groups, dims=dims,
                           attrs={"method": self.method, "answer": int(self.answer), "budget": int(self.budget),
                                  "generator_calls": int(self.generator_calls),
                                  "reward_calls": int(self.reward_calls)})


# ------------------------------------------------------------------------------- drivers


def _check_common(key, generator, reward_model, prompt, temperature, selection, weights=None,
                  ess_threshold=None, num_particles=2):
    check_key(key)
    check_generator(generator, reward_model, prompt, num_particles)
    check_in_interval(temperature, "temperature", 0.0, np.inf, closed="right")
    check_choice(selection, "selection", SELECTIONS)
    if weights is not None:
        check_choice(weights, "weights", WEIGHTS)
    if ess_threshold is not None:
        check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
        if weights == "per_step" and ess_threshold < 1.0:
            raise ConfigurationError(
                "`weights='per_step'` resets the log-weights to logit(r_t) at every step and needs resampling "
                f"at every step (`ess_threshold=1.0`), got ess_threshold={ess_threshold}; use "
                "`weights='accumulated'` for ESS-triggered resampling")


def _budget_particles(budget, num_particles, unit=1, what="num_particles"):
    if budget is None and num_particles is None:
        raise ConfigurationError(f"give `budget` (in rollouts) or `{what}`")
    if num_particles is not None:
        num_particles = check_positive_int(num_particles, what)
    if budget is not None:
        budget = check_positive_int(budget, "budget")
        if num_particles is not None and budget < num_particles * unit:
            raise ConfigurationError(
                f"`budget` = {budget} rollouts is smaller than what one pass needs ({what} = {num_particles}"
                + (f" x {unit}" if unit > 1 else "") + f" = {num_particles * unit} rollouts)")
    return budget, num_particles


def _raise_bad_reward(bad, bad_index, rewards_hist, prefix=""):
    bad = np.asarray(bad)
    if bad.any():
        pos = np.argwhere(bad)[0]
        i = int(np.asarray(bad_index)[tuple(pos)])
        val = np.asarray(rewards_hist)[tuple(pos)][..., i] if np.ndim(rewards_hist) else rewards_hist
        raise DataError(
            f"{prefix}the reward model returned a value outside [0, 1] or NaN ({val!r}) at step {int(pos[-1])} "
            f"for particle {i}; process rewards must be probabilities in [0, 1]")


def _finish(generator, reward_model, out: SweepOutput):
    raise_pending_errors(generator, reward_model)
    _raise_bad_reward(out.bad_reward, out.bad_index, out.history.reward)


@partial(jax.jit, static_argnums=(0, 2))
def _init_jit(generator, prompt, num_particles):
    return generator.init(prompt, num_particles)


def _initial_states(generator, prompt, num_particles: int):
    """``generator.init(prompt, N)``, compiled once per (generator, N) for JAX-native generators (run op
    by op it cost about as much as a whole small sweep); host generators, and prompts that cannot be
    traced, run it as it is."""
    if generator.host is None:
        try:
            return _init_jit(generator, prompt, num_particles)
        except Exception:  # e.g. a prompt that is not an array: same call, untraced (re-raises real errors)
            pass
    return generator.init(prompt, num_particles)


@partial(jax.jit, static_argnums=0)
def _done_history(generator, states):
    return jax.vmap(generator.is_done)(states)


def _history(out: SweepOutput, generator):
    done = _done_history(generator, out.history.state) if generator.host is None else None
    h = {"log_weights": out.history_log_weights, "ancestors": out.ancestors,
         "process_rewards": out.history.reward, "ess": out.ess, "resampled": out.resampled,
         "generator_calls": out.calls}
    if done is not None:
        h["done"] = done
    return {k: np.asarray(v) for k, v in h.items()}


@partial(jax.jit, static_argnames=("generator", "reward_model", "resampling", "progress_bar"))
def _pf_jit(key, init_states, temperature, generator, reward_model, weights, ess_threshold, resampling,
            selection, resample=True, progress_bar=False):
    k_run, k_sel = jax.random.split(key)
    out = smc_sweep(k_run, generator, reward_model, init_states, weights=weights, temperature=temperature,
                    ess_threshold=ess_threshold, resampling=resampling, resample=resample, progress_bar=progress_bar)
    answers = generator.answer(out.particles.state)
    outcome = reward_model.outcome_fn()(out.particles.state)
    ans, idx = select_answer(k_sel, answers, out.log_weights, selection)
    return out, answers, outcome, ans, idx


def particle_filtering(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles=None,
                       budget=None, weights: str = "per_step", temperature: float = 1.0,
                       ess_threshold: float = 1.0, resampling="multinomial",
                       selection: str = "argmax", progress_bar: bool = False) -> ScalingResult:
    """Particle filtering over a generator weighted by a process reward model (Puri et al. 2025).

    Args:
        key: ``jax.random`` key.
        generator: a :class:`~bayeskit.inference.scaling.Generator`.
        reward_model: a :class:`~bayeskit.inference.scaling.RewardModel`.
        prompt: passed to ``generator.init``.
        num_particles: N (default: ``budget``).
        budget: in rollouts; must be >= ``num_particles``.
        weights: ``"per_step"`` (logit of the current reward, resample every step, the paper),
            ``"accumulated"`` (weights carried, ESS-triggered resampling allowed) or
            ``"value_ratio"`` (:math:`G_t = r_t / r_{t-1}`, exact reward tilting).
        temperature: softmax temperature :math:`\\tau` of the resampling probabilities.
        ess_threshold: resample when ESS < threshold × N; 1.0 resamples at every step.
        resampling: resampling scheme (see :mod:`bayeskit.inference.smc.resampling`); the paper
            samples multinomially.
        selection: ``"argmax"`` (highest final weight), ``"vote"`` (weighted majority vote) or
            ``"sample"``.
        progress_bar: show a tqdm bar of the generation steps.

    Returns:
        :class:`ScalingResult` with the final pool, per-step history, budget and generator calls.

    Example:
        >>> import jax, bayeskit as bk
        >>> world = bk.scaling.random_markov_world(jax.random.key(0))
        >>> res = bk.scaling.particle_filtering(jax.random.key(1), world.generator(),
        ...                                     world.exact_reward_model(2), 2, budget=8)
        >>> res.budget, res.answers.shape
        (8, (8,))
    """
    budget, num_particles = _budget_particles(budget, num_particles)
    n = num_particles if num_particles is not None else budget
    _check_common(key, generator, reward_model, prompt, temperature, selection, weights, ess_threshold, n)
    get_scheme(resampling)
    init_states = _initial_states(generator, prompt, n)
    with progress(progress_bar, generator.max_steps, "particle filtering"):
        out, answers, outcome, ans, idx = _pf_jit(key, init_states, float(temperature), generator, reward_model,
                                                   WEIGHTS.index(weights), float(ess_threshold), resampling,
                                                   SELECTIONS.index(selection), progress_bar=bool(progress_bar))
        jax.block_until_ready(out.log_weights)
    _finish(generator, reward_model, out)
    calls = int(np.sum(out.calls))
    return ScalingResult("particle_filtering", int(ans), int(idx), np.asarray(answers), np.asarray(out.log_weights),
                         np.asarray(outcome), n, calls, calls, _history(out, generator), out.particles.state)


def best_of_n(key, generator: Generator, reward_model: RewardModel, prompt, *, budget: int,
              selection: str = "argmax") -> ScalingResult:
    """Best-of-N: ``budget`` independent rollouts scored by the outcome reward; the answer is the
    highest-reward rollout (``selection="argmax"``) or the weighted majority vote
    (``selection="vote"``: :math:`\\arg\\max_a \\sum_i R_i 1[a_i = a]`)."""
    budget, _ = _budget_particles(budget, None)
    _check_common(key, generator, reward_model, prompt, 1.0, selection, None, None, budget)
    init_states = _initial_states(generator, prompt, budget)
    out, answers, outcome, _, _ = _pf_jit(key, init_states, 1.0, generator, reward_model, 0, 1.0,
                                          "multinomial", 0, resample=False)
    _finish(generator, reward_model, out)
    outcome = np.asarray(outcome)
    if np.any(~((outcome >= 0) & (outcome <= 1))):
        raise DataError("the reward model's outcome reward returned a value outside [0, 1] or NaN")
    lw = _log_outcome(outcome)  # vote weights W_i are then proportional to R_i
    ans, idx = select_answer(jax.random.fold_in(key, 7), jnp.asarray(answers), jnp.asarray(lw), selection)
    calls = int(np.sum(out.calls))
    return ScalingResult("best_of_n" if selection != "vote" else "weighted_majority_vote", int(ans), int(idx),
                         np.asarray(answers), lw, outcome, budget, calls, calls, _history(out, generator),
                         out.particles.state)


def weighted_majority_vote(key, generator, reward_model, prompt, *, budget: int) -> ScalingResult:
    """Best-of-N rollouts aggregated by weighted majority vote (weights = outcome rewards)."""
    return best_of_n(key, generator, reward_model, prompt, budget=budget, selection="vote")


# ------------------------------------------------------------------------------- particle Gibbs


@partial(jax.jit, static_argnames=("generator", "reward_model", "num_iterations", "progress_bar"))
def _pg_jit(key, init_states, temperatures, generator, reward_model, weights, num_iterations, progress_bar=False):
    """Particle Gibbs / parallel tempering: ``temperatures`` (K,) chains (K = 1: particle Gibbs)."""
    num_chains = temperatures.shape[0]

    def sweep(k, temp, ref):
        return smc_sweep(k, generator, reward_model, init_states, weights=weights, temperature=temp,
                         ess_threshold=1.0, resampling="multinomial", reference=ref)

    def pick(k, out):
        i = jax.random.categorical(k, out.log_weights)
        path, score = _path(out, i)
        return path, score, i

    # iteration 0: unconditional SMC in every chain
    k0, kloop = jax.random.split(key)
    ks = jax.random.split(k0, (num_chains, 2))
    out0 = jax.vmap(lambda k, tp: smc_sweep(k, generator, reward_model, init_states, weights=weights,
                                            temperature=tp, ess_threshold=1.0,
                                            resampling="multinomial"))(ks[:, 0], temperatures)
    refs, scores, idx0 = jax.vmap(pick)(ks[:, 1], out0)

    def swap(k, parity, refs, scores):
        # adjacent pairs (c, c+1) with c % 2 == parity
        beta = 1.0 / temperatures
        c = jnp.arange(num_chains)
        partner = jnp.where(c % 2 == parity, c + 1, c - 1)
        valid = (partner >= 0) & (partner < num_chains)
        partner = jnp.clip(partner, 0, num_chains - 1)
        lo = jnp.minimum(c, partner)
        hi = jnp.maximum(c, partner)
        log_acc = (beta[lo] - beta[hi]) * (scores[hi] - scores[lo])
        u = jax.random.uniform(k, (num_chains,))
        accept_pair = jnp.log(u[lo]) < log_acc
        accept = valid & accept_pair
        new_refs = jax.tree_util.tree_map(lambda a: jnp.where(
            accept.reshape((-1,) + (1,) * (a.ndim - 1)), a[partner], a), refs)
        new_scores = jnp.where(accept, scores[partner], scores)
        return new_refs, new_scores, accept & (c == lo)

    def body(carry, inp):
        refs, scores = carry
        it, k = inp
        k_sw, k_run, k_pick = jax.random.split(k, 3)
        tick(it + 1, num_iterations, progress_bar)
        out = jax.vmap(sweep)(jax.random.split(k_run, num_chains), temperatures, refs)
        new_refs, new_scores, _ = jax.vmap(pick)(jax.random.split(k_pick, num_chains), out)
        acc = jnp.zeros((num_chains,), bool)
        if num_chains > 1:
            new_refs, new_scores, acc = swap(k_sw, it % 2, new_refs, new_scores)
        summary = (out.log_weights, out.history_log_weights, out.ancestors, out.history.reward, out.ess,
                   out.calls, out.bad_reward, out.bad_index,
                   jax.vmap(generator.answer)(out.particles.state),
                   jax.vmap(reward_model.outcome_fn())(out.particles.state),
                   generator.answer(jax.tree_util.tree_map(lambda a: a[:, -1], new_refs.state)),
                   acc)
        return (new_refs, new_scores), (summary, out.particles.state)

    if num_iterations > 1:
        keys = jax.random.split(kloop, num_iterations - 1)
        (refs_f, _), (summ, last_states) = jax.lax.scan(body, (refs, scores),
                                                         (jnp.arange(1, num_iterations), keys))
    else:
        summ, last_states = None, None
    first = (out0.log_weights, out0.history_log_weights, out0.ancestors, out0.history.reward, out0.ess,
             out0.calls, out0.bad_reward, out0.bad_index, jax.vmap(generator.answer)(out0.particles.state),
             jax.vmap(reward_model.outcome_fn())(out0.particles.state),
             generator.answer(jax.tree_util.tree_map(lambda a: a[:, -1], refs.state)),
             jnp.zeros((num_chains,), bool))
    if summ is None:
        summ = jax.tree_util.tree_map(lambda a: a[None], first)
        final_states = out0.particles.state
    else:
        summ = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], 0), first, summ)
        final_states = jax.tree_util.tree_map(lambda a: a[-1], last_states)
    return summ, final_states


def _pg_driver(method, key, generator, reward_model, prompt, num_particles, num_iterations, budget, weights,
               temperatures, selection, progress_bar=False):
    k_run, k_sel = jax.random.split(key)
    init_states = _initial_states(generator, prompt, num_particles)
    temps = jnp.asarray(temperatures, jnp.result_type(float))
    with progress(progress_bar, num_iterations, method.replace("_", " ")):
        summ, final_states = _pg_jit(k_run, init_states, temps, generator, reward_model, WEIGHTS.index(weights),
                                     num_iterations, progress_bar=bool(progress_bar))
        jax.block_until_ready(summ)
    raise_pending_errors(generator, reward_model)
    (lw, hlw, anc, rew, ess, calls, bad, bad_idx, answers, outcome, ref_ans, acc) = (np.asarray(a) for a in summ)
    _raise_bad_reward(bad, bad_idx, rew)
    # answer from chain 0 (the target temperature), last iteration
    lw_last = lw[-1, 0]
    ans_last = answers[-1, 0]
    ans, idx = select_answer(k_sel, jnp.asarray(ans_last), jnp.asarray(lw_last), SELECTIONS.index(selection))
    ncalls = int(calls.sum())
    chain0 = jax.tree_util.tree_map(lambda a: np.asarray(a)[0], final_states)
    hist = {"log_weights": hlw, "ancestors": anc, "process_rewards": rew, "ess": ess, "generator_calls": calls}
    if len(temperatures) == 1:
        hist = {k: v[:, 0] for k, v in hist.items()}
    extras = {"reference_answers": ref_ans[:, 0], "all_answers": answers, "all_log_weights": lw,
              "all_outcome_rewards": outcome, "temperatures": np.asarray(temperatures)}
    if len(temperatures) > 1:
        extras["swap_accepted"] = acc
        its = np.arange(1, num_iterations)
        attempts = np.array([np.sum(its % 2 == c % 2) for c in range(len(temperatures) - 1)])
        extras["swap_rate"] = acc[1:, :-1].sum(0) / np.maximum(attempts, 1)
    used = num_iterations * num_particles * len(temperatures)
    return ScalingResult(method, int(ans), int(idx), ans_last, lw_last, outcome[-1, 0], used, ncalls, ncalls, hist,
                         chain0, extras)


def particle_gibbs(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles: int = 4,
                   num_iterations=None, budget=None, weights: str = "per_step", temperature: float = 1.0,
                   selection: str = "argmax", progress_bar: bool = False) -> ScalingResult:
    """Particle Gibbs over a generator (iterated conditional SMC, Puri et al. 2025 §3.2).

    Budget = ``num_iterations`` × ``num_particles`` rollouts; give ``budget`` (then
    ``num_iterations = budget // num_particles``) or ``num_iterations``. The reference trajectory
    drawn :math:`\\propto W_T` at the end of an iteration is pinned to the last slot of the next
    iteration and survives its resampling; the answer is chosen (``selection``) from the last
    iteration's pool. ``extras["reference_answers"]`` holds the reference's answer after every
    iteration: a Markov chain that leaves the Feynman–Kac target invariant. ``progress_bar`` shows a
    tqdm bar of the iterations (default False).
    """
    num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
    if num_iterations is None:
        budget, _ = _budget_particles(budget, num_particles)
        num_iterations = budget // num_particles
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    _check_common(key, generator, reward_model, prompt, temperature, selection, weights, 1.0, num_particles)
    return _pg_driver("particle_gibbs", key, generator, reward_model, prompt, num_particles, num_iterations,
                      budget, weights, [float(temperature)], selection, progress_bar)


def parallel_tempering(key, generator: Generator, reward_model: RewardModel, prompt, *, num_particles: int = 4,
                       temperatures=(1.0, 2.0, 4.0), num_iterations=None, budget=None,
                       weights: str = "per_step", selection: str = "argmax",
                       progress_bar: bool = False) -> ScalingResult:
    """Parallel tempering of particle-Gibbs chains at several softmax temperatures.

    Chain ``k`` targets :math:`\\pi_k(x) \\propto p(x)\\prod_t G_t^{1/\\tau_k}`; after each sweep,
    adjacent chains swap references with the Metropolis probability of the module docstring. The
    first temperature is the target (the answer is read from it). Budget = iterations ×
    len(temperatures) × num_particles rollouts. ``progress_bar`` shows a tqdm bar of the iterations
    (default False).
    """
    num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
    temps = [float(check_in_interval(t, "temperatures", 0.0, np.inf, closed="right")) for t in temperatures]
    if len(temps) < 2:
        raise ConfigurationError(f"`temperatures` must hold at least 2 temperatures, got {temps}")
    if num_iterations is None:
        budget, _ = _budget_particles(budget, num_particles, unit=len(temps))
        num_iterations = budget // (num_particles * len(temps))
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    _check_common(key, generator, reward_model, prompt, temps[0], selection, weights, 1.0, num_particles)
    return _pg_driver("parallel_tempering", key, generator, reward_model, prompt, num_particles, num_iterations,
                      budget, weights, temps, selection, progress_bar)


# ------------------------------------------------------------------------------- beam search


@partial(jax.jit, static_argnames=("generator", "reward_model", "num_beams", "expansions"))
def _beam_jit(key, init_states, generator, reward_model, num_beams, expansions):
    step = guarded_step(generator)
    n = num_beams * expansions
    dtype = jnp.result_type(float)
    x0 = Particles(init_states, jnp.ones((n,), dtype))
    parent_copy = jnp.arange(n) % expansions  # copy index within the parent's group

    def body(x, k):
        prev_done = generator.is_done(x.state)
        new_state = step(k, x.state)
        reward = jnp.where(prev_done, x.reward, reward_model.process(new_state).astype(dtype))
        live = ~prev_done
        bad = ~((reward >= 0) & (reward <= 1)) & live
        # a finished beam appears `expansions` times in the pool: only its first copy competes
        eligible = (~prev_done) | (parent_copy == 0)
        score = jnp.where(eligible, jnp.where(jnp.isnan(reward), -jnp.inf, reward), -jnp.inf)
        _, top = jax.lax.top_k(score, num_beams)
        keep = jnp.repeat(top, expansions, total_repeat_length=n).astype(jnp.int32)
        new = Particles(new_state, reward)
        nxt = _take(new, keep)
        return nxt, (keep, reward, jnp.sum(live).astype(jnp.int32), jnp.any(bad), jnp.argmax(bad).astype(jnp.int32),
                     ess_fn(jnp.zeros(n)))

    keys = jax.random.split(key, generator.max_steps)
    xf, (anc, rew, calls, bad, bad_idx, ess) = jax.lax.scan(body, x0, keys)
    # distinct final beams: the first copy of each group
    beams = _take(xf, jnp.arange(num_beams) * expansions)
    answers = generator.answer(beams.state)
    outcome = reward_model.outcome_fn()(beams.state)
    return beams, answers, outcome, anc, rew, calls, bad, bad_idx


def beam_search(key, generator: Generator, reward_model: RewardModel, prompt, *, budget: int,
                beam_width: int = 4, selection: str = "argmax") -> ScalingResult:
    """Beam search guided by the process reward, with budget N rollouts (Snell et al. 2024 style).

    The pool holds N = ``budget`` candidates: ``N // M`` beams, each extended ``M = beam_width``
    times per step (``M = min(beam_width, N)``); the top ``N // M`` candidates by process reward
    become the next beams. Finished beams stay in the pool without new calls. The answer is the
    final beam with the highest outcome reward (``argmax``) or the outcome-weighted vote.
    """
    budget, _ = _budget_particles(budget, None)
    beam_width = check_positive_int(beam_width, "beam_width")
    _check_common(key, generator, reward_model, prompt, 1.0, selection, None, None, budget)
    expansions = min(beam_width, budget)
    num_beams = budget // expansions
    n = num_beams * expansions
    init_states = _initial_states(generator, prompt, n)
    beams, answers, outcome, anc, rew, calls, bad, bad_idx = _beam_jit(key, init_states, generator, reward_model,
                                                                        num_beams, expansions)
    raise_pending_errors(generator, reward_model)
    _raise_bad_reward(bad, bad_idx, rew)
    outcome = np.asarray(outcome)
    lw = _log_outcome(outcome)
    ans, idx = select_answer(key, jnp.asarray(answers), jnp.asarray(lw), selection)
    ncalls = int(np.sum(calls))
    hist = {"ancestors": np.asarray(anc), "process_rewards": np.asarray(rew), "generator_calls": np.asarray(calls)}
    return ScalingResult("beam_search", int(ans), int(idx), np.asarray(answers), lw, outcome, n, ncalls, ncalls,
                         hist, beams.state, {"num_beams": num_beams, "expansions": expansions})
