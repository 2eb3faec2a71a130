"""Small dense linear-algebra helpers shared by the models and backends (NumPy / SciPy, float64), and the BLAS
thread setting for loops of small factorisations."""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.linalg


@contextlib.contextmanager
def single_threaded_blas():
    """Run the block with one BLAS / LAPACK thread; the previous setting comes back afterwards.

    JAX's CPU Cholesky, triangular solves and eigendecompositions call the OpenBLAS that SciPy ships, which
    splits a factorisation of a few hundred rows over all cores and busy-waits for them. For the many small
    factorisations of a loop (SBIRR's GP regressions: one Cholesky of at most ``max_gp_points`` rows per IPF
    half-step) that costs more than it gains, and on a machine whose cores are busy it is ruinous: a 300 x 300
    Cholesky measured 66 ms of CPU with two OpenBLAS threads on two shared cores, 0.6 ms with one.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def linear_sde_transition(drift_matrix, noise_cov, dt: float):
    r"""Exact transition of :math:`dX = F X\,dt + dW`, :math:`\operatorname{Cov}(dW) = \Sigma\,dt`, over ``dt``:
    :math:`X_{dt} \mid X_0 = x \sim \mathcal N(\Phi x, Q)` with :math:`\Phi = e^{F\,dt}` and
    :math:`Q = \int_0^{dt} e^{Fs}\Sigma e^{F^\top s} ds`.

    Van Loan's block exponential, evaluated on :math:`dt / 2^m` (so that fast stable modes do not overflow
    the exponential of :math:`-F`), then :math:`m` doublings :math:`Q \leftarrow \Phi Q \Phi^\top + Q`,
    :math:`\Phi \leftarrow \Phi^2`. A constant drift term :math:`c` is handled by augmenting the state with a
    constant 1 (``F = [[A, c], [0, 0]]``). Returns ``(Phi, Q)`` with ``Q`` symmetrised.
    """
    F = np.asarray(drift_matrix, float)
    S = np.asarray(noise_cov, float)
    n = F.shape[0]
    rate = float(np.max(np.abs(np.diag(F)))) if n else 0.0
    m = max(0, int(np.ceil(np.log2(rate * dt / 0.5)))) if rate * dt > 0.5 else 0
    h = dt / 2.0**m
    M = np.zeros((2 * n, 2 * n))
    M[:n, :n] = -F
    M[:n, n:] = S
    M[n:, n:] = F.T
    E = scipy.linalg.expm(M * h)
    Phi = E[n:, n:].T
    Q = Phi @ E[:n, n:]
    for _ in range(m):
        Q = Phi @ Q @ Phi.T + Q
        Phi = Phi @ Phi
    return Phi, 0.5 * (Q + Q.T)


def sqrtm_psd(a) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below zero from
    round-off clipped to zero)."""
    a = np.asarray(a, float)
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
