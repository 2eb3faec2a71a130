r"""Markov approximation of fractional Brownian motion by a mixture of Ornstein–Uhlenbeck processes.

Fractional Brownian motion (fBM) with Hurst index :math:`H \in (0, 1)` in the Mandelbrot–van Ness
("type I") representation, with :math:`\alpha = H + \tfrac12`, is

.. math::
    B_H(t) = \frac{1}{\Gamma(\alpha)} \int_{-\infty}^{t}
             \big[(t - s)_+^{\alpha - 1} - (-s)_+^{\alpha - 1}\big] \, dW(s),
    \qquad \operatorname{Var} B_H(t) = c_H^2\, t^{2H},
    \qquad c_H^2 = \frac{\Gamma(2 - 2H)}{2H\, \Gamma(H + \tfrac12)\, \Gamma(\tfrac32 - H)},

and the Riemann–Liouville ("type II") version integrates from 0 only:
:math:`B_H(t) = \Gamma(\alpha)^{-1} \int_0^t (t - s)^{\alpha - 1} dW(s)`, with
:math:`\operatorname{Var} B_H(t) = t^{2H} / (2H\, \Gamma(\alpha)^2)`.

Because :math:`u^{\alpha - 1}` is a Laplace transform, :math:`u^{\alpha-1} = \Gamma(1-\alpha)^{-1}
\int_0^\infty e^{-\gamma u} \gamma^{-\alpha} d\gamma`, fBM is a continuous superposition of OU processes
driven by one Brownian motion. Daems, Opper, Crevecoeur and Birdal (ICLR 2024, "Variational inference
for SDEs driven by fractional noise") keep :math:`K` of them with geometric speeds

.. math::
    \gamma_k = r^{k - (K+1)/2}, \quad r = \gamma_{\max}^{2/(K-1)}, \qquad
    dY_k = -\gamma_k Y_k\, dt + dW, \qquad
    \hat B_H(t) = \sum_k \omega_k \big(Y_k(t) - Y_k(0)\big),

where :math:`Y(0) \sim \mathcal N(0, [1/(\gamma_i + \gamma_j)])` (stationary, type I) or :math:`Y(0) = 0`
(type II), and choose the weights minimising the mean squared error
:math:`\int_0^T E[(B_H(t) - \hat B_H(t))^2]\, dt = c - 2 b^\top \omega + \omega^\top A \omega`,
i.e. :math:`\omega = A^{-1} b` with, for type I,

.. math::
    A_{ij} = \frac{2T + (e^{-\gamma_i T} - 1)/\gamma_i + (e^{-\gamma_j T} - 1)/\gamma_j}{\gamma_i + \gamma_j},
    \quad
    b_k = \frac{2T}{\gamma_k^{\alpha}} - \frac{T^{\alpha}}{\gamma_k \Gamma(\alpha + 1)}
          + \frac{e^{-\gamma_k T} - e^{\gamma_k T} Q(\alpha, \gamma_k T)}{\gamma_k^{\alpha + 1}},

and for type II

.. math::
    A_{ij} = \frac{T - (1 - e^{-(\gamma_i + \gamma_j) T})/(\gamma_i + \gamma_j)}{\gamma_i + \gamma_j},
    \quad
    b_k = \frac{T\, P(\alpha, \gamma_k T)}{\gamma_k^{\alpha}} - \frac{\alpha\, P(\alpha + 1, \gamma_k T)}{\gamma_k^{\alpha+1}},

with :math:`P, Q` the regularised lower/upper incomplete gamma functions (``jax.scipy.special.gammainc``
/ ``gammaincc``, differentiable in their first argument, so :math:`\omega(H)` is differentiable in H).
The product :math:`e^{z} Q(\alpha, z)` overflows for large :math:`z`; :func:`scaled_upper_gamma` evaluates
it by Legendre's continued fraction there.

The approximation is a Gaussian process with covariance (type I, :math:`t \ge s`)

.. math::
    \operatorname{Cov}(\hat B_H(t), \hat B_H(s)) = \sum_{ij} \omega_i \omega_j
    \frac{1 - e^{-\gamma_i t} - e^{-\gamma_j s} + e^{-\gamma_i (t - s)}}{\gamma_i + \gamma_j},

and its paths are sampled *exactly* on any grid (no discretisation error) from the joint Gaussian OU
transition :math:`Y(t + \Delta) = e^{-\gamma \Delta} Y(t) + \xi`,
:math:`\operatorname{Cov}\xi = [(1 - e^{-(\gamma_i + \gamma_j)\Delta})/(\gamma_i + \gamma_j)]`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gamma as gamma_fn
from jax.scipy.special import gammainc, gammaincc, gammaln

from bayeskit._checks import check_choice, check_in_interval, check_positive_int

__all__ = [
    "ou_speeds",
    "scaled_upper_gamma",
    "mvn_constant",
    "fbm_covariance",
    "fbm_variance",
    "riemann_liouville_variance",
    "weight_system",
    "optimal_weights",
    "approximation_error",
    "ou_initial_covariance",
    "ou_transition_covariance",
    "approximate_covariance",
    "approximate_variance",
    "psd_sqrt",
]

_CF_SWITCH = 10.0  # below: exp(z) * gammaincc(a, z) directly; above: continued fraction
_CF_DEPTH = 40


# ----------------------------------------------------------------------------------------------------
# closed forms


def ou_speeds(num_ou: int, gamma_max: float, dtype=None) -> jax.Array:
    r"""Geometric OU speeds :math:`\gamma_k = r^{k - (K+1)/2}`, :math:`r = \gamma_{\max}^{2/(K-1)}`.

    The speeds are symmetric around 1 on a log scale: :math:`\gamma_1 = 1/\gamma_{\max}`,
    :math:`\gamma_K = \gamma_{\max}`. For ``num_ou = 1`` the single speed is 1.
    """
    num_ou = check_positive_int(num_ou, "num_ou")
    gamma_max = check_in_interval(gamma_max, "gamma_max", 1.0, np.inf, closed="neither") if num_ou > 1 else gamma_max
    dtype = dtype or jnp.result_type(float)
    if num_ou == 1:
        return jnp.ones((1,), dtype)
    k = np.arange(1, num_ou + 1)
    exponent = (k - (num_ou + 1) / 2) * 2.0 / (num_ou - 1)
    return jnp.asarray(np.asarray(gamma_max, np.float64) ** exponent, dtype)


def scaled_upper_gamma(a, z):
    r""":math:`e^{z} Q(a, z)` (``Q`` the regularised upper incomplete gamma), stable for large ``z``.

    For ``z < 10`` it is ``exp(z) * gammaincc(a, z)``; above, Legendre's continued fraction
    :math:`\Gamma(a, z) = e^{-z} z^{a} / (z + 1 - a - \frac{1 (1 - a)}{z + 3 - a -} \frac{2 (2 - a)}{z + 5 - a -} \cdots)`
    evaluated backwards to a fixed depth (differentiable in ``a`` and ``z``).
    """
    a = jnp.asarray(a)
    z = jnp.asarray(z)
    a, z = jnp.broadcast_arrays(a, z)
    small = z < _CF_SWITCH
    z_small = jnp.where(small, z, 1.0)
    z_large = jnp.where(small, _CF_SWITCH, z)
    direct = jnp.exp(z_small) * gammaincc(a, z_small)
    tail = jnp.zeros_like(z_large)
    for n in range(_CF_DEPTH, 0, -1):
        # f_{n-1} = b_{n-1} + a_n / f_n  with b_n = z + 2n + 1 - a, a_n = -n (n - a); tail holds a_n / f_n
        b_n = z_large + 2 * n + 1 - a
        tail = -n * (n - a) / (b_n + tail)
    cf = 1.0 / (z_large + 1 - a + tail)
    large = jnp.exp(a * jnp.log(z_large) - gammaln(a)) * cf
    return jnp.where(small, direct, large)


def mvn_constant(hurst):
    r"""The Mandelbrot–van Ness variance constant :math:`c_H^2 = \Gamma(2-2H) / (2H \Gamma(H+\frac12) \Gamma(\frac32-H))`.

    :math:`\operatorname{Var} B_H(t) = c_H^2 t^{2H}` for the representation with kernel
    :math:`[(t-s)_+^{H-1/2} - (-s)_+^{H-1/2}] / \Gamma(H + 1/2)`; equals 1 at H = 1/2.
    """
    hurst = jnp.asarray(hurst)
    return gamma_fn(2 - 2 * hurst) / (2 * hurst * gamma_fn(hurst + 0.5) * gamma_fn(1.5 - hurst))


def fbm_covariance(s, t, hurst, *, convention: str = "mvn"):
    r"""Exact fBM covariance :math:`\tfrac{c}{2}(|s|^{2H} + |t|^{2H} - |t - s|^{2H})`.

    ``convention="mvn"``: :math:`c = c_H^2` (Mandelbrot–van Ness with :math:`1/\Gamma(H + 1/2)`, the
    process the type I approximation targets); ``"unit"``: :math:`c = 1` (unit variance at t = 1).
    """
    check_choice(convention, "convention", ("mvn", "unit"))
    s, t, hurst = jnp.asarray(s), jnp.asarray(t), jnp.asarray(hurst)
    two_h = 2 * hurst
    k = 0.5 * (jnp.abs(s) ** two_h + jnp.abs(t) ** two_h - jnp.abs(t - s) ** two_h)
    return k * mvn_constant(hurst) if convention == "mvn" else k


def fbm_variance(t, hurst, *, convention: str = "mvn"):
    """Exact fBM variance :math:`c\\, t^{2H}` (see :func:`fbm_covariance` for ``convention``)."""
    check_choice(convention, "convention", ("mvn", "unit"))
    t, hurst = jnp.asarray(t), jnp.asarray(hurst)
    v = jnp.abs(t) ** (2 * hurst)
    return v * mvn_constant(hurst) if convention == "mvn" else v


def riemann_liouville_variance(t, hurst):
    r"""Variance of Riemann–Liouville (type II) fBM, :math:`t^{2H} / (2H \Gamma(H + 1/2)^2)`."""
    t, hurst = jnp.asarray(t), jnp.asarray(hurst)
    return jnp.abs(t) ** (2 * hurst) / (2 * hurst * gamma_fn(hurst + 0.5) ** 2)


def _one_minus_sinc_decay(x):
    r""":math:`h(x) = 1 - (1 - e^{-x}) / x`, accurate for small ``x`` (series below 0.1)."""
    xs = jnp.where(x < 0.1, x, 0.1)
    series = xs * (1 / 2 - xs * (1 / 6 - xs * (1 / 24 - xs * (1 / 120 - xs / 720))))
    xl = jnp.where(x < 0.1, 1.0, x)
    direct = 1 + jnp.expm1(-xl) / xl
    return jnp.where(x < 0.1, series, direct)


def _gamma_series(alpha, x, shift, num_terms=24, weights=False):
    r""":math:`\sum_{n \ge 0} c_n x^n / \Gamma(\alpha + n + \mathrm{shift})` with :math:`c_n = 1` or ``n + 1``."""
    term = jnp.exp(-gammaln(alpha + shift)) * jnp.ones_like(x)
    total = term
    for n in range(1, num_terms):
        term = term * x / (alpha + n + shift - 1)
        total = total + (n + 1) * term if weights else total + term
    return total


def _b_type_one(alpha, x):
    r"""Dimensionless :math:`g(x) = \gamma^{\alpha} b / T` for type I, :math:`x = \gamma T`.

    :math:`g(x) = 2 - (1 - e^{-x})/x - (e^{x} Q(\alpha, x) - 1)/x - x^{\alpha - 1}/\Gamma(\alpha + 1)`, which for
    small x equals :math:`x^{\alpha} \sum_n x^n / \Gamma(\alpha + n + 2) - 2(\sinh x / x - 1)` (no cancellation).
    """
    small = x < 1.0
    xs = jnp.where(small, x, 0.5)
    sinhc_m1 = xs**2 * (1 / 6 + xs**2 * (1 / 120 + xs**2 * (1 / 5040 + xs**2 / 362880)))
    series = xs**alpha * _gamma_series(alpha, xs, 2.0) - 2 * sinhc_m1
    xl = jnp.where(small, 1.0, x)
    direct = (
        2
        + jnp.expm1(-xl) / xl
        - (scaled_upper_gamma(alpha, xl) - 1) / xl
        - jnp.exp((alpha - 1) * jnp.log(xl) - gammaln(alpha + 1))
    )
    return jnp.where(small, series, direct)


def _b_type_two(alpha, x):
    r"""Dimensionless :math:`\gamma^{\alpha} b / T = P(\alpha, x) - \alpha P(\alpha + 1, x) / x` for type II.

    Small x: :math:`x^{\alpha} e^{-x} \sum_n (n + 1) x^n / \Gamma(\alpha + n + 2)`.
    """
    small = x < 1.0
    xs = jnp.where(small, x, 0.5)
    series = xs**alpha * jnp.exp(-xs) * _gamma_series(alpha, xs, 2.0, weights=True)
    xl = jnp.where(small, 1.0, x)
    direct = gammainc(alpha, xl) - alpha * gammainc(alpha + 1, xl) / xl
    return jnp.where(small, series, direct)


def weight_system(hurst, gammas, time_horizon, kind: str = "I"):
    r"""The quadratic :math:`\int_0^T E[(B_H - \hat B_H)^2] dt = c - 2 b^\top \omega + \omega^\top A \omega`.

    Returns ``(A, b, c)`` in closed form (module docstring); ``c`` is
    :math:`\int_0^T \operatorname{Var} B_H(t)\, dt`. The formulas are rearranged so that slow components
    (:math:`\gamma T \ll 1`, where the textbook forms cancel catastrophically) stay accurate in float32:
    :math:`A_{ij} = T (h(\gamma_i T) + h(\gamma_j T)) / (\gamma_i + \gamma_j)` (type I) or
    :math:`T h((\gamma_i + \gamma_j) T) / (\gamma_i + \gamma_j)` (type II) with :math:`h(x) = 1 - (1 - e^{-x})/x`,
    and ``b`` through power series of the incomplete gamma functions for :math:`\gamma T < 1`.
    """
    check_choice(kind, "kind", ("I", "II"))
    hurst = jnp.asarray(hurst)
    gammas = jnp.asarray(gammas, dtype=jnp.result_type(hurst, float))
    T = jnp.asarray(time_horizon, gammas.dtype)
    alpha = hurst + 0.5
    gsum = gammas[:, None] + gammas[None, :]
    x = gammas * T
    if kind == "I":
        hx = _one_minus_sinc_decay(x)
        A = T * (hx[:, None] + hx[None, :]) / gsum
        b = T * gammas ** (-alpha) * _b_type_one(alpha, x)
        c = mvn_constant(hurst) * T ** (2 * hurst + 1) / (2 * hurst + 1)
    else:
        A = T * _one_minus_sinc_decay(gsum * T) / gsum
        b = T * gammas ** (-alpha) * _b_type_two(alpha, x)
        c = T ** (2 * hurst + 1) / ((2 * hurst + 1) * 2 * hurst * gamma_fn(alpha) ** 2)
    return A, b, c


@partial(jax.jit, static_argnames=("kind",))
def optimal_weights(hurst, gammas, time_horizon, kind: str = "I"):
    r"""Optimal weights :math:`\omega(H) = A^{-1} b` (differentiable in ``hurst``).

    ``A`` is a Cauchy-like matrix, badly conditioned for widely spread speeds. The system is solved
    after symmetric diagonal scaling (unit diagonal) by a Cholesky factorisation with a tiny ridge
    (``16 * eps`` of the dtype), which keeps the solve and its derivative in H finite; in float64
    the ridge does not change the approximation error measurably.
    """
    A, b, _ = weight_system(hurst, gammas, time_horizon, kind)
    d = 1.0 / jnp.sqrt(jnp.diag(A))
    As = A * d[:, None] * d[None, :]
    ridge = 16 * jnp.finfo(As.dtype).eps
    chol = jnp.linalg.cholesky(As + ridge * jnp.eye(As.shape[0], dtype=As.dtype))
    ws = jax.scipy.linalg.cho_solve((chol, True), b * d)
    return ws * d


def approximation_error(hurst, gammas, omega, time_horizon, kind: str = "I"):
    r"""Time-averaged mean squared error :math:`T^{-1}\int_0^T E[(B_H(t) - \hat B_H(t))^2] dt` of weights ``omega``."""
    A, b, c = weight_system(hurst, gammas, time_horizon, kind)
    return (c - 2 * b @ omega + omega @ A @ omega) / time_horizon


def ou_initial_covariance(gammas, kind: str = "I"):
    """Covariance of Y(0): stationary ``[1/(gamma_i + gamma_j)]`` (type I) or zeros (type II)."""
    gammas = jnp.asarray(gammas)
    if kind == "I":
        return 1.0 / (gammas[:, None] + gammas[None, :])
    return jnp.zeros((gammas.shape[0], gammas.shape[0]), gammas.dtype)


def ou_transition_covariance(gammas, dt):
    r"""Covariance :math:`(1 - e^{-(\gamma_i+\gamma_j)\Delta})/(\gamma_i+\gamma_j)` of the OU noise over a step Δ."""
    gammas = jnp.asarray(gammas)
    gsum = gammas[:, None] + gammas[None, :]
    return -jnp.expm1(-gsum * dt) / gsum


def approximate_covariance(s, t, gammas, omega, kind: str = "I"):
    r"""Exact covariance of the approximation :math:`\hat B_H = \sum_k \omega_k (Y_k - Y_k(0))` at times ``s, t``.

    Broadcasts over ``s`` and ``t``. Type I uses the formula in the module docstring; type II
    :math:`\sum_{ij}\omega_i\omega_j e^{-\gamma_i (t-s)}(1 - e^{-(\gamma_i+\gamma_j)s})/(\gamma_i+\gamma_j)`
    for :math:`t \ge s`.
    """
    check_choice(kind, "kind", ("I", "II"))
    s, t = jnp.broadcast_arrays(jnp.asarray(s), jnp.asarray(t))
    hi, lo = jnp.maximum(s, t), jnp.minimum(s, t)
    gammas, omega = jnp.asarray(gammas), jnp.asarray(omega)
    gi = gammas[:, None]  # attached to the later time
    gj = gammas[None, :]  # attached to the earlier time
    gsum = gi + gj
    W = omega[:, None] * omega[None, :] / gsum
    hi_, lo_ = hi[..., None, None], lo[..., None, None]
    if kind == "I":
        terms = 1 - jnp.exp(-gi * hi_) - jnp.exp(-gj * lo_) + jnp.exp(-gi * (hi_ - lo_))
    else:
        terms = jnp.exp(-gi * (hi_ - lo_)) * (-jnp.expm1(-gsum * lo_))
    return jnp.sum(W * terms, axis=(-2, -1))


def approximate_variance(t, gammas, omega, kind: str = "I"):
    """Variance of the approximation at times ``t`` (:func:`approximate_covariance` on the diagonal)."""
    return approximate_covariance(t, t, gammas, omega, kind)


def psd_sqrt(cov):
    """A square root ``R`` with ``R R^T = cov`` from the eigendecomposition, negative eigenvalues (round-off) clipped to zero."""
    evals, evecs = jnp.linalg.eigh(cov)
    return evecs * jnp.sqrt(jnp.clip(evals, 0.0))[None, :]
