"""Benchmark: Markov-approximate fBM and fBM-SDE variational inference.

1. Path sampling: our jitted sampler of the Markov approximation (exact OU transitions, JAX) against the
   exact fBM samplers a user would otherwise pick: Cholesky factorisation of the covariance (SciPy) and
   Davies–Harte circulant embedding (NumPy FFT). Accuracy: relative error of the empirical Var B_H(T)
   against c_H^2 T^{2H}, and the closed-form relative L2 variance error of the approximation.
2. VI: time per ELBO-gradient step with fractional noise (K OU components) against the same model with
   plain Brownian noise (the overhead of fractional noise), for the affine and the MLP control.

Usage: python benchmarks/fbm.py [--quick] (or `bayeskit bench fbm`); writes bayeskit-output/bench/fbm.md.
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
import optax
import scipy.linalg

import bayeskit as bk

from bayeskit.models import fractional_ou as fou


def _timeit(fn, repeats):
    fn()  # warm-up / compile
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def davies_harte(rng, n, hurst, T, num_paths):
    """Exact fBM (unit convention) on the grid T/n, ..., T by circulant embedding of fGn (NumPy)."""
    k = np.arange(n + 1)
    acov = 0.5 * (np.abs(k + 1) ** (2 * hurst) - 2 * np.abs(k) ** (2 * hurst) + np.abs(k - 1) ** (2 * hurst))
    row = np.concatenate([acov, acov[-2:0:-1]])
    lam = np.fft.fft(row).real
    if np.any(lam < -1e-10):
        raise RuntimeError("circulant embedding not non-negative definite")
    lam = np.clip(lam, 0, None)
    m = row.shape[0]
    z = rng.standard_normal((num_paths, m)) + 1j * rng.standard_normal((num_paths, m))
    w = np.fft.fft(np.sqrt(lam / m) * z, axis=1)[:, :n].real
    return np.cumsum(w, axis=1) * (T / n) ** hurst


def cholesky_fbm(rng, times, hurst, num_paths):
    cov = 0.5 * (times[:, None] ** (2 * hurst) + times[None, :] ** (2 * hurst)
                 - np.abs(times[:, None] - times[None, :]) ** (2 * hurst))
    L = scipy.linalg.cholesky(cov, lower=True)
    return rng.standard_normal((num_paths, times.shape[0])) @ L.T


def bench_sampling(quick):
    hurst, T = 0.3, 2.0
    n = 256 if quick else 1024
    num_paths = 2000 if quick else 10000
    repeats = 2 if quick else 3
    times = np.linspace(T / n, T, n)
    cH2 = float(bk.sde.mvn_constant(hurst))
    exact_var_T = T ** (2 * hurst)  # unit convention for the NumPy/SciPy samplers
    rows = []
    for num_ou, gmax in ((5, 20.0), (20, 1e4)):
        fbm = bk.sde.FractionalBM(hurst=hurst, num_ou=num_ou, gamma_max=gmax, time_horizon=T)
        key = jax.random.key(0)
        fn = lambda: fbm.sample(key, times, num_paths).block_until_ready()  # noqa: E731
        secs = _timeit(fn, repeats)
        x = np.asarray(fbm.sample(jax.random.key(1), times, num_paths))
        emp = x[:, -1].var() / cH2
        rows.append((f"ours: Markov approx. K={num_ou}, gamma_max={gmax:g} (JAX, jit)", secs, abs(emp / exact_var_T - 1),
                     float(fbm.relative_variance_error())))
    rng = np.random.default_rng(0)
    secs = _timeit(lambda: cholesky_fbm(rng, times, hurst, num_paths), repeats)
    x = cholesky_fbm(rng, times, hurst, num_paths)
    rows.append(("exact: Cholesky (SciPy)", secs, abs(x[:, -1].var() / exact_var_T - 1), 0.0))
    secs = _timeit(lambda: davies_harte(rng, n, hurst, T, num_paths), repeats)
    x = davies_harte(rng, n, hurst, T, num_paths)
    rows.append(("exact: Davies-Harte (NumPy FFT)", secs, abs(x[:, -1].var() / exact_var_T - 1), 0.0))
    mc_se = np.sqrt(2 / num_paths)
    return rows, dict(n=n, num_paths=num_paths, hurst=hurst, T=T, mc_se=mc_se)


def bench_vi(quick):
    num_steps, num_samples = 100, 16
    iters = 20 if quick else 50
    rows = []
    params = fou.example_params(theta=1.0, sigma=1.0, obs_sd=0.1)
    times = np.linspace(0.2, 2.0, 10)
    obs = np.zeros((4, 10))
    for control_name, control in (("affine", bk.sde.AffineControl()), ("mlp", bk.sde.MLPControl())):
        per = {}
        for noise_name, hurst in (("brownian", None), ("fractional K=5", 0.3)):
            sde = fou.make_sde(hurst=hurst, num_ou=5, gamma_max=20.0, t1=2.0)
            elbo_fn, init_fn = bk.sde.build_elbo(sde, times, obs, control=control, fixed_params=params,
                                                 num_steps=num_steps, refine=0)
            opt = optax.adam(1e-2)
            state = bk.sde.init(init_fn(jax.random.key(0), {}), opt)
            step = jax.jit(lambda k, s: bk.sde.step(k, s, elbo_fn, opt, num_samples))
            t0 = time.perf_counter()
            state, _ = step(jax.random.key(0), state)
            jax.block_until_ready(state)
            compile_s = time.perf_counter() - t0

            def run(state=state):
                s = state
                for i in range(iters):
                    s, _ = step(jax.random.key(i), s)
                jax.block_until_ready(s)

            secs = _timeit(run, 1) / iters
            per[noise_name] = secs
            rows.append((control_name, noise_name, secs, compile_s))
        rows.append((control_name, "ratio fractional / brownian", per["fractional K=5"] / per["brownian"], None))
    return rows, dict(num_steps=num_steps, num_samples=num_samples, num_series=4, num_obs=10)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    info = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__}, device {jax.devices()[0].device_kind}, float32")
    samp, meta = bench_sampling(args.quick)
    vi_rows, vmeta = bench_vi(args.quick)
    lines = ["# Benchmark: Markov-approximate fBM and fBM-SDE VI", "", info, "",
             f"## fBM path sampling: {meta['num_paths']} paths x {meta['n']} times on (0, {meta['T']}], "
             f"H = {meta['hurst']}", "",
             "| sampler | time (s) | ratio vs ours (K=5) | rel. error of Var B_H(T) (MC se "
             f"{meta['mc_se']:.3f}) | closed-form rel. L2 Var error |",
             "|---|---|---|---|---|"]
    base = samp[0][1]
    for name, secs, err, l2 in samp:
        lines.append(f"| {name} | {secs:.4f} | {secs / base:.1f}x | {err:.3f} | {l2:.4f} |")
    lines += ["", f"## VI: time per ELBO-gradient step ({vmeta['num_series']} series x {vmeta['num_obs']} obs, "
              f"{vmeta['num_steps']} steps of the exact-OU scheme, {vmeta['num_samples']} paths/series)", "",
              "| control | noise | ms / step | compile (s) |", "|---|---|---|---|"]
    for control, noise, secs, comp in vi_rows:
        if comp is None:
            lines.append(f"| {control} | **{noise}** | **{secs:.2f}x** | |")
        else:
            lines.append(f"| {control} | {noise} | {1e3 * secs:.2f} | {comp:.1f} |")
    lines += ["", "Before the exact-OU scheme (diffrax Heun, same sizes, same machine): affine 66.0 ms (Brownian) vs "
              "170.2 ms (fractional), 2.58x; mlp 152.5 vs 126.7 ms. Heun's ELBO is not a bound (docs/sde.md)."]
    text = "\n".join(lines) + "\n"
    print(text)
    save_text("fbm", text)


if __name__ == "__main__":
    main()
