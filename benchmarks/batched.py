"""Batched workload: many independent series filtered at once (the many-series and PMMH case).

100 independent AR(1) series (rho = 0.9, sigma_x = sigma_y = 1), N = 1000 particles each, T = 100,
systematic resampling at every step. bayeskit runs them all in one call, ``jax.vmap`` of the public driver
over (key, series) inside ``jax.jit`` -- the documented way to batch ``bk.smc.particle_filter``; the
``particles`` library (0.3, NumPy) runs the series one by one, as its users would. Medians of
``--repeats`` interleaved runs after a warm-up; compile time (first call) separately; the mean
log-likelihood error of each against the exact Kalman value. Wall time is also given as process CPU
time, which a machine shared with other jobs inflates far less.

    python benchmarks/batched.py [--series 100] [--particles 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ar1_kalman_loglik, table, write_result, particles_ar1  # noqa: E402

RHO, SX, SY, T = 0.9, 1.0, 1.0, 100


def simulate(num_series, seed=0):
    rng = np.random.default_rng(seed)
    x = np.empty((num_series, T))
    x[:, 0] = rng.normal(0, SX / np.sqrt(1 - RHO**2), num_series)
    for t in range(1, T):
        x[:, t] = RHO * x[:, t - 1] + SX * rng.normal(size=num_series)
    return x + SY * rng.normal(size=(num_series, T))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    S, n = args.series, args.particles

    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import bayeskit as bk

    y = simulate(S)
    exact = np.array([ar1_kalman_loglik(row, RHO, SX, SY) for row in y])
    model = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, SX / np.sqrt(1 - RHO**2)),
        transition=lambda p, x, t: dist.Normal(RHO * x, SX),
        observation=lambda p, x, t: dist.Normal(x, SY),
        vectorized=True,
    )
    ys = jnp.asarray(y, jnp.float32)

    # the batched driver: one compiled program for all series (vmap over keys and data)
    batched = jax.jit(jax.vmap(
        lambda k, series: bk.smc.particle_filter(k, model, {}, series, n, ess_threshold=1.0).log_evidence))
    counter = iter(range(10**6))

    def run_bk():
        return np.asarray(batched(jax.random.split(jax.random.key(next(counter)), S), ys))

    fns = {"bk": run_bk}
    try:
        import particles
        from particles import state_space_models as pssm

        AR1 = particles_ar1(RHO, SX, SY)

        def run_particles():
            out = []
            for row in y:
                alg = particles.SMC(fk=pssm.Bootstrap(ssm=AR1(), data=row), N=n, resampling="systematic",
                                    ESSrmin=1.0, collect=[])
                alg.run()
                out.append(alg.logLt)
            return np.array(out)

        fns["particles"] = run_particles
    except ImportError:  # pragma: no cover
        print("particles not installed (pip install -e '.[bench]'): skipping that column")

    first, times, cpu, errs = {}, {k: [] for k in fns}, {k: [] for k in fns}, {k: [] for k in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        errs[name].append(np.mean(fn() - exact))
        first[name] = time.perf_counter() - t0
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            errs[name].append(np.mean(fn() - exact))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    headers = ["method", "median s", "CPU s", "first call s", "mean log-lik error"]
    rows = [[k, f"{med[k]:.3f}", f"{med_cpu[k]:.3f}", f"{first[k]:.2f}", f"{np.mean(errs[k]):+.3f}"] for k in fns]
    body = table(headers, rows)
    if "particles" in med:
        body += (f"\n\nparticles / bayeskit: {med['particles'] / med['bk']:.1f}x (wall), "
                 f"{med_cpu['particles'] / med_cpu['bk']:.1f}x (CPU time).")
    body += (f"\n\n{S} series x N = {n} x T = {T}, AR(1), resampling at every step; bayeskit float32 via "
             "`jax.jit(jax.vmap(particle_filter))`, particles float64 one series at a time; medians of "
             f"{args.repeats} interleaved runs after a warm-up.")
    print(body)
    path = write_result("batched", "Batched workload: many independent series (benchmarks/batched.py)", body)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
