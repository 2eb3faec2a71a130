"""The fitted NIW-Meta model: the learned q(φ), local posteriors, ELBO, predictions and ArviZ export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_choice, check_finite_array, check_key, check_positive_int, renamed_kwargs
from bayeskit.errors import ConfigurationError, DataError
from bayeskit.inference.meta.conjugate import (
    LocalPosterior, NIWParams, NIWPosterior, episode_loss, local_posterior, niw_kl,
)
from bayeskit.inference.meta.predictive import (
    MetaPrediction, draw_gamma, refine_local_vi,
)
from bayeskit.inference.meta.training import TrainState
from bayeskit.inference.meta.validation import as_pair, batch_episodes

if TYPE_CHECKING:  # pragma: no cover
    from bayeskit.inference.meta.niw import NIWMeta

__all__ = ["NIWMetaResult"]

_batched_local_posterior = jax.jit(jax.vmap(local_posterior, in_axes=(0, None)))
_batched_episode_loss = jax.jit(jax.vmap(lambda qa, q: episode_loss(qa, q)[0], in_axes=(0, None)))


@dataclass(frozen=True)
class NIWMetaResult:
    """A fitted NIW-Meta model: the learned q(phi) and what it needs to adapt to new episodes.

    Attributes:
        posterior: learned :class:`NIWPosterior` q(phi) = NIW(m0, l0, Γ0, n0).
        params: its unconstrained :class:`NIWParams`; ``state`` the final :class:`TrainState` (to continue).
        history: dict of per-step arrays (``elbo``, ``expected_nll``, ``expected_kl``, ``hyper_kl``,
            ``grad_norm``) and ``seconds_per_step`` per chunk.
        config: the :class:`NIWMeta` that produced it.
    """

    posterior: NIWPosterior
    params: NIWParams
    state: TrainState
    history: dict
    config: "NIWMeta"
    num_episodes_seen: int = 0

    # ---- local posteriors and ELBO
    def quadratic_approximations(self, key, x, y):
        """Quadratic approximations of a batch of episodes from the learned global mean (jitted, cached)."""
        keys = jax.random.split(key, x.shape[0])
        return self.config.compiled("quads")(keys, self.posterior.mean, x, y)

    def local_posterior(self, key, support) -> LocalPosterior:
        """Closed-form local posteriors ``N(m_i*, Γ_i*^{-1})`` of a batch of support sets ``(x, y)``."""
        key = check_key(key)
        x, y = batch_episodes(*as_pair(support, "support"), name="support")
        quads = self.quadratic_approximations(key, x, y)
        return _batched_local_posterior(quads, self.posterior)

    def elbo(self, key, episodes) -> jax.Array:
        """Total ELBO of a batch of episodes: ``Σ_i [-f_i - E KL_i] - KL(q(φ) || p(φ))`` (no KL if no prior).

        Exact (not an estimate) for a linear-Gaussian episode model with the Laplace approximation."""
        x, y = batch_episodes(*as_pair(episodes, "episodes"))
        quads = self.quadratic_approximations(check_key(key), x, y)
        losses = _batched_episode_loss(quads, self.posterior)
        prior = self.config.hyperprior()
        hyper = niw_kl(self.posterior, prior) if prior is not None else 0.0
        return -jnp.sum(losses) - hyper

    # ---- prediction
    def predict(self, key, support, query, *, num_samples: int = 32, method: str = "auto",
                num_vi_iterations: int = 100, vi_learning_rate: float = 1e-2, num_vi_samples: int = 4,
                **deprecated) -> MetaPrediction:
        """Adapt to new episodes from their support sets and predict their queries.

        Args:
            key: a ``jax.random`` key.
            support: ``(x, y)`` with shapes ``(num_episodes, K, ...)`` (K >= 1).
            query: ``x`` of shape ``(num_episodes, Q, ...)``, or ``(x, y)`` to also get log predictive densities.
            num_samples: Monte Carlo draws per episode.
            method: ``"linearized"``: the Student-t posterior predictive of the network linearised at the
                local posterior mean, conditioned exactly on the support set with the likelihood's
                Gauss-Newton curvature and the Student-t marginal of θ under q(φ) (needs a Gaussian
                likelihood: an episode model with ``noise_scale`` and ``predict_fn``; see
                :mod:`bayeskit.inference.meta.predictive`); ``"closed_form"``: Monte Carlo over the
                quadratic-approximation local posterior; ``"vi"``: start there, then ``num_vi_iterations`` Adam
                steps of reparameterised VI on ``E_q log p(S|θ) - E_{q(φ)} KL(q || N(μ, Σ))`` with a
                diagonal Gaussian q; ``"auto"`` (default): ``"linearized"`` when the model has a Gaussian
                likelihood, else ``"closed_form"``.
            num_vi_iterations: VI iterations (``method="vi"``; ``num_vi_steps`` before this release, which still
                works with a DeprecationWarning).
            vi_learning_rate: Adam learning rate of those iterations.
            num_vi_samples: reparameterised draws per VI iteration.
            **deprecated: ``num_vi_steps``, the old name of ``num_vi_iterations``.
        """
        num_vi_iterations = renamed_kwargs("NIWMetaResult.predict", deprecated,
                                           {"num_vi_steps": "num_vi_iterations"}).get("num_vi_iterations",
                                                                                      num_vi_iterations)
        key = check_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        check_choice(method, "method", ("auto", "linearized", "closed_form", "vi"))
        if method == "vi":
            check_positive_int(num_vi_iterations, "num_vi_iterations")
            check_positive_int(num_vi_samples, "num_vi_samples")
        model = self.config.episode_model
        sx, sy = batch_episodes(*as_pair(support, "support"), name="support")
        gaussian = (model.noise_scale is not None and model.predict_fn is not None
                    and jax.eval_shape(model.predict_fn, self.posterior.mean, sx[0]).shape == sx.shape[1:2])
        if method == "auto":
            method = "linearized" if gaussian else "closed_form"
        if method == "linearized" and not gaussian:
            raise ConfigurationError("method='linearized' needs a Gaussian likelihood: an EpisodeModel with "
                                     "`noise_scale` and a `predict_fn` with one output per data point (e.g. "
                                     "from_network(..., likelihood='normal')); use method='closed_form' or 'vi'")
        if isinstance(query, (tuple, list)):
            qx, qy = batch_episodes(*as_pair(query, "query"), name="query")
        else:
            qx, qy = jnp.asarray(query), None
            if qx.ndim < 2 or qx.shape[1] == 0:
                raise DataError(f"`query` x must have shape (num_episodes, num_query >= 1, ...), got {qx.shape}")
            check_finite_array(np.asarray(qx), "query x")
        if qx.shape[0] != sx.shape[0]:
            raise DataError(f"`support` has {sx.shape[0]} episodes but `query` has {qx.shape[0]}")
        if qx.shape[2:] != sx.shape[2:]:
            raise DataError(f"query x points have shape {qx.shape[2:]}, support x points {sx.shape[2:]}: they must match")
        k_quad, k_vi, k_draw, k_pred = jax.random.split(key, 4)
        local = self.local_posterior(k_quad, (sx, sy))
        q = self.posterior
        if method == "linearized":
            d = q.mean.shape[0]
            nu = q.dof if q.is_diagonal else q.dof - d + 1.0
            n_s = int(np.prod(sy.shape[1:]))
            gammas = draw_gamma(k_pred, jnp.asarray((nu + n_s) / 2.0, q.mean.dtype), sx.shape[0], num_samples)
            out = self.config.compiled("linearized")(k_draw, q, local.mean, sx, sy, qx, qy, gammas)
            theta, outputs, y_samples, lpd, mean, scale, df = out
            return MetaPrediction(theta, outputs, y_samples, lpd, local, qy, mean, scale, df)
        if method == "vi":
            local = refine_local_vi(k_vi, model, q, local, sx, sy, num_vi_iterations, vi_learning_rate,
                                    num_vi_samples)
        theta, outputs, y_samples, lpd = self.config.compiled("predict")(k_draw, k_pred, local, qx, qy, num_samples)
        return MetaPrediction(theta, outputs, y_samples, lpd, local, qy)

    def sample_global(self, key, num_samples: int = 1000, **deprecated):
        """Draws ``(mu, Sigma)`` from q(phi).

        Args:
            key: ``jax.random`` key.
            num_samples: draws returned (``num_draws`` before this release; the old name warns).
            **deprecated: ``num_draws``, the old name of ``num_samples``.
        """
        num_samples = renamed_kwargs("NIWMetaResult.sample_global", deprecated, {"num_draws": "num_samples"}).get(
            "num_samples", num_samples)
        return self.posterior.sample(check_key(key), check_positive_int(num_samples, "num_samples"))

    def to_arviz(self, key=None, num_samples: int = 500, **deprecated):
        """DataTree: ``posterior`` draws of ``mu`` and ``Sigma`` (diagonal: variances) from q(phi);
        ``sample_stats`` (not per draw) holds the learned NIW parameters; ``training`` the per-step history.

        Args:
            key: ``jax.random`` key for the draws from q(phi) (required: there is no default key).
            num_samples: draws in ``posterior`` (``num_draws`` before this release; the old name warns).
            **deprecated: ``num_draws``, the old name of ``num_samples``.
        """
        from bayeskit.diagnostics import to_datatree

        num_samples = renamed_kwargs("NIWMetaResult.to_arviz", deprecated, {"num_draws": "num_samples"}).get(
            "num_samples", num_samples)
        if key is None:
            raise ConfigurationError("NIWMetaResult.to_arviz draws (mu, Sigma) from q(phi) and needs an explicit "
                                     "`key`: result.to_arviz(jax.random.key(0))")
        mu, sigma = self.sample_global(key, num_samples)
        q = self.posterior
        dims = {"mu": ["theta_dim"], "Sigma": ["theta_dim", "theta_dim_b"] if not q.is_diagonal else ["theta_dim"],
                "m0": ["theta_dim"], "Gamma0": ["theta_dim"] if q.is_diagonal else ["theta_dim", "theta_dim_b"]}
        train = {k: np.asarray(v) for k, v in self.history.items() if np.ndim(v) == 1 and k != "seconds_per_step"}
        for k in train:
            dims[k] = ["step"]
        groups = {
            "posterior": {"mu": np.asarray(mu)[None], "Sigma": np.asarray(sigma)[None]},
            "niw_posterior": {"m0": np.asarray(q.mean), "l0": np.asarray(q.kappa), "Gamma0": np.asarray(q.scale),
                              "n0": np.asarray(q.dof)},
            "training": train,
        }
        return to_datatree(groups, dims=dims, attrs={"method": "NIW-Meta", "covariance": self.config.covariance,
                                                     "local_approximation": self.config.local_approximation,
                                                     "num_episodes_seen": int(self.num_episodes_seen)})



