r"""Iterative proportional fitting with Gaussian-process drift regression for one interval (SBIRR's per-interval
solver, ``solver="ipf-gp"`` of :func:`bayeskit.bridges.multimarginal`), and the simulation of SDEs whose drift is
such a GP (the stitching step).

Each regression is GP regression of the Euler–Maruyama velocities :math:`(x_{k+1}-x_k)/\Delta t` on
:math:`(x, \tau)` with noise variance :math:`\sigma^2/\Delta t`, on a random subset of the (particle, step)
pairs, optionally on top of an explicit least-squares basis :math:`(1, x, \tau, x\tau)` or the reference drift
as the GP prior mean. The jitted functions take the reference's drift function, the step count and the
options as static arguments and everything else (data, times, reference parameters, ``sigma``, length scale,
kernel variance) as arrays, so one compiled program serves every interval and refinement of the same shapes.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bayeskit.inference.bridges._reference import simulate as simulate_reference

__all__ = ["GPDrift", "gp_fit", "gp_predict", "simulate_gp", "ipf_interval", "simulate_gp_drift"]


class GPDrift(NamedTuple):
    """A GP-regression drift :math:`\\hat b(x,\\tau) = m(x,\\tau) + k((x,\\tau), Z) A`.

    Attributes:
        inputs: (M, D + 1) training inputs :math:`Z = (x, \\tau)`.
        weights: (M, D) :math:`A = (K_{ZZ} + \\text{noise}\\, I)^{-1}(Y - m(Z) - \\Phi(Z)\\beta)`.
        coef: (P, D) least-squares coefficients :math:`\\beta` of the explicit basis
            :math:`\\Phi(x,\\tau) = (1, x, \\tau, x\\tau)` (``gp_mean="linear"``; zeros otherwise).
    """

    inputs: jax.Array
    weights: jax.Array
    coef: jax.Array


def _features(z):
    """Explicit basis of the ``gp_mean="linear"`` GP: (1, x, tau, x * tau)."""
    x, tau = z[..., :-1], z[..., -1:]
    return jnp.concatenate([jnp.ones_like(tau), x, tau, x * tau], -1)


def _kernel(z1, z2, lengthscale, variance, kind):
    d2 = jnp.sum(((z1[:, None, :] - z2[None, :, :]) / lengthscale) ** 2, -1)
    if kind == "rbf":
        return variance * jnp.exp(-0.5 * d2)
    return variance * jnp.exp(-jnp.sqrt(jnp.maximum(d2, 1e-30)))


def gp_fit(key, path, dt, mean_fn, *, num_points, lengthscale, variance, noise, kind, linear_basis=False):
    """GP regression of EM velocities on (x, tau) from a path (n + 1, N, D) on the grid ``tau_k = k dt``."""
    n, num, d = path.shape[0] - 1, path.shape[1], path.shape[2]
    tau = (jnp.arange(n) * dt).astype(path.dtype)
    z = jnp.concatenate([path[:-1], jnp.broadcast_to(tau[:, None, None], (n, num, 1))], -1).reshape(-1, d + 1)
    y = ((path[1:] - path[:-1]) / dt).reshape(-1, d)
    if num_points < n * num:
        idx = jax.random.choice(key, n * num, (num_points,), replace=False)
        z, y = z[idx], y[idx]
    resid = y - mean_fn(z)
    feats = _features(z)
    if linear_basis:
        ridge = 1e-6 * jnp.eye(feats.shape[-1], dtype=z.dtype)
        coef = jnp.linalg.solve(feats.T @ feats + ridge, feats.T @ resid)
        resid = resid - feats @ coef
    else:
        coef = jnp.zeros((feats.shape[-1], d), z.dtype)
    kmat = _kernel(z, z, lengthscale, variance, kind) + (noise + 1e-6 * variance) * jnp.eye(z.shape[0], dtype=z.dtype)
    chol = jnp.linalg.cholesky(kmat)
    weights = jax.scipy.linalg.cho_solve((chol, True), resid)
    return GPDrift(z, weights, coef)


def gp_predict(model: GPDrift, x, tau, mean_fn, *, lengthscale, variance, kind):
    z = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), tau, x.dtype)], -1)
    return _kernel(z, model.inputs, lengthscale, variance, kind) @ model.weights + mean_fn(z) + _features(z) @ model.coef


def simulate_gp(key, model, x0, dt, num_steps, sigma, mean_fn, gp_kw):
    keys = jax.random.split(key, num_steps)

    def body(x, inp):
        k, i = inp
        b = gp_predict(model, x, i * dt, mean_fn, **gp_kw)
        x = x + b * dt + sigma * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype)
        return x, x

    _, path = jax.lax.scan(body, x0, (keys, jnp.arange(num_steps)))
    return jnp.concatenate([x0[None], path], 0)


def _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean):
    """Prior means of the forward (time t_start + tau) and backward (time t_end - tau) GP drifts."""
    if not use_reference_mean:
        zero = lambda z: jnp.zeros(z.shape[:-1] + (z.shape[-1] - 1,), z.dtype)  # noqa: E731
        return zero, zero

    def fwd(z):
        return jax.vmap(lambda zi: drift_fn(ref_params, zi[:-1], t_start + zi[-1]))(z)

    def bwd(z):
        return -jax.vmap(lambda zi: drift_fn(ref_params, zi[:-1], t_end - zi[-1]))(z)

    return fwd, bwd


@partial(jax.jit, static_argnames=("drift_fn", "num_steps", "num_ipf_iterations", "max_gp_points", "kind",
                                   "use_reference_mean", "linear_basis"))
def ipf_interval(key, x_start, x_end, ref_params, t_start, dt, sigma, lengthscale, *, drift_fn, num_steps,
                 num_ipf_iterations, max_gp_points, kind="exponential", use_reference_mean=False, linear_basis=False,
                 kernel_variance=None):
    """IPF with GP drift regression for one interval :math:`[t_s, t_s + n\\,dt]` (module docstring, step 1).

    Returns ``(forward, backward)`` :class:`GPDrift` models: the forward drift is a function of
    :math:`(x, \\tau)` with :math:`\\tau = t - t_s`; the backward one of :math:`(x, \\tau)` with
    :math:`\\tau = t_s + n\\,dt - t` (reversed time).
    """
    t_end = t_start + num_steps * dt
    fwd_mean, bwd_mean = _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean)
    variance = 1.0 / dt if kernel_variance is None else kernel_variance
    noise = sigma**2 / dt
    gp_kw = dict(lengthscale=lengthscale, variance=variance, kind=kind)
    m_bwd = min(max_gp_points, num_steps * x_start.shape[0])
    m_fwd = min(max_gp_points, num_steps * x_end.shape[0])
    fit_b = partial(gp_fit, dt=dt, mean_fn=bwd_mean, num_points=m_bwd, noise=noise, linear_basis=linear_basis, **gp_kw)
    fit_f = partial(gp_fit, dt=dt, mean_fn=fwd_mean, num_points=m_fwd, noise=noise, linear_basis=linear_basis, **gp_kw)
    k0, k1, kloop = jax.random.split(key, 3)
    ref_path = simulate_reference(k0, drift_fn, ref_params, x_start, sigma, t_start, dt, num_steps)
    backward = fit_b(k1, ref_path[::-1])
    d = x_start.shape[-1]
    forward = GPDrift(jnp.zeros((m_fwd, d + 1), x_start.dtype), jnp.zeros((m_fwd, d), x_start.dtype),
                      jnp.zeros((2 * d + 2, d), x_start.dtype))

    def body(i, carry):
        _, bwd = carry
        ka, kb, kc, kd = jax.random.split(jax.random.fold_in(kloop, i), 4)
        path_b = simulate_gp(ka, bwd, x_end, dt, num_steps, sigma, bwd_mean, gp_kw)
        fwd = fit_f(kb, path_b[::-1])
        path_f = simulate_gp(kc, fwd, x_start, dt, num_steps, sigma, fwd_mean, gp_kw)
        bwd = fit_b(kd, path_f[::-1])
        return fwd, bwd

    return jax.lax.fori_loop(0, num_ipf_iterations, body, (forward, backward))


@partial(jax.jit, static_argnames=("drift_fn", "num_steps", "kind", "use_reference_mean", "direction"))
def simulate_gp_drift(key, model, x0, ref_params, t_start, dt, sigma, lengthscale, *, drift_fn, num_steps, kind,
                      use_reference_mean, direction, kernel_variance=None):
    """Euler–Maruyama paths (num_steps + 1, N, D) from ``x0`` of the SDE whose drift is a fitted :class:`GPDrift`
    of :func:`ipf_interval` (``direction="forward"`` or ``"backward"``, in that drift's own time :math:`\\tau`);
    the options must be those of the :func:`ipf_interval` call that fitted ``model``."""
    t_end = t_start + num_steps * dt
    fwd_mean, bwd_mean = _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean)
    gp_kw = dict(lengthscale=lengthscale, variance=1.0 / dt if kernel_variance is None else kernel_variance, kind=kind)
    mean_fn = fwd_mean if direction == "forward" else bwd_mean
    return simulate_gp(key, model, x0, dt, num_steps, sigma, mean_fn, gp_kw)
