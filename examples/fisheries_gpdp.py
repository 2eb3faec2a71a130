# %% [markdown]
# # Avoiding tipping points with Gaussian-process dynamic programming
#
# Reproduces Boettiger, Mangel & Munch (Proc. R. Soc. B 2015) from the paper's own training data
# (`training_data.csv`, 40 steps of the Allen model with a tipping point at C = 5):
#
# * figure 2: the GP posterior (mean and ±2 sd band) and the parametric fits, beside the published GP;
# * figure 3: the optimal escapement policies of the true model, the GP, the MLE and the Bayesian
#   Allen / Ricker / Myers fits, beside the published ones;
# * figure 5: net present value of each policy relative to the true model's optimum over 100
#   replicates of 50 years from x0 = 10, beside the published table (GP 0.938, Allen 0.990,
#   MLE 0.534, Ricker 0.221, Myers 0.226);
# * the model-selection table (WAIC, PSIS-LOO, AIC, BIC).
#
# Run: `python examples/fisheries_gpdp.py --outdir out [--quick]` or `bayeskit reproduce gpdp`.

# %%
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import bayeskit as bk
from bayeskit.cli import parse_example_args
from bayeskit.datasets import load_gpdp
from bayeskit.models import fisheries as fish

PUBLISHED_NPV = {"GP": (0.938, 0.988), "Allen": (0.990, 0.989), "MLE": (0.534, 0.526),
                 "Ricker": (0.221, 0.218), "Myers": (0.226, 0.226)}
METHODS = ("True", "GP", "MLE", "Allen", "Ricker", "Myers")


def profit(x, h):
    return jnp.minimum(x, h)


def true_step(key, x, h):
    return fish.step(key, x, h, "allen", fish.TRUE_PARAMS, fish.TRUE_SIGMA)


def main(outdir: str = "out/gpdp", quick: bool = False, seed: int = 0, progress_bar: bool = False) -> dict:
    os.makedirs(outdir, exist_ok=True)
    t_start = time.perf_counter()
    warmup, samples = (150, 150) if quick else (500, 500)
    key_gp, key_fit, key_sim = jax.random.split(jax.random.key(seed), 3)

    # ---- data: pairs (x_t, x_{t+1}); the paper's first row (0, 0) is its pseudo-observation f(0) = 0
    td = load_gpdp("training_data")
    x_obs, y_obs = td["x"][1:], td["y"][1:]
    series = np.r_[x_obs, y_obs[-1]]
    grid = np.linspace(0.0, 15.0, 50)  # 50 stock values on [0, 1.5 K], harvest grid = stock grid
    discount = 0.99  # the paper's discount rate delta = 0.01

    # ---- GPDP: GP posterior by NUTS -> transition tensor -> exact discounted DP (policy iteration)
    t0 = time.perf_counter()
    gp = bk.gpdp.solve(key_gp, x_obs, y_obs, grid, profit, discount=discount, pseudo_observations=[(0.0, 0.0)],
                       num_warmup=warmup, num_samples=samples, num_transition_samples=100, progress_bar=progress_bar)
    t_gp = time.perf_counter() - t0

    # ---- the true model and the parametric competitors (NUTS with the paper's uniform priors)
    rewards = bk.gpdp.reward_matrix(profit, grid, grid)
    tensors = {"True": bk.gpdp.parametric_transition_tensor("allen", fish.TRUE_PARAMS, fish.TRUE_SIGMA, grid, grid)}
    fits = {}
    t0 = time.perf_counter()
    for name, growth, k in zip(("Allen", "Ricker", "Myers"), ("allen", "ricker", "myers"),
                               jax.random.split(key_fit, 3)):
        fits[name] = bk.gpdp.fit_parametric(k, series, growth, num_warmup=warmup, num_samples=samples)
        tensors[name] = bk.gpdp.parametric_fit_tensor(fits[name], grid, grid, num_samples=100)
    tensors["MLE"] = bk.gpdp.parametric_fit_tensor(fits["Allen"], grid, grid, use_mle=True)
    t_fit = time.perf_counter() - t0
    # two DP conventions: "exact" = escapement-exact GP rows + the discounted DP (gamma = 0.99) solved exactly;
    # "paper" = the published code: GP mean one grid step below the escapement, variance at the
    # pre-harvest stock, and its value iteration = 999-step undiscounted backward induction
    tensors_paper = dict(tensors)
    tensors_paper["GP"] = bk.gpdp.gp_transition_tensor(gp.posterior, grid, grid, num_samples=100, convention="paper")
    policies = {"exact": {"GP": gp.policy_actions}, "paper": {}}
    for name in METHODS:
        if name != "GP":
            sol = bk.gpdp.solve_mdp(tensors[name], rewards, discount)
            policies["exact"][name] = grid[np.asarray(sol.policy)]
        sol = bk.gpdp.solve_mdp(tensors_paper[name], rewards, 1.0, horizon=999)
        policies["paper"][name] = grid[np.asarray(sol.policy)]

    # ---- forward simulation under the true model, common random numbers across policies
    t0 = time.perf_counter()
    sims, ratios = {}, {}
    for conv in ("exact", "paper"):
        sims[conv] = bk.gpdp.evaluate_policies(key_sim, {m: policies[conv][m] for m in METHODS}, grid, true_step,
                                               profit, initial_state=10.0, num_steps=49, num_replicates=100,
                                               reference="True")
        ratios[conv] = sims[conv]["npv_ratio"]
    t_sim = time.perf_counter() - t0
    total = time.perf_counter() - t_start

    # ---- tables
    pub_pol = load_gpdp("figure3")
    pub5 = load_gpdp("figure5")
    print(f"GPDP pipeline: {total:.1f} s total (GP NUTS + DP {t_gp:.1f} s, 3 parametric NUTS fits {t_fit:.1f} s,"
          f" simulation {t_sim:.1f} s){' [quick]' if quick else ''}")
    print("\nNet present value relative to the true model's optimal policy (100 replicates, x0 = 10, 50 years)")
    print("exact = escapement-exact transitions + discounted VI; paper = the published code's conventions")
    print(f"{'policy':8s} {'exact mean':>10s} {'median':>7s} {'paper mean':>11s} {'median':>7s}"
          f" {'published mean':>15s} {'median':>7s}")
    rows = {}
    for m in ("GP", "Allen", "MLE", "Ricker", "Myers"):
        pm, pmed = PUBLISHED_NPV[m]
        rows[m] = {c: (float(np.mean(ratios[c][m])), float(np.median(ratios[c][m]))) for c in ("exact", "paper")}
        print(f"{m:8s} {rows[m]['exact'][0]:10.3f} {rows[m]['exact'][1]:7.3f} {rows[m]['paper'][0]:11.3f}"
              f" {rows[m]['paper'][1]:7.3f} {pm:15.3f} {pmed:7.3f}")

    print("\nPolicies: grid points (of 50) where our harvest equals the published one (figure3.csv)")
    agree = {}
    for m in METHODS:
        s = pub_pol["method"] == m
        agree[m] = {c: int(np.sum(np.isclose(policies[c][m], pub_pol["value"][s], atol=1e-6)))
                    for c in ("exact", "paper")}
        print(f"  {m:7s} exact {agree[m]['exact']:2d}/50   paper {agree[m]['paper']:2d}/50")

    sel = bk.gpdp.model_selection(fits)
    print("\nModel selection (deviance scale, lower is better)")
    print(f"{'model':8s} {'WAIC':>8s} {'LOO':>8s} {'AIC':>8s} {'BIC':>8s}")
    for m in fits:
        print(f"{m:8s} " + " ".join(f"{sel[c][m]:8.2f}" for c in ("waic", "loo", "aic", "bic")))
    print("selected: " + ", ".join(f"{c.upper()} -> {v}" for c, v in sel["selected"].items())
          + "   (published: every criterion picks Ricker)")

    # ---- GP fit vs the published figure 2 (mean of its 50 posterior draws; band = 2 sqrt(E Var f))
    f2 = load_gpdp("figure2")
    s = f2["variable"] == "GP"
    ndraw = int(np.max(f2["L1"]))
    stock2 = f2["stock"][s].reshape(ndraw, -1)[0]
    pub_mean = f2["y"][s].reshape(ndraw, -1).mean(0)
    pub_se = f2["y"][s].reshape(ndraw, -1).std(0, ddof=1) / np.sqrt(ndraw)
    pub_sd = ((f2["ymax"] - f2["y"])[s].reshape(ndraw, -1)[0]) / 2.0
    m2, v2 = gp.posterior.predict(jnp.asarray(stock2), 100)
    our_mean, our_sd = np.asarray(m2.mean(0)), np.sqrt(np.asarray(v2.mean(0)))
    in_range = stock2 <= series.max()
    print(f"\nGP vs published figure 2 on [0, {stock2[-1]:.1f}]: max |mean diff| = {np.max(np.abs(our_mean - pub_mean)):.3f}"
          f" (published draws' MC s.e. up to {pub_se.max():.3f}), within the data range "
          f"{np.max(np.abs(our_mean - pub_mean)[in_range]):.3f}; sd ours/published median ratio "
          f"{np.median(our_sd / pub_sd):.2f}")

    _figures(outdir, grid, gp, fits, policies["paper"], pub_pol, ratios["paper"], pub5, x_obs, y_obs, stock2,
             pub_mean, pub_sd, sims["paper"], policies["exact"])
    return {"npv": rows, "policy_agreement": agree, "selection": sel["selected"], "seconds": total,
            "gp_mean_maxdiff": float(np.max(np.abs(our_mean - pub_mean)))}


def _figures(outdir, grid, gp, fits, policies, pub_pol, ratios, pub5, x_obs, y_obs, stock2, pub_mean, pub_sd, sims,
             policies_exact):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("k", "C0", "C1", "C2", "C3", "C4")))
    # figure 2: fits
    fig, ax = plt.subplots(figsize=(6, 4))
    mean = gp.predictive_mean.mean(0)
    sd = np.sqrt(gp.predictive_variance.mean(0))
    ax.fill_between(grid, mean - 2 * sd, mean + 2 * sd, color="0.85", label="GP ±2 sd")
    ax.plot(grid, mean, color=colors["GP"], label="GP")
    ax.plot(stock2, pub_mean, "--", color=colors["GP"], lw=1, label="GP (published)")
    ax.plot(stock2, pub_mean - 2 * pub_sd, ":", color=colors["GP"], lw=1)
    ax.plot(stock2, pub_mean + 2 * pub_sd, ":", color=colors["GP"], lw=1)
    ax.plot(grid, fish.growth("allen", grid, fish.TRUE_PARAMS), color="k", label="True")
    for name, fit in fits.items():
        d = fit.flat_draws()
        med = {k: np.median(v) for k, v in d.items()}
        ax.plot(grid, fish.growth(fit.growth, grid, med), color=colors[name], label=f"{name} (median)")
    mle = fits["Allen"].mle
    ax.plot(grid, fish.growth("allen", grid, mle), color=colors["MLE"], label="MLE")
    ax.scatter(x_obs, y_obs, s=10, color="k", zorder=5)
    ax.set(xlabel="$x_t$", ylabel="$x_{t+1}$", ylim=(-1, 14))
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(outdir, "figure2_fits.png"), dpi=120)
    # figure 3: policies (escapement)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        s = pub_pol["method"] == m
        ax.plot(grid, grid - np.minimum(policies[m], grid), color=colors[m], label=m)
        ax.plot(grid, grid - np.minimum(pub_pol["value"][s], grid), "--", color=colors[m], lw=0.8)
    ax.plot(grid, grid - np.minimum(policies_exact["GP"], grid), ":", color=colors["GP"], lw=1.5, label="GP (exact)")
    ax.set(xlabel="stock size", ylabel="escapement", title="ours, paper conventions (solid) vs published (dashed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(outdir, "figure3_policies.png"), dpi=120)
    # figure 5: NPV ratios
    fig, axes = plt.subplots(1, 5, figsize=(12, 3), sharey=True)
    for ax, m in zip(axes, ("GP", "Allen", "MLE", "Ricker", "Myers")):
        bins = np.linspace(0, 1.2, 25)
        ax.hist(ratios[m], bins=bins, color=colors[m], alpha=0.8, label="ours")
        ax.hist(pub5["value"][pub5["variable"] == m], bins=bins, histtype="step", color="k", label="published")
        ax.set_title(m)
        ax.set_xlabel("NPV / optimal")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(outdir, "figure5_npv.png"), dpi=120)
    # trajectories under each policy (the paper's simulation figure)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        st = np.asarray(sims[m].states)
        ax.plot(st[:20].T, color=colors[m], alpha=0.15)
        ax.plot([], [], color=colors[m], label=m)
    ax.set(xlabel="time", ylabel="fish stock")
    ax.legend(fontsize=7)
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(outdir, "figure4_trajectories.png"), dpi=120)


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outdir", default="out/gpdp")
    parser.add_argument("--quick", action="store_true")
    args = parse_example_args(parser)
    main(args.outdir, args.quick, progress_bar=args.progress_bar)
