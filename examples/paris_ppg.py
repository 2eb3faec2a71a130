# %% [markdown]
# # PaRIS and Parisian particle Gibbs: smoothing and learning
#
# Reproduces, at laptop scale, the experiments of Cardoso, Janati, Le Corff, Moulines & Olsson,
# "State and parameter learning with PaRIS particle Gibbs" (ICML 2023):
#
# 1. on a linear-Gaussian model, the bias and spread of PaRIS and of PPG (roll-out estimator) for the
#    smoothed additive functional sum_t E[x_{t-1} x_t | y] at small N, against the exact RTS value;
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
from bayeskit.inference.smc.paris import _paris_jit, _ppg_jit
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    parser.add_argument("--outdir", default="outputs/paris_ppg")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    os.makedirs(args.outdir, exist_ok=True)
    quick = args.quick
    T = 50 if quick else 100
    R = 48 if quick else 200
    true = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
    _, ys = AR.simulate(jax.random.key(0), true, T)
    sm = lg.rts_smoother(lg_params(true), ys[:, None])
    exact = float((sm.cross_covs[:, 0, 0] + sm.means[:-1, 0] * sm.means[1:, 0]).sum())

    # ---------------------------------------------------------------- 1. bias / spread at small N
    rows = []
    keys = jax.random.split(jax.random.key(1), R)
    for N in (8, 32, 128):
        run = jax.jit(jax.vmap(lambda k, N=N: _paris_jit(k, AR, true, ys, 0.5, num_particles=N, functional=h_cross,
                                                          num_backward=2, resampling="systematic", num_trials=10,
                                                          log_transition_bound=None, chunk_size=None, online=False)[0]))
        st = run(keys)
        e = np.asarray(jnp.sum(jax.nn.softmax(st.smc.log_weights, -1) * st.stats, -1))
        rows.append(("PaRIS", N, 1, N, e.mean() - exact, e.std(), np.sqrt(np.mean((e - exact) ** 2))))
    N_ppg, k, k0 = 8, 16, 4
    run = jax.jit(jax.vmap(lambda key: _ppg_jit(key, AR, true, ys, jnp.zeros(T), num_particles=N_ppg,
                                                functional=h_cross, num_backward=2, num_trials=10,
                                                log_transition_bound=None, chunk_size=None, num_iterations=k,
                                                keep_paths=False)[1]))
    per_iter = np.asarray(run(jax.random.split(jax.random.key(2), R)))  # (R, k)
    e = per_iter[:, k0:].mean(1)
    rows.append((f"PPG (k={k}, k0={k0})", N_ppg, k, N_ppg * k, e.mean() - exact, e.std(),
                 np.sqrt(np.mean((e - exact) ** 2))))
    print(f"\nsum_t E[x_(t-1) x_t | y], exact (RTS) = {exact:.3f}, T = {T}, {R} replicates "
          "(PPG chains start from the zero path; cost = particles moved per replicate)")
    print(f"{'method':<22}{'N':>6}{'iters':>7}{'cost N*k':>10}{'bias':>10}{'sd':>9}{'rmse':>9}")
    for r in rows:
        print(f"{r[0]:<22}{r[1]:>6}{r[2]:>7}{r[3]:>10}{r[4]:>10.3f}{r[5]:>9.3f}{r[6]:>9.3f}")
    bias_iter = per_iter.mean(0) - exact
    se_iter = per_iter.std(0) / np.sqrt(R)

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
                               optimizer=optax.adam(optax.exponential_decay(0.05, iters, 0.05)))
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
    _, ys_sv = sv.ssm.simulate(jax.random.key(4), sv_true, 200 if quick else 500)
    sv_iters = 200 if quick else 800
    sv_fit = bk.smc.fit(jax.random.key(5), sv.ssm, {"mu": 0.0, "phi": 0.5, "sigma": 1.0}, ys_sv,
                        num_iterations=sv_iters, num_particles=32,
                        optimizer=optax.adam(optax.exponential_decay(0.05, sv_iters, 0.1)))
    print(f"\nstochastic volatility (T = {ys_sv.shape[0]}, PPG MLE, constraints from the model's prior)")
    for name in ("mu", "phi", "sigma"):
        print(f"{name:<8} true {float(sv_true[name]):>7.3f}   learned {float(sv_fit.params[name]):>7.3f}")

    # ---------------------------------------------------------------- figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.errorbar(np.arange(1, k + 1), bias_iter, yerr=2 * se_iter, marker="o", label=f"PPG, N = {N_ppg}, per sweep")
    for r in rows[:-1]:
        ax.axhline(r[4], ls="--", lw=1, label=f"PaRIS N = {r[1]}", color=f"C{rows.index(r) + 1}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="PPG iteration", ylabel="bias", title="bias of sum_t E[x_(t-1) x_t | y]")
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
    fig.savefig(path, dpi=120)
    print(f"\nfigure written to {path}")
    return rows


if __name__ == "__main__":
    main()
