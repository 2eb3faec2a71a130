"""Throughput of the particle methods: the numbers issue 10 asks for, on whatever device JAX sees.

One script for CPU and GPU (``bayeskit bench throughput`` here; on a GPU machine
``PYTHONPATH=$PWD python3 benchmarks/throughput.py --gpu [--trace DIR] [--dump-hlo DIR]``,
ArviZ not needed):

1. Bootstrap particle filter, AR(1) model observed in noise, T = 100: ``bk.smc.particle_filter``
   (systematic resampling at every step, so both filters do the same work) timed beside a plain
   jitted JAX filter written here (``lax.scan``; ``searchsorted`` systematic resampling at every
   step; no diagnostics, no input checks): particle-steps per second, the ratio, and both log Z
   errors against the exact Kalman value.
2. Time per step at N = 1e4, as the slope between T = 100 and T = 1000 (the fixed cost of a call,
   e.g. bayeskit's input checks and result assembly, is reported separately).
3. Batched filters: B independent filters of N particles, T = 100, in one vmapped call.
4. PaRIS (K = 2 backward draws) at the largest N of the size list, with its error against the RTS
   smoother.

Sizes: CPU default N = 1e3 ... 1e6 and 100 x 1000 batched; ``--gpu``: N = 1e4 ... 1e7 and
1000 x 1000 batched, PaRIS at N = 1e6 (the issue's targets: >= 1e10 particle-steps/s at N = 1e7,
<= 50 us per step at N = 1e4, 1000 x 1000 x T = 100 in < 0.2 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ar1_kalman_loglik, table, write_result  # noqa: E402

RHO, SX, SY = 0.9, 1.0, 1.0


def best_time(fn, repeats):
    """Minimum wall time of ``fn()`` over ``repeats`` calls after one warm-up (compile) call."""
    import jax

    jax.block_until_ready(fn())
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def make_plain_filter():
    """The reference: a minimal jitted bootstrap filter (what a user would write by hand)."""
    import jax
    import jax.numpy as jnp

    @partial(jax.jit, static_argnums=2)
    def plain(key, ys, n):
        k0, kl = jax.random.split(key)
        x = jax.random.normal(k0, (n,)) * (SX / np.sqrt(1 - RHO**2))
        const = -0.5 * np.log(2 * np.pi * SY**2)

        def body(carry, inp):
            x, lw, ll = carry
            y, k = inp
            k1, k2 = jax.random.split(k)
            w = jnp.exp(lw - jax.nn.logsumexp(lw))
            idx = jnp.searchsorted(jnp.cumsum(w), (jnp.arange(n) + jax.random.uniform(k1)) / n)
            x = RHO * x[jnp.minimum(idx, n - 1)] + SX * jax.random.normal(k2, (n,))
            lw = const - 0.5 * ((y - x) / SY) ** 2
            return (x, lw, ll + jax.nn.logsumexp(lw) - jnp.log(n)), None

        lw0 = const - 0.5 * ((ys[0] - x) / SY) ** 2
        init = (x, lw0, jax.nn.logsumexp(lw0) - jnp.log(n))
        (_, _, ll), _ = jax.lax.scan(body, init, (ys[1:], jax.random.split(kl, ys.shape[0] - 1)))
        return ll

    return plain


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    ap.add_argument("--gpu", action="store_true", help="the issue's GPU sizes")
    ap.add_argument("--trace", metavar="DIR", help="also write a jax.profiler trace of one filter and one PaRIS "
                    "run at the largest N (view with xprof / TensorBoard)")
    ap.add_argument("--dump-hlo", metavar="DIR", help="dump the optimised XLA programs (XLA_FLAGS=--xla_dump_to)")
    args = ap.parse_args(argv)

    if args.dump_hlo:
        import os

        if "jax" in sys.modules:
            raise SystemExit("--dump-hlo must be given before JAX is imported (run the script directly)")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={args.dump_hlo}").strip()

    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import bayeskit as bk
    from bayeskit.models import linear_gaussian as lg

    if args.gpu:
        sizes, batch, paris_n, reps = [10_000, 100_000, 1_000_000, 10_000_000], (1000, 1000), 1_000_000, 10
    elif args.quick:
        sizes, batch, paris_n, reps = [1000, 10_000], (20, 1000), 10_000, 3
    else:
        sizes, batch, paris_n, reps = [1000, 10_000, 100_000, 1_000_000], (100, 1000), 100_000, 5

    model = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, SX / np.sqrt(1 - RHO**2)),
        transition=lambda p, x, t: dist.Normal(p["rho"] * x, SX),
        observation=lambda p, x, t: dist.Normal(x, SY),
        vectorized=True,
    )
    params = {"rho": jnp.float32(RHO)}
    _, ys_long = model.simulate(jax.random.key(0), params, 1000)
    ys = ys_long[:100]
    exact = ar1_kalman_loglik(ys, RHO, SX, SY)
    plain = make_plain_filter()
    sections = []

    # 1. throughput
    rows = []
    for n in sizes:
        r = max(1, reps if n < 1_000_000 else reps // 2)
        keys = iter(jax.random.split(jax.random.key(1), 1000))
        t_bk = best_time(lambda: bk.smc.particle_filter(next(keys), model, params, ys, n, ess_threshold=1.0).log_evidence, r)
        t_pl = best_time(lambda: plain(next(keys), ys, n), r)
        ll_bk = float(bk.smc.particle_filter(jax.random.key(2), model, params, ys, n, ess_threshold=1.0).log_evidence)
        ll_pl = float(plain(jax.random.key(2), ys, n))
        rows.append([f"{n:.0e}", f"{t_bk * 1e3:.2f}", f"{n * 100 / t_bk:.2e}", f"{t_pl * 1e3:.2f}",
                     f"{n * 100 / t_pl:.2e}", f"{t_pl / t_bk:.2f}x", f"{ll_bk - exact:+.3f} / {ll_pl - exact:+.3f}"])
        print(rows[-1], flush=True)
    head = ["N", "bayeskit ms", "bayeskit particle-steps/s", "plain jitted ms", "plain particle-steps/s",
            "plain / bayeskit", "log Z error bk / plain"]
    sections.append("### Bootstrap filter throughput (T = 100, systematic resampling every step)\n\n" + table(head, rows)
                    + f"\n\nExact Kalman log Z = {exact:.3f}; best of {reps} calls after a compile call; "
                    "bayeskit through the public `particle_filter` (input checks, filtering moments, ESS and "
                    "diagnostics per step, result object).")

    # 2. per-step time at N = 1e4 (slope between T = 100 and T = 1000) and the fixed cost of a call
    n = 10_000
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    per = {}
    for name, fn in (("bayeskit", lambda y: bk.smc.particle_filter(next(keys), model, params, y, n, ess_threshold=1.0).log_evidence),
                     ("plain jitted", lambda y: plain(next(keys), y, n))):
        t100 = best_time(lambda: fn(ys_long[:100]), reps)
        t1000 = best_time(lambda: fn(ys_long), reps)
        per[name] = ((t1000 - t100) / 900, t100 - 100 * (t1000 - t100) / 900)
    core = jax.jit(lambda k, y: bk.smc.particle_filter(k, model, params, y, n, ess_threshold=1.0).log_evidence)
    t_core = best_time(lambda: core(jax.random.key(4), ys), reps)
    t_api = best_time(lambda: bk.smc.particle_filter(jax.random.key(4), model, params, ys, n, ess_threshold=1.0).log_evidence, reps)
    rows = [[k, f"{v[0] * 1e6:.1f}", f"{v[1] * 1e3:.2f}"] for k, v in per.items()]
    sections.append("### Time per step at N = 1e4\n\n" + table(["filter", "us per step (slope T=100..1000)",
                                                                 "fixed ms per call (intercept)"], rows)
                    + f"\n\nbayeskit at T = 100: public API {t_api * 1e3:.2f} ms, its jitted core alone "
                    f"{t_core * 1e3:.2f} ms (the difference is the Python-side input validation and the "
                    "host check of the weight flags; inside `jit`/`vmap` it is skipped).")
    print(sections[-1], flush=True)

    # 3. batched filters
    b, n = batch
    rhos = jnp.linspace(0.5, 0.95, b, dtype=jnp.float32)

    @jax.jit
    def many(key):
        ks = jax.random.split(key, b)
        return jax.vmap(lambda k, r: bk.smc.particle_filter(k, model, {"rho": r}, ys, n, ess_threshold=1.0).log_evidence)(ks, rhos)

    t_b = best_time(lambda: many(jax.random.key(5)), max(1, reps // 2))
    lz = np.asarray(many(jax.random.key(5)))
    sections.append(f"### Batched filters\n\n{b} filters x {n} particles x T = 100 in one vmapped call: "
                    f"{t_b:.3f} s ({b * n * 100 / t_b:.2e} particle-steps/s); all log Z finite: {bool(np.isfinite(lz).all())}.")
    print(sections[-1], flush=True)

    # 4. PaRIS, K = 2
    p = {"A": jnp.full((1, 1), RHO), "Q": jnp.full((1, 1), SX**2), "H": jnp.ones((1, 1)),
         "R": jnp.full((1, 1), SY**2), "m0": jnp.zeros(1), "P0": jnp.full((1, 1), SX**2 / (1 - RHO**2))}
    truth = float(lg.rts_smoother(p, jnp.asarray(ys, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)[:, None]).means.sum())
    keys = iter(jax.random.split(jax.random.key(6), 100))
    t_p = best_time(lambda: bk.smc.paris(next(keys), model, params, ys, paris_n, num_backward=2).estimate, max(1, reps // 2))
    est = bk.smc.paris(jax.random.key(7), model, params, ys, paris_n, num_backward=2)
    sections.append(f"### PaRIS\n\nN = {paris_n:.0e}, K = 2, T = 100, functional sum_t x_t: {t_p:.3f} s per run "
                    f"({paris_n * 100 / t_p:.2e} particle-steps/s); estimate {float(np.ravel(np.asarray(est.estimate))[0]):.3f} vs RTS "
                    f"{truth:.3f}; mean exact-fallback draws per step {float(np.mean(np.asarray(est.num_fallback))):.2f}.")
    print(sections[-1], flush=True)

    if args.trace:
        n = sizes[-1]
        with jax.profiler.trace(args.trace):
            jax.block_until_ready(bk.smc.particle_filter(jax.random.key(8), model, params, ys, n, ess_threshold=1.0).log_evidence)
            jax.block_until_ready(bk.smc.paris(jax.random.key(9), model, params, ys, paris_n, num_backward=2).estimate)
        print(f"profiler trace written to {args.trace}")

    path = write_result("throughput" + ("_gpu" if args.gpu else ""),
                        "Throughput of the particle methods (benchmarks/throughput.py" + (" --gpu)" if args.gpu else ")"),
                        "\n\n".join(sections))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
