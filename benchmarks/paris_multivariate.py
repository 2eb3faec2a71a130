"""Benchmark: PaRIS (K = 2) against a bootstrap filter on the same model, d = 1 (AR), 3 and 10 (full-covariance
``MultivariateNormal`` transitions).

Per model: compile time of each driver (first call, separate), median run time of PaRIS and of the particle
filter at N = 1000, T = 100 and their ratio (target <= 20), the mean fraction of backward draws that needed
the exact O(N) fallback, and the scaling ratios t(4N)/t(N) from N = 500 to 2000 and from 1e4 to 4e4 (target
<= 5). All timings in one process; results go to bayeskit-output/bench/paris_multivariate.md.

Run: `python benchmarks/paris_multivariate.py [--quick] [--dims 1,3,10] [--big]` (``--big``: the 1e4 -> 4e4 pair).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_text  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bayeskit as bk


def model(d):
    """x_t = A x_{t-1} + N(0, Q) (Q full covariance when d > 1), y_t = x_t + N(0, 0.5^2 I)."""
    rng = np.random.default_rng(0)
    if d == 1:
        ssm = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0), lambda p, x, t: dist.Normal(0.9 * x, 1.0),
                                 lambda p, x, t: dist.Normal(x, 0.5), vectorized=True)
        return ssm, {"rho": jnp.float32(0.9)}
    B = rng.normal(size=(d, d))
    params = {"A": jnp.asarray(0.8 * np.eye(d), jnp.float32), "Q": jnp.asarray(0.5 * (B @ B.T / d + np.eye(d)),
                                                                              jnp.float32)}
    ssm = bk.StateSpaceModel(lambda p: dist.MultivariateNormal(jnp.zeros(d), jnp.eye(d)),
                             lambda p, x, t: dist.MultivariateNormal(x @ p["A"].T, covariance_matrix=p["Q"]),
                             lambda p, x, t: dist.Normal(x, 0.5).to_event(1), vectorized=True)
    return ssm, params


def h_x(t, x_prev, x):  # one function object: the drivers cache their compiled program on it
    return x


def timed(fn, repeat):
    """(first call s, median wall s, median process CPU s): CPU time (all threads) is far less inflated
    than wall time on a machine shared with other jobs."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - t0
    ts, cs = [], []
    for r in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(r + 1))
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return first, float(np.median(ts)), float(np.median(cs))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--dims", default="1,3,10")
    args = ap.parse_args(argv)
    repeat = 3 if args.quick else 7
    T = 100
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    emit(f"# PaRIS on multivariate models ({platform.node()}, {jax.devices()[0].platform}, jax {jax.__version__}; "
         f"{os.cpu_count()} CPUs)")
    emit("")
    emit("| d | N | T | PF s | PaRIS s | PaRIS / PF | PaRIS / PF (CPU time) | fallback fraction | PF compile s | "
         "PaRIS compile s |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    scaling = []
    for d in [int(v) for v in args.dims.split(",")]:
        ssm, params = model(d)
        _, ys = ssm.simulate(jax.random.key(1), params, T)
        times = {}
        pairs = [(500, 2000)] + ([(10_000, 40_000)] if args.big else [])
        for N in sorted({1000} | {n for p in pairs for n in p}):
            pf = lambda s, N=N: bk.smc.particle_filter(jax.random.key(s), ssm, params, ys, N).log_evidence  # noqa
            pa = lambda s, N=N: bk.smc.paris(jax.random.key(s), ssm, params, ys, N, functional=h_x)  # noqa
            c_pf, t_pf, u_pf = timed(pf, repeat)
            c_pa, t_pa, u_pa = timed(lambda s: pa(s).estimate, repeat)
            fb = float(np.mean(np.asarray(pa(0).num_fallback))) / (2 * N)
            times[N] = (t_pa, u_pa)
            emit(f"| {d} | {N} | {T} | {t_pf:.4f} | {t_pa:.4f} | {t_pa / t_pf:.1f} | {u_pa / u_pf:.1f} | {fb:.3f} | "
                 f"{c_pf:.1f} | {c_pa:.1f} |")
        for a, b in pairs:
            scaling.append((d, a, b, times[b][0] / times[a][0], times[b][1] / times[a][1]))
    emit("")
    emit("| d | N -> 4N | t(4N) / t(N) (PaRIS, wall) | same, CPU time |")
    emit("|---|---|---|---|")
    for d, a, b, r, rc in scaling:
        emit(f"| {d} | {a} -> {b} | {r:.2f} | {rc:.2f} |")
    save_text("paris_multivariate", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
