r"""The earth mover's distance :math:`W_1` between two empirical measures with uniform weights and Euclidean
ground cost (as TrajectoryNet's ``earth_mover_distance`` used by SBIRR), exact through
``scipy.optimize.linear_sum_assignment`` for equal sizes and ``scipy.optimize.linprog`` otherwise. Public as
:func:`bayeskit.bridges.kernels.emd` (and :func:`bayeskit.testing.emd`)."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial

from bayeskit._checks import check_finite_array
from bayeskit.errors import DataError

__all__ = ["emd"]


def emd(x, y, *, method: str = "auto") -> float:
    """Earth mover's distance :math:`W_1` between the empirical measures of ``x`` (N, D) and ``y`` (M, D).

    ``method``: ``"assignment"`` (N = M, exact optimal permutation), ``"linprog"`` (exact transport LP,
    any sizes; O(NM) variables, for a few thousand points at most), or ``"auto"``.
    """
    check_finite_array(x, "x", ndim=2)
    check_finite_array(y, "y", ndim=2)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    cost = scipy.spatial.distance.cdist(x, y)
    n, m = cost.shape
    if method == "auto":
        method = "assignment" if n == m else "linprog"
    if method == "assignment":
        if n != m:
            raise DataError(f"method='assignment' needs equal sample sizes, got {n} and {m}")
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    if method != "linprog":
        raise DataError(f"`method` must be 'auto', 'assignment' or 'linprog', got {method!r}")
    # transport plan P (n, m) >= 0, rows sum to 1/n, columns to 1/m
    a_rows = scipy.sparse.kron(scipy.sparse.eye(n), np.ones((1, m)))
    a_cols = scipy.sparse.kron(np.ones((1, n)), scipy.sparse.eye(m))
    a_eq = scipy.sparse.vstack([a_rows, a_cols]).tocsr()
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    res = scipy.optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if not res.success:  # pragma: no cover - LP is always feasible
        raise DataError(f"EMD linear program failed: {res.message}")
    return float(res.fun)
