"""Quadratic approximations of one episode's negative log-likelihood (Laplace / Taylor, SGLD moments)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bayeskit._checks import renamed_kwargs
from bayeskit.inference.meta.conjugate import QuadraticApproximation
from bayeskit.inference.meta.episode import EpisodeModel

__all__ = ["laplace_approximation", "sgld_approximation"]


def _clip_curvature(H, minimum, maximum):
    if H.ndim == 1:
        return jnp.clip(H, minimum, maximum)
    H = 0.5 * (H + H.T)
    vals, vecs = jnp.linalg.eigh(H)
    vals = jnp.clip(vals, minimum, maximum)
    return (vecs * vals) @ vecs.T


def _clip_grad(g, max_norm):
    if max_norm is None:
        return g
    norm = jnp.linalg.norm(g)
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))


def laplace_approximation(episode_model: EpisodeModel, x, y, start, *, diagonal: bool, curvature: str = "hessian",
                          num_iterations: int = 0, step_size: float = 0.0, curvature_min: float = 0.0,
                          curvature_max: float = jnp.inf, max_grad_norm: float | None = None, **deprecated
                          ) -> QuadraticApproximation:
    """Second-order expansion of ``-log p(D|θ)`` after ``num_iterations`` gradient-ascent iterations from ``start``
    (``num_steps`` before this release; the old name warns).

    ``curvature="hessian"``: the exact Hessian (or its diagonal; computed densely, so for moderate d);
    ``"fisher"``: the empirical Fisher ``Σ_n ∇log p_n ∇log p_nᵀ`` (or its diagonal; cheap for networks).
    Exact for a likelihood quadratic in θ (linear-Gaussian) with ``"hessian"``, whatever the start.
    """
    num_iterations = renamed_kwargs("laplace_approximation", deprecated, {"num_steps": "num_iterations"}).get(
        "num_iterations", num_iterations)
    loglik = lambda th: episode_model.log_likelihood(th, x, y)  # noqa: E731

    def body(_, th):
        return th + step_size * _clip_grad(jax.grad(loglik)(th), max_grad_norm)

    center = jax.lax.fori_loop(0, num_iterations, body, start) if num_iterations > 0 else start
    value, grad = jax.value_and_grad(loglik)(center)
    if curvature == "hessian":
        H = -jax.hessian(loglik)(center)
        H = jnp.diag(H) if diagonal else H
    else:
        G = jax.jacrev(lambda th: episode_model.pointwise_log_likelihood(th, x, y))(center)  # (N, d)
        H = jnp.sum(G**2, axis=0) if diagonal else G.T @ G
    return QuadraticApproximation(center, -value, grad, _clip_curvature(H, curvature_min, curvature_max))


def sgld_approximation(key, episode_model: EpisodeModel, x, y, start, *, num_burnin: int, num_samples: int,
                       step_size: float, temperature: float = 1.0, curvature_min: float = 1e-4,
                       curvature_max: float = 1e6, max_grad_norm: float | None = None) -> QuadraticApproximation:
    r"""SGLD-moment quadratic approximation (the paper's): run SGLD on ``log p(D|θ)`` from ``start``,

    ``θ ← θ + η ∇log p(D|θ) + sqrt(2 η T) ε``; center = mean of the ``num_samples`` iterates after
    ``num_burnin``; curvature = ``clip(1 / var, curvature_min, curvature_max)`` per coordinate; grad = 0.
    ``max_grad_norm`` clips the gradient's norm in each step (guards against divergent episodes).
    """
    loglik = lambda th: episode_model.log_likelihood(th, x, y)  # noqa: E731
    noise = jnp.sqrt(2.0 * step_size * temperature)

    def body(th, k):
        th = th + step_size * _clip_grad(jax.grad(loglik)(th), max_grad_norm) \
            + noise * jax.random.normal(k, th.shape, th.dtype)
        return th, th

    keys = jax.random.split(key, num_burnin + num_samples)
    _, iterates = jax.lax.scan(body, start, keys)
    kept = iterates[num_burnin:]
    center = jnp.mean(kept, axis=0)
    var = jnp.var(kept, axis=0)
    A = jnp.clip(1.0 / jnp.maximum(var, 1.0 / curvature_max), curvature_min, curvature_max)
    return QuadraticApproximation(center, -loglik(center), jnp.zeros_like(center), A)


