import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")
# tests run on 2 xdist workers: one BLAS thread each avoids oversubscribing the cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

# exactness tests run in float64 (DESIGN.md); the package itself defaults to float32
jax.config.update("jax_enable_x64", True)
