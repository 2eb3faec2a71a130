# %% [markdown]
# # Tutorial: from a NumPyro model to particle Gibbs and ArviZ
#
# A local-level model written the way NumPyro users write time series (globals, an initial state, then
# `numpyro.contrib.control_flow.scan`), run unchanged under bayeskit's particle methods:
#
# 1. convert it with `bk.StateSpaceModel.from_numpyro`;
# 2. filter it with a particle filter at fixed globals, and look at the filtering bands and the ESS;
# 3. sample globals and states jointly with particle Gibbs (conditional SMC with backward sampling for the
#    states, NumPyro's NUTS for the globals);
# 4. summarise and plot the result with ArviZ, draw the smoothed states against the truth with
#    `bk.plots.states`, and save the whole result to one netCDF file.
#
# Run as a notebook (`jupyter lab`, then open this file as a notebook), or as a script:
# `python examples/numpyro_to_arviz.py --quick` or `bayeskit reproduce tutorial --quick`.

# %%
from __future__ import annotations

import argparse
import os

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer import NUTS

import bayeskit as bk
from bayeskit.cli import parse_example_args

parser = argparse.ArgumentParser(description="From a NumPyro model to particle Gibbs and ArviZ")
parser.add_argument("--quick", action="store_true", help="fewer sweeps")
parser.add_argument("--outdir", default="bayeskit-output/tutorial", help="where the figures and netCDF go")
args = parse_example_args(parser, None if __name__ == "__main__" else [])
os.makedirs(args.outdir, exist_ok=True)
num_iterations = 150 if args.quick else 1000
burn_in = num_iterations // 3


# %% [markdown]
# ## 1. The model, in plain NumPyro
#
# Nothing here is bayeskit-specific: the same function runs under NumPyro's NUTS.

# %%
def local_level(y):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))  # state noise
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))  # observation noise
    x0 = numpyro.sample("x0", dist.Normal(0.0, 3.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, sigma))
        numpyro.sample("y", dist.Normal(x, tau), obs=y_t)
        return x, None

    scan(step, x0, y)


# simulated data with known truth: a random-walk level (sigma = 0.3) seen in noise (tau = 0.5)
k_level, k_noise = jax.random.split(jax.random.key(0))
level = jnp.cumsum(0.3 * jax.random.normal(k_level, (80,)))
y = level + 0.5 * jax.random.normal(k_noise, (80,))

ssm = bk.StateSpaceModel.from_numpyro(local_level, y)
print(ssm.structure)
print("ys:", ssm.ys.shape, "(row 0 is the initial state x0, which observes nothing)")

# %% [markdown]
# ## 2. A particle filter at fixed globals
#
# With `history=True` the result keeps every step's particles, so its ArviZ tree has the filtering
# marginals over `time` and `bk.plots.states` can draw them; `bk.plots.smc_diagnostics` draws the
# effective sample size with the resampling steps, and the log-evidence increments.

# %%
params = {"sigma": jnp.asarray(0.3), "tau": jnp.asarray(0.5)}
pf = bk.smc.particle_filter(jax.random.key(1), ssm, params, ssm.ys, num_particles=500, history=True,
                            progress_bar=args.progress_bar)
print(f"log p(y | sigma, tau) ~= {float(pf.log_evidence):.2f}")
truth = np.concatenate([[np.nan], np.asarray(level)])  # time 0 is x0, time t is x_t
fig = bk.plots.states(pf, labels=["particle filter"], truth=truth, title="filtering marginals (fixed globals)")
bk.plots.save(fig, os.path.join(args.outdir, "filter_states.png"))
fig = bk.plots.smc_diagnostics(pf, title="particle filter: ESS and resampling")
bk.plots.save(fig, os.path.join(args.outdir, "filter_ess.png"))

# %% [markdown]
# ## 3. Particle Gibbs: states and globals together
#
# Each sweep draws a state path from conditional SMC with backward sampling (64 particles), then updates
# the globals given the path with NUTS (`bk.smc.NumPyroUpdate`), starting from the values above.

# %%
pg = bk.smc.particle_gibbs(jax.random.key(2), ssm, {"sigma": jnp.asarray(1.0), "tau": jnp.asarray(1.0)},
                           ssm.ys, num_particles=64, num_iterations=num_iterations, burn_in=burn_in,
                           parameter_update=bk.smc.NumPyroUpdate(NUTS, num_warmup=burn_in),
                           progress_bar=args.progress_bar)

# %% [markdown]
# ## 4. ArviZ
#
# `to_arviz()` returns an ArviZ `DataTree`: the globals and the state paths `x` (dims `chain`, `draw`,
# `time`) in `posterior`, per-sweep diagnostics in `sample_stats` (see the docs page "ArviZ output").

# %%
tree = pg.to_arviz()
print(az.summary(tree, var_names=["sigma", "tau"]))

# %%
az.plot_trace_dist(tree, var_names=["sigma", "tau"])
fig = plt.gcf()
bk.plots.save(fig, os.path.join(args.outdir, "trace.png"))

# %% [markdown]
# The smoothed states (each draw is a whole path) against the truth, beside the filter's marginals:

# %%
fig = bk.plots.states([pf, pg], labels=["particle filter (fixed globals)", "particle Gibbs"], truth=truth,
                      title="local level: filtering and smoothing")
bk.plots.save(fig, os.path.join(args.outdir, "states.png"))

# %% [markdown]
# One file holds every group; `az.from_netcdf` reads it back.

# %%
path = os.path.join(args.outdir, "particle_gibbs.nc")
tree.to_netcdf(path)
back = az.from_netcdf(path)
assert np.allclose(back["posterior"]["sigma"].values, tree["posterior"]["sigma"].values)
print(f"wrote {path}: groups {sorted(back.children)}")
