"""Bootstrap particle filter: bayeskit vs the `particles` library vs a plain NumPy filter.

Same model (AR(1) latent state, Gaussian noise: rho = 0.9, sigma_x = 1, sigma_y = 1), same data
(T = 100), systematic resampling at ESS < N/2, in one run. Prints median wall times, the ratio of each
alternative to bayeskit, and each method's log-likelihood error against the exact Kalman value
(mean over the timed runs). bayeskit runs in float32 (its default), the others in float64.

    python benchmarks/particle_filter.py [--quick] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ar1_kalman_loglik, median_time, table, write_result, particles_ar1  # noqa: E402

RHO, SX, SY, T = 0.9, 1.0, 1.0, 100


def simulate(seed=0):
    rng = np.random.default_rng(seed)
    x = np.empty(T)
    x[0] = rng.normal(0, SX / np.sqrt(1 - RHO**2))
    for t in range(1, T):
        x[t] = RHO * x[t - 1] + SX * rng.normal()
    return x + SY * rng.normal(size=T)


def numpy_filter(y, n, rng):
    x = rng.normal(0, SX / np.sqrt(1 - RHO**2), n)
    lw = np.zeros(n)
    ll = 0.0
    for t in range(T):
        if t > 0:
            w = np.exp(lw - lw.max())
            w /= w.sum()
            if 1.0 / np.sum(w**2) < 0.5 * n:
                idx = np.searchsorted(np.cumsum(w), (np.arange(n) + rng.uniform()) / n)
                x, lw = x[np.minimum(idx, n - 1)], np.zeros(n)
            x = RHO * x + SX * rng.normal(size=n)
        prev = np.logaddexp.reduce(lw)
        lw = lw - 0.5 * ((y[t] - x) / SY) ** 2 - np.log(SY * np.sqrt(2 * np.pi))
        ll += np.logaddexp.reduce(lw) - (prev if t > 0 else np.log(n))
    return ll


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    sizes = args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 100000])

    import jax
    import numpyro.distributions as dist

    import bayeskit as bk

    y = simulate()
    exact = ar1_kalman_loglik(y, RHO, SX, SY)
    model = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, SX / np.sqrt(1 - RHO**2)),
        transition=lambda p, x, t: dist.Normal(RHO * x, SX),
        observation=lambda p, x, t: dist.Normal(x, SY),
        vectorized=True,
    )
    ys = jax.numpy.asarray(y, dtype=jax.numpy.float32)

    try:
        import particles
        from particles import state_space_models as pssm

        AR1 = particles_ar1(RHO, SX, SY)

        fk = pssm.Bootstrap(ssm=AR1(), data=y)
    except ImportError:  # pragma: no cover
        particles = None
        print("particles not installed (pip install -e '.[bench]'): skipping that column")

    rows = []
    for n in sizes:
        repeats = 3 if n >= 100000 else 5
        keys = iter(jax.random.split(jax.random.key(0), 100))
        bk_ll = []

        def run_bk():
            pf = bk.smc.particle_filter(next(keys), model, {}, ys, n)
            bk_ll.append(float(pf.log_evidence))

        t_bk = median_time(run_bk, repeats)
        rng = np.random.default_rng(1)
        np_ll = []
        t_np = median_time(lambda: np_ll.append(numpy_filter(y, n, rng)), repeats)
        row = [f"{n:.0e}", f"{t_bk * 1e3:.1f}", f"{t_np * 1e3:.1f}", f"{t_np / t_bk:.1f}x"]
        if particles is not None:
            p_ll = []

            def run_particles():
                alg = particles.SMC(fk=fk, N=n, resampling="systematic", ESSrmin=0.5, collect=[])
                alg.run()
                p_ll.append(alg.logLt)

            t_p = median_time(run_particles, repeats)
            row += [f"{t_p * 1e3:.1f}", f"{t_p / t_bk:.1f}x"]
            err = f"{np.mean(bk_ll) - exact:+.3f} / {np.mean(np_ll) - exact:+.3f} / {np.mean(p_ll) - exact:+.3f}"
        else:
            row += ["-", "-"]
            err = f"{np.mean(bk_ll) - exact:+.3f} / {np.mean(np_ll) - exact:+.3f} / -"
        row += [f"{n * T / t_bk:.2e}", err]
        rows.append(row)
        print(table(["N", "bayeskit ms", "NumPy ms", "NumPy/bk", "particles ms", "particles/bk",
                     "bk particle-steps/s", "log-lik error bk / NumPy / particles"], rows), flush=True)

    body = table(["N", "bayeskit ms", "NumPy ms", "NumPy/bk", "particles ms", "particles/bk",
                  "bk particle-steps/s", "log-lik error bk / NumPy / particles"], rows)
    body += (f"\n\nT = {T}, AR(1) model, systematic resampling at ESS < N/2; median of 3-5 runs after a "
             f"warm-up (compile excluded); exact Kalman log-likelihood {exact:.3f}.")
    path = write_result("particle_filter", "Bootstrap particle filter (benchmarks/particle_filter.py)", body)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
