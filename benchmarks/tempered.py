"""Adaptive tempered SMC: ``bk.smc.tempered`` vs ``blackjax.adaptive_tempered_smc`` at equal settings.

The 4-D conjugate model: mu ~ N(0, 2^2 I_4), y_j ~ N(mu_j, 1) (one observation per coordinate), so
log Z = sum_j log N(y_j; 0, 2^2 + 1) in closed form. Both samplers: N = 4000 particles, target ESS 0.5
(adaptive temperatures by bisection on the ESS), systematic resampling at every temperature, 10
random-walk Metropolis steps per temperature with proposal N(0, s^2 Sigma_hat), Sigma_hat the particle
cloud's covariance and s = 2.38 / sqrt(d) fixed (bayeskit: ``kernel="rwm"``, ``adapt_scale=False``;
BlackJAX: ``additive_step_random_walk`` inside ``inner_kernel_tuning``, which sets the proposal from the
cloud after each step). BlackJAX's loop is a jitted ``lax.while_loop`` over its step, with plain JAX
log-densities; bayeskit is timed twice: the user-facing driver ``bk.smc.tempered`` on the NumPyro model
(validation, result, constrained draws included) and its pure kernel layer
``bk.smc.kernels.run_tempered`` under one ``jit``.

Reported: the number of temperatures, the log-Z error (mean +- sd over 20 seeds of log Z_hat - log Z),
the compile time (first call), the median time of the later calls and the median time per temperature
(one resample-and-move of the cloud each, in both samplers). The three are timed in one
process, interleaved seed by seed (fair under background load). float64.

    python benchmarks/tempered.py [--quick]     (or: bayeskit bench tempered)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from scipy import stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import table, write_result  # noqa: E402

import bayeskit as bk  # noqa: E402
from bayeskit.model.density import log_density  # noqa: E402

PRIOR_SD, DIM, NUM_PARTICLES, MOVES, TARGET = 2.0, 4, 4000, 10, 0.5
SCALE = 2.38 / np.sqrt(DIM)


def model(y):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(y.shape[-1]), PRIOR_SD).to_event(1))
    numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def exact_log_z(y):
    return float(np.sum(stats.norm(0.0, np.sqrt(PRIOR_SD**2 + 1.0)).logpdf(np.asarray(y))))


def build(y, num_particles):
    import blackjax
    from blackjax.smc.base import extend_params

    # bayeskit: the driver (what a user calls) and the pure kernel layer under one jit
    def driver(key):
        res = bk.smc.tempered(key, model, y, num_particles=num_particles, target_ess=TARGET, kernel="rwm",
                              num_mcmc_steps=MOVES, kernel_parameters={"scale": SCALE, "adapt_scale": False})
        return res.log_evidence, res.num_steps

    dens = log_density(model, y)
    fn = bk.smc.kernels.prior_and_likelihood_fn(dens)
    move = bk.smc.kernels.rwm_move(fn, DIM, MOVES, scale=SCALE, adapt_scale=False)

    @jax.jit
    def kernel_layer(key):
        k1, k2 = jax.random.split(key)
        x = jax.vmap(dens.flatten)(dens.sample_prior(k1, num_particles))
        state, _, n = bk.smc.kernels.run_tempered(k2, x, fn, move, target_ess=TARGET)
        return state.log_evidence, n

    # BlackJAX: adaptive_tempered_smc + random-walk kernel with the cloud's covariance, in a while_loop
    def log_prior(x):
        return jnp.sum(jax.scipy.stats.norm.logpdf(x, 0.0, PRIOR_SD))

    def log_lik(x):
        return jnp.sum(jax.scipy.stats.norm.logpdf(y, x, 1.0))

    rw = blackjax.additive_step_random_walk.build_kernel()

    def rw_step(rng_key, state, logdensity_fn, chol):
        return rw(rng_key, state, logdensity_fn, lambda k, x: chol @ jax.random.normal(k, x.shape, x.dtype))

    def tune(key, state, info):
        cov = jnp.cov(state.particles.T)
        return extend_params({"chol": SCALE * jnp.linalg.cholesky(cov)})

    algo = blackjax.inner_kernel_tuning(
        blackjax.adaptive_tempered_smc, log_prior, log_lik, rw_step, blackjax.additive_step_random_walk.init,
        blackjax.smc.resampling.systematic, tune, extend_params({"chol": SCALE * PRIOR_SD * jnp.eye(DIM)}),
        num_mcmc_steps=MOVES, target_ess=TARGET)

    @jax.jit
    def blackjax_run(key):
        k1, k2 = jax.random.split(key)
        state = algo.init(PRIOR_SD * jax.random.normal(k1, (num_particles, DIM)))

        def cond(c):
            return (c[1].sampler_state.tempering_param < 1.0) & (c[0] < 500)

        def body(c):
            i, st, lz = c
            st, info = algo.step(jax.random.fold_in(k2, i), st)
            return i + 1, st, lz + info.log_likelihood_increment

        n, state, lz = jax.lax.while_loop(cond, body, (0, state, jnp.zeros(())))
        return lz, n

    return {"bk.smc.tempered (driver)": driver, "bk kernels.run_tempered (jit)": kernel_layer,
            "blackjax adaptive_tempered_smc (jit)": blackjax_run}


def measure(fns: dict, keys):
    """First call (compile) of each, then the later calls timed interleaved key by key."""
    out = {name: {"compile": None, "times": [], "log_z": [], "steps": []} for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(keys[0]))
        out[name]["compile"] = time.perf_counter() - t0
    for k in keys:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            lz, n = jax.block_until_ready(fn(k))
            out[name]["times"].append(time.perf_counter() - t0)
            out[name]["log_z"].append(float(lz))
            out[name]["steps"].append(int(n))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    seeds = 5 if args.quick else 20
    num_particles = 1000 if args.quick else NUM_PARTICLES
    y = jnp.asarray(np.random.default_rng(0).normal(1.0, np.sqrt(PRIOR_SD**2 + 1.0), DIM))
    truth = exact_log_z(y)
    fns = build(y, num_particles)
    keys = list(jax.random.split(jax.random.key(1), seeds))
    res = measure(fns, keys)
    ref = statistics.median(res["blackjax adaptive_tempered_smc (jit)"]["times"])
    rows = []
    for name, r in res.items():
        err = np.array(r["log_z"]) - truth
        med = statistics.median(r["times"])
        per_temperature = statistics.median(t / n for t, n in zip(r["times"], r["steps"]))
        rows.append([name, f"{np.mean(r['steps']):.2f} ({min(r['steps'])}-{max(r['steps'])})",
                     f"{err.mean():+.3f} ± {err.std(ddof=1):.3f}", f"{r['compile']:.2f}", f"{med * 1e3:.1f}",
                     f"{per_temperature * 1e3:.1f}", f"{ref / med:.2f}"])
        print(rows[-1], flush=True)
    headers = ["sampler", "temperatures: mean (min-max)", "log-Z error (mean ± sd)", "first call s",
               "median later call ms", "median ms per temperature", "speed vs BlackJAX"]
    body = table(headers, rows)
    note = (f"\n\nd = {DIM}, N = {num_particles}, target ESS {TARGET}, {MOVES} random-walk steps per temperature "
            f"(proposal scale {SCALE:.3f} x cloud covariance, fixed), systematic resampling; exact log Z = "
            f"{truth:.4f}; {seeds} seeds; float64. Times: median of the calls after the first (the first is "
            "reported apart: it compiles), the three samplers timed alternately seed by seed in one process. "
            "Speed > 1: faster than BlackJAX. Temperatures: bayeskit moves the cloud once at each lambda_1..lambda_K "
            "= 1 (K moves); BlackJAX's step moves the cloud at the current lambda before weighting to the next, "
            "so its first move is at lambda_0 = 0 and it ends with weighted particles at lambda = 1 (K moves).")
    print(body + note)
    path = write_result("tempered", "Adaptive tempered SMC vs blackjax.adaptive_tempered_smc", body + note)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
