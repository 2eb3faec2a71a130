"""Scale checks: batched filters, long float32 runs, memory flat in T.

1. Batched inference: B independent bootstrap filters (vmap over keys and parameters) of N particles,
   T = 100 steps, timed beside a Python loop over the same B filters (one jitted filter each call).
2. Long runs: T = 1e5 steps (1e4 with --quick) in float32 vs float64 on the same data: no NaN, and the
   float32 log-evidence within the Monte Carlo error of float64 (spread over independent runs).
3. Memory: peak resident memory of T = 1e3 ... 1e5 filters without history (online: O(N) state).
4. Multi-device: throughput of one particle filter with the particle axis sharded over 1, 2 and 4 devices
   (fake CPU devices here: ``--xla_force_host_platform_device_count=4``; real ones where present), and
   agreement of the sharded and unsharded log-evidence (same key).

    python benchmarks/scale.py [--quick]
"""

from __future__ import annotations

import argparse
from functools import partial
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_time, table, write_result  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    import os

    if "jax" not in sys.modules and "device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist
    try:  # JAX >= 0.12 moved the context manager to the top level
        enable_x64 = partial(jax.enable_x64, True)
    except AttributeError:  # JAX 0.11
        from jax.experimental import enable_x64

    import bayeskit as bk

    model = bk.StateSpaceModel(
        initial=lambda p: dist.Normal(0.0, 1.0),
        transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
        observation=lambda p, x, t: dist.Normal(x, 1.0),
        vectorized=True,
    )
    sections = []

    # 1. batched filters
    B, N, T = (100, 1000, 100) if args.quick else (1000, 1000, 100)
    _, ys = model.simulate(jax.random.key(0), {"rho": jnp.float32(0.9)}, T)
    rhos = jnp.linspace(0.5, 0.95, B, dtype=jnp.float32)

    @jax.jit
    def batched(key):
        keys = jax.random.split(key, B)
        return jax.vmap(lambda k, r: bk.smc.particle_filter(k, model, {"rho": r}, ys, N).log_evidence)(keys, rhos)

    t_batched = median_time(lambda: batched(jax.random.key(1)).block_until_ready(), 3)
    loop_b = min(B, 50)

    def loop():
        for i in range(loop_b):
            bk.smc.particle_filter(jax.random.key(i), model, {"rho": rhos[i]}, ys, N).log_evidence.block_until_ready()

    t_loop = median_time(loop, 1) * B / loop_b
    sections.append("### Batched filters\n\n" + table(
        ["filters x particles x T", "vmap (s)", "Python loop of jitted filters (s, extrapolated)", "ratio"],
        [[f"{B} x {N} x {T}", f"{t_batched:.3f}", f"{t_loop:.2f}", f"{t_loop / t_batched:.1f}x"]]))
    print(sections[-1], flush=True)

    # 2. long float32 run
    T_long = 10_000 if args.quick else 100_000
    reps, N_long = 8, 1000
    with enable_x64():
        _, ys64 = model.simulate(jax.random.key(2), {"rho": 0.9}, T_long)
        keys = jax.random.split(jax.random.key(3), reps)
        t0 = time.perf_counter()
        lz64 = np.array([float(bk.smc.particle_filter(k, model, {"rho": 0.9}, ys64, N_long).log_evidence)
                         for k in keys])
        t64 = (time.perf_counter() - t0) / reps
    ys32 = jnp.asarray(np.asarray(ys64), dtype=jnp.float32)
    t0 = time.perf_counter()
    res32 = [bk.smc.particle_filter(k, model, {"rho": jnp.float32(0.9)}, ys32, N_long) for k in keys]
    lz32 = np.array([float(r.log_evidence) for r in res32])
    t32 = (time.perf_counter() - t0) / reps
    nan32 = any(bool(np.isnan(np.asarray(r.filter_mean)).any()) for r in res32)
    se = np.sqrt(lz64.var(ddof=1) / reps + lz32.var(ddof=1) / reps)
    z = abs(lz32.mean() - lz64.mean()) / se
    sections.append("### Long runs (float32 vs float64)\n\n" + table(
        ["T", "N", "runs", "mean log Z float64", "mean log Z float32", "|diff| / SE", "NaN in float32",
         "s per run f64 / f32"],
        [[f"{T_long:.0e}", N_long, reps, f"{lz64.mean():.2f}", f"{lz32.mean():.2f}", f"{z:.2f}", nan32,
          f"{t64:.2f} / {t32:.2f}"]]))
    print(sections[-1], flush=True)

    # 3. memory flat in T (no history): peak RSS growth while running each horizon once, shortest first
    N_mem = 100_000 if args.quick else 10_000
    rows = []
    for T_m in sorted({1_000, 10_000, T_long}):
        _, y_m = model.simulate(jax.random.key(4), {"rho": jnp.float32(0.9)}, T_m)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bk.smc.particle_filter(jax.random.key(5), model, {"rho": jnp.float32(0.9)}, y_m, N_mem).log_evidence.block_until_ready()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append([f"{T_m:.0e}", f"{N_mem:.0e}", f"{(after - before) / 1024:.1f}"])
    sections.append("### Memory (peak RSS growth, MiB; outputs are O(T) scalars, the particle state O(N))\n\n"
                    + table(["T", "N", "peak RSS growth MiB"], rows))
    print(sections[-1], flush=True)

    # 4. multi-device: particle axis sharded over 1, 2, 4 devices
    devices = jax.devices()
    N_dev, T_dev = 400_000, 100
    _, y_dev = model.simulate(jax.random.key(6), {"rho": jnp.float32(0.9)}, T_dev)
    pf = lambda sh: bk.smc.particle_filter(jax.random.key(7), model, {"rho": jnp.float32(0.9)}, y_dev, N_dev,  # noqa: E731
                                           sharding=sh).log_evidence.block_until_ready()
    ref = float(pf(None))
    rows = []
    t1 = None
    for n_dev in (1, 2, 4, 8):
        if n_dev > len(devices):
            break
        sh = bk.distributed.particle_sharding(devices[:n_dev])
        lz = float(pf(sh))
        t = median_time(lambda sh=sh: pf(sh), 3)
        t1 = t if t1 is None else t1
        rows.append([n_dev, f"{N_dev * T_dev / t:.3g}", f"{t1 / t:.2f}x", f"{abs(lz - ref):.1e}"])
    sections.append(
        f"### Multi-device (particle axis sharded, N = {N_dev:.0e}, T = {T_dev}; devices: "
        f"{devices[0].platform} x {len(devices)}{', fake host devices sharing the CPU cores' if devices[0].platform == 'cpu' else ''})\n\n"
        + table(["devices", "particle-steps/s", "speed-up vs 1 device", "|log Z sharded - unsharded|"], rows))
    print(sections[-1], flush=True)
    path = write_result("scale", "Scale: batched filters, long runs, memory (benchmarks/scale.py)",
                        "\n\n".join(sections))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
