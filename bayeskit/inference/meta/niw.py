r"""NIW-Meta: the configuration :class:`NIWMeta` and its episodic-optimisation driver :meth:`NIWMeta.fit`.

Kim & Hospedales, *A Hierarchical Bayesian Model for Few-Shot Meta Learning*, ICLR 2024
(arXiv:2306.09702). The model, the ELBO and its closed forms are in :mod:`.conjugate`; the quadratic
approximations of an episode's likelihood in :mod:`.local`; the optimisation step in :mod:`.training`;
the fitted model in :mod:`.result`; the predictive in :mod:`.predictive`.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit._checks import check_choice, check_key, check_positive_int, renamed_attribute, renamed_kwargs
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError
from bayeskit.inference.meta.conjugate import NIWParams, NIWPosterior, NIWPrior, constrain, unconstrain
from bayeskit.inference.meta.episode import EpisodeModel
from bayeskit.inference.meta.predictive import linearized_batch, sample_local_predictive
from bayeskit.inference.meta.result import NIWMetaResult
from bayeskit.inference.meta.training import TrainState, build_step
from bayeskit.inference.meta.validation import as_pair, batch_episodes, check_pd
from bayeskit.progress import chunk_loop

__all__ = ["NIWMeta"]


@dataclass(frozen=True)
class NIWMeta:
    r"""NIW-Meta configuration; :meth:`fit` runs the episodic optimisation.

    Args:
        episode_model: an :class:`EpisodeModel` (likelihood of one episode as a function of flat θ).
        covariance: ``"diag"`` (diagonal Γ0, per-coordinate Gamma precisions) or ``"full"`` (Wishart).
        local_approximation: ``"sgld"`` (the paper's SGLD moments; diagonal curvature) or ``"laplace"``
            (Taylor expansion, exact for linear-Gaussian likelihoods).
        curvature: for ``"laplace"``: ``"hessian"`` (exact, dense) or ``"fisher"`` (empirical Fisher).
        num_inner_iterations: Laplace: gradient-ascent iterations before the expansion (0 = expand at the global
            mean; ``num_inner_steps`` before this release, which still works with a DeprecationWarning).
        inner_step_size: the step size of those gradient steps (Laplace) or the step size η of the SGLD
            iterations (SGLD).
        num_burnin: SGLD iterations discarded.
        num_sgld_samples: SGLD iterations kept.
        sgld_temperature: SGLD noise temperature.
        curvature_min: lower clip of the curvature (default 1e-4 for SGLD, 0 for Laplace).
        curvature_max: upper clip of the curvature (default 1e6 for SGLD, inf for Laplace).
        max_grad_norm: clip the norm of the likelihood gradient in the inner SGLD / gradient steps (None: no clip).
        optimizer: an optax transformation for the global parameters (default ``optax.adam(1e-2)``).
        batch_size: episodes per step.
        num_iterations: optimisation iterations (``num_steps`` before this release; the old keyword and
            attribute warn).
        dataset_size: number of training episodes N weighting ``KL(q(φ)||p(φ))/N``; default: the number of
            episodes given as arrays, ``None`` (no hyperprior term: type-II-ML-like) for generators.
        prior: hyperprior :class:`NIWPrior`; default weak: mean 0 (or ``init_mean``), kappa 1e-2,
            dof d + 1 (diag: 2), ``E[Σ^{-1}] = I / prior_std**2``.
        init_mean: initial mean of q(φ) (default: the episode model's ``init_theta``).
        init_prior_std: initial ``E[Σ^{-1}] = I / init_prior_std**2`` of q(φ).
        init_kappa: initial κ of q(φ).
        init_dof: initial degrees of freedom of q(φ).
        init_scale: overrides the initial Γ0 given by ``init_prior_std``.
        chunk_size: steps per jitted ``lax.scan`` chunk.
        progress_bar: a tqdm bar between chunks.
    """

    episode_model: EpisodeModel
    covariance: str = "diag"
    local_approximation: str = "sgld"
    curvature: str = "hessian"
    num_inner_iterations: int = 0
    inner_step_size: float = 1e-3
    num_burnin: int = 2
    num_sgld_samples: int = 3
    sgld_temperature: float = 1.0
    curvature_min: float | None = None
    curvature_max: float | None = None
    max_grad_norm: float | None = None
    optimizer: Any = None
    batch_size: int = 16
    num_iterations: int = 1000
    dataset_size: float | None = None
    prior: NIWPrior | None = None
    prior_std: float = 1.0
    init_mean: Any = None
    init_prior_std: float = 1.0
    init_kappa: float = 1.0
    init_dof: float | None = None
    init_scale: Any = None
    chunk_size: int = 100
    progress_bar: bool = False

    def __post_init__(self):
        if not isinstance(self.episode_model, EpisodeModel):
            raise ConfigurationError("`episode_model` must be a bayeskit.meta.EpisodeModel "
                                     "(EpisodeModel.from_network / from_numpyro / EpisodeModel(...))")
        check_choice(self.covariance, "covariance", ("diag", "full"))
        check_choice(self.local_approximation, "local_approximation", ("sgld", "laplace"))
        check_choice(self.curvature, "curvature", ("hessian", "fisher"))
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.num_iterations, "num_iterations")
        check_positive_int(self.chunk_size, "chunk_size")
        check_positive_int(self.num_inner_iterations, "num_inner_iterations", minimum=0)
        check_positive_int(self.num_burnin, "num_burnin", minimum=0)
        check_positive_int(self.num_sgld_samples, "num_sgld_samples", minimum=2)
        for name in ("inner_step_size", "init_prior_std", "init_kappa", "prior_std"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0) and not (name == "inner_step_size" and v == 0):
                raise ConfigurationError(f"`{name}` must be positive, got {v}")
        if self.dataset_size is not None and not self.dataset_size > 0:
            raise ConfigurationError(f"`dataset_size` must be positive, got {self.dataset_size}")
        d = self.episode_model.dim
        if self.init_dof is not None:
            low = 0.0 if self.covariance == "diag" else d - 1.0
            if not self.init_dof > low:
                raise ConfigurationError(f"`init_dof` must exceed {low} for covariance={self.covariance!r}, got {self.init_dof}")
        if self.init_scale is not None:
            arr = np.asarray(self.init_scale, dtype=float)
            want = (d,) if self.covariance == "diag" else (d, d)
            if arr.shape != want:
                raise ConfigurationError(f"`init_scale` must have shape {want} for covariance={self.covariance!r}, got {arr.shape}")
            check_pd(arr, "init_scale")
        if self.init_mean is not None and np.shape(self.init_mean) != (d,):
            raise ConfigurationError(f"`init_mean` must have shape ({d},), got {np.shape(self.init_mean)}")
        if self.prior is not None:
            p = self.prior
            want = (d,) if self.covariance == "diag" else (d, d)
            if np.shape(p.scale) != want:
                raise ConfigurationError(f"`prior.scale` must have shape {want}, got {np.shape(p.scale)}")
            check_pd(p.scale, "prior.scale")
            if np.shape(p.mean) != (d,):
                raise ConfigurationError(f"`prior.mean` must have shape ({d},), got {np.shape(p.mean)}")
            if not float(p.kappa) > 0:
                raise ConfigurationError(f"`prior.kappa` must be positive, got {p.kappa}")
            low = 0.0 if self.covariance == "diag" else d - 1.0
            if not float(p.dof) > low:
                raise ConfigurationError(f"`prior.dof` must exceed {low}, got {p.dof}")

    # ---- pieces
    def hyperprior(self) -> NIWPrior:
        """The hyperprior p(φ): ``prior`` if given, else the default weak NIW (see the class docstring)."""
        d = self.episode_model.dim
        if self.prior is not None:
            return NIWPrior(*(jnp.asarray(v) for v in self.prior))
        dof = 2.0 if self.covariance == "diag" else d + 1.0
        scale = jnp.ones(d) / (dof * self.prior_std**2)
        if self.covariance == "full":
            scale = jnp.diag(scale)
        mean = jnp.asarray(self.init_mean) if self.init_mean is not None else jnp.zeros(d)
        return NIWPrior(mean, jnp.asarray(1e-2), scale, jnp.asarray(dof))

    def init_params(self) -> NIWParams:
        """Initial unconstrained parameters of q(φ)."""
        d = self.episode_model.dim
        mean = jnp.asarray(self.init_mean if self.init_mean is not None else self.episode_model.init_theta)
        mean = mean.astype(jnp.result_type(float))
        dof = self.init_dof if self.init_dof is not None else (2.0 if self.covariance == "diag" else d + 1.0)
        if self.init_scale is not None:
            scale = jnp.asarray(self.init_scale, dtype=mean.dtype)
        else:
            scale = jnp.ones(d, dtype=mean.dtype) / (dof * self.init_prior_std**2)
            if self.covariance == "full":
                scale = jnp.diag(scale)
        return unconstrain(NIWPosterior(mean, jnp.asarray(self.init_kappa, mean.dtype), scale,
                                        jnp.asarray(dof, mean.dtype)))

    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else optax.adam(1e-2)

    def build(self, dataset_size: float | None = None):
        """This configuration's pure kernels ``(step, quad_fn)`` (see :func:`~bayeskit.inference.meta.training.build_step`).

        Args:
            dataset_size: weights the hyperprior KL by ``1/dataset_size``; ``None`` drops it.
        """
        sgld = self.local_approximation == "sgld"
        cmin = self.curvature_min if self.curvature_min is not None else (1e-4 if sgld else 0.0)
        cmax = self.curvature_max if self.curvature_max is not None else (1e6 if sgld else float("inf"))
        return build_step(self.episode_model, optimizer=self._optimizer(), covariance=self.covariance,
                          local_approximation=self.local_approximation, curvature=self.curvature,
                          num_inner_iterations=self.num_inner_iterations, inner_step_size=self.inner_step_size,
                          num_burnin=self.num_burnin, num_sgld_samples=self.num_sgld_samples,
                          sgld_temperature=self.sgld_temperature, curvature_min=cmin, curvature_max=cmax,
                          prior=self.hyperprior() if dataset_size is not None else None, dataset_size=dataset_size,
                          max_grad_norm=self.max_grad_norm)

    def _chunk_runner(self, mode, dataset_size, batch_size, sampler):
        """The jitted scan of training steps ``(state, keys, *data) -> (state, info)`` for ``fit``."""
        cache = self.__dict__.setdefault("_jit_cache", {})
        name = ("chunk", mode, dataset_size, batch_size, sampler)
        if name not in cache:
            step_fn, _ = self.build(dataset_size)

            def get_batch(k, data):
                if mode != "arrays":
                    return sampler(k, batch_size)
                X, Y = data
                n = X.shape[0]
                if batch_size >= n:
                    return X, Y
                idx = jax.random.choice(k, n, (batch_size,), replace=False)
                return X[idx], Y[idx]

            def run_chunk(st, keys, *data):
                def body(st, k):
                    kb, ks = jax.random.split(k)
                    return step_fn(ks, st, get_batch(kb, data))

                return jax.lax.scan(body, st, keys)

            cache[name] = jax.jit(run_chunk)
        return cache[name]

    def compiled(self, name: str):
        """Jitted helpers, compiled once per configuration and cached on the instance.

        Args:
            name: ``"quads"`` (batched quadratic approximations), ``"predict"`` (Monte Carlo predictive)
                or ``"linearized"`` (the linearised Student-t predictive and its draws).
        """
        cache = self.__dict__.setdefault("_jit_cache", {})
        if name not in cache:
            model = self.episode_model
            if name == "quads":
                _, quad_fn = self.build(dataset_size=None)
                cache[name] = jax.jit(jax.vmap(quad_fn, in_axes=(0, None, 0, 0)))
            elif name == "predict":
                cache[name] = jax.jit(lambda kd, kp, loc, qx, qy, n: sample_local_predictive(model, kd, kp, loc, qx, qy, n),
                                      static_argnums=5)
            elif name == "linearized":
                cache[name] = jax.jit(lambda k, q, c, sx, sy, qx, qy, g: linearized_batch(k, model, q, c, sx, sy, qx, qy, g))
            else:
                raise ConfigurationError(f"unknown compiled helper {name!r}")
        return cache[name]

    def init(self, params: NIWParams | None = None) -> TrainState:
        """Initial :class:`TrainState`."""
        params = self.init_params() if params is None else params
        return TrainState(params, self._optimizer().init(params), jnp.zeros((), jnp.int32))

    # ---- driver
    def fit(self, key, episodes, *, num_iterations: int | None = None,
            init: "NIWMetaResult | TrainState | None" = None, **deprecated) -> NIWMetaResult:
        """Learn q(φ) from episodes by one-time episodic optimisation.

        Args:
            key: a ``jax.random`` key.
            episodes: one of
                * ``(x, y)`` arrays with leading axes ``(num_episodes, num_points)``: minibatches of
                  ``batch_size`` episodes drawn uniformly each step;
                * a JAX-traceable generator ``sample(key, batch_size) -> (x, y)`` (an endless stream; it is
                  called inside the jitted loop);
                * a Python iterator yielding ``(x, y)`` minibatches (host-side data; one jitted step each).
            num_iterations: overrides the configured ``num_iterations`` (``num_steps`` before this release).
            init: a previous result or :class:`TrainState` to continue from (streaming in several calls).
            **deprecated: ``num_steps``, the old name of ``num_iterations``.
        """
        num_iterations = renamed_kwargs("NIWMeta.fit", deprecated, {"num_steps": "num_iterations"}).get(
            "num_iterations", num_iterations)
        key = check_key(key)
        num_steps = check_positive_int(self.num_iterations if num_iterations is None else num_iterations,
                                       "num_iterations")
        mode, data = self._episode_source(episodes)
        dataset_size = self.dataset_size
        if dataset_size is None and mode == "arrays":
            dataset_size = float(data[0].shape[0])
        step_fn, _ = self.build(dataset_size)
        if isinstance(init, NIWMetaResult):
            state = init.state
            seen0 = init.num_episodes_seen
        elif isinstance(init, TrainState):
            state, seen0 = init, 0
        elif init is None:
            state, seen0 = self.init(), 0
        else:
            raise ConfigurationError("`init` must be None, a NIWMetaResult or a TrainState")
        B = self.batch_size

        if mode == "iterator":
            jstep = jax.jit(step_fn)
            infos, timings = [], []
            it = iter(data)
            for i in range(num_steps):
                try:
                    batch = next(it)
                except StopIteration:
                    if i == 0:
                        raise DataError("`episodes` iterator yielded no minibatch")
                    break
                bx, by = batch_episodes(*as_pair(batch, "episodes minibatch"), name="episodes minibatch")
                t0 = time.perf_counter()
                state, info = jstep(jax.random.fold_in(key, i), state, (bx, by))
                jax.block_until_ready(info.elbo)
                timings.append(time.perf_counter() - t0)
                infos.append(info)
            info = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *infos)
            seconds = np.asarray(timings)
            steps_done = len(infos)
        else:
            # one compiled chunk per (configuration, data mode, dataset size, batch size), cached on the instance:
            # the episode arrays are arguments, so a repeated fit compiles nothing
            run_chunk = self._chunk_runner(mode, dataset_size, B, data if mode == "generator" else None)
            chunk_data = tuple(data) if mode == "arrays" else ()

            seconds = []

            def timed_chunk(state, done, size):
                keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(done, done + size))
                t0 = time.perf_counter()
                state, info = run_chunk(state, keys, *chunk_data)
                jax.block_until_ready(info.elbo)
                seconds.extend([(time.perf_counter() - t0) / size] * size)
                return state, info

            state, infos = chunk_loop(timed_chunk, state, num_steps, chunk_size=min(self.chunk_size, num_steps),
                                      progress_bar=self.progress_bar, desc="NIW-Meta",
                                      postfix=lambda _, info: {"elbo": float(info.elbo[-1])})
            info = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *infos)
            seconds = np.asarray(seconds)
            steps_done = num_steps
        if not bool(jnp.all(jnp.isfinite(info.elbo))):
            bad = int(np.argmax(~np.isfinite(np.asarray(info.elbo))))
            raise ConvergenceError(f"the ELBO became non-finite at step {bad}: lower the optimizer's learning rate "
                                   "or `inner_step_size`, or raise `curvature_min`")
        history = {k: np.asarray(v) for k, v in info._asdict().items()}
        history["seconds_per_step"] = seconds
        return NIWMetaResult(posterior=constrain(state.params), params=state.params, state=state, history=history,
                             config=self, num_episodes_seen=seen0 + steps_done * B)

    def _episode_source(self, episodes):
        if isinstance(episodes, (tuple, list)):
            x, y = batch_episodes(*as_pair(episodes, "episodes"))
            return "arrays", (x, y)
        if callable(episodes):
            return "generator", episodes
        if isinstance(episodes, Iterator) or hasattr(episodes, "__iter__"):
            return "iterator", episodes
        raise DataError("`episodes` must be a pair (x, y) of arrays, a generator function sample(key, batch_size) "
                        "-> (x, y), or an iterator of (x, y) minibatches")


# `num_steps` (optimisation iterations) is renamed `num_iterations` and `num_inner_steps` `num_inner_iterations`
# (glossary: `num_steps` counts time steps only); the old keywords and attributes stay for one release, with a
# DeprecationWarning
_dataclass_init = NIWMeta.__init__


@functools.wraps(_dataclass_init)
def _init_with_renamed(self, *args, **kwargs):
    kwargs.update(renamed_kwargs("NIWMeta", {k: kwargs.pop(k) for k in ("num_steps", "num_inner_steps") if k in kwargs},
                                 {"num_steps": "num_iterations", "num_inner_steps": "num_inner_iterations"}))
    _dataclass_init(self, *args, **kwargs)


def _num_steps(self) -> int:
    """Deprecated name of ``num_iterations``."""
    warnings.warn("`NIWMeta.num_steps` is renamed `num_iterations`; the old name will be removed in the next release",
                  DeprecationWarning, stacklevel=2)
    return self.num_iterations


NIWMeta.__init__ = _init_with_renamed
NIWMeta.num_steps = property(_num_steps)
NIWMeta.num_inner_steps = renamed_attribute("NIWMeta", "num_inner_steps", "num_inner_iterations")
