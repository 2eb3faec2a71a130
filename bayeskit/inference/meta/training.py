"""The episodic-optimisation kernel: one optax step of q(φ) on a minibatch of episodes."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bayeskit._checks import renamed_kwargs
from bayeskit.inference.meta.conjugate import NIWPrior, constrain, episode_loss, niw_kl
from bayeskit.inference.meta.episode import EpisodeModel
from bayeskit.inference.meta.local import laplace_approximation, sgld_approximation

__all__ = ["TrainState", "StepInfo", "build_step"]


class TrainState(NamedTuple):
    """State of the episodic optimisation: unconstrained params, optax state, step counter."""

    params: NIWParams
    opt_state: Any
    step: jax.Array


class StepInfo(NamedTuple):
    """Per-step diagnostics (minibatch averages per episode)."""

    elbo: jax.Array             # -(loss): per-episode ELBO estimate incl. hyperprior KL / dataset_size
    expected_nll: jax.Array     # mean_i E_{q_i*}[-log p(D_i | theta)] (quadratic approximation)
    expected_kl: jax.Array      # mean_i E_{q(phi)} KL(q_i* || N(mu, Sigma))
    hyper_kl: jax.Array         # KL(q(phi) || p(phi))
    grad_norm: jax.Array



def build_step(episode_model: EpisodeModel, *, optimizer, covariance: str, local_approximation: str,
               curvature: str, num_inner_iterations: int | None = None, inner_step_size: float, num_burnin: int,
               num_sgld_samples: int, sgld_temperature: float, curvature_min: float, curvature_max: float,
               prior: NIWPrior | None, dataset_size: float | None, max_grad_norm: float | None = None, **deprecated):
    """Build the pure episodic-optimisation kernel ``step(key, state, (x, y)) -> (state, StepInfo)``.

    Each call: quadratic approximations of the minibatch's episodes (stop-gradient, from the current
    global mean), closed-form local posteriors, loss ``mean_i (f_i + E KL_i) + KL(q||p)/dataset_size``,
    one optax update. Nothing about past episodes is stored. ``num_inner_iterations`` (required) are the Laplace
    approximation's gradient-ascent iterations (``num_inner_steps`` before this release; the old name warns).
    """
    num_inner_iterations = renamed_kwargs("build_step", deprecated, {"num_inner_steps": "num_inner_iterations"}).get(
        "num_inner_iterations", num_inner_iterations)
    if num_inner_iterations is None:
        raise TypeError("build_step() missing required keyword argument 'num_inner_iterations'")
    diagonal = covariance == "diag"

    def quad_fn(key, q_mean, x, y):
        start = jax.lax.stop_gradient(q_mean)
        if local_approximation == "sgld":
            return sgld_approximation(key, episode_model, x, y, start, num_burnin=num_burnin,
                                      num_samples=num_sgld_samples, step_size=inner_step_size,
                                      temperature=sgld_temperature, curvature_min=curvature_min,
                                      curvature_max=curvature_max, max_grad_norm=max_grad_norm)
        return laplace_approximation(episode_model, x, y, start, diagonal=diagonal, curvature=curvature,
                                     num_iterations=num_inner_iterations, step_size=inner_step_size,
                                     curvature_min=curvature_min, curvature_max=curvature_max,
                                     max_grad_norm=max_grad_norm)

    def loss_fn(params, quads):
        q = constrain(params)
        losses, fs, kls = jax.vmap(lambda qa: episode_loss(qa, q))(quads)
        hyper = niw_kl(q, prior) if prior is not None else jnp.zeros(())
        weight = 0.0 if (prior is None or dataset_size is None) else 1.0 / dataset_size
        loss = jnp.mean(losses) + weight * hyper
        return loss, (jnp.mean(fs), jnp.mean(kls), hyper)

    def step(key, state: TrainState, batch):
        x, y = batch
        keys = jax.random.split(key, x.shape[0])
        quads = jax.vmap(quad_fn, in_axes=(0, None, 0, 0))(keys, state.params.mean, x, y)
        (loss, (f, kl, hyper)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, quads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        info = StepInfo(-loss, f, kl, hyper, optax.global_norm(grads))
        return TrainState(params, opt_state, state.step + 1), info

    return step, quad_fn


