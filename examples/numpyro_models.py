# %% [markdown]
# # Your NumPyro time-series model under particle methods, unchanged
#
# Three models written the way NumPyro users write them (global parameters, an initial state, then
# `numpyro.contrib.control_flow.scan` over a body that samples the next state and the observation), each
# converted with `bk.StateSpaceModel.from_numpyro` and sampled with particle Gibbs (conditional SMC with
# backward sampling for the states, NumPyro's NUTS for the globals), then summarised with ArviZ:
#
# 1. a local-level model (scalar state, observations through scan's `xs`);
# 2. the stochastic-volatility model of NumPyro's `examples/stochastic_volatility.py`, with its Gaussian
#    random walk written as a scan (same joint density; the test suite checks it to 1e-10);
# 3. a nonlinear model with a 2-D state (a `plate` over the state dimensions, two observed sites per step,
#    observations indexed from a closure, the `y=None` idiom NumPyro models use to simulate).
#
# Run: `python examples/numpyro_models.py` (about 1.5 min of CPU, mostly compilation) or with `--quick`;
# `--num-iterations` for longer chains.

# %%
from __future__ import annotations

import argparse
import os
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer import NUTS, Predictive

import bayeskit as bk
from bayeskit.cli import parse_example_args


# %% [markdown]
# ## The three NumPyro models (nothing bayeskit-specific in them)

# %%
def local_level(y):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 3.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, sigma))
        numpyro.sample("y", dist.Normal(x, tau), obs=y_t)
        return x, None

    scan(step, x0, y)


def stochastic_volatility(returns):
    # NumPyro's example: s ~ GaussianRandomWalk(sigma), r ~ StudentT(nu, 0, exp(s)); here s_0 and the first
    # return come before the scan, the remaining steps inside it
    sigma = numpyro.sample("sigma", dist.Exponential(50.0))
    nu = numpyro.sample("nu", dist.Exponential(0.1))
    s0 = numpyro.sample("s0", dist.Normal(0.0, sigma))
    numpyro.sample("r0", dist.StudentT(nu, 0.0, jnp.exp(s0)), obs=returns[0])

    def step(s_prev, r_t):
        s = numpyro.sample("s", dist.Normal(s_prev, sigma))
        numpyro.sample("r", dist.StudentT(nu, 0.0, jnp.exp(s)), obs=r_t)
        return s, None

    scan(step, s0, returns[1:])


def rotating_counts(counts=None, marks=None, num_steps=60):
    omega = numpyro.sample("omega", dist.Uniform(0.0, 1.5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
    with numpyro.plate("dim", 2):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))
    rot = 0.95 * jnp.array([[jnp.cos(omega), -jnp.sin(omega)], [jnp.sin(omega), jnp.cos(omega)]])

    def step(z_prev, t):
        with numpyro.plate("dim", 2):
            z = numpyro.sample("z", dist.Normal(rot @ jnp.tanh(z_prev) + 0.3 * z_prev, sigma))
        numpyro.sample("count", dist.Poisson(jnp.exp(1.0 + z[0])), obs=None if counts is None else counts[t])
        numpyro.sample("mark", dist.Normal(z[1], 0.5), obs=None if marks is None else marks[t])
        return z, None

    scan(step, z0, jnp.arange(num_steps))


# %% [markdown]
# ## From NumPyro form to particle Gibbs and ArviZ

# %%
def run(name, model, args, init_params, key, num_iterations, num_particles, progress_bar=False):
    ssm = bk.StateSpaceModel.from_numpyro(model, *args)
    st = ssm.structure
    print(f"\n== {name}: globals {st.global_sites}, initial state {st.initial_sites}, state {st.state_sites} "
          f"{st.state_shape}, observed {st.initial_observed_sites + st.observed_sites}, {ssm.ys.shape[0]} steps")
    burn_in = num_iterations // 4
    t0 = time.perf_counter()
    pg = bk.smc.particle_gibbs(key, ssm, init_params, ssm.ys, num_particles=num_particles,
                               num_iterations=num_iterations, burn_in=burn_in,
                               parameter_update=bk.smc.NumPyroUpdate(NUTS, num_warmup=burn_in),
                               progress_bar=progress_bar)
    jax.block_until_ready(pg.paths)
    print(f"particle Gibbs: {num_iterations} sweeps, N = {num_particles}, {time.perf_counter() - t0:.1f} s "
          "(compile included)")
    idata = pg.to_arviz()
    print(az.summary(idata, var_names=list(st.global_sites)))
    # the paths back under the model's own site names (as NUTS would return them)
    sites = ssm.sites_from_path(pg.paths[burn_in:])
    print({k: v.shape for k, v in sites.items()})
    return ssm, pg, idata


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sweeps")
    parser.add_argument("--num-iterations", type=int, default=None, help="particle Gibbs sweeps per model")
    parser.add_argument("--outdir", default="results/numpyro_models", help="where the table goes")
    args = parse_example_args(parser, argv)
    num_iterations = args.num_iterations or (60 if args.quick else 200)
    os.makedirs(args.outdir, exist_ok=True)
    key = jax.random.key(0)
    k_data, k1, k2, k3 = jax.random.split(key, 4)

    # data: a random-walk level in noise, heavy-tailed returns with a drifting log-volatility, and a draw of
    # the 2-D model itself (its `y=None` form, through NumPyro's Predictive at fixed globals)
    level = jnp.cumsum(0.3 * jax.random.normal(k_data, (80,)))
    y = level + 0.5 * jax.random.normal(jax.random.fold_in(k_data, 1), (80,))
    s = jnp.cumsum(0.1 * jax.random.normal(jax.random.fold_in(k_data, 2), (100,))) - 4.0
    returns = jnp.exp(s) * jax.random.t(jax.random.fold_in(k_data, 3), 5.0, (100,))
    sim = Predictive(rotating_counts, params={"omega": jnp.asarray(0.6), "sigma": jnp.asarray(0.3)}, num_samples=1)
    draw = sim(jax.random.fold_in(k_data, 4))
    counts, marks = draw["count"][0], draw["mark"][0]

    # the simulated states, as the models' rows (row 0: the initial state) for the figure
    truths = {"local level": np.concatenate([[np.nan], np.asarray(level)]), "stochastic volatility": np.asarray(s),
              "2-D nonlinear": np.concatenate([np.asarray(draw["z0"]), np.asarray(draw["z"][0])])}
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), constrained_layout=True)
    rows = []
    for ax, (name, model, margs, init, k) in zip(axes, [
        ("local level", local_level, (y,), {"sigma": jnp.asarray(0.5), "tau": jnp.asarray(0.5)}, k1),
        ("stochastic volatility", stochastic_volatility, (returns,),
         {"sigma": jnp.asarray(0.05), "nu": jnp.asarray(5.0)}, k2),
        ("2-D nonlinear", rotating_counts, (counts, marks),
         {"omega": jnp.asarray(0.3), "sigma": jnp.asarray(0.5)}, k3),
    ]):
        ssm, pg, idata = run(name, model, margs, init, k, num_iterations, num_particles=64,
                             progress_bar=args.progress_bar)
        # smoothed states (each particle-Gibbs draw is a whole path) against the simulated truth
        bk.plots.states(pg, labels=["particle Gibbs"], truth=truths[name], ax=ax, title=name)
        summ = az.summary(idata, var_names=list(ssm.structure.global_sites))
        for var in ssm.structure.global_sites:
            rows.append(f"| {name} | {var} | {float(summ.loc[var, 'mean']):.3f} | {float(summ.loc[var, 'sd']):.3f} "
                        f"| {float(summ.loc[var, 'ess_bulk']):.0f} |")
    table = "| model | global | posterior mean | sd | ESS (bulk) |\n|---|---|---|---|---|\n" + "\n".join(rows)
    print("\n" + table)
    bk.plots.save(fig, os.path.join(args.outdir, "numpyro_models_states.png"))
    with open(os.path.join(args.outdir, "numpyro_models.md"), "w") as fh:
        fh.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
