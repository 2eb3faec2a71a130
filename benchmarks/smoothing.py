"""Benchmark: PaRIS (bayeskit, JAX) vs `particles`' Paris collector and vs the exact O(N^2) smoother.

Same model (scalar linear-Gaussian AR(1) observed in noise), same functional (sum_t x_t), accuracy against the
exact RTS smoother. Reports: time at N = 1000 for bayeskit PaRIS, particles' Paris collector and bayeskit's
O(N^2) forward-only smoother (one run); time vs N for PaRIS (linear scaling target: t(1e5) / t(1e4) <= 12);
peak working memory of the compiled PaRIS loop at T = 1e3 and T = 1e5 (XLA memory analysis: O(N) working
memory, flat in T). Results go to bayeskit-output/bench/smoothing.md.

Run: `python benchmarks/smoothing.py [--quick]` or `bayeskit bench smoothing [--quick]`.
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
from bayeskit.models import linear_gaussian as lg

PARAMS = {"rho": 0.9, "sigma_x": 1.0, "sigma_y": 0.5}
AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)


def h_x(t, x_prev, x):
    return x


def exact_value(ys):
    p = {"A": jnp.full((1, 1), PARAMS["rho"]), "Q": jnp.full((1, 1), PARAMS["sigma_x"] ** 2), "H": jnp.ones((1, 1)),
         "R": jnp.full((1, 1), PARAMS["sigma_y"] ** 2), "m0": jnp.zeros(1), "P0": jnp.ones((1, 1))}
    return float(lg.rts_smoother(p, jnp.asarray(ys)[:, None]).means.sum())


def time_call(fn, repeat=3):
    fn()  # compile
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return best, out


def bayeskit_paris(ys, N, key=0, exact=False):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    ys = jnp.asarray(ys, jnp.float32)

    driver = bk.smc.forward_smoother if exact else bk.smc.paris

    def run():
        return driver(jax.random.key(key), AR, params, ys, N, functional=h_x, ess_threshold=0.5).estimate

    return time_call(run, repeat=1 if exact else 3)


def particles_paris(ys, N, seed=0):
    import particles
    from particles import distributions as dists
    from particles import state_space_models as ssms
    from particles.collectors import Paris

    class ARModel(ssms.StateSpaceModel):
        default_params = dict(PARAMS)

        def PX0(self):
            return dists.Normal(loc=0.0, scale=1.0)

        def PX(self, t, xp):
            return dists.Normal(loc=self.rho * xp, scale=self.sigma_x)

        def PY(self, t, xp, x):
            return dists.Normal(loc=x, scale=self.sigma_y)

        def upper_bound_log_pt(self, t):
            return -np.log(self.sigma_x * np.sqrt(2 * np.pi))

    class FK(ssms.Bootstrap):
        def add_func(self, t, xp, x):
            return x

        def upper_bound_log_pt(self, t):
            return self.ssm.upper_bound_log_pt(t)

    np.random.seed(seed)
    fk = FK(ssm=ARModel(), data=list(np.asarray(ys, float)))
    from particles import resampling as rs

    class PatchedParis(Paris):
        """particles 0.3's Paris collector with its two numpy-2 / attribute bugs fixed (self.N is never set;
        a length-1 array is assigned to an int slot), and the hybrid fallback of the upstream (GitHub)
        version: at most N rejection trials per draw, then an exact O(N) draw."""

        def update(self, smc):
            prev_phi = self.Phi.copy()
            queue = rs.MultinomialQueue(self.prev_W)
            bound = smc.fk.upper_bound_log_pt(smc.t)
            for n in range(smc.N):
                idx = np.empty(self.Nparis, dtype=np.int64)
                for m in range(self.Nparis):
                    for _ in range(smc.N):
                        a = int(queue.dequeue(1)[0])
                        if np.log(np.random.rand()) < smc.fk.logpt(smc.t, self.prev_X[a], smc.X[n]) - bound:
                            idx[m] = a
                            break
                    else:
                        lw = self.prev_logw + smc.fk.logpt(smc.t, self.prev_X, smc.X[n])
                        idx[m] = rs.multinomial_once(rs.exp_and_normalise(lw))
                self.Phi[n] = np.mean(prev_phi[idx] + smc.fk.add_func(smc.t, self.prev_X[idx], smc.X[n]), axis=0)

        def save_for_later(self, smc):
            super().save_for_later(smc)
            self.prev_logw = smc.wgts.lw

    alg = particles.SMC(fk=fk, N=N, collect=[PatchedParis(Nparis=2)])
    t0 = time.perf_counter()
    alg.run()
    return time.perf_counter() - t0, float(alg.summaries.patchedParis[-1])


def paris_runner(ys, N, key=0, ess_threshold=0.5):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    ys = jnp.asarray(ys, jnp.float32)

    def run():
        res = bk.smc.paris(jax.random.key(key), AR, params, ys, N, functional=h_x, ess_threshold=ess_threshold)
        return res.estimate, jnp.mean(res.num_fallback.astype(jnp.float32))

    return run


def load():
    """The 1/5/15-minute load averages and the core count (the machine is shared)."""
    try:
        a = os.getloadavg()
        return f"load average {a[0]:.2f} {a[1]:.2f} {a[2]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load average n/a"


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_bytes(N, T):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    ys = jax.ShapeDtypeStruct((T,), jnp.float32)
    lowered = jax.jit(lambda k, y: bk.smc.paris(k, AR, params, y, N, functional=h_x, ess_threshold=0.5).estimate
                      ).lower(jax.random.key(0), ys)
    m = lowered.compile().memory_analysis()
    if m is None:
        return None
    return {"temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes, "argument": m.argument_size_in_bytes}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats per N")
    parser.add_argument("--scaling-steps", type=int, default=None, help="T of the time-vs-N runs (default 50)")
    parser.add_argument("--skip-particles", action="store_true", help="skip the (slow, pure Python) particles run")
    args = parser.parse_args(argv)
    T = 50 if args.quick else 100
    T_scale = args.scaling_steps or (20 if args.quick else 50)
    Ns = [1_000, 10_000, 100_000] if not args.quick else [1_000, 10_000, 30_000]
    xs, ys = AR.simulate(jax.random.key(0), {k: jnp.asarray(v) for k, v in PARAMS.items()}, T)
    ys = np.asarray(ys)
    exact = exact_value(ys)
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    emit(f"# Smoothing benchmark: PaRIS vs particles' Paris collector vs O(N^2) (T = {T}, K = 2)\n")
    emit(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
         f"device {jax.devices()[0].device_kind}; float32 for bayeskit, float64 for particles; "
         f"functional sum_t x_t, exact (RTS) = {exact:.4f}\n")
    N = 1000
    emit(f"load at start: {load()}\n")
    t_bk, e_bk = bayeskit_paris(ys, N)
    t_pa, e_pa = (np.nan, np.nan) if args.skip_particles else particles_paris(ys, N)
    t_n2, e_n2 = bayeskit_paris(ys, N, exact=True)
    emit(f"## N = {N}, T = {T}\n")
    emit("| method | time (s) | ratio vs bayeskit PaRIS | abs. error vs RTS |")
    emit("|---|---|---|---|")
    emit(f"| bayeskit PaRIS (jit, hybrid rejection) | {t_bk:.4f} | 1.0 | {abs(float(e_bk) - exact):.3f} |")
    if args.skip_particles:
        emit("| particles Paris collector (Nparis=2) | skipped (--skip-particles) | | |")
    else:
        emit(f"| particles Paris collector (Nparis=2) | {t_pa:.3f} | {t_pa / t_bk:.1f} | {abs(e_pa - exact):.3f} |")
    emit(f"| bayeskit O(N^2) forward-only smoother | {t_n2:.4f} | {t_n2 / t_bk:.1f} | {abs(float(e_n2) - exact):.3f} |")
    emit("")
    emit(f"load before the N-scaling runs: {load()}\n")
    emit(f"## PaRIS time vs N (T = {T_scale}, interleaved repeats)\n")
    emit("The machine is shared (load above), so all N are timed alternately, "
         f"{args.repeats} times each after compilation; the ratio uses the minimum (least-disturbed) times. "
         "`fallback/step`: backward draws per step that exhausted the rejection trials and took the exact O(N) "
         "draw. Two resampling rules: adaptive (ESS < N/2) and every step (ess_threshold = 1, the default, as in "
         "Olsson & Westerborn's PaRIS).\n")
    emit("| resampling | N | min time (s) | median time (s) | all times (s) | time / N (us, min) | fallback/step | "
         f"abs. error vs RTS (T = {T_scale}) |")
    emit("|---|---|---|---|---|---|---|---|")
    exact_s = exact_value(ys[:T_scale])
    for ess in (0.5, 1.0):
        runners, errors, fallback = {}, {}, {}
        for n in Ns:
            runners[n] = paris_runner(ys[:T_scale], n, ess_threshold=ess)
            est, nfb = jax.block_until_ready(runners[n]())  # compile + first run
            errors[n], fallback[n] = abs(float(est) - exact_s), float(nfb)
        samples = {n: [] for n in Ns}
        for _ in range(args.repeats):
            for n in Ns:
                t0 = time.perf_counter()
                jax.block_until_ready(runners[n]())
                samples[n].append(time.perf_counter() - t0)
        label = "adaptive (ESS < N/2)" if ess < 1 else "every step"
        for n in Ns:
            s = np.array(samples[n])
            emit(f"| {label} | {n} | {s.min():.4f} | {np.median(s):.4f} | {', '.join(f'{v:.3f}' for v in s)} | "
                 f"{1e6 * s.min() / n:.2f} | {fallback[n]:.1f} | {errors[n]:.4f} |")
        a, b = Ns[-2], Ns[-1]
        r_min = min(samples[b]) / min(samples[a])
        r_med = float(np.median(samples[b]) / np.median(samples[a]))
        emit(f"\n{label}: t({b}) / t({a}) = {r_min:.1f} (min times), {r_med:.1f} (medians) for a {b // a}x larger N "
             f"(target <= 12; linear: {b // a}x). Load after: {load()}\n")
    emit("## Memory of the compiled PaRIS loop (XLA memory analysis of the jitted loop, float32)\n")
    emit("| N | T | working memory (temp, bytes) | outputs (bytes: T scalar diagnostics) | arguments (bytes) |")
    emit("|---|---|---|---|---|")
    mems = {}
    for n in (1_000, 10_000):
        for TT in (1_000, 100_000):
            m = memory_bytes(n, TT)
            mems[(n, TT)] = m
            if m is None:
                emit(f"| {n} | {TT} | n/a | n/a | n/a |")
            else:
                emit(f"| {n} | {TT} | {m['temp']} | {m['output']} | {m['argument']} |")
    if mems[(1_000, 1_000)] is not None:
        growth = {n: mems[(n, 100_000)]["temp"] - mems[(n, 1_000)]["temp"] for n in (1_000, 10_000)}
        emit(f"\nworking-memory growth from T = 1e3 to 1e5: {growth[1_000]} bytes at N = 1e3 "
             f"({growth[1_000] / 99_000:.1f} bytes per extra step), {growth[10_000]} bytes at N = 1e4 "
             f"({growth[10_000] / 99_000:.1f} bytes per extra step): if these agree, the growth is the T per-step "
             "scalar diagnostics, not particle history (which would grow by ~N x 4 bytes per step).\n")
    emit(f"RSS peak of this benchmark process (all runs above): {peak_rss_mb():.0f} MB\n")
    out = save_text("smoothing", "\n".join(lines))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
