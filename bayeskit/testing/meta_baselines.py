r"""Baselines for few-shot meta-learning, on the same :class:`EpisodeModel` (flat θ) as NIW-Meta.

* **No adaptation** (:func:`pretrain`): one parameter vector fitted to all points of all training
  episodes (pooled empirical risk minimisation); predicts every new episode with it.
* **Fine-tuning** (:func:`fine_tune`): start from a global vector (the pooled fit, or NIW-Meta's
  global mean) and take ``num_iterations`` SGD steps on the support set.
* **MAML** (:func:`maml`, Finn et al. 2017), compact: learn θ₀ so that ``inner_steps`` SGD steps on the
  support loss (inner learning rate α fixed) minimise the query loss; outer optimiser optax; full
  second-order gradients through the inner loop (``first_order=True`` for FOMAML).
  *What it leaves out:* learned per-parameter inner rates (Meta-SGD), per-step batch-norm statistics and
  the multi-step loss / annealing of MAML++, learning-rate schedules, and any task-specific heads.

Losses default to the negative mean pointwise log-likelihood of the episode model; pass ``loss_fn``
(e.g. the mean squared error) to use another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit._checks import check_key, check_positive_int, renamed_kwargs
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference.meta.episode import EpisodeModel

__all__ = ["MAMLState", "MAMLResult", "PooledResult", "maml", "build_maml_step", "pretrain", "fine_tune",
           "default_loss"]


def default_loss(episode_model: EpisodeModel) -> Callable:
    """``(theta, x, y) -> -mean_n log p(y_n | x_n, theta)``."""
    return lambda theta, x, y: -jnp.mean(episode_model.pointwise_log_likelihood(theta, x, y))


def _source(episodes, batch_size):
    if isinstance(episodes, (tuple, list)) and len(episodes) == 2:
        X, Y = jnp.asarray(episodes[0]), jnp.asarray(episodes[1])
        if X.ndim < 2 or X.shape[:2] != Y.shape[:2] or X.shape[0] == 0 or X.shape[1] == 0:
            raise DataError(f"`episodes` must be (x, y) with matching non-empty (num_episodes, num_points) axes, "
                            f"got {X.shape} and {Y.shape}")
        n = X.shape[0]

        def get(k):
            if batch_size >= n:
                return X, Y
            idx = jax.random.choice(k, n, (batch_size,), replace=False)
            return X[idx], Y[idx]

        return get, X.shape[1]
    if callable(episodes):
        return (lambda k: episodes(k, batch_size)), None
    raise DataError("`episodes` must be (x, y) arrays or a generator sample(key, batch_size) -> (x, y)")


def _clip(g, max_norm):
    if max_norm is None:
        return g
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(jnp.linalg.norm(g), 1e-30))


def fine_tune(theta, episode_model: EpisodeModel, support, *, num_iterations: int = 5, learning_rate: float = 0.01,
              loss_fn: Callable | None = None, max_grad_norm: float | None = None, **deprecated) -> jax.Array:
    """Adapt ``theta`` (d,) to each support set ``(x (B, K, ...), y)`` by ``num_iterations`` steps of plain SGD
    (gradient norm clipped at ``max_grad_norm`` if given); returns (B, d). ``num_steps``, the old name of
    ``num_iterations``, warns for one release."""
    num_iterations = renamed_kwargs("fine_tune", deprecated, {"num_steps": "num_iterations"}).get(
        "num_iterations", num_iterations)
    loss_fn = loss_fn or default_loss(episode_model)
    x, y = support
    if jnp.shape(x)[1] == 0:
        raise DataError("`support` sets are empty (0 points per episode)")

    def one(xe, ye):
        def body(_, th):
            return th - learning_rate * _clip(jax.grad(loss_fn)(th, xe, ye), max_grad_norm)

        return jax.lax.fori_loop(0, num_iterations, body, theta)

    return jax.jit(jax.vmap(one))(jnp.asarray(x), jnp.asarray(y))


# ----------------------------------------------------------------------------- pooled ERM (no adaptation)
@dataclass(frozen=True)
class PooledResult:
    """One θ for all episodes (the no-adaptation baseline). ``history['loss']`` per step."""

    theta: jax.Array
    history: dict
    episode_model: EpisodeModel

    def predict(self, query_x) -> jax.Array:
        """Outputs for query inputs ``(B, Q, ...)`` with the global θ (no adaptation)."""
        return jax.vmap(self.episode_model.predict_fn, in_axes=(None, 0))(self.theta, jnp.asarray(query_x))


def pretrain(key, episode_model: EpisodeModel, episodes, *, num_iterations: int = 1000, batch_size: int = 16,
             optimizer=None, loss_fn: Callable | None = None, init_theta=None, **deprecated) -> PooledResult:
    """Pooled empirical-risk minimisation over all points of minibatches of episodes, ``num_iterations``
    optimizer steps (``num_steps``, the old name, warns for one release)."""
    num_iterations = renamed_kwargs("pretrain", deprecated, {"num_steps": "num_iterations"}).get(
        "num_iterations", num_iterations)
    key = check_key(key)
    num_steps = check_positive_int(num_iterations, "num_iterations")
    loss_fn = loss_fn or default_loss(episode_model)
    get, _ = _source(episodes, check_positive_int(batch_size, "batch_size"))
    opt = optimizer or optax.adam(1e-3)
    theta = jnp.asarray(episode_model.init_theta if init_theta is None else init_theta)

    def batch_loss(th, x, y):
        return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0, 0))(th, x, y))

    def body(carry, k):
        th, s = carry
        x, y = get(k)
        loss, g = jax.value_and_grad(batch_loss)(th, x, y)
        u, s = opt.update(g, s, th)
        return (optax.apply_updates(th, u), s), loss

    (theta, _), losses = jax.jit(lambda c, ks: jax.lax.scan(body, c, ks))(
        (theta, opt.init(theta)), jax.random.split(key, num_steps))
    return PooledResult(theta, {"loss": np.asarray(losses)}, episode_model)


# ----------------------------------------------------------------------------- MAML
class MAMLState(NamedTuple):
    theta: jax.Array
    opt_state: Any
    step: jax.Array


def build_maml_step(episode_model: EpisodeModel, *, num_support: int, inner_steps: int = 5,
                    inner_learning_rate: float = 0.01, first_order: bool = False, optimizer=None,
                    loss_fn: Callable | None = None, max_grad_norm: float | None = None):
    """Pure MAML kernel ``step(state, (x, y)) -> (state, loss)``; the first ``num_support`` points of each
    episode are its support set, the rest its query set. Returns ``(init, step)``."""
    loss_fn = loss_fn or default_loss(episode_model)
    opt = optimizer or optax.adam(1e-3)

    def adapt(theta, xs, ys):
        def body(th, _):
            g = _clip(jax.grad(loss_fn)(th, xs, ys), max_grad_norm)
            if first_order:
                g = jax.lax.stop_gradient(g)
            return th - inner_learning_rate * g, None

        th, _ = jax.lax.scan(body, theta, None, length=inner_steps)
        return th

    def meta_loss(theta, x, y):
        def one(xe, ye):
            th = adapt(theta, xe[:num_support], ye[:num_support])
            return loss_fn(th, xe[num_support:], ye[num_support:])

        return jnp.mean(jax.vmap(one)(x, y))

    def init(theta):
        return MAMLState(theta, opt.init(theta), jnp.zeros((), jnp.int32))

    def step(state: MAMLState, batch):
        x, y = batch
        loss, g = jax.value_and_grad(meta_loss)(state.theta, x, y)
        u, s = opt.update(g, state.opt_state, state.theta)
        return MAMLState(optax.apply_updates(state.theta, u), s, state.step + 1), loss

    return init, step, adapt


@dataclass(frozen=True)
class MAMLResult:
    """Meta-learned initialisation θ₀ and the inner-loop settings to adapt it."""

    theta: jax.Array
    history: dict
    episode_model: EpisodeModel
    inner_steps: int
    inner_learning_rate: float
    loss_fn: Callable
    max_grad_norm: float | None = None

    def adapt(self, support) -> jax.Array:
        """Adapted parameters (B, d) of each support set ``(x (B, K, ...), y)``."""
        return fine_tune(self.theta, self.episode_model, support, num_iterations=self.inner_steps,
                         learning_rate=self.inner_learning_rate, loss_fn=self.loss_fn,
                         max_grad_norm=self.max_grad_norm)

    def predict(self, support, query_x) -> jax.Array:
        thetas = self.adapt(support)
        return jax.vmap(self.episode_model.predict_fn)(thetas, jnp.asarray(query_x))


def maml(key, episode_model: EpisodeModel, episodes, *, num_support: int, inner_steps: int = 5,
         inner_learning_rate: float = 0.01, first_order: bool = False, optimizer=None, batch_size: int = 16,
         num_iterations: int = 1000, loss_fn: Callable | None = None, init_theta=None,
         max_grad_norm: float | None = None, **deprecated) -> MAMLResult:
    """Train MAML on episodes (``(x, y)`` arrays or a generator ``sample(key, batch_size)``) for
    ``num_iterations`` outer steps (``num_steps``, the old name, warns for one release)."""
    num_iterations = renamed_kwargs("maml", deprecated, {"num_steps": "num_iterations"}).get(
        "num_iterations", num_iterations)
    key = check_key(key)
    num_steps = check_positive_int(num_iterations, "num_iterations")
    num_support = check_positive_int(num_support, "num_support")
    check_positive_int(inner_steps, "inner_steps", minimum=0)
    get, npts = _source(episodes, check_positive_int(batch_size, "batch_size"))
    if npts is not None and npts <= num_support:
        raise ConfigurationError(f"`num_support` ({num_support}) must be smaller than the points per episode ({npts})")
    loss_fn = loss_fn or default_loss(episode_model)
    init, step, _ = build_maml_step(episode_model, num_support=num_support, inner_steps=inner_steps,
                                    inner_learning_rate=inner_learning_rate, first_order=first_order,
                                    optimizer=optimizer, loss_fn=loss_fn, max_grad_norm=max_grad_norm)
    theta = jnp.asarray(episode_model.init_theta if init_theta is None else init_theta)

    def body(st, k):
        return step(st, get(k))

    t0 = time.perf_counter()
    state, losses = jax.jit(lambda s, ks: jax.lax.scan(body, s, ks))(init(theta), jax.random.split(key, num_steps))
    losses = np.asarray(losses)
    seconds = time.perf_counter() - t0
    return MAMLResult(state.theta, {"loss": losses, "seconds": seconds}, episode_model, inner_steps,
                      inner_learning_rate, loss_fn, max_grad_norm)
