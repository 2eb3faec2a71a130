"""The particle filter's overhead over a hand-written one: `bk.smc.particle_filter` against a plain jitted JAX
bootstrap filter (about 30 lines, systematic resampling by `searchsorted`), same model, data, N and dtype,
in one process.

1-D AR(1) model (rho = 0.9, sigma_x = sigma_y = 1), T = 100, float32, resampling at every step
(`ess_threshold=1.0`) and, for bayeskit, also adaptively (ESS < N/2); the `particles` library (0.3, NumPy,
float64) runs the same filter (resampling at every step) when installed. Medians of `--repeats` interleaved
calls after a warm-up; the first call's time (compile + run) is reported separately. "bayeskit (jitted)"
wraps the public driver in `jax.jit` and returns only the evidence, so host-side validation is skipped and
XLA drops the unused diagnostics: the gap between the two bayeskit columns is the per-call Python and
diagnostics cost. Ratios are also given in process CPU time (all threads), which a machine shared with other
jobs inflates far less than wall time.

    python benchmarks/filter_overhead.py [--sizes 1000 10000 100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result, particles_ar1  # noqa: E402

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
    try:
        import particles
        from particles import state_space_models as pssm

        AR1 = particles_ar1(RHO, SX, SY)

        p_fk = pssm.Bootstrap(ssm=AR1(), data=np.asarray(ys, np.float64))
    except ImportError:  # pragma: no cover
        particles = None
        print("particles not installed (pip install -e '.[bench]'): skipping that column")
    rows = []
    headers = ["N", "plain JAX ms", "bayeskit ms", "bayeskit (jitted) ms", "bk / plain", "bk jitted / plain",
               "bk / plain (CPU time)", "bayeskit ESS<N/2 ms", "particles ms", "particles / bk",
               "first call s (plain / bk)"]
    for n in sizes:
        keys = iter(jax.random.split(jax.random.key(1), 10000))
        dummy = jnp.zeros((n,), jnp.float32)
        jitted = jax.jit(lambda k, y: bk.smc.particle_filter(k, model, {}, y, n, ess_threshold=1.0).log_evidence)
        fns = {
            "plain": lambda: float(plain(next(keys), ys, dummy)),
            "bk": lambda: float(bk.smc.particle_filter(next(keys), model, {}, ys, n, ess_threshold=1.0).log_evidence),
            "bk_jit": lambda: float(jitted(next(keys), ys)),
            "bk_adaptive": lambda: float(bk.smc.particle_filter(next(keys), model, {}, ys, n,
                                                                ess_threshold=0.5).log_evidence),
        }
        if particles is not None:
            def run_particles():
                alg = particles.SMC(fk=p_fk, N=n, resampling="systematic", ESSrmin=1.0, collect=[])
                alg.run()
                return alg.logLt

            fns["particles"] = run_particles
        first = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
        # interleave the repeats so that a change of machine load hits every column alike
        times = {name: [] for name in fns}
        cpu = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        med = {name: float(np.median(v)) for name, v in times.items()}
        med_cpu = {name: float(np.median(v)) for name, v in cpu.items()}
        p_ms = f"{med['particles'] * 1e3:.1f}" if "particles" in med else "-"
        p_ratio = f"{med['particles'] / med['bk']:.1f}x" if "particles" in med else "-"
        rows.append([f"{n:.0e}", f"{med['plain'] * 1e3:.2f}", f"{med['bk'] * 1e3:.2f}", f"{med['bk_jit'] * 1e3:.2f}",
                     f"{med['bk'] / med['plain']:.2f}", f"{med['bk_jit'] / med['plain']:.2f}",
                     f"{med_cpu['bk'] / med_cpu['plain']:.2f}", f"{med['bk_adaptive'] * 1e3:.2f}", p_ms, p_ratio,
                     f"{first['plain']:.2f} / {first['bk']:.2f}"])
        print(table(headers, rows), flush=True)
    body = table(headers, rows) + (
        f"\n\nT = {T}, AR(1), float32 (particles: float64), resampling at every step unless stated; medians of "
        f"{repeats} interleaved calls after a warm-up; first call = compile + run. Ratios > 1 mean bayeskit is "
        "slower than the plain filter.")
    path = write_result("filter_overhead", "Particle filter overhead vs a plain jitted JAX filter "
                        "(benchmarks/filter_overhead.py)", body)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
