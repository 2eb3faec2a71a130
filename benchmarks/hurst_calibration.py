"""Benchmark: calibration of the variational posterior of the Hurst index (issue 18, item 2).

Data that the tests do not use: fractional OU paths dX = -theta X dt + sigma dB_H (theta = 1, sigma = 1,
X(0) = 0) driven by *true* fractional Brownian motion (Mandelbrot-van Ness normalisation), the
fractional Gaussian noise drawn exactly by a Cholesky factorisation of its covariance on a grid ten
times finer than the observations and X advanced by the exponential-Euler recursion on that grid;
80 observations on (0, 2] with noise sd 0.1. H in {0.3, 0.5, 0.7}, three data sets each.

Reference: the exact posterior of H under the model that VI fits (Markov approximation K = 5,
gamma_max = 20, flat prior), on a grid, by the Kalman filter of ``bk.models.fractional_ou``.
VI: the quick recipe of ``examples/fbm_sde.py`` (``bk.sde.fit_vi`` with a logit-normal q(H), the
affine control, one solver step per observation interval, 1200 Adam steps). Criteria: the VI mean
lies within 1 exact-posterior sd of the exact mean, and sd(q) / exact sd lies in [0.5, 2].

Usage: python benchmarks/hurst_calibration.py [--quick] (or `bayeskit bench hurst_calibration`);
writes bayeskit-output/bench/hurst_calibration.md. ``--quick``: one data set per H.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_text  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

import bayeskit as bk  # noqa: E402
from bayeskit.models import fractional_ou as fou  # noqa: E402

PARAMS = fou.example_params(theta=1.0, sigma=1.0, obs_sd=0.1)
TIMES = np.linspace(0.025, 2.0, 80)
NUM_ITERATIONS = 1200


def simulate_fou(rng, hurst, times=TIMES, params=PARAMS, fine=10):
    """One fOU path driven by exact fBM (Cholesky of the fGn covariance on a grid ``fine`` x finer)."""
    n = times.size * fine
    dt = times[-1] / n
    k = np.arange(n)
    c2 = float(bk.sde.mvn_constant(hurst))
    two_h = 2 * hurst
    acov = 0.5 * c2 * dt**two_h * (np.abs(k + 1) ** two_h - 2 * np.abs(k) ** two_h + np.abs(k - 1) ** two_h)
    increments = np.linalg.cholesky(acov[np.abs(k[:, None] - k[None, :])]) @ rng.standard_normal(n)
    x = np.zeros(n + 1)
    decay = np.exp(-params["theta"] * dt)
    for i in range(n):
        x[i + 1] = decay * x[i] + params["sigma"] * increments[i]
    xs = x[fine::fine]
    return xs + params["obs_sd"] * rng.standard_normal(xs.shape)


def exact_posterior(ys, sde):
    """Exact grid posterior of H (flat prior): a coarse grid, then a fine one over +-6 sd."""
    coarse = fou.hurst_posterior(PARAMS, sde, TIMES, ys[None], hurst_grid=np.linspace(0.02, 0.98, 49))
    lo, hi = max(0.005, coarse["mean"] - 6 * coarse["sd"]), min(0.995, coarse["mean"] + 6 * coarse["sd"])
    return fou.hurst_posterior(PARAMS, sde, TIMES, ys[None], hurst_grid=np.linspace(lo, hi, 81))


def quick_recipe(key, ys, times=TIMES, params=PARAMS, num_iterations=NUM_ITERATIONS):
    """The quick recipe: logit-normal q(H) (flat prior) from H = 0.5, affine control, exact-OU steps
    with learned noise scales on the observation grid, warm-up at H in {0.27, 0.5, 0.73}."""
    start = fou.make_sde(hurst=0.5, num_ou=5, gamma_max=20.0, t1=2.0)
    return bk.sde.fit_vi(key, start, ys, times, fixed_params=params, learn_hurst=True,
                         hurst_prior=dist.Uniform(0.0, 1.0), control=bk.sde.AffineControl(),
                         num_steps=times.size, refine=0, num_samples=8, num_iterations=num_iterations,
                         optimizer=optax.adam(optax.exponential_decay(0.1, num_iterations, 0.05)),
                         num_posterior_samples=64, progress_bar=False)


def run(hursts, num_datasets):
    sde = fou.make_sde(hurst=0.5, num_ou=5, gamma_max=20.0, t1=2.0)
    rows = []
    for h in hursts:
        for s in range(num_datasets):
            ys = simulate_fou(np.random.default_rng(18_000 + 100 * round(10 * h) + s), h)
            ex = exact_posterior(ys, sde)
            t0 = time.perf_counter()
            res = quick_recipe(jax.random.key(s), ys)
            secs = time.perf_counter() - t0
            z = (res.hurst - ex["mean"]) / ex["sd"]
            ratio = res.hurst_sd / ex["sd"]
            rows.append(dict(h=h, s=s, ex_mean=ex["mean"], ex_sd=ex["sd"], vi_mean=res.hurst, vi_sd=res.hurst_sd,
                             z=z, ratio=ratio, ok=abs(z) <= 1 and 0.5 <= ratio <= 2, secs=secs))
            r = rows[-1]
            print(f"H={h} data set {s}: exact {r['ex_mean']:.3f} +- {r['ex_sd']:.3f}, VI {r['vi_mean']:.3f} +- "
                  f"{r['vi_sd']:.3f}, z {z:+.2f}, sd ratio {ratio:.2f}, {secs:.0f} s", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one data set per H")
    parser.add_argument("--hursts", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="true H values")
    args = parser.parse_args(argv)
    rows = run(args.hursts, 1 if args.quick else 3)
    info = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__}, device {jax.devices()[0].device_kind}, float32")
    lines = ["# Benchmark: calibration of q(H) on fOU data driven by exact fBM", "", info, "",
             "80 observations on (0, 2], noise sd 0.1, theta = sigma = 1; exact posterior of H under the "
             f"K = 5 Markov model (flat prior); VI: the quick recipe ({NUM_ITERATIONS} Adam steps).", "",
             "| true H | data set | exact mean | exact sd | VI mean | VI sd | (VI - exact) / exact sd "
             "| sd ratio | pass | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['h']:.1f} | {r['s']} | {r['ex_mean']:.3f} | {r['ex_sd']:.3f} | {r['vi_mean']:.3f} | "
                     f"{r['vi_sd']:.3f} | {r['z']:+.2f} | {r['ratio']:.2f} | {'yes' if r['ok'] else 'NO'} | "
                     f"{r['secs']:.0f} |")
    passed = sum(r["ok"] for r in rows)
    lines += ["", f"{passed} of {len(rows)} cases pass (|z| <= 1 and sd ratio in [0.5, 2])."]
    text = "\n".join(lines) + "\n"
    print(text)
    save_text("hurst_calibration" if args.hursts == [0.3, 0.5, 0.7] else
              "hurst_calibration_" + "_".join(f"{h:g}" for h in args.hursts), text)


if __name__ == "__main__":
    main()
