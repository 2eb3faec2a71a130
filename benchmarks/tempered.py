"""Adaptive tempered SMC: bayeskit vs ``blackjax.adaptive_tempered_smc`` at equal settings, one run.

Same NumPyro model (Gaussian prior N(0, 2^2 I_d) x Gaussian likelihood, n = 5 observations per
coordinate; closed-form log-evidence), same initial prior draws, N particles, target ESS 0.5, systematic
resampling, 5 HMC moves per temperature (BlackJAX's HMC kernel in both, 10 leapfrog steps, the same fixed
step size and identity mass matrix: no adaptation on either side). Both whole loops are jitted
``lax.while_loop``s; times are medians over repeated runs after compilation (compile times reported
apart), in float64. log-Z error: mean and standard deviation over independent keys of
``log Z_hat - log Z``.

Densities: BlackJAX gets ``logprior_fn``/``loglikelihood_fn`` from ``bk.model.log_density`` (each runs
the model once); bayeskit uses its one-pass prior/likelihood split and caches the log-likelihood of
the particles between steps.

    python benchmarks/tempered.py [--quick]
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

from bayeskit.inference.smc.kernels import hmc_move, prior_and_likelihood_fn  # noqa: E402
from bayeskit.inference.smc.kernels import run_tempered as run  # noqa: E402
from bayeskit.model.density import log_density  # noqa: E402

PRIOR_SD, NUM_OBS, STEP_SIZE, LEAPFROG, MOVES, TARGET = 2.0, 5, 0.1, 10, 5, 0.5


def model(y):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(y.shape[-1]), PRIOR_SD).to_event(1))
    numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def exact_log_z(y):
    y = np.asarray(y)
    cov = PRIOR_SD**2 * np.ones((NUM_OBS, NUM_OBS)) + np.eye(NUM_OBS)
    return sum(stats.multivariate_normal(np.zeros(NUM_OBS), cov).logpdf(y[:, j]) for j in range(y.shape[1]))


def build(dim, num_particles):
    import blackjax
    from blackjax.smc.base import extend_params

    y = jnp.asarray(np.random.default_rng(dim).normal(1.0, 1.0, (NUM_OBS, dim)))
    dens = log_density(model, y)
    inv_mass = jnp.ones(dim)

    def prior_draws(key):
        return jax.vmap(dens.flatten)(dens.sample_prior(key, num_particles))

    # bayeskit: the pure loop with a fixed-step HMC move
    fn = prior_and_likelihood_fn(dens)
    move = hmc_move(fn, dim, MOVES, step_size=STEP_SIZE, adapt_step_size=False, inverse_mass_matrix=inv_mass,
                    num_integration_steps=LEAPFROG)

    @jax.jit
    def ours(key):
        k1, k2 = jax.random.split(key)
        state, infos, n = run(k2, prior_draws(k1), fn, move, target_ess=TARGET, resampling="systematic")
        return state.log_evidence, n

    # BlackJAX: adaptive_tempered_smc with the same kernel and settings, looped by lax.while_loop
    log_prior = lambda v: dens.log_prior(dens.unflatten(v))  # noqa: E731
    log_lik = lambda v: dens.log_likelihood(dens.unflatten(v))  # noqa: E731
    algo = blackjax.adaptive_tempered_smc(
        log_prior, log_lik, blackjax.hmc.build_kernel(), blackjax.hmc.init,
        extend_params({"step_size": STEP_SIZE, "inverse_mass_matrix": inv_mass,
                       "num_integration_steps": LEAPFROG}),
        blackjax.smc.resampling.systematic, TARGET, num_mcmc_steps=MOVES)

    @jax.jit
    def theirs(key):
        k1, k2 = jax.random.split(key)
        state = algo.init(prior_draws(k1))

        def cond(c):
            return (c[1].tempering_param < 1.0) & (c[0] < 500)

        def body(c):
            i, st, lz = c
            st, info = algo.step(jax.random.fold_in(k2, i), st)
            return i + 1, st, lz + info.log_likelihood_increment

        n, state, lz = jax.lax.while_loop(cond, body, (0, state, jnp.zeros(())))
        return lz, n

    return y, ours, theirs


def measure(fns, keys):
    """Compile each function, then time them interleaved key by key (fair under background load)."""
    compile_s = []
    for fn in fns:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(keys[0]))
        compile_s.append(time.perf_counter() - t0)
    times = [[] for _ in fns]
    log_z = [[] for _ in fns]
    steps = [[] for _ in fns]
    for k in keys:
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            lz, n = jax.block_until_ready(fn(k))
            times[j].append(time.perf_counter() - t0)
            log_z[j].append(float(lz))
            steps[j].append(int(n))
    return [(compile_s[j], statistics.median(times[j]), np.array(log_z[j]), np.array(steps[j]))
            for j in range(len(fns))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    configs = [(5, 1000)] if args.quick else [(5, 2000), (20, 2000)]
    repeats = 5 if args.quick else 20
    rows = []
    for dim, n in configs:
        y, ours, theirs = build(dim, n)
        truth = exact_log_z(y)
        keys = list(jax.random.split(jax.random.key(0), repeats))
        (c_o, t_o, lz_o, s_o), (c_t, t_t, lz_t, s_t) = measure([ours, theirs], keys)
        err_o, err_t = lz_o - truth, lz_t - truth
        rows.append([f"d={dim}, N={n}", f"{s_o.mean():.1f} / {s_t.mean():.1f}", f"{t_o:.3f}", f"{t_t:.3f}",
                     f"{t_t / t_o:.2f}", f"{c_o:.1f} / {c_t:.1f}",
                     f"{err_o.mean():+.3f} ± {err_o.std(ddof=1):.3f}",
                     f"{err_t.mean():+.3f} ± {err_t.std(ddof=1):.3f}"])
        print(rows[-1], flush=True)
    headers = ["problem", "temperatures (bk / bj)", "bayeskit s", "blackjax s", "blackjax / bayeskit",
               "compile s (bk / bj)", "bayeskit log-Z error", "blackjax log-Z error"]
    body = table(headers, rows)
    note = (f"\n\nEqual settings: target ESS {TARGET}, systematic resampling, {MOVES} HMC moves per temperature "
            f"(BlackJAX HMC kernel, {LEAPFROG} leapfrog steps, step size {STEP_SIZE}, identity mass), same prior "
            f"draws; {repeats} keys; float64; times are medians after compilation, the two methods timed alternately key by key. log-Z error: mean ± sd over "
            "keys of log Z_hat - exact log Z (closed form). Ratio > 1 means bayeskit is faster.")
    print(body + note)
    path = write_result("tempered", "Adaptive tempered SMC vs blackjax.adaptive_tempered_smc", body + note)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
