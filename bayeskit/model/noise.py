r"""Driving noises of SDE models: Brownian motion and the Markov approximation of fractional Brownian motion.

:class:`BrownianMotion` and :class:`FractionalBM` share one interface used by
:class:`bayeskit.model.sde.SDE` and its solvers: ``num_ou`` (K), ``hurst``, ``fractional``,
``ou_parameters(hurst, time_horizon, dtype) -> (gammas, omega, noise_scale)`` and
``initial_covariance(dtype)`` of the OU start. :class:`FractionalBM` approximates fBM by
:math:`\hat B_H = \sum_k \omega_k (Y_k - Y_k(0))`, :math:`dY_k = -\gamma_k Y_k dt + dW`, with the optimal
weights :math:`\omega(H)` of :mod:`bayeskit.model.fbm` (closed forms, differentiable in H).
:func:`sample_paths` draws exact paths of the approximation on any grid from the joint Gaussian OU
transition; :func:`sample_exact_fbm` exact fBM by a Cholesky factorisation (a reference for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_choice, check_in_interval, check_key, check_positive_int, renamed_kwargs
from bayeskit.errors import DataError
from bayeskit.model.fbm import (
    approximate_covariance,
    approximate_variance,
    fbm_covariance,
    fbm_variance,
    optimal_weights,
    ou_initial_covariance,
    ou_speeds,
    ou_transition_covariance,
    psd_sqrt,
    riemann_liouville_variance,
)

__all__ = ["BrownianMotion", "FractionalBM", "sample_paths", "sample_exact_fbm"]


@dataclass(frozen=True)
class BrownianMotion:
    """Standard Brownian motion as the driving noise of an SDE (no OU components).

    Shares the driving-noise interface of :class:`FractionalBM`: ``num_ou = 0``, ``hurst = 0.5``,
    ``ou_parameters()`` returns empty speeds/weights and a noise scale of 1.
    """

    @property
    def num_ou(self) -> int:
        return 0

    @property
    def hurst(self) -> float:
        return 0.5

    @property
    def fractional(self) -> bool:
        return False

    def ou_parameters(self, hurst=None, time_horizon=None, dtype=None):
        """``(gammas (0,), omega (0,), noise_scale)`` with noise scale 1: dX = b dt + s dW."""
        dtype = dtype or jnp.result_type(float)
        return jnp.zeros((0,), dtype), jnp.zeros((0,), dtype), jnp.ones((), dtype)

    def initial_covariance(self, dtype=None):
        dtype = dtype or jnp.result_type(float)
        return jnp.zeros((0, 0), dtype)

    def covariance(self, s, t, hurst=None):
        """Exact covariance ``min(s, t)``."""
        return jnp.minimum(jnp.asarray(s), jnp.asarray(t))


@dataclass(frozen=True)
class FractionalBM:
    r"""Markov approximation of fBM by ``num_ou`` OU processes (Daems et al., ICLR 2024).

    Args:
        hurst: Hurst index H in (0, 1) (the initial value when it is learned by :func:`fit_vi`).
        num_ou: number K >= 1 of OU components.
        gamma_max: largest speed; speeds are geometric between ``1/gamma_max`` and ``gamma_max``.
        kind: ``"I"`` (Mandelbrot–van Ness, stationary OU start) or ``"II"`` (Riemann–Liouville, Y(0)=0).
        time_horizon: the T of the optimisation window [0, T] for the weights; ``None`` means the
            solve interval of the SDE it drives (and 1.0 when used on its own).

    Example:
        >>> import bayeskit as bk
        >>> fbm = bk.sde.FractionalBM(hurst=0.3, num_ou=5, gamma_max=20.0, time_horizon=2.0)
        >>> fbm.omega().shape
        (5,)
    """

    hurst: float = 0.5
    num_ou: int = 5
    gamma_max: float = 20.0
    kind: str = "I"
    time_horizon: float | None = None

    def __post_init__(self):
        check_in_interval(self.hurst, "hurst", 0.0, 1.0, closed="neither")
        check_positive_int(self.num_ou, "num_ou")
        if self.num_ou > 1:
            check_in_interval(self.gamma_max, "gamma_max", 1.0, np.inf, closed="neither")
        check_choice(self.kind, "kind", ("I", "II"))
        if self.time_horizon is not None:
            check_in_interval(self.time_horizon, "time_horizon", 0.0, np.inf, closed="neither")

    @property
    def fractional(self) -> bool:
        return True

    def horizon(self, time_horizon=None) -> float:
        if time_horizon is not None:
            return float(time_horizon)
        return 1.0 if self.time_horizon is None else float(self.time_horizon)

    def gammas(self, dtype=None) -> jax.Array:
        """The speeds :math:`\\gamma_k` (:func:`ou_speeds`)."""
        return ou_speeds(self.num_ou, self.gamma_max, dtype)

    def omega(self, hurst=None, time_horizon=None, dtype=None) -> jax.Array:
        """Optimal weights for ``hurst`` (default ``self.hurst``; may be a traced value)."""
        h = self.hurst if hurst is None else hurst
        dtype = dtype or jnp.result_type(h, float)
        return optimal_weights(jnp.asarray(h, dtype), self.gammas(dtype), self.horizon(time_horizon), self.kind)

    def ou_parameters(self, hurst=None, time_horizon=None, dtype=None):
        """``(gammas, omega, noise_scale = sum(omega))`` as used by the augmented SDE.

        With a concrete ``hurst`` (a number, or None for ``self.hurst``) the weights are evaluated
        eagerly even inside ``jit`` and enter the computation as constants.
        """
        if hurst is None or isinstance(hurst, (int, float, np.floating)):
            with jax.ensure_compile_time_eval():
                om = self.omega(hurst, time_horizon, dtype)
                return self.gammas(om.dtype), om, jnp.sum(om)
        om = self.omega(hurst, time_horizon, dtype)
        return self.gammas(om.dtype), om, jnp.sum(om)

    def initial_covariance(self, dtype=None):
        """Covariance of Y(0) (:func:`ou_initial_covariance`)."""
        return ou_initial_covariance(self.gammas(dtype), self.kind)

    def covariance(self, s, t, hurst=None, time_horizon=None):
        """Exact covariance of the approximate process (:func:`approximate_covariance`)."""
        om = self.omega(hurst, time_horizon)
        return approximate_covariance(s, t, self.gammas(om.dtype), om, self.kind)

    def variance(self, t, hurst=None, time_horizon=None):
        om = self.omega(hurst, time_horizon)
        return approximate_variance(t, self.gammas(om.dtype), om, self.kind)

    def exact_variance(self, t, hurst=None):
        """Variance of the fBM this approximates: :math:`c_H^2 t^{2H}` (type I) or Riemann–Liouville (II)."""
        h = self.hurst if hurst is None else hurst
        return fbm_variance(t, h) if self.kind == "I" else riemann_liouville_variance(t, h)

    def exact_covariance(self, s, t, hurst=None):
        """Exact Mandelbrot–van Ness covariance (type I target)."""
        h = self.hurst if hurst is None else hurst
        return fbm_covariance(s, t, h, convention="mvn")

    def relative_variance_error(self, hurst=None, time_horizon=None, num_points: int = 2001):
        r"""Relative L2 error :math:`\|\hat v - v\|_2 / \|v\|_2` of the variance on a grid of [0, T]."""
        T = self.horizon(time_horizon)
        t = jnp.linspace(0.0, T, num_points)
        v_hat = self.variance(t, hurst, T)
        v = self.exact_variance(t, hurst)
        return jnp.sqrt(jnp.trapezoid((v_hat - v) ** 2, t) / jnp.trapezoid(v**2, t))

    def sample(self, key, times, num_samples: int = 1, hurst=None, **deprecated):
        """``num_samples`` exact sample paths of the approximate process at ``times`` (see :func:`sample_paths`;
        ``num_paths``, the old name of ``num_samples``, warns for one release)."""
        num_samples = renamed_kwargs("FractionalBM.sample", deprecated, {"num_paths": "num_samples"}).get(
            "num_samples", num_samples)
        return sample_paths(key, self, times, num_samples, hurst=hurst)


@partial(jax.jit, static_argnames=("num_paths", "kind"))
def _sample_paths(key, gammas, omega, times, num_paths, kind):
    K = gammas.shape[0]
    k0, k1 = jax.random.split(key)
    y0 = jax.random.normal(k0, (num_paths, K), gammas.dtype)
    y0 = y0 @ psd_sqrt(ou_initial_covariance(gammas, kind)).T
    dts = jnp.diff(times, prepend=0.0)
    # first step from time 0 to times[0]
    noise = jax.random.normal(k1, (times.shape[0], num_paths, K), gammas.dtype)

    # transition square roots for all steps at once (batched eigh), then a scan of matrix products
    roots = jax.vmap(lambda dt: psd_sqrt(ou_transition_covariance(gammas, dt)).T)(dts)
    decays = jnp.exp(-gammas[None, :] * dts[:, None])

    def step(y, inp):
        decay, root, z = inp
        y = decay * y + z @ root
        return y, y

    _, ys = jax.lax.scan(step, y0, (decays, roots, noise))
    return jnp.einsum("tpk,k->pt", ys - y0[None], omega)


def sample_paths(key, noise: FractionalBM, times, num_samples: int = 1, hurst=None, **deprecated):
    r"""Draw ``num_samples`` paths of :math:`\hat B_H` at the increasing ``times`` (all > 0), exactly.

    The OU vector is propagated with its exact joint Gaussian transition (module docstring), so there
    is no time-discretisation error whatever the speeds. Returns an array ``(num_samples, len(times))``;
    the path starts at :math:`\hat B_H(0) = 0` (not included unless 0 is in ``times``).
    Jitted; cost O(len(times) * K^3) for the transition square roots plus O(num_samples * len(times) * K^2).
    ``num_paths``, the old name of ``num_samples``, warns for one release.
    """
    num_samples = renamed_kwargs("sample_paths", deprecated, {"num_paths": "num_samples"}).get(
        "num_samples", num_samples)
    check_key(key)
    num_paths = check_positive_int(num_samples, "num_samples")
    times_np = np.asarray(times, dtype=float)
    if times_np.ndim != 1 or times_np.size == 0:
        raise DataError(f"`times` must be a non-empty 1-d array, got shape {times_np.shape}")
    if np.any(times_np < 0) or np.any(np.diff(times_np) < 0):
        raise DataError("`times` must be non-negative and sorted increasingly")
    om = noise.omega(hurst, time_horizon=None)
    dtype = om.dtype
    return _sample_paths(key, noise.gammas(dtype), om, jnp.asarray(times_np, dtype), num_paths, noise.kind)


def sample_exact_fbm(key, times, hurst, num_samples: int = 1, *, convention: str = "mvn", **deprecated):
    """``num_samples`` exact fBM paths at ``times`` by Cholesky factorisation of :func:`fbm_covariance` (for
    tests); ``num_paths``, the old name of ``num_samples``, warns for one release."""
    num_paths = renamed_kwargs("sample_exact_fbm", deprecated, {"num_paths": "num_samples"}).get(
        "num_samples", num_samples)
    check_key(key)
    check_in_interval(hurst, "hurst", 0.0, 1.0, closed="neither")
    times = jnp.asarray(times)
    cov = fbm_covariance(times[:, None], times[None, :], hurst, convention=convention)
    L = psd_sqrt(cov)
    z = jax.random.normal(key, (num_paths, times.shape[0]), cov.dtype)
    return z @ L.T
