"""Shared helpers of the benchmark scripts: timing, machine description, result tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: where a run writes its table: ``bayeskit-output/bench/`` under the working directory, unless
#: ``BAYESKIT_BENCH_OUT`` names another folder (``bayeskit bench --update-results`` points it at the
#: committed ``benchmarks/results/``).
OUT_ENV = "BAYESKIT_BENCH_OUT"


def output_dir() -> Path:
    """The folder a benchmark writes its ``NAME.md`` to (see ``OUT_ENV``)."""
    path = Path(os.environ.get(OUT_ENV) or Path("bayeskit-output") / "bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_text(name: str, text: str) -> Path:
    """Write one benchmark's markdown to ``output_dir()/NAME.md`` and return the path."""
    path = output_dir() / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    import jax

    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"JAX {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '')})")


def table(headers, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, body: str) -> Path:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return save_text(name, f"## {title}\n\nMachine: {machine()}. Run: {stamp}.\n\n{body}\n")


def ar1_kalman_loglik(y, rho: float, sx: float, sy: float) -> float:
    """Exact log-likelihood of ``y`` under x_0 ~ N(0, sx^2/(1-rho^2)), x_t = rho x_{t-1} + sx e_t,
    y_t = x_t + sy u_t (Kalman filter, float64): the ground truth of the filter benchmarks."""
    import numpy as np

    m, p, ll = 0.0, sx**2 / (1 - rho**2), 0.0
    for t, yt in enumerate(np.asarray(y, np.float64)):
        if t > 0:
            m, p = rho * m, rho**2 * p + sx**2
        s = p + sy**2
        ll += -0.5 * (np.log(2 * np.pi * s) + (yt - m) ** 2 / s)
        k = p / s
        m, p = m + k * (yt - m), (1 - k) * p
    return ll


def particles_ar1(rho: float, sx: float, sy: float):
    """The benchmarks' AR(1) model x_t = rho x_{t-1} + N(0, sx^2), y_t = x_t + N(0, sy^2), stationary start, as a
    ``particles`` state-space model class (raises ImportError without ``pip install -e '.[bench]'``)."""
    import numpy as np
    from particles import distributions as pdists
    from particles import state_space_models as pssm

    class AR1(pssm.StateSpaceModel):
        def PX0(self):
            return pdists.Normal(scale=sx / np.sqrt(1 - rho**2))

        def PX(self, t, xp):
            return pdists.Normal(loc=rho * xp, scale=sx)

        def PY(self, t, xp, x):
            return pdists.Normal(loc=x, scale=sy)

    return AR1
