"""Benchmark: LightSB fit vs a log-domain Sinkhorn entropic-OT plan on the same samples.

Both estimate the entropic OT plan (= the Brownian Schrödinger bridge's static plan) between samples of a
Gaussian-mixture benchmark instance with known exact plan. Sinkhorn (jitted, log domain, cost |x - y|^2/2,
regularisation eps, what ott-jax's ``sinkhorn`` computes; ott-jax is not a dependency) gives a discrete plan
on the samples; its out-of-sample conditional is :math:`\\pi(y_j \\mid x) \\propto \\exp((g_j - \\|x - y_j\\|^2/2)/\\varepsilon)`.
Accuracy: cBW²-UVP (%) of each conditional against the exact one on held-out source points.

Run: ``python benchmarks/bridges.py [--quick]`` or ``bayeskit bench bridges``.
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

import bayeskit as bk
from bayeskit.testing import gaussian_mixture_benchmark


@jax.jit
def _sinkhorn(x, y, epsilon, num_iterations):
    cost = 0.5 * jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1)
    log_a = -jnp.log(x.shape[0]) * jnp.ones(x.shape[0], x.dtype)
    log_b = -jnp.log(y.shape[0]) * jnp.ones(y.shape[0], x.dtype)

    def body(_, fg):
        f, g = fg
        f = epsilon * (log_a - jax.scipy.special.logsumexp((g[None, :] - cost) / epsilon, axis=1))
        g = epsilon * (log_b - jax.scipy.special.logsumexp((f[:, None] - cost) / epsilon, axis=0))
        return f, g

    f, g = jax.lax.fori_loop(0, num_iterations, body, (jnp.zeros_like(log_a), jnp.zeros_like(log_b)))
    # marginal error of the row constraint after the last g update
    log_p = (f[:, None] + g[None, :] - cost) / epsilon
    err = jnp.sum(jnp.abs(jnp.exp(jax.scipy.special.logsumexp(log_p, axis=1)) - jnp.exp(log_a)))
    return g, err


def sinkhorn_conditional_moments(x_test, y, g, epsilon):
    cost = 0.5 * jnp.sum((x_test[:, None, :] - y[None, :, :]) ** 2, -1)
    w = jax.nn.softmax((g[None, :] - cost) / epsilon, axis=1)
    mean = w @ y
    second = jnp.einsum("nj,ja,jb->nab", w, y, y)
    return mean, second - mean[:, :, None] * mean[:, None, :]


def run(dim, epsilon, n, lightsb_steps, sinkhorn_iterations, num_test=200, seed=0):
    keys = jax.random.split(jax.random.key(seed + dim), 5)
    bench = gaussian_mixture_benchmark(keys[0], dim, epsilon)
    x0 = bench.sample_source(keys[1], n)
    x1 = bench.sample_target(keys[2], n)
    xt = bench.sample_source(keys[3], num_test)
    mean_t, cov_t = bench.conditional_moments(xt)
    var1 = float(np.trace(np.atleast_2d(np.cov(np.asarray(x1), rowvar=False))))

    fit = lambda: bk.bridges.LightSB.fit(keys[4], x0, x1, epsilon=epsilon, num_components=10,  # noqa: E731
                                         num_steps=lightsb_steps)
    t0 = time.perf_counter()
    sb = fit()
    jax.block_until_ready(sb.params)
    t_lsb_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    sb = fit()  # warm: compiled
    jax.block_until_ready(sb.params)
    t_lsb = time.perf_counter() - t0
    m, c = sb.conditional_moments(xt)
    uvp_lsb = bk.testing.cbw2_uvp(m, c, mean_t, cov_t, var1)

    t0 = time.perf_counter()
    g, err = _sinkhorn(x0, x1, epsilon, sinkhorn_iterations)
    jax.block_until_ready(g)
    t_sk_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    g, err = _sinkhorn(x0, x1, epsilon, sinkhorn_iterations)
    jax.block_until_ready(g)
    t_sk = time.perf_counter() - t0
    m, c = sinkhorn_conditional_moments(xt, x1, g, epsilon)
    uvp_sk = bk.testing.cbw2_uvp(m, c, mean_t, cov_t, var1)
    return dict(dim=dim, epsilon=epsilon, n=n, t_lsb=t_lsb, t_sk=t_sk, t_lsb_cold=t_lsb_cold, t_sk_cold=t_sk_cold,
                uvp_lsb=uvp_lsb, uvp_sk=uvp_sk,
                marg_err=float(err))


def benchmark_table(num_train=10000, num_steps=5000, num_test=500):
    """The 9-instance LightSB table (D in {2, 16, 64} x eps in {0.1, 1, 10}) of examples/light_sb.py."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "light_sb.py")
    spec = importlib.util.spec_from_file_location("light_sb_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = []
    for dim in (2, 16, 64):
        for eps in (0.1, 1.0, 10.0):
            r = mod.run_instance(dim, eps, num_train=num_train, num_steps=num_steps, num_test=num_test)
            rows.append(r)
            print(f"D={dim} eps={eps}: cBW2-UVP {r['cbw2_uvp']:.3f} %, fit {r['seconds']:.1f} s", flush=True)
    lines = ["| D | eps | cBW2-UVP (%) | BW2-UVP target (%) | fit time (s; first eps of each D incl. compile) |", "|---|---|---|---|---|"]
    lines += [f"| {r['dim']} | {r['epsilon']} | {r['cbw2_uvp']:.3f} | {r['bw2_uvp']:.3f} | {r['seconds']:.1f} |"
              for r in rows]
    info = (f"LightSB K=10 diagonal components, Adam 1e-2, batch 128, {num_steps} steps, {num_train} samples per side, "
            f"cBW2-UVP on {num_test} held-out source points against the exact plan")
    return "\n".join(lines), info


def main(quick: bool = False):
    if quick:
        cases, n, steps, iters = [(2, 1.0), (16, 1.0)], 1000, 500, 200
    else:
        cases, n, steps, iters = [(2, 1.0), (16, 1.0), (64, 1.0)], 2000, 2000, 300
    rows = [run(d, e, n, steps, iters) for d, e in cases]
    lines = [f"| D | eps | n | LightSB fit (s) | Sinkhorn (s) | time ratio LightSB/Sinkhorn | first call incl. compile "
             f"LightSB / Sinkhorn (s) | cBW2-UVP LightSB (%) | cBW2-UVP Sinkhorn (%) | Sinkhorn marginal err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['epsilon']} | {r['n']} | {r['t_lsb']:.2f} | {r['t_sk']:.2f} | "
                     f"{r['t_lsb'] / r['t_sk']:.2f} | {r['t_lsb_cold']:.1f} / {r['t_sk_cold']:.1f} | "
                     f"{r['uvp_lsb']:.3f} | {r['uvp_sk']:.3f} | {r['marg_err']:.1e} |")
    info = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
            f"device {jax.devices()[0].device_kind}; LightSB: K=10 diagonal, Adam 1e-2, batch 128, {steps} steps; "
            f"Sinkhorn: log domain, {iters} iterations, float{64 if jax.config.jax_enable_x64 else 32}; "
            f"times of a second (compiled) call; the CPU was shared with other jobs")
    table = "\n".join(lines)
    print(table + "\n\n" + info)
    text = "# bridges: LightSB vs Sinkhorn entropic OT\n\n" + table + "\n\n" + info + "\n"
    if not quick:
        bench_table, bench_info = benchmark_table()
        print(bench_table + "\n\n" + bench_info)
        text += ("\n## LightSB on the Gaussian-mixture benchmark instances (examples/light_sb.py)\n\n" + bench_table
                 + "\n\n" + bench_info + f"; machine: {platform.machine()}, {os.cpu_count()} cores, jax "
                 f"{jax.__version__}, shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)\n")
    save_text("bridges", text)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
