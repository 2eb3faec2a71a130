"""The LightSB training loop: minibatch minimisation of the LightSB loss with optax, in jitted chunks.

:meth:`bayeskit.bridges.LightSB.fit` validates its arguments and calls :func:`fit_params`. One compiled chunk
serves every fit with the same optimizer, chunk length, batch size, data shapes and dtype: ``epsilon`` and the
data are arguments of the compiled program, not constants in it, and the default optimizer is one object per
learning rate (pass the same ``optimizer`` object to reuse the program with a custom one).
"""

from __future__ import annotations

import functools
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit.errors import ConvergenceError
from bayeskit.progress import chunk_loop
from bayeskit.inference.bridges._lightsb_model import LightSBParams, gaussian_init_params, init_params, loss

__all__ = ["default_optimizer", "train_chunk", "fit_params"]


@functools.lru_cache(maxsize=32)
def default_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """``optax.adam(learning_rate)``, one object per learning rate, so that repeated fits hit the jit cache of
    :func:`train_chunk` (an optax transformation is hashed by identity)."""
    return optax.adam(learning_rate)


@partial(jax.jit, static_argnames=("optimizer", "num_iterations", "batch_size"))
def train_chunk(key, params, opt_state, x0, x1, epsilon, *, optimizer, num_iterations, batch_size):
    """``num_iterations`` optimizer steps on minibatches of ``batch_size`` drawn with replacement from ``x0`` and
    ``x1``; returns ``(params, opt_state, losses (num_iterations,))``."""
    n0, n1 = x0.shape[0], x1.shape[0]

    def step(carry, k):
        p, s = carry
        k0, k1 = jax.random.split(k)
        b0 = x0[jax.random.randint(k0, (batch_size,), 0, n0)]
        b1 = x1[jax.random.randint(k1, (batch_size,), 0, n1)]
        value, grads = jax.value_and_grad(loss)(p, b0, b1, epsilon)
        updates, s = optimizer.update(grads, s, p)
        p = optax.apply_updates(p, updates)
        return (p, s), value

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, num_iterations))
    return params, opt_state, losses


def fit_params(key, x0, x1, *, epsilon: float, num_components: int, covariance: str, num_iterations: int,
               batch_size: int, optimizer: optax.GradientTransformation, init_scale: float, init: str,
               chunk_size: int, progress_bar: bool) -> tuple[LightSBParams, np.ndarray, float]:
    """Fit LightSB parameters on validated inputs (arguments as :meth:`bayeskit.bridges.LightSB.fit`).

    Returns ``(params, loss history (num_iterations,), wall seconds)``; raises
    :class:`~bayeskit.errors.ConvergenceError` on non-finite parameters or final losses.
    """
    start = time.perf_counter()
    key_init, key_train = jax.random.split(key)
    if init == "gaussian":
        params = gaussian_init_params(key_init, x0, x1, num_components, epsilon, covariance=covariance)
    else:
        params = init_params(key_init, x1, num_components, covariance=covariance, init_scale=init_scale)
    opt_state = optimizer.init(params)
    eps = jnp.asarray(epsilon, x0.dtype)

    def run_chunk(carry, done, n):
        params, opt_state, chunk = train_chunk(jax.random.fold_in(key_train, done), *carry, x0, x1, eps,
                                               optimizer=optimizer, num_iterations=n, batch_size=batch_size)
        return (params, opt_state), np.asarray(chunk)

    (params, opt_state), losses = chunk_loop(run_chunk, (params, opt_state), num_iterations, chunk_size=chunk_size,
                                             progress_bar=progress_bar, desc="LightSB",
                                             postfix=lambda c, out: {"loss": float(out[-1])})
    history = np.concatenate(losses) if losses else np.zeros(0)
    if not np.all(np.isfinite(history[-min(10, len(history)):])) or not all(
            bool(jnp.all(jnp.isfinite(p))) for p in params if p is not None):
        raise ConvergenceError("LightSB training produced non-finite values; lower `learning_rate` or rescale the data")
    jax.block_until_ready(params)
    return params, history, time.perf_counter() - start
