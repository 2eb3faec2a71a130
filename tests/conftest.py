"""Test configuration. Two tiers, both run by CI (.ci/run) on every landed main:

* the fast suite, ``python -m pytest``: the feedback loop after every change, under 4 minutes on 2 CPU cores from a
  fresh clone. It keeps at least one real test per capability, checked against an exact or trusted answer.
* the slow tier, ``python -m pytest -m slow``: the long statistical must-shows, and the tests whose time is compiling
  a program of their own while a faster exactness test keeps their capability (the same backend or driver) in the
  fast suite. Each of those carries a ``# slow tier:`` comment naming that fast test; what the slow test alone
  checks (an option such as sharding or a fixed schedule, a second model, a training run) is checked only in the
  slow tier. Moving a test changed no assertion (PaRIS's test_bad_inputs was split: its exact-draws run is a slow
  test of its own).
"""
import os
from pathlib import Path

import pytest

# Most of the suite's time is XLA compiling small programs. The backend's optimisation level 1 compiles
# in about 55% of the default's time with the same run time (a vmapped 64 x 1000-particle filter, T = 30:
# compile 3.2 s vs 5.6-5.9 s, run 0.6 s vs 0.4-0.6 s); level 0 compiles faster still but runs 7x
# slower, which the long statistical tests pay for. Set XLA_FLAGS yourself to override both flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1")
os.environ.setdefault("MPLBACKEND", "Agg")
# tests run on 2 xdist workers: one BLAS thread each avoids oversubscribing the cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

# exactness tests run in float64 (docs/index.md); the package itself defaults to float32
jax.config.update("jax_enable_x64", True)

# JAX's persistent compilation cache: a program that two tests (or the two xdist workers) compile
# with the same shapes is compiled once; the cache lives in the clone's .jax-cache/ (git-ignored),
# so a second run of the suite skips most XLA compilation (measured: tests/smc/test_paris.py 74 s
# cold, 24 s warm). BAYESKIT_TEST_JAX_CACHE= (empty) turns it off.
_CACHE = os.environ.get("BAYESKIT_TEST_JAX_CACHE", str(Path(__file__).resolve().parent.parent / ".jax-cache"))
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Modules holding the suite's longest single tests run first (each module stays contiguous, so its module-scoped
# fixtures are built once per worker). With --dist worksteal an idle worker steals from the end of the other's
# queue, so the run then ends on short tests rather than one worker finishing a 10 s test alone.
_FIRST = ("tests/test_docs_examples.py", "tests/smc/test_pmmh.py", "tests/smc/test_smoothing.py",
          "tests/smc/test_paris.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
