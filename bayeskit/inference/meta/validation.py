"""Validation of episode data and configuration arrays (host side, before any compile)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_finite_array
from bayeskit.errors import ConfigurationError, DataError

__all__ = ["as_pair", "batch_episodes", "check_pd"]


def as_pair(data, name):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"`{name}` must be a pair (x, y) of arrays with a leading episode axis")
    return data[0], data[1]


def batch_episodes(x, y, name="episodes"):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim < 2:
        raise DataError(f"`{name}` x must have shape (num_episodes, num_points, ...), got {x.shape}")
    if y.ndim < 2:
        raise DataError(f"`{name}` y must have shape (num_episodes, num_points, ...), got {y.shape}")
    if x.shape[:2] != y.shape[:2]:
        raise DataError(f"`{name}`: x and y must agree on (num_episodes, num_points), got {x.shape[:2]} and {y.shape[:2]}")
    if x.shape[0] == 0:
        raise DataError(f"`{name}` holds no episodes (leading axis of size 0)")
    if x.shape[1] == 0:
        raise DataError(f"`{name}` episodes are empty (0 data points per episode); every support set needs >= 1 point")
    check_finite_array(np.asarray(x), f"{name} x")
    check_finite_array(np.asarray(y), f"{name} y")
    return x, y


def check_pd(mat, name):
    arr = np.asarray(mat, dtype=float)
    if arr.ndim == 1:
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ConfigurationError(f"`{name}` must be positive (a diagonal scale), got min {arr.min()}")
        return
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ConfigurationError(f"`{name}` must be a square matrix, got shape {arr.shape}")
    if not np.allclose(arr, arr.T, rtol=1e-6, atol=1e-10):
        raise ConfigurationError(f"`{name}` must be symmetric")
    if not np.all(np.isfinite(arr)) or np.linalg.eigvalsh(arr).min() <= 0:
        raise ConfigurationError(f"`{name}` must be positive definite; smallest eigenvalue "
                                 f"{np.linalg.eigvalsh(arr).min() if np.all(np.isfinite(arr)) else 'nan'}")

