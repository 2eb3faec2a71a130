# %% [markdown]
# # PaRIS and Parisian particle Gibbs: smoothing and learning
#
# Reproduces, at laptop scale, the experiments of Cardoso, Janati, Le Corff, Moulines & Olsson,
# "State and parameter learning with PaRIS particle Gibbs" (ICML 2023):
#
# 1. on a linear-Gaussian model, the bias of PPG (roll-out estimator, N particles, k iterations, burn-in
#    k/2) and of PaRIS with as many particles as PPG moves in total, N (k + 1), for the smoothed additive
#    functional sum_t E[x_{t-1} x_t | y], against the exact RTS value (R independent replicates);
# 2. maximum-likelihood learning curves (PPG and PaRIS scores, Fisher identity) converging to the exact
#    Kalman MLE;
# 3. learning the stochastic-volatility model's parameters with PPG.
#
# Run: `python examples/paris_ppg.py --quick --outdir out` or `bayeskit reproduce ppg --quick`.

# %%
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import scipy.optimize as so
from numpyro.distributions import constraints

import bayeskit as bk
from bayeskit.cli import parse_example_args
from bayeskit.models import linear_gaussian as lg
from bayeskit.models import stochastic_volatility as sv

AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)


def lg_params(p):
    return {"A": jnp.reshape(p["rho"], (1, 1)), "Q": jnp.reshape(p["sigma_x"] ** 2, (1, 1)), "H": jnp.ones((1, 1)),
            "R": jnp.reshape(p["sigma_y"] ** 2, (1, 1)), "m0": jnp.zeros(1), "P0": jnp.ones((1, 1))}


def h_cross(t, x_prev, x):
    """h_t(x_{t-1}, x_t) = x_{t-1} x_t: the estimate is sum_t E[X_{t-1} X_t | y]."""
    return jnp.zeros_like(x) if x_prev is None else x_prev * x


def paris_replicates(key, ys, params, num_particles, R):
    """R independent PaRIS estimates of sum_t E[x_(t-1) x_t | y] (the public driver, vmapped and jitted)."""
    run = jax.jit(jax.vmap(lambda k: bk.smc.paris(k, AR, params, ys, num_particles, functional=h_cross,
                                                  ess_threshold=0.5).estimate))
    return np.asarray(run(jax.random.split(key, R)))


def ppg_replicates(key, ys, params, num_particles, num_iterations, R):
    """R independent PPG chains, each started (as `bk.smc.ppg` does) from one backward-sampled path of a
    bootstrap filter with the same N: the per-iteration estimates, shape (R, num_iterations)."""
    def one(k):
        k1, k2 = jax.random.split(k)
        path = bk.smc.ffbs(k1, AR, params, ys, num_particles, num_samples=1).paths[0]
        return bk.smc.ppg(k2, AR, params, ys, num_particles, functional=h_cross, num_iterations=num_iterations,
                          initial_path=path).estimates

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, R)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (under two minutes of CPU)")
    parser.add_argument("--outdir", default="outputs/paris_ppg")
    args = parse_example_args(parser, argv)
    jax.config.update("jax_enable_x64", True)
    os.makedirs(args.outdir, exist_ok=True)
    quick = args.quick
    T = 50
    R = 256 if quick else 1024
    true = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
    _, ys = AR.simulate(jax.random.key(0), true, T)
    sm = lg.rts_smoother(lg_params(true), ys[:, None])
    exact = float((sm.cross_covs[:, 0, 0] + sm.means[:-1, 0] * sm.means[1:, 0]).sum())

    # ---------------------------------------------------------------- 1. bias at equal cost
    # PPG with N particles and k iterations (roll-out over iterations k0+1..k, k0 = k/2), started from one
    # backward-sampled path of a bootstrap filter with N particles, costs N (k + 1) particle moves (burn-in and
    # the initial filter included); PaRIS gets the same number of particles. R independent replicates give
    # the bias and its standard error against the exact RTS value.
    ks = (2, 4, 8) if quick else (2, 4, 8, 16)
    n_ppg = (32,) if quick else (16, 32)
    rows, per_iter = [], {}
    paris_cache = {}

    def paris_bias(n):
        if n not in paris_cache:
            e = paris_replicates(jax.random.key(1), ys, true, n, R)
            paris_cache[n] = (e.mean() - exact, e.std(ddof=1) / np.sqrt(R))
        return paris_cache[n]

    for N in n_ppg:
        est = ppg_replicates(jax.random.key(2), ys, true, N, max(ks), R)  # (R, k_max)
        per_iter[N] = (est.mean(0) - exact, est.std(0, ddof=1) / np.sqrt(R))
        for k in ks:
            e = est[:, k // 2:k].mean(1)
            b_pa, se_pa = paris_bias(N * (k + 1))
            rows.append((N, k, k // 2, N * (k + 1), e.mean() - exact, e.std(ddof=1) / np.sqrt(R), b_pa, se_pa))
    print(f"\nsum_t E[x_(t-1) x_t | y]: exact (RTS) = {exact:.3f}, T = {T}, {R} independent replicates; "
          "cost = particles moved = N (k+1) for PPG")
    print(f"{'PPG N':>6}{'k':>4}{'k0':>4}{'cost':>7}{'PPG bias':>11}{'(se)':>8}{'PaRIS(cost) bias':>18}{'(se)':>8}")
    for r in rows:
        print(f"{r[0]:>6}{r[1]:>4}{r[2]:>4}{r[3]:>7}{r[4]:>11.3f}{r[5]:>8.3f}{r[6]:>18.3f}{r[7]:>8.3f}")
    for N, (b, se) in per_iter.items():
        print(f"PPG N = {N}, bias of the single-iteration estimate at iterations 1..{len(b)}: "
              + " ".join(f"{v:.2f}" for v in b) + f"  (se ~ {se.mean():.2f})")
    # ---------------------------------------------------------------- 2. MLE vs exact Kalman MLE
    @jax.jit
    def negll(v):
        p = {"rho": jnp.tanh(v[0]), "sigma_x": jnp.exp(v[1]), "sigma_y": jnp.exp(v[2])}
        return -lg.kalman_filter(lg_params(p), ys[:, None]).log_likelihood

    opt = so.minimize(lambda v: float(negll(jnp.asarray(v))), np.zeros(3),
                      jac=lambda v: np.asarray(jax.grad(negll)(jnp.asarray(v))), method="BFGS")
    mle = {"rho": np.tanh(opt.x[0]), "sigma_x": np.exp(opt.x[1]), "sigma_y": np.exp(opt.x[2])}
    iters = 300 if quick else 1000
    init = {"rho": 0.3, "sigma_x": 2.0, "sigma_y": 1.0}
    cons = {"rho": constraints.interval(-1.0, 1.0), "sigma_x": constraints.positive,
            "sigma_y": constraints.positive}
    fits = {}
    for est in ("ppg", "paris"):
        t0 = time.perf_counter()
        fits[est] = bk.smc.fit(jax.random.key(3), AR, init, ys, estimator=est, num_iterations=iters,
                               num_particles=32, constraints=cons,
                               optimizer=optax.adam(optax.exponential_decay(0.05, iters, 0.05)),
                               progress_bar=args.progress_bar)
        fits[est] = (fits[est], time.perf_counter() - t0)
    print(f"\nMLE on the linear-Gaussian model (T = {T}, N = 32, {iters} iterations; Polyak mean of the last third)")
    print(f"{'parameter':<10}{'true':>8}{'Kalman MLE':>12}{'PPG':>9}{'PaRIS':>9}")
    tail = iters // 3
    for name in ("rho", "sigma_x", "sigma_y"):
        vals = [float(np.mean(fits[e][0].history[name][-tail:])) for e in ("ppg", "paris")]
        print(f"{name:<10}{float(true[name]):>8.3f}{mle[name]:>12.3f}{vals[0]:>9.3f}{vals[1]:>9.3f}")
    print(f"time: PPG {fits['ppg'][1]:.1f} s, PaRIS {fits['paris'][1]:.1f} s")

    # ---------------------------------------------------------------- 3. stochastic volatility
    sv_true = sv.example_params()
    xs_sv, ys_sv = sv.ssm.simulate(jax.random.key(4), sv_true, 200 if quick else 500)
    sv_iters = 200 if quick else 800
    sv_fit = bk.smc.fit(jax.random.key(5), sv.ssm, {"mu": 0.0, "phi": 0.5, "sigma": 1.0}, ys_sv,
                        num_iterations=sv_iters, num_particles=32,
                        optimizer=optax.adam(optax.exponential_decay(0.05, sv_iters, 0.1)),
                        progress_bar=args.progress_bar)
    print(f"\nstochastic volatility (T = {ys_sv.shape[0]}, PPG MLE, constraints from the model's prior)")
    for name in ("mu", "phi", "sigma"):
        print(f"{name:<8} true {float(sv_true[name]):>7.3f}   learned {float(sv_fit.params[name]):>7.3f}")

    # ---------------------------------------------------------------- figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for j, N in enumerate(n_ppg):
        sel = [r for r in rows if r[0] == N]
        ax.errorbar([r[3] for r in sel], [r[4] for r in sel], yerr=[2 * r[5] for r in sel], marker="o",
                    color=f"C{j}", label=f"PPG, N = {N}, k0 = k/2 (k = {', '.join(str(r[1]) for r in sel)})")
    costs = sorted(paris_cache)
    ax.errorbar(costs, [paris_cache[c][0] for c in costs], yerr=[2 * paris_cache[c][1] for c in costs],
                marker="s", color="k", ls="--", label="PaRIS, N = cost")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xscale="log", xlabel="cost (particles moved)", ylabel="bias (±2 se)",
           title="bias of sum_t E[x_(t-1) x_t | y] at equal cost")
    ax.legend(fontsize=7)
    ax = axes[1]
    for j, name in enumerate(("rho", "sigma_x", "sigma_y")):
        for est, ls in (("ppg", "-"), ("paris", ":")):
            ax.plot(np.asarray(fits[est][0].history[name]), ls, color=f"C{j}", label=f"{name} ({est})")
        ax.axhline(mle[name], color=f"C{j}", lw=0.8, ls="--")
    ax.set(xlabel="iteration", title="MLE learning curves (dashed: Kalman MLE)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for j, name in enumerate(("mu", "phi", "sigma")):
        ax.plot(np.asarray(sv_fit.history[name]), color=f"C{j}", label=name)
        ax.axhline(float(sv_true[name]), color=f"C{j}", lw=0.8, ls="--")
    ax.set(xlabel="iteration", title="stochastic volatility, PPG MLE (dashed: truth)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.outdir, "paris_ppg.png")
    bk.plots.save(fig, path, dpi=120)
    print(f"\nfigure written to {path}")

    # the learned SV model: filtering and FFBS smoothing bands against the true log-volatility, and the
    # filter's ESS and resampling steps (bk.plots draws from the results' ArviZ trees)
    pf_sv = bk.smc.particle_filter(jax.random.key(6), sv.ssm, sv_fit.params, ys_sv, 500, history=True)
    ffbs_sv = bk.smc.ffbs(jax.random.key(7), sv.ssm, sv_fit.params, ys_sv, 500, num_samples=200)
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True, constrained_layout=True)
    bk.plots.states([pf_sv, ffbs_sv], labels=["particle filter", "FFBS smoother"], truth=xs_sv, ax=axes[0],
                    title="stochastic volatility at the learned parameters: log-volatility x_t")
    bk.plots.smc_diagnostics(pf_sv, axes=axes[1:])
    path = os.path.join(args.outdir, "sv_states.png")
    bk.plots.save(fig, path, dpi=120)
    print(f"figure written to {path}")
    return rows


if __name__ == "__main__":
    main()
