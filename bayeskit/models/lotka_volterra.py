r"""Stochastic Lotka–Volterra predator–prey dynamics.

.. math::
    dX = (\alpha X - \beta X Y)\,dt + \sigma\, dW^{(1)}, \qquad dY = (\delta X Y - \gamma Y)\,dt + \sigma\, dW^{(2)}.

Used by the SBIRR example (Shen, Berlinghieri & Broderick 2025): the shipped snapshots
``bayeskit.datasets.load_sbirr("LV")`` are 9 unpaired clouds of 50 particles at t = 0, 1, ..., 8 with
:math:`\sigma = 0.1`. Parameters are a dict ``{"alpha", "beta", "gamma", "delta"}``; :func:`reference`
returns the matching :mod:`bayeskit.inference.bridges` reference family.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["drift", "example_params", "simulate", "snapshots", "reference"]


def example_params(dtype=None) -> dict:
    """Oscillating parameters (alpha, beta, gamma, delta) = (1, 0.4, 0.4, 0.1) (equilibrium at (4, 2.5))."""
    dtype = dtype or jnp.result_type(float)
    return {k: jnp.asarray(v, dtype) for k, v in dict(alpha=1.0, beta=0.4, gamma=0.4, delta=0.1).items()}


def drift(params: dict, x, t=0.0):
    """Lotka–Volterra drift at x of shape (..., 2)."""
    a, b, g, d = params["alpha"], params["beta"], params["gamma"], params["delta"]
    prey, pred = x[..., 0], x[..., 1]
    return jnp.stack([a * prey - b * prey * pred, d * prey * pred - g * pred], -1)


def simulate(key, params: dict, x0, *, t1: float, num_steps: int, sigma: float = 0.1, t0: float = 0.0):
    """Euler–Maruyama paths (num_steps + 1, N, 2) from x0 (N, 2) on ``linspace(t0, t1, num_steps + 1)``."""
    x0 = jnp.asarray(x0)
    dt = (t1 - t0) / num_steps

    def body(x, k):
        x = x + drift(params, x) * dt + sigma * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype)
        return x, x

    _, path = jax.lax.scan(body, x0, jax.random.split(key, num_steps))
    return jnp.concatenate([x0[None], path], 0)


def snapshots(key, params: dict, x0, times, *, sigma: float = 0.1, steps_per_unit: int = 100):
    """Unpaired snapshots: independent particle clouds at ``times`` (each from fresh paths, shuffled)."""
    times = jnp.asarray(times)
    out = []
    for i, t in enumerate(times):
        kpath, kperm = jax.random.split(jax.random.fold_in(key, i))
        n = max(1, int(round(float(t - times[0]) * steps_per_unit)))
        path = simulate(kpath, params, x0, t0=float(times[0]), t1=float(t), num_steps=n, sigma=sigma) \
            if float(t) > float(times[0]) else jnp.asarray(x0)[None]
        out.append(jax.random.permutation(kperm, path[-1]))
    return jnp.stack(out)


def reference(sigma: float = 0.1, **init):
    """The Lotka–Volterra reference family for :func:`bayeskit.bridges.multimarginal` (SBIRR init 1e-5)."""
    from bayeskit.inference.bridges import LotkaVolterra

    return LotkaVolterra(sigma=sigma, **init)
