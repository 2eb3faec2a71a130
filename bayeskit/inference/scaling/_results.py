"""The result of an inference-time-scaling driver (:class:`ScalingResult`) and its ArviZ view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ScalingResult"]


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
