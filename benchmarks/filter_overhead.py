"""The particle filter's overhead over a hand-written one: `bk.smc.particle_filter` against a plain jitted JAX
bootstrap filter (about 30 lines, systematic resampling by `searchsorted`), same model, data, N and dtype,
in one process.

1-D AR(1) model (rho = 0.9, sigma_x = sigma_y = 1), T = 100, float32, resampling at every step
(`ess_threshold=1.0`) and, for bayeskit, also adaptively (ESS < N/2). Medians of `--repeats` calls after a
warm-up; the first call's time (compile + run) is reported separately. "bayeskit (jitted)" wraps the public
driver in `jax.jit`, where its host-side validation is skipped: the gap between the two bayeskit columns is
the per-call Python cost.

    python benchmarks/filter_overhead.py [--sizes 1000 10000 100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_time, table, write_result  # noqa: E402

RHO, SX, SY, T = 0.9, 1.0, 1.0, 100


def plain_filter_fn():
    """A plain jitted bootstrap filter: the alternative a JAX user would write."""
    import jax
    import jax.numpy as jnp

    def norm_logpdf(x, loc, scale):
        return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi)

    @jax.jit
    def run(key, ys, n_dummy):
        n = n_dummy.shape[0]
        k0, kloop = jax.random.split(key)
        x = jax.random.normal(k0, (n,), ys.dtype) * (SX / np.sqrt(1 - RHO**2))
        lw = norm_logpdf(ys[0], x, SY)
        ll = jax.nn.logsumexp(lw) - jnp.log(n)

        def step(carry, inp):
            x, lw, ll = carry
            y, k = inp
            k_res, k_mov = jax.random.split(k)
            w = jax.nn.softmax(lw)
            u = (jax.random.uniform(k_res, dtype=ys.dtype) + jnp.arange(n, dtype=ys.dtype)) / n
            idx = jnp.minimum(jnp.searchsorted(jnp.cumsum(w), u), n - 1)
            x = RHO * x[idx] + SX * jax.random.normal(k_mov, (n,), ys.dtype)
            lw = norm_logpdf(y, x, SY)
            return (x, lw, ll + jax.nn.logsumexp(lw) - jnp.log(n)), None

        (x, lw, ll), _ = jax.lax.scan(step, (x, lw, ll), (ys[1:], jax.random.split(kloop, ys.shape[0] - 1)))
        return ll

    return run


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="N = 1e3 and 1e4 only, 5 repeats")
    args = ap.parse_args(argv)
    sizes = [1000, 10000] if args.quick else args.sizes
    repeats = 5 if args.quick else args.repeats

    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import bayeskit as bk

    rng = np.random.default_rng(0)
    x = np.empty(T)
    x[0] = rng.normal(0, SX / np.sqrt(1 - RHO**2))
    for t in range(1, T):
        x[t] = RHO * x[t - 1] + SX * rng.normal()
    ys = jnp.asarray(x + SY * rng.normal(size=T), jnp.float32)
    model = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, SX / np.sqrt(1 - RHO**2)),
        transition=lambda p, x, t: dist.Normal(RHO * x, SX),
        observation=lambda p, x, t: dist.Normal(x, SY),
        vectorized=True,
    )
    plain = plain_filter_fn()
    rows = []
    for n in sizes:
        keys = iter(jax.random.split(jax.random.key(1), 1000))
        dummy = jnp.zeros((n,), jnp.float32)
        jitted = jax.jit(lambda k, y, thr: bk.smc.particle_filter(k, model, {}, y, n, ess_threshold=thr).log_evidence)
        fns = {
            "plain": lambda: float(plain(next(keys), ys, dummy)),
            "bk": lambda: float(bk.smc.particle_filter(next(keys), model, {}, ys, n, ess_threshold=1.0).log_evidence),
            "bk_jit": lambda: float(jitted(next(keys), ys, 1.0)),
            "bk_adaptive": lambda: float(bk.smc.particle_filter(next(keys), model, {}, ys, n,
                                                                ess_threshold=0.5).log_evidence),
        }
        first = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
        # interleave the repeats so that a change of machine load hits every column alike
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(median_time(fn, 1, warmup=0))
        med = {name: float(np.median(v)) for name, v in times.items()}
        rows.append([f"{n:.0e}", f"{med['plain'] * 1e3:.2f}", f"{med['bk'] * 1e3:.2f}", f"{med['bk_jit'] * 1e3:.2f}",
                     f"{med['bk'] / med['plain']:.2f}", f"{med['bk_jit'] / med['plain']:.2f}",
                     f"{med['bk_adaptive'] * 1e3:.2f}",
                     f"{first['plain']:.2f} / {first['bk']:.2f}"])
        headers = ["N", "plain JAX ms", "bayeskit ms", "bayeskit (jitted) ms", "bk / plain", "bk jitted / plain",
                   "bayeskit ESS<N/2 ms", "first call s (plain / bk)"]
        print(table(headers, rows), flush=True)
    body = table(headers, rows) + (
        f"\n\nT = {T}, AR(1), float32, resampling at every step unless stated; medians of {repeats} interleaved "
        "calls after a warm-up; first call = compile + run. Ratios > 1 mean bayeskit is slower than the plain "
        "filter.")
    path = write_result("filter_overhead", "Particle filter overhead vs a plain jitted JAX filter "
                        "(benchmarks/filter_overhead.py)", body)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
