# %% [markdown]
# # Inference-time scaling by particle methods (Puri et al. 2025) and Feynman–Kac correctors (Skreta et al. 2025)
#
# Accuracy vs budget (1 … 128 rollouts) of particle filtering (PF), particle Gibbs (PG), best-of-N
# (BoN), weighted majority vote (WMV) and beam search on two worlds:
#
# * the **Markov reasoner** (exact value function; a noisy PRM built from it),
# * a **learned world**: a small JAX MLP trained on noisy multi-step modular arithmetic (it makes
#   mistakes on ~25% of the steps), scored by a noisy step verifier — the stand-in for an LLM + PRM.
#
# Then the scaling-rate comparison (budget each method needs to reach a target accuracy, relative to
# PF) and an FKC panel: annealed and product-of-experts targets of a 2-D Gaussian mixture.
# Run: `python examples/inference_scaling.py --outdir out [--quick]`.

# %%
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import bayeskit as bk
from bayeskit.inference.scaling.particle import _beam_jit, _pf_jit, _pg_jit

S = bk.scaling
METHODS = ("PF", "PF-vote", "PG", "BoN", "WMV", "Beam")


def vote(answers, weights, num_answers):
    """Weighted majority vote per row."""
    tallies = np.stack([np.sum(weights * (answers == a), axis=1) for a in range(num_answers)], 1)
    return np.argmax(tallies, axis=1)


def best_of_n_curves(key, gen, rm, init_batch, truth, budgets, num_answers):
    """BoN and WMV for every budget from one set of max(budgets) independent rollouts per problem
    (the first b rollouts are a best-of-b run): one compile for all budgets."""
    n = max(budgets)
    num_problems = truth.shape[0]
    init_n = jax.vmap(lambda p: gen.init(p, n))(init_batch)
    bon = jax.jit(jax.vmap(lambda k, ini: _pf_jit(k, ini, 1.0, gen, rm, 0, 1.0, "multinomial", 0, False)[1:3]))
    answers, outcome = (np.asarray(a) for a in bon(jax.random.split(key, num_problems), init_n))
    rows = np.arange(num_problems)
    out = {"BoN": [], "WMV": []}
    for b in budgets:
        a, o = answers[:, :b], outcome[:, :b]
        out["BoN"].append(float(np.mean(a[rows, np.argmax(o, 1)] == truth)))
        out["WMV"].append(float(np.mean(vote(a, o, num_answers) == truth)))
    return out


def evaluate(key, gen, rm, init_batch, truth, budget, num_answers, pg_particles=4):
    """Accuracy of PF, beam search and PG at one budget, vmapped over problems."""
    num_problems = truth.shape[0]
    keys = jax.random.split(key, (num_problems, 3))
    acc = {}
    init_n = jax.vmap(lambda p: gen.init(p, budget))(init_batch)
    pf = jax.jit(jax.vmap(lambda k, ini: (lambda o: (o[3], o[1], o[0].log_weights))(
        _pf_jit(k, ini, 1.0, gen, rm, 0, 1.0, "multinomial", 0, True))))
    ans, pf_answers, pf_lw = (np.asarray(a) for a in pf(keys[:, 0], init_n))
    acc["PF"] = float(np.mean(ans == truth))
    w = np.exp(pf_lw - pf_lw.max(1, keepdims=True))
    acc["PF-vote"] = float(np.mean(vote(pf_answers, w / w.sum(1, keepdims=True), num_answers) == truth))
    expansions = min(4, budget)
    beam = jax.jit(jax.vmap(lambda k, ini: _beam_jit(k, ini, gen, rm, budget // expansions, expansions)[1:3]))
    banswers, boutcome = (np.asarray(a) for a in beam(keys[:, 2], init_n))
    acc["Beam"] = float(np.mean(banswers[np.arange(num_problems), np.argmax(boutcome, 1)] == truth))
    if budget >= pg_particles:
        iters = budget // pg_particles
        init_pg = jax.vmap(lambda p: gen.init(p, pg_particles))(init_batch)
        temps = jnp.ones((1,))
        pg = jax.jit(jax.vmap(lambda k, ini: (lambda s: (s[0][-1, 0], s[8][-1, 0]))(
            _pg_jit(k, ini, temps, gen, rm, 0, iters)[0])))
        lw, answers_pg = (np.asarray(a) for a in pg(keys[:, 1], init_pg))
        acc["PG"] = float(np.mean(answers_pg[np.arange(num_problems), np.argmax(lw, 1)] == truth))
    else:
        acc["PG"] = float("nan")
    return acc


def curves_for(key, gen, rm, init_batch, truth, budgets, num_answers, label):
    curves = {m: [] for m in METHODS}
    bon = best_of_n_curves(key, gen, rm, init_batch, truth, budgets, num_answers)
    curves["BoN"], curves["WMV"] = bon["BoN"], bon["WMV"]
    for i, b in enumerate(budgets):
        t = time.time()
        acc = evaluate(jax.random.fold_in(key, b), gen, rm, init_batch, truth, b, num_answers)
        for m in ("PF", "PF-vote", "PG", "Beam"):
            curves[m].append(acc[m])
        print(f"  [{label}] budget {b}: " + ", ".join(f"{m} {curves[m][i]:.3f}" for m in METHODS)
              + f" ({time.time() - t:.0f}s)", flush=True)
    return curves


def budget_to_reach(budgets, accs, level):
    """Smallest budget (log-linear interpolation) at which an accuracy curve reaches ``level``."""
    lb = np.log2(budgets)
    accs = np.asarray(accs, float)
    for i in range(len(accs)):
        if np.isfinite(accs[i]) and accs[i] >= level:
            if i == 0 or not np.isfinite(accs[i - 1]):
                return float(budgets[i])
            f = (level - accs[i - 1]) / max(accs[i] - accs[i - 1], 1e-12)
            return float(2 ** (lb[i - 1] + f * (lb[i] - lb[i - 1])))
    return float("inf")


def scaling_table(name, budgets, curves):
    lines = [f"\n### {name}: accuracy vs budget (rollouts)\n",
             "| method | " + " | ".join(str(b) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join("–" if not np.isfinite(a) else f"{a:.3f}" for a in curves[m]) + " |")
    # scaling rate (Puri et al.): budget each method needs to first reach a given accuracy, and its
    # ratio to particle filtering's
    need = {}
    levels = (0.6, 0.8, 0.9)
    lines.append("\nScaling rate: budget needed to first reach an accuracy level (ratio to PF):\n")
    lines.append("| method | " + " | ".join(f"acc {lv}" for lv in levels) + " |")
    lines.append("|---|" + "---|" * len(levels))
    ref = {lv: budget_to_reach(budgets, curves["PF"], lv) for lv in levels}
    for m in METHODS:
        need[m] = [budget_to_reach(budgets, curves[m], lv) for lv in levels]
        cells = []
        for lv, b in zip(levels, need[m]):
            if not np.isfinite(b):
                cells.append(f"> {budgets[-1]}")
            else:
                cells.append(f"{b:.1f} ({b / ref[lv]:.1f}x)" if np.isfinite(ref[lv]) else f"{b:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines), need


# %%
def run_scaling(args, budgets, figs):
    out = []
    curves_all = {}
    # --- world 1: Markov reasoner with a noisy PRM built from the exact value function
    world = S.random_markov_world(jax.random.key(0), num_digits=4, modulus=5, max_steps=6)
    target = 2
    gen = world.generator()
    rm = world.noisy_reward_model(jax.random.key(1), target, noise_scale=1.0)
    num_rep = 64 if args.quick else 400
    init_batch = jnp.full((num_rep,), target)
    truth = np.full(num_rep, target)
    curves = curves_for(jax.random.key(100), gen, rm, init_batch, truth, budgets, world.modulus, "Markov")
    txt, _ = scaling_table(f"Markov reasoner (P(correct) unguided = {world.success_probability(target):.3f}, "
                           f"noisy PRM)", budgets, curves)
    out.append(txt)
    curves_all["Markov reasoner (noisy PRM)"] = curves

    # --- world 2: learned arithmetic model + noisy verifier
    t0 = time.time()
    arith = S.ArithmeticWorld.train(jax.random.key(2), num_iterations=600 if args.quick else 2000)
    acc_step = arith.step_accuracy()
    gen = arith.generator()
    rm = arith.verifier_reward_model(jax.random.key(3), confidence=2.0, noise_scale=1.5)
    num_problems = 64 if args.quick else 400
    prompts, answers = S.ArithmeticWorld.sample_problems(jax.random.key(4), num_problems)
    truth = np.asarray(answers)
    curves = curves_for(jax.random.key(200), gen, rm, prompts, truth, budgets, 10, "learned")
    txt, _ = scaling_table(f"Learned arithmetic model (step accuracy {acc_step:.3f}; training + evaluation "
                           f"{time.time() - t0:.0f}s; noisy verifier PRM)", budgets, curves)
    out.append(txt)
    curves_all["Learned arithmetic model (noisy verifier)"] = curves

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, curves) in zip(axes, curves_all.items()):
        for m in METHODS:
            ax.plot(budgets, curves[m], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (rollouts)")
        ax.set_ylabel("accuracy")
        ax.set_title(name, fontsize=10)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(args.outdir, "scaling_accuracy_vs_budget.png")
    fig.savefig(path, dpi=120)
    figs.append(path)
    return "\n".join(out), curves_all


# %%
def run_fkc(args, figs):
    sde = S.VESDE(0.01, 20.0)
    gm = S.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-3.0, 0.0], [3.0, 0.0]]),
                           jnp.stack([jnp.eye(2), jnp.array([[1.0, 0.5], [0.5, 1.5]])]))
    gm2 = S.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[3.0, 0.0], [0.0, 3.0]]),
                            jnp.stack([2 * jnp.eye(2), 2 * jnp.eye(2)]))
    n = 1000 if args.quick else 4000
    steps = 100 if args.quick else 400
    # exact references: annealed q^2 on a grid (quadrature), product in closed form
    g = np.linspace(-10, 10, 401)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    lp = 2.0 * np.asarray(gm.log_prob(jnp.asarray(pts)))
    p = np.exp(lp - lp.max())
    p /= p.sum()
    rng = np.random.default_rng(0)
    ann_exact = pts[rng.choice(len(p), 20000, p=p)] + rng.uniform(-0.025, 0.025, (20000, 2))
    prod_exact = np.asarray(S.product_of_mixtures(gm, gm2).sample(jax.random.key(9), 20000))
    cases = {
        "annealed q^2": ([gm.score_fn(sde)], [2.0], [gm.log_density_fn(sde)], ann_exact),
        "product q1*q2": ([gm.score_fn(sde), gm2.score_fn(sde)], [1.0, 1.0],
                          [gm.log_density_fn(sde), gm2.log_density_fn(sde)], prod_exact),
    }
    lines = ["\n### FKC on a 2-D Gaussian mixture (exact scores)\n",
             "| target | sampler | mean | var(x), var(y) | MMD^2 vs exact | null MMD^2 |", "|---|---|---|---|---|---|"]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 7), sharex=True, sharey=True)
    for row, (name, (scores, betas, logd, exact)) in enumerate(cases.items()):
        fkc = S.fkc_sample(jax.random.key(10 + row), scores, betas, num_particles=n, num_steps=steps, sde=sde,
                           log_densities=logd)
        heur = S.fkc_sample(jax.random.key(10 + row), scores, betas, num_particles=n, num_steps=steps, sde=sde,
                            weighted=False)
        fk_s = fkc.resample(jax.random.key(20 + row), min(n, 1000))
        ref = exact[:1000]
        null = S.mmd(exact[1000:2000], ref)
        lines.append(f"| {name} | exact | {np.round(exact.mean(0), 3)} | {np.round(exact.var(0), 3)} | – | {null:.5f} |")
        for label, samples in (("FKC (SMC)", fk_s), ("heuristic score mix", heur.samples[:1000])):
            lines.append(f"| {name} | {label} | {np.round(samples.mean(0), 3)} | {np.round(samples.var(0), 3)} | "
                         f"{S.mmd(samples, ref):.5f} | {null:.5f} |")
        for col, (label, samples) in enumerate((("exact", exact[:1000]), ("FKC", fk_s),
                                                ("heuristic", heur.samples[:1000]))):
            ax = axes[row, col]
            ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4)
            ax.set_title(f"{name}: {label}", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.outdir, "fkc_gaussian_mixture.png")
    fig.savefig(path, dpi=120)
    figs.append(path)
    return "\n".join(lines)


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (a few minutes on a laptop CPU)")
    parser.add_argument("--outdir", default="out/scaling", help="where figures and the table go")
    args = parser.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    budgets = [1, 2, 4, 8, 16, 32, 64, 128]
    figs = []
    t0 = time.time()
    table, curves = run_scaling(args, budgets, figs)
    table += "\n" + run_fkc(args, figs)
    table += f"\n\n(total {time.time() - t0:.0f}s; figures: {', '.join(figs)})\n"
    print(table)
    with open(os.path.join(args.outdir, "scaling_table.md"), "w") as f:
        f.write(table)
    return curves


if __name__ == "__main__":
    main()
