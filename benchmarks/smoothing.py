"""Benchmark: PaRIS (bayeskit, JAX) vs `particles`' Paris collector and vs the exact O(N^2) smoother.

Same model (scalar linear-Gaussian AR(1) observed in noise), same functional (sum_t x_t), accuracy against the
exact RTS smoother. Reports: time at N = 1000 for bayeskit PaRIS, particles' Paris collector and bayeskit's
O(N^2) forward-only smoother (one run); time vs N for PaRIS (linear scaling target: t(1e5) / t(1e4) <= 12);
peak working memory of the compiled PaRIS loop at T = 1e3 and T = 1e5 (XLA memory analysis: O(N) working
memory, flat in T). Results go to benchmarks/results/smoothing.md.

Run: `python benchmarks/smoothing.py [--quick]` or `bayeskit bench smoothing [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import bayeskit as bk
from bayeskit.inference.smc.paris import _paris_jit
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

    def run():
        st, _ = _paris_jit(jax.random.key(key), AR, params, ys, 0.5, num_particles=N, functional=h_x, num_backward=2,
                           resampling="systematic", num_trials=10, log_transition_bound=None, chunk_size=None,
                           online=False, exact=exact)
        return jnp.sum(jax.nn.softmax(st.smc.log_weights) * st.stats)

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


def memory_bytes(N, T):
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    ys = jax.ShapeDtypeStruct((T,), jnp.float32)
    lowered = _paris_jit.lower(jax.random.key(0), AR, params, ys, 0.5, num_particles=N, functional=h_x,
                               num_backward=2, resampling="systematic", num_trials=10, log_transition_bound=None,
                               chunk_size=None, online=False)
    m = lowered.compile().memory_analysis()
    if m is None:
        return None
    return {"temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes, "argument": m.argument_size_in_bytes}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    T = 50 if args.quick else 100
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
    t_bk, e_bk = bayeskit_paris(ys, N)
    t_pa, e_pa = particles_paris(ys, N)
    t_n2, e_n2 = bayeskit_paris(ys, N, exact=True)
    emit(f"## N = {N}, T = {T}\n")
    emit("| method | time (s) | ratio vs bayeskit PaRIS | abs. error vs RTS |")
    emit("|---|---|---|---|")
    emit(f"| bayeskit PaRIS (jit, hybrid rejection) | {t_bk:.4f} | 1.0 | {abs(float(e_bk) - exact):.3f} |")
    emit(f"| particles Paris collector (Nparis=2) | {t_pa:.3f} | {t_pa / t_bk:.1f} | {abs(e_pa - exact):.3f} |")
    emit(f"| bayeskit O(N^2) forward-only smoother | {t_n2:.4f} | {t_n2 / t_bk:.1f} | {abs(float(e_n2) - exact):.3f} |")
    emit("")
    emit("## PaRIS time vs N\n")
    emit("| N | time (s) | time / N (us) | abs. error vs RTS |")
    emit("|---|---|---|---|")
    times = {}
    for n in Ns:
        t, e = bayeskit_paris(ys, n)
        times[n] = t
        emit(f"| {n} | {t:.4f} | {1e6 * t / n:.2f} | {abs(float(e) - exact):.4f} |")
    a, b = Ns[-2], Ns[-1]
    emit(f"\nscaling: t({b}) / t({a}) = {times[b] / times[a]:.1f} for a {b // a}x larger N (linear: {b // a}x)\n")
    emit("## Memory of the compiled PaRIS loop (N = 1000; XLA memory analysis)\n")
    emit("| T | working memory (temp, bytes) | outputs (bytes: T scalar diagnostics) |")
    emit("|---|---|---|")
    for TT in (1_000, 100_000):
        m = memory_bytes(1000, TT)
        if m is None:
            emit(f"| {TT} | n/a | n/a |")
        else:
            emit(f"| {TT} | {m['temp']} | {m['output']} |")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "smoothing.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
