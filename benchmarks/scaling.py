"""Benchmark: inference-time scaling at equal budget.

1. Our jitted particle filter over the JAX Markov generator vs a plain Python/NumPy implementation
   of the same algorithm in the style of its_hub's ``ParticleGibbs`` (a list of particle objects,
   one generator call per live particle, a batched PRM call per step, softmax resampling with
   ``random.choices`` and deep copies). Both are run on the same world and noisy PRM; we report
   the wall time per problem, the ratio, and both accuracies vs the known target answer (and the
   exact reward-tilted success probability).
2. Generator calls and wall time per method (PF, PG, best-of-N, WMV, beam search) at equal budget.

Run: ``python benchmarks/scaling.py [--quick]``; writes ``bayeskit-output/bench/scaling.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_text  # noqa: E402


import jax
import jax.numpy as jnp
import numpy as np

import bayeskit as bk

S = bk.scaling


class Particle:
    def __init__(self):
        self.steps: list[int] = []
        self.is_stopped = False
        self.log_weights: list[float] = []

    def state(self, modulus):
        return len(self.steps), (self.steps[-1] if self.steps else None), sum(self.steps) % modulus


def numpy_particle_filter(world, live_table, final_table, num_particles, rng, py_rng):
    """its_hub-style particle filtering (per_step logit weights, resample every step, argmax)."""
    k = world.num_digits
    particles = [Particle() for _ in range(num_particles)]
    calls = 0
    while not all(p.is_stopped for p in particles):
        live = [p for p in particles if not p.is_stopped]
        for p in live:  # one generator call per live particle
            tok, stop = world.numpy_step(rng, p.steps)
            calls += 1
            if tok != world.eos:
                p.steps.append(tok)
            p.is_stopped = stop
        # batched PRM call over the live particles
        scores = []
        for p in live:
            t, last, s = p.state(world.modulus)
            scores.append(final_table[s] if p.is_stopped else live_table[t, k if last is None else last, s])
        for p, r in zip(live, scores):
            r = min(max(r, 1e-7), 1 - 1e-7)
            p.log_weights.append(float(np.log(r / (1 - r))))
        lw = np.array([p.log_weights[-1] for p in particles])
        prob = np.exp(lw - lw.max())
        prob /= prob.sum()
        particles = [copy.deepcopy(p) for p in py_rng.choices(particles, weights=prob, k=num_particles)]
    lw = np.array([p.log_weights[-1] for p in particles])
    best = particles[int(np.argmax(lw))]
    return sum(best.steps) % world.modulus, calls


def machine_info():
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
            f"device {dev.platform}:{getattr(dev, 'device_kind', '')}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    world = bk.testing.random_markov_world(jax.random.key(0), num_digits=4, modulus=5, max_steps=6)
    target = 2
    key_prm = jax.random.key(1)
    gen = world.generator()
    rm = world.noisy_reward_model(key_prm, target, noise_scale=1.0)
    live_t, final_t = world.noisy_tables(key_prm, target, noise_scale=1.0)
    budgets = [16, 64] if args.quick else [16, 64, 256]
    reps = 50 if args.quick else 200
    rows = []
    for n in budgets:
        init = gen.init(target, n)
        run = jax.jit(jax.vmap(lambda k: S.kernels.run_particle_filtering(k, gen, rm, init,
                                                                          resampling="multinomial").answer))
        keys = jax.random.split(jax.random.key(n), reps)
        jax.block_until_ready(run(keys))  # compile
        t = time.perf_counter()
        ans = np.asarray(jax.block_until_ready(run(keys)))
        t_jax = (time.perf_counter() - t) / reps
        # also one problem at a time through the driver (no vmap over problems)
        S.particle_filtering(jax.random.key(0), gen, rm, target, budget=n)
        t = time.perf_counter()
        nrep_single = min(reps, 20)
        for i in range(nrep_single):
            S.particle_filtering(jax.random.key(i), gen, rm, target, budget=n)
        t_driver = (time.perf_counter() - t) / nrep_single
        rng = np.random.default_rng(0)
        py_rng = random.Random(0)
        t = time.perf_counter()
        np_ans = [numpy_particle_filter(world, live_t, final_t, n, rng, py_rng)[0] for _ in range(reps)]
        t_np = (time.perf_counter() - t) / reps
        acc_j = float(np.mean(ans == target))
        acc_n = float(np.mean(np.asarray(np_ans) == target))
        se = np.sqrt(max(acc_j * (1 - acc_j), 1e-3) / reps)
        rows.append((n, t_np, t_driver, t_jax, acc_n, acc_j, se))

    # per-method generator calls and wall time at equal budget (one problem, driver, after compile)
    method_rows = []
    b = 64
    methods = {
        "particle filtering": lambda k: S.particle_filtering(k, gen, rm, target, budget=b),
        "particle Gibbs (N=16)": lambda k: S.particle_gibbs(k, gen, rm, target, num_particles=16, budget=b),
        "parallel tempering (N=8, 2 temps)": lambda k: S.parallel_tempering(k, gen, rm, target, num_particles=8,
                                                                             temperatures=(1.0, 2.0), budget=b),
        "best-of-N": lambda k: S.best_of_n(k, gen, rm, target, budget=b),
        "weighted majority vote": lambda k: S.weighted_majority_vote(k, gen, rm, target, budget=b),
        "beam search (M=4)": lambda k: S.beam_search(k, gen, rm, target, budget=b),
    }
    nrep = 10 if args.quick else 40
    for name, f in methods.items():
        f(jax.random.key(0))
        t = time.perf_counter()
        res = [f(jax.random.key(i + 1)) for i in range(nrep)]
        dt = (time.perf_counter() - t) / nrep
        method_rows.append((name, res[0].budget, np.mean([r.generator_calls for r in res]), dt,
                            np.mean([r.answer == target for r in res])))

    exact = world.tilted_answer_distribution(target)[target]
    lines = [f"# Inference-time scaling benchmark\n", f"Machine: {machine_info()}\n",
             f"World: Markov reasoner (K=4, m=5, T=6), noisy PRM (scale 1.0); target answer {target}; "
             f"P(correct) unguided {world.success_probability(target):.3f}, exact-V tilted posterior "
             f"{exact:.3f}. {reps} problems (replications) per budget.\n",
             "## Particle filtering: bayeskit (jitted JAX) vs plain Python/NumPy (its_hub-style)\n",
             "| N | NumPy loop s/problem | bayeskit driver s/problem | bayeskit vmapped s/problem | "
             "ratio NumPy/driver | ratio NumPy/vmapped | acc NumPy | acc bayeskit (± SE) |",
             "|---|---|---|---|---|---|---|---|"]
    for n, t_np, t_drv, t_j, acc_n, acc_j, se in rows:
        lines.append(f"| {n} | {t_np:.4f} | {t_drv:.4f} | {t_j:.5f} | {t_np / t_drv:.1f}x | {t_np / t_j:.0f}x | "
                     f"{acc_n:.3f} | {acc_j:.3f} ± {se:.3f} |")
    lines += ["\n## Generator calls and wall time per method at budget 64 rollouts (driver, one problem)\n",
              "| method | budget (rollouts) | generator calls | s/problem | accuracy |", "|---|---|---|---|---|"]
    for name, bud, calls, dt, acc in method_rows:
        lines.append(f"| {name} | {bud} | {calls:.0f} | {dt:.4f} | {acc:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    save_text("scaling", text)


if __name__ == "__main__":
    main()
