r"""Controls of the variational posterior SDE: functions :math:`u(t, X, Y)` added to the OU drifts.

A control is a frozen dataclass with ``init(key, *, state_dim, num_ou, num_series, dtype, grid) ->
params`` and ``apply(params, series, tau, x, y, hurst, hurst_offset=0.0) -> u (state_dim,)``, with
:math:`\tau = (t - t_0)/(t_1 - t_0)`, ``x`` the state ``(d,)``, ``y`` the OU states ``(d, K)``, ``hurst``
the Hurst index of the path and ``hurst_offset`` :math:`= \operatorname{logit} H - c`, :math:`c` the mean of
logit H under q(H) at the start of the step (passed only when H has a variational posterior, so a
control written for a fixed H need not take it). Both start at the prior, :math:`u = 0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_positive_int

__all__ = ["MLPControl", "AffineControl"]


def _time_features(tau, num_frequencies):
    f = jnp.arange(1, num_frequencies + 1, dtype=tau.dtype) * math.pi
    return jnp.concatenate([tau[None], jnp.sin(f * tau), jnp.cos(f * tau)])


@dataclass(frozen=True)
class MLPControl:
    r"""Neural control :math:`u(t, X, Y, H, c_s)`: a tanh MLP (plain JAX) of time features
    :math:`(\tau, \sin(\pi m \tau), \cos(\pi m \tau))_{m \le F}` with :math:`\tau = (t - t_0)/(t_1 - t_0)`,
    the state X, the OU states Y, the Hurst index H and a learned per-series context vector
    :math:`c_s` (so one network serves several observed series). The output is ``sinh`` of the last
    linear layer (large gains before precise observations are reachable, linear near 0); the last
    layer starts at zero, so optimisation starts at the prior (:math:`u = 0`).
    """

    width: int = 64
    depth: int = 2
    num_frequencies: int = 3
    context_dim: int = 4

    def init(self, key, *, state_dim, num_ou, num_series, dtype, grid=None):
        in_dim = 1 + 2 * self.num_frequencies + state_dim * (1 + num_ou) + 1 + self.context_dim
        sizes = [in_dim] + [self.width] * self.depth + [state_dim]
        keys = jax.random.split(key, len(sizes))
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            w = jnp.zeros((a, b), dtype) if last else jax.random.normal(keys[i], (a, b), dtype) / math.sqrt(a)
            layers.append({"w": w, "b": jnp.zeros((b,), dtype)})
        context = 0.1 * jax.random.normal(keys[-1], (num_series, self.context_dim), dtype)
        return {"layers": layers, "context": context}

    def apply(self, params, series, tau, x, y, hurst, hurst_offset=0.0):
        del hurst_offset  # H is an input of the network already
        h = jnp.concatenate([
            _time_features(tau, self.num_frequencies), x, y.reshape(-1), jnp.atleast_1d(hurst - 0.5),
            params["context"][series],
        ])
        layers = params["layers"]
        for layer in layers[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        return jnp.sinh(h @ layers[-1]["w"] + layers[-1]["b"])


@dataclass(frozen=True)
class AffineControl:
    r"""Affine control :math:`u = A(t) (X, Y) + c_s(t)`, coefficients (elementwise ``sinh`` of the
    parameters, so that gains over orders of magnitude are reachable by Adam) linear in t between knots
    (``A`` shared by all series, ``c_s`` per series). ``num_knots=None`` (default) puts a knot on every
    point of the solver grid (including the refinement before observations), so the family contains
    the best affine control of the discretised problem; an integer gives equally spaced knots. For
    linear drift and constant diffusion with Gaussian observations the optimal control (Doob's
    h-transform) is affine in the state, so this family contains the exact posterior up to the time
    discretisation.
    """

    num_knots: int | None = None

    def init(self, key, *, state_dim, num_ou, num_series, dtype, grid=None):
        if self.num_knots is None:
            g = np.asarray(grid, float)
            knots = (g - g[0]) / (g[-1] - g[0])
        else:
            knots = np.linspace(0.0, 1.0, check_positive_int(self.num_knots, "num_knots", minimum=2))
        n = state_dim * (1 + num_ou)
        m = knots.shape[0]
        return {
            "knots": jnp.asarray(knots, dtype),
            "A": jnp.zeros((m, state_dim, n), dtype),
            "c": jnp.zeros((num_series, m, state_dim), dtype),
            "A_h": jnp.zeros((m, state_dim, n), dtype),
            "c_h": jnp.zeros((num_series, m, state_dim), dtype),
        }

    def apply(self, params, series, tau, x, y, hurst, hurst_offset=0.0):
        knots = jax.lax.stop_gradient(params["knots"])
        interp = jax.vmap(lambda v: jnp.interp(tau, knots, v), in_axes=1)
        d = x.shape[0]
        m = knots.shape[0]
        # coefficients are sinh of the parameters: Adam moves parameters by about the learning rate per
        # step, and the optimal gains span orders of magnitude (~1/sigma_obs^2 just before a precise
        # observation), which sinh reaches in a few steps while staying linear near zero; they move
        # linearly in logit H - E_q logit H (``hurst_offset``), so one control serves all draws of q(H)
        a = params["A"] + hurst_offset * params["A_h"]
        c = params["c"][series] + hurst_offset * params["c_h"][series]
        A = jnp.sinh(interp(a.reshape(m, -1))).reshape(d, -1)
        return A @ jnp.concatenate([x, y.reshape(-1)]) + jnp.sinh(interp(c))
