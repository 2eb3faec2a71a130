r"""Robust learning of the Hurst index: a warm-up of the path posterior at fixed H, then two time scales.

Training H jointly with a control that starts at the prior (:math:`u = 0`) fails: the ELBO gradient in
H is then the prior's, which pulls H towards large values (smooth paths explain nothing yet) within a
few dozen steps, and the control goes on to fit the data at the wrong H. By the envelope theorem,
:math:`\partial_H \max_\phi \mathrm{ELBO}(H, \phi) = \partial_H \mathrm{ELBO}(H, \phi^*(H))`: the partial
gradient in H is the right one once the path posterior :math:`\phi` (control, initial states, noise
scales) is near its optimum for the current H. :func:`hurst_optimizer` therefore

1. freezes the variational parameters of H for the first ``warmup`` steps, while the path posterior
   fits the data at the initial H, and
2. then moves them on a slower time scale than the rest (a separate Adam whose step size is a
   fraction of the path posterior's), so that the path posterior tracks :math:`\phi^*(H)`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit._checks import check_positive_int

__all__ = ["frozen_until", "hurst_optimizer", "recenter_hurst", "at_hurst", "profile_start"]


def frozen_until(inner: optax.GradientTransformation, num_frozen: int) -> optax.GradientTransformation:
    """``inner``, with zero updates and an untouched state for the first ``num_frozen`` steps.

    Unlike a learning-rate schedule that starts at zero, the frozen steps do not enter ``inner``'s
    moment estimates or its step count, so ``inner`` starts afresh after the warm-up.

    Args:
        inner: the transformation to delay.
        num_frozen: number of initial steps with zero updates.
    """
    num_frozen = check_positive_int(num_frozen, "num_frozen", minimum=0)

    def init(params):
        return jnp.zeros((), jnp.int32), inner.init(params)

    def update(updates, state, params=None):
        count, inner_state = state
        new_updates, new_state = inner.update(updates, inner_state, params)
        active = count >= num_frozen
        new_updates = jax.tree_util.tree_map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new_state, inner_state)
        return new_updates, (count + 1, new_state)

    return optax.GradientTransformation(init, update)


def hurst_optimizer(optimizer: optax.GradientTransformation, variational_params: Any, *, warmup: int,
                    learning_rate: Any) -> optax.GradientTransformation:
    """Split the optimiser: ``optimizer`` for everything but ``variational_params["hurst"]``, which gets
    ``frozen_until(optax.adam(learning_rate), warmup)`` (module docstring).

    Args:
        optimizer: the optimiser of the path posterior and the model parameters.
        variational_params: the variational pytree (its structure labels the parameters).
        warmup: steps at the initial H.
        learning_rate: step size (or optax schedule, counted from the end of the warm-up) of H's Adam.
    """
    labels = {k: jax.tree_util.tree_map(lambda _: "hurst" if k == "hurst" else "rest", v)
              for k, v in variational_params.items()}
    return optax.multi_transform({"rest": optimizer, "hurst": frozen_until(optax.adam(learning_rate), warmup)}, labels)


def recenter_hurst(variational_params: Any) -> Any:
    r"""Move the expansion point of the H-dependent path posterior to the current mean of q(H).

    Coefficients ``p`` with an H-slope ``p_h`` (any dict holding both keys) act as
    :math:`p + (\operatorname{logit} H - c)\, p_h` with :math:`c` = ``variational_params["hurst"]["center"]``.
    Setting :math:`c` to the current location :math:`\mu` of q(H) and ``p`` to :math:`p + (\mu - c) p_h`
    leaves the path posterior unchanged as a function of H; done after every step, it makes the
    coefficients at the mean follow H along their slope as q(H) moves, instead of lagging behind it.
    No-op without a variational q(H).

    Args:
        variational_params: the variational pytree of :func:`bayeskit.inference.sde.elbo.build_elbo`.
    """
    hurst = variational_params.get("hurst", {}) if isinstance(variational_params, dict) else {}
    if "center" not in hurst:
        return variational_params
    shift = jax.lax.stop_gradient(hurst["loc"] - hurst["center"])

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        out = {k: walk(v) for k, v in tree.items()}
        for k in tree:
            if k + "_h" in tree:
                out[k] = tree[k] + shift * tree[k + "_h"]
        return out

    out = {k: (walk(v) if k != "hurst" else v) for k, v in variational_params.items()}
    out["hurst"] = {**hurst, "center": hurst["loc"]}
    return out


def at_hurst(variational_params: Any, logit_hurst) -> Any:
    """The variational parameters with q(H) (or the point estimate) and its expansion point at ``logit_hurst``.

    Args:
        variational_params: the variational pytree of :func:`bayeskit.inference.sde.elbo.build_elbo`.
        logit_hurst: the new location, in logit H.
    """
    hurst = {**variational_params["hurst"], "loc": jnp.asarray(logit_hurst, variational_params["hurst"]["loc"].dtype)}
    if "center" in hurst:
        hurst["center"] = hurst["loc"]
    return {**variational_params, "hurst": hurst}


def profile_start(logit_nodes, elbos) -> tuple[int, float, float | None]:
    r"""Where to start learning H after a warm-up at several fixed H: ``(node index, logit H, sd)``.

    ``elbos`` are the warm-up ELBOs at the increasing ``logit_nodes``. The start is the vertex of the
    parabola through the best node and its neighbours (a cheap estimate of the maximiser of
    :math:`\log p(y \mid H)`, the gap of the ELBO being nearly flat in H), kept between those
    neighbours; the index is the node nearest to it, whose path posterior the run continues from.
    ``sd`` is the width :math:`(-2a)^{-1/2}` in logit H of that parabola :math:`a x^2 + b x + c`, clipped
    to [0.03, 1] (None when the best node is at the end of the grid or the parabola is not concave).

    Args:
        logit_nodes: increasing logit H of the warm-up runs.
        elbos: their ELBOs at the end of the warm-up.
    """
    nodes = np.asarray(logit_nodes, float)
    e = np.asarray(elbos, float)
    best = int(np.argmax(e))
    start, sd = nodes[best], None
    if 0 < best < nodes.size - 1:
        x = nodes[best - 1:best + 2] - nodes[best]
        a, b, _ = np.polyfit(x, e[best - 1:best + 2], 2)
        if a < 0:
            start = float(np.clip(nodes[best] - b / (2 * a), nodes[best - 1], nodes[best + 1]))
            sd = float(np.clip((-2 * a) ** -0.5, 0.03, 1.0))
    return int(np.argmin(np.abs(nodes - start))), float(start), sd
