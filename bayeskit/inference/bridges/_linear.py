r"""Light Schrödinger bridges under a linear (Ornstein–Uhlenbeck) reference, and their Gaussian closed form.

**Reduction to Brownian LightSB.** For a linear reference :math:`dX = (AX + c)\,dt + \sigma\,dW` on
:math:`[0, T]` the transition is Gaussian, :math:`X_T \mid X_0 = x \sim \mathcal N(\Phi x + m, Q)` with
:math:`\Phi = e^{AT}`, :math:`m = \int_0^T e^{As}c\,ds`, :math:`Q = \int_0^T e^{As}\sigma^2 e^{A^\top s} ds`
(block-matrix exponentials, Van Loan 1978). The SB plan has the form
:math:`\pi(y \mid x) \propto \mathcal N(y \mid \Phi x + m, Q)\,\varphi(y)`; as a function of :math:`y`,

.. math::
    \mathcal N(y \mid \Phi x + m, Q)\,\varphi(y) \propto
    \exp\big(\langle h(x), y\rangle\big)\, \underbrace{e^{-y^\top Q^{-1} y/2}\varphi(y)}_{=: v(y)/\text{const}},
    \qquad h(x) = Q^{-1}(\Phi x + m).

This is LightSB's Brownian form :math:`\exp(\langle x', y\rangle/\varepsilon)\,v(y)` at the *features*
:math:`x' = \varepsilon h(x)` (any :math:`\varepsilon > 0`; we take :math:`\varepsilon = \operatorname{tr}Q / D`,
so that :math:`x' = \Phi x + m` for isotropic :math:`Q`). LightSB's loss
:math:`\mathbb E_{p_0}\log C_\theta(x') - \mathbb E_{p_1}\log v_\theta(y)` is, up to a constant, the KL from the
true plan for any reference whose transition is :math:`p(y\mid x)` (the terms :math:`\log p(y \mid x)` that
do not involve :math:`\theta` drop out), and :math:`x \mapsto x'` is a bijection (:math:`\Phi`, :math:`Q`
invertible), so **the SB under the linear reference between** :math:`p_0, p_1` **is the Brownian LightSB
between the law of** :math:`x'` **and** :math:`p_1`, mapped back. Fitting, sampling :math:`\pi(y\mid x)` and
:math:`\log\pi(y\mid x)` therefore reuse :class:`~bayeskit.bridges.LightSB` unchanged. The
backward plan :math:`\pi(x\mid y) \propto \psi(x)\,\mathcal N(y\mid\Phi x + m, Q)` is the same construction
with features :math:`\varepsilon\,\Phi^\top Q^{-1}(y - m)`.

**Dynamics.** The SB path measure is the mixture of reference bridges over the plan: paths are drawn by
sampling the end point from the plan and filling in the linear-SDE bridge exactly on a grid
(:math:`X_{k+1} \mid X_k, X_T` is Gaussian; :func:`bridge_paths`). No Euler–Maruyama error, no IPF.

**Gaussian closed form** (:func:`gaussian_bridge_linear`): for Gaussian marginals the reduction turns the
Brownian closed form (:func:`~bayeskit.testing.gaussian_bridge`) of :math:`(\mathcal
N(Gm_0 + g, G\Sigma_0G^\top), p_1)`, :math:`G = \varepsilon Q^{-1}\Phi`, :math:`g = \varepsilon Q^{-1}m`, into
:math:`\operatorname{Cov}(X_0, X_T) = G^{-1}\operatorname{Cov}(X_0', X_T)`; the marginals :math:`\Sigma_t` follow from
the linear bridge. (Compare Bunne et al. 2023, "The Schrödinger bridge between Gaussian measures has a closed
form", which treats OU references directly.)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_finite_array, check_key, check_positive_int
from bayeskit._linalg import linear_sde_transition
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference.bridges._lightsb import LightSB

__all__ = ["GaussianTransition", "linear_transition", "LinearLightSB", "LinearGaussianBridge",
           "gaussian_bridge_linear", "bridge_paths"]


class GaussianTransition(NamedTuple):
    """Transition of a linear SDE over ``duration``: :math:`X_T \\mid X_0 = x \\sim N(\\Phi x + m, Q)`."""

    phi: np.ndarray
    shift: np.ndarray
    cov: np.ndarray
    duration: float


def _coefficients(reference, dim):
    if not hasattr(reference, "linear_coefficients"):
        raise ConfigurationError("`reference` must be a bayeskit.bridges Reference")
    a, c = reference.linear_coefficients(dim)
    return np.asarray(a, float), np.asarray(c, float), float(reference.sigma)


def _transition(a, c, sigma, duration) -> GaussianTransition:
    d = a.shape[0]
    # the shift m = int_0^T e^{As} c ds comes from the state augmented with a constant 1
    aug = np.zeros((d + 1, d + 1))
    aug[:d, :d], aug[:d, d] = a, c
    noise = np.zeros((d + 1, d + 1))
    noise[:d, :d] = sigma**2 * np.eye(d)
    phi, q = linear_sde_transition(aug, noise, duration)
    return GaussianTransition(phi[:d, :d], phi[:d, d], q[:d, :d], float(duration))


def linear_transition(reference, dim: int, duration: float) -> GaussianTransition:
    """Gaussian transition of a linear reference (``Brownian``, ``OU``, ``Linear``) over ``duration``."""
    dim = check_positive_int(dim, "dim")
    if not (np.isfinite(duration) and duration > 0):
        raise ConfigurationError(f"`duration` must be positive, got {duration}")
    return _transition(*_coefficients(reference, dim), duration)


def _features(tr: GaussianTransition, backward: bool):
    """(G, g, eps): the LightSB features x' = G x + g of the forward (or backward) plan."""
    d = tr.phi.shape[0]
    eps = float(np.trace(tr.cov)) / d
    qinv = np.linalg.inv(tr.cov)
    if not backward:
        return eps * qinv @ tr.phi, eps * qinv @ tr.shift, eps
    g = eps * tr.phi.T @ qinv
    return g, -g @ tr.shift, eps


# ----------------------------------------------------------------------------- exact bridge filling
def bridge_step_matrices(a, c, sigma, duration, num_steps):
    """Per-step matrices of X_{k+1} = Mx_k X_k + My_k y + b_k + L_k z for the linear bridge to X_T = y."""
    d = a.shape[0]
    delta = duration / num_steps
    step = _transition(a, c, sigma, delta)
    # transitions over j * delta, j = 0..n, by the semigroup recursion
    phis, shifts, covs = [np.eye(d)], [np.zeros(d)], [np.zeros((d, d))]
    for _ in range(num_steps):
        phis.append(step.phi @ phis[-1])
        shifts.append(step.phi @ shifts[-1] + step.shift)
        covs.append(step.phi @ covs[-1] @ step.phi.T + step.cov)
    mx, my, b, chol = [], [], [], []
    for k in range(num_steps):
        rem = num_steps - k  # steps left from X_k to X_T
        if rem == 1:
            mx.append(np.zeros((d, d)))
            my.append(np.eye(d))
            b.append(np.zeros(d))
            chol.append(np.zeros((d, d)))
            continue
        phi_r, m_r, q_r = phis[rem], shifts[rem], covs[rem]
        gain = step.cov @ phis[rem - 1].T @ np.linalg.inv(q_r)
        mx.append(step.phi - gain @ phi_r)
        my.append(gain)
        b.append(step.shift - gain @ m_r)
        cov = step.cov - gain @ phis[rem - 1] @ step.cov
        cov = 0.5 * (cov + cov.T)
        w, v = np.linalg.eigh(cov)
        chol.append(v * np.sqrt(np.clip(w, 0.0, None)))
    return tuple(np.stack(z) for z in (mx, my, b, chol))


@jax.jit
def fill_bridge(key, x, y, mx, my, b, chol):
    keys = jax.random.split(key, mx.shape[0])

    def body(state, inp):
        k, mxk, myk, bk_, lk = inp
        z = jax.random.normal(k, state.shape, state.dtype)
        new = state @ mxk.T + y @ myk.T + bk_ + z @ lk.T
        return new, new

    _, path = jax.lax.scan(body, x, (keys, mx, my, b, chol))
    return jnp.concatenate([x[None], path], 0)


def bridge_paths(key, reference, x, y, duration: float, num_steps: int) -> jax.Array:
    """Exact samples of the reference bridge from ``x`` (N, D) at 0 to ``y`` (N, D) at ``duration`` on
    ``num_steps`` equal steps: (num_steps + 1, N, D), first row ``x``, last row ``y``."""
    check_key(key)
    check_finite_array(x, "x", ndim=2)
    check_finite_array(y, "y", ndim=2)
    num_steps = check_positive_int(num_steps, "num_steps")
    x = jnp.asarray(x)
    y = jnp.asarray(y, x.dtype)
    if x.shape != y.shape:
        raise DataError(f"`x` and `y` must have the same shape, got {x.shape} and {y.shape}")
    mats = bridge_step_matrices(*_coefficients(reference, x.shape[1]), duration, num_steps)
    return fill_bridge(key, x, y, *(jnp.asarray(m, x.dtype) for m in mats))


# ----------------------------------------------------------------------------- LightSB under a linear reference
@dataclasses.dataclass(frozen=True)
class LinearLightSB:
    """LightSB under a linear reference on :math:`[0, T]` (module docstring).

    Attributes:
        forward: inner Brownian :class:`LightSB` of :math:`\\pi(y \\mid x)` on the features.
        backward: inner :class:`LightSB` of :math:`\\pi(x \\mid y)` (``None`` unless fitted with
            ``backward=True``).
        transition: the reference's :class:`GaussianTransition` over :math:`[0, T]`.
        reference: the reference.

    Example:
        >>> import jax, numpy as np
        >>> import bayeskit as bk
        >>> rng = np.random.default_rng(0)
        >>> x0, x1 = rng.normal(2.0, 0.3, (256, 1)), rng.normal(0.5, 0.3, (256, 1))
        >>> sb = LinearLightSB.fit(jax.random.key(0), x0, x1, reference=bk.bridges.OU(sigma=0.5, theta=1.0),
        ...                        duration=1.0, num_components=1, covariance="full", num_steps=200)
        >>> sb.sample_trajectory(jax.random.key(1), x0[:4], num_steps=10).shape
        (11, 4, 1)
    """

    forward: LightSB
    backward: LightSB | None
    transition: GaussianTransition
    reference: object

    @classmethod
    def fit(cls, key, x0, x1, *, reference, duration: float = 1.0, backward: bool = False,
            **lightsb_options) -> "LinearLightSB":
        """Fit the plan between samples ``x0`` (N0, D) at 0 and ``x1`` (N1, D) at ``duration`` under a linear
        ``reference`` (:func:`~bayeskit.bridges.Brownian`, ``OU``, ``Linear``).
        ``lightsb_options`` go to :meth:`LightSB.fit` (``epsilon`` is set by the reduction)."""
        check_key(key)
        check_finite_array(x0, "x0", ndim=2)
        check_finite_array(x1, "x1", ndim=2)
        if np.shape(x0)[1] != np.shape(x1)[1]:
            raise DataError(f"`x0` and `x1` must have the same dimension, got {np.shape(x0)[1]} and {np.shape(x1)[1]}")
        if "epsilon" in lightsb_options:
            raise ConfigurationError("`epsilon` is fixed by the reference's transition; do not pass it")
        x0 = jnp.asarray(x0)
        x1 = jnp.asarray(x1, x0.dtype)
        tr = linear_transition(reference, x0.shape[1], duration)
        kf, kb = jax.random.split(key)
        g, s, eps = _features(tr, False)
        fwd = LightSB.fit(kf, x0 @ jnp.asarray(g.T, x0.dtype) + jnp.asarray(s, x0.dtype), x1, epsilon=eps,
                          **lightsb_options)
        bwd = None
        if backward:
            g, s, eps = _features(tr, True)
            bwd = LightSB.fit(kb, x1 @ jnp.asarray(g.T, x0.dtype) + jnp.asarray(s, x0.dtype), x0, epsilon=eps,
                              **lightsb_options)
        return cls(fwd, bwd, tr, reference)

    @property
    def dim(self) -> int:
        return self.forward.dim

    def _feat(self, x, backward=False, name="x"):
        check_finite_array(x, name, ndim=2)
        x = jnp.asarray(x, self.forward.params.r.dtype)
        if x.shape[-1] != self.dim:
            raise DataError(f"`{name}` must have last dimension {self.dim}, got shape {x.shape}")
        g, s, _ = _features(self.transition, backward)
        return x @ jnp.asarray(g.T, x.dtype) + jnp.asarray(s, x.dtype)

    def sample(self, key, x) -> jax.Array:
        """:math:`y \\sim \\pi(\\cdot \\mid x)` for x (N, D)."""
        return self.forward.sample(key, self._feat(x))

    def sample_backward(self, key, y) -> jax.Array:
        """:math:`x \\sim \\pi(\\cdot \\mid y)` for y (N, D) (needs ``backward=True`` at fit time)."""
        if self.backward is None:
            raise ConfigurationError("fit with `backward=True` to sample the backward plan")
        return self.backward.sample(key, self._feat(y, True, "y"))

    def log_prob(self, x, y) -> jax.Array:
        """:math:`\\log \\pi(y \\mid x)`."""
        return self.forward.log_prob(self._feat(x), y)

    def conditional_moments(self, x):
        """Mean (N, D) and covariance (N, D, D) of :math:`\\pi(\\cdot\\mid x)`."""
        return self.forward.conditional_moments(self._feat(x))

    def to_arviz(self):
        """ArviZ DataTree of the forward plan's inner LightSB (parameters, losses), with the reference in attrs."""
        dt = self.forward.to_arviz()
        dt.attrs.update({"method": "LinearLightSB", "reference": getattr(self.reference, "name", "linear"),
                         "duration": self.transition.duration})
        return dt

    def sample_trajectory(self, key, x0, num_steps: int = 100) -> jax.Array:
        """SB paths from ``x0`` (N, D): end points from the plan, exact reference bridges in between;
        (num_steps + 1, N, D) on ``linspace(0, T, num_steps + 1)``."""
        check_key(key)
        k1, k2 = jax.random.split(key)
        y = self.sample(k1, x0)
        return bridge_paths(k2, self.reference, jnp.asarray(x0, y.dtype), y, self.transition.duration, num_steps)


# ----------------------------------------------------------------------------- Gaussian closed form
class LinearGaussianBridge(NamedTuple):
    """Closed-form SB between :math:`N(m_0, \\Sigma_0)` and :math:`N(m_1, \\Sigma_1)` under a linear reference."""

    mean0: np.ndarray
    cov0: np.ndarray
    mean1: np.ndarray
    cov1: np.ndarray
    cross_cov: np.ndarray  # Cov(X_0, X_T)
    coefficients: tuple  # (A, c, sigma)
    duration: float

    def conditional(self, x):
        """Mean (N, D) and covariance (D, D) of :math:`X_T \\mid X_0 = x`."""
        a = np.linalg.solve(self.cov0, self.cross_cov).T
        return self.mean1 + (np.asarray(x) - self.mean0) @ a.T, self.cov1 - a @ self.cross_cov

    def marginal(self, t: float):
        """Mean and covariance of :math:`X_t`, :math:`0 \\le t \\le T` (the mixture of reference bridges)."""
        a, c, sigma = self.coefficients
        if t <= 0:
            return self.mean0, self.cov0
        if t >= self.duration:
            return self.mean1, self.cov1
        tr_t = _transition(a, c, sigma, t)
        tr_r = _transition(a, c, sigma, self.duration - t)
        tr_T = _transition(a, c, sigma, self.duration)
        gain = tr_t.cov @ tr_r.phi.T @ np.linalg.inv(tr_T.cov)
        px = tr_t.phi - gain @ tr_T.phi
        mean = px @ self.mean0 + gain @ self.mean1 + tr_t.shift - gain @ tr_T.shift
        cov = (px @ self.cov0 @ px.T + gain @ self.cov1 @ gain.T + px @ self.cross_cov @ gain.T
               + gain @ self.cross_cov.T @ px.T + tr_t.cov - gain @ tr_r.phi @ tr_t.cov)
        return mean, 0.5 * (cov + cov.T)


def gaussian_bridge_linear(mean0, cov0, mean1, cov1, reference, duration: float = 1.0) -> LinearGaussianBridge:
    """Closed-form Gaussian SB under a linear reference over ``duration`` (module docstring)."""
    from bayeskit.inference.bridges._gaussian import gaussian_bridge

    cov0, cov1 = np.atleast_2d(np.asarray(cov0, float)), np.atleast_2d(np.asarray(cov1, float))
    mean0, mean1 = np.atleast_1d(np.asarray(mean0, float)), np.atleast_1d(np.asarray(mean1, float))
    coef = _coefficients(reference, cov0.shape[0])
    tr = _transition(*coef, duration)
    g, s, eps = _features(tr, False)
    gb = gaussian_bridge(g @ mean0 + s, g @ cov0 @ g.T, mean1, cov1, eps)
    cross = np.linalg.solve(g, gb.cross_cov)
    return LinearGaussianBridge(mean0, cov0, mean1, cov1, cross, coef, float(duration))

