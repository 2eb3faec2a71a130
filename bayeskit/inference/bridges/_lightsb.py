"""The fitted Light Schrödinger bridge :class:`LightSB`: construction, sampling, densities, drift, trajectories,
saving and ArviZ output (the closed forms are in ``_lightsb_model``, the training loop in ``_lightsb_fit``)."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit._checks import check_choice, check_finite_array, check_key, check_positive_int, renamed_kwargs
from bayeskit.errors import DataError
from bayeskit.inference.bridges._lightsb_fit import default_optimizer, fit_params
from bayeskit.inference.bridges._lightsb_model import (LightSBParams, check_epsilon, conditional_components,
                                                       conditional_log_prob, conditional_sample, drift,
                                                       euler_maruyama)

__all__ = ["LightSB"]


@dataclasses.dataclass(frozen=True)
class LightSB:
    """A fitted Light Schrödinger bridge (construct with :meth:`LightSB.fit` or :meth:`LightSB.from_params`).

    Attributes:
        params: :class:`LightSBParams`.
        epsilon: reference noise variance :math:`\\varepsilon` (the SDE is :math:`dX = g\\,dt + \\sqrt{\\varepsilon}\\,dW`).
        loss_history: (num_iterations,) training losses (empty if built from parameters).
        fit_seconds: wall time of :meth:`fit` (compile included).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(0), (256, 2))
        >>> x1 = jax.random.normal(jax.random.key(1), (256, 2)) + 3.0
        >>> sb = LightSB.fit(jax.random.key(2), x0, x1, epsilon=0.1, num_components=4, num_iterations=200)
        >>> sb.sample(jax.random.key(3), x0).shape
        (256, 2)
    """

    params: LightSBParams
    epsilon: float
    loss_history: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    fit_seconds: float = 0.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_params(cls, params: LightSBParams, epsilon: float) -> "LightSB":
        epsilon = check_epsilon(epsilon)
        return cls(params=LightSBParams(*[None if p is None else jnp.asarray(p) for p in params]), epsilon=epsilon)

    @classmethod
    def fit(cls, key, x0, x1, *, epsilon: float, num_components: int = 10, covariance: str = "diag",
            num_iterations: int = 2000, batch_size: int = 128, learning_rate: float = 1e-2,
            optimizer: optax.GradientTransformation | None = None, init_scale: float = 0.1,
            init: str = "samples", chunk_size: int = 500, progress_bar: bool = False, **deprecated) -> "LightSB":
        """Fit LightSB between samples ``x0`` (N0, D) of :math:`p_0` and ``x1`` (N1, D) of :math:`p_1`.

        Minimises the LightSB loss (``bk.bridges.kernels.loss``) with ``optimizer`` on minibatches drawn with
        replacement, in jitted chunks; a second fit with the same shapes and settings reuses the compiled chunk.

        Args:
            key: ``jax.random`` key (initialisation and minibatches).
            x0: (N0, D) samples of :math:`p_0`.
            x1: (N1, D) samples of :math:`p_1`.
            epsilon: reference noise variance :math:`\\varepsilon`.
            num_components: mixture components :math:`K`.
            covariance: ``"diag"`` or ``"full"`` :math:`S_k`.
            num_iterations: optimizer iterations (``num_steps`` before this release; the old name warns).
            batch_size: minibatch size for each of ``x0`` and ``x1``.
            learning_rate: Adam's learning rate when ``optimizer`` is not given.
            optimizer: an optax transformation (default ``optax.adam(learning_rate)``).
            init_scale: initial diagonal of :math:`S_k` for ``init="samples"``.
            init: ``"samples"`` (as the reference code: :math:`r_k` at random target samples) or ``"gaussian"``
                (the closed-form Gaussian SB of the moment-matched samples; with one full component that is the
                exact optimum and ``num_iterations=0`` returns it).
            chunk_size: iterations per jitted chunk (progress-bar granularity).
            progress_bar: show a tqdm bar.
            **deprecated: ``num_steps``, the old name of ``num_iterations``.
        """
        num_iterations = renamed_kwargs("LightSB.fit", deprecated, {"num_steps": "num_iterations"}).get(
            "num_iterations", num_iterations)
        check_key(key)
        epsilon = check_epsilon(epsilon)
        check_finite_array(x0, "x0", ndim=2)
        check_finite_array(x1, "x1", ndim=2)
        if np.shape(x0)[1] != np.shape(x1)[1]:
            raise DataError(f"`x0` and `x1` must have the same dimension, got {np.shape(x0)[1]} and {np.shape(x1)[1]}")
        num_components = check_positive_int(num_components, "num_components")
        check_choice(init, "init", {"samples", "gaussian"})
        num_iterations = check_positive_int(num_iterations, "num_iterations", minimum=0 if init == "gaussian" else 1)
        batch_size = check_positive_int(batch_size, "batch_size")
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        check_choice(covariance, "covariance", {"diag", "full"})
        x0 = jnp.asarray(x0)
        x1 = jnp.asarray(x1, dtype=x0.dtype)
        optimizer = optimizer if optimizer is not None else default_optimizer(float(learning_rate))
        params, history, seconds = fit_params(
            key, x0, x1, epsilon=epsilon, num_components=num_components, covariance=covariance,
            num_iterations=num_iterations, batch_size=batch_size, optimizer=optimizer, init_scale=init_scale,
            init=init, chunk_size=chunk_size, progress_bar=progress_bar)
        return cls(params=params, epsilon=epsilon, loss_history=history, fit_seconds=seconds)

    # ------------------------------------------------------------------ inference
    @property
    def dim(self) -> int:
        return int(self.params.r.shape[-1])

    @property
    def covariance(self) -> str:
        return "diag" if self.params.rotation is None else "full"

    def _x(self, x, name="x"):
        check_finite_array(x, name, ndim=(1, 2))
        x = jnp.asarray(x, self.params.r.dtype)
        if x.shape[-1] != self.dim:
            raise DataError(f"`{name}` must have last dimension {self.dim}, got shape {x.shape}")
        return x

    def sample(self, key, x, num_samples: int | None = None) -> jax.Array:
        """Sample :math:`y \\sim \\pi_\\theta(\\cdot \\mid x)`: (N, D) for x (N, D), or (num_samples, N, D)."""
        check_key(key)
        x = self._x(x)
        if num_samples is None:
            return conditional_sample(key, self.params, x, self.epsilon)
        num_samples = check_positive_int(num_samples, "num_samples")
        keys = jax.random.split(key, num_samples)
        return jax.vmap(lambda k: conditional_sample(k, self.params, x, self.epsilon))(keys)

    def log_prob(self, x, y) -> jax.Array:
        """:math:`\\log\\pi_\\theta(y \\mid x)`, broadcasting over leading axes."""
        return conditional_log_prob(self.params, self._x(x), self._x(y, "y"), self.epsilon)

    def conditional_moments(self, x):
        """Mean (N, D) and covariance (N, D, D) of the mixture :math:`\\pi_\\theta(\\cdot \\mid x)` (closed form)."""
        lw, means, covs = conditional_components(self.params, self._x(x), self.epsilon)
        w = jnp.exp(lw)
        mean = jnp.einsum("...k,...kd->...d", w, means)
        second = jnp.einsum("...k,kij->...ij", w, covs) + jnp.einsum("...k,...ki,...kj->...ij", w, means, means)
        return mean, second - mean[..., :, None] * mean[..., None, :]

    def drift(self, x, t) -> jax.Array:
        """SB drift :math:`g(x, t)`, t in [0, 1]."""
        return drift(self.params, self._x(x), t, self.epsilon)

    def sample_trajectory(self, key, x0, num_steps: int = 100) -> jax.Array:
        """Simulate :math:`dX = g(X, t)dt + \\sqrt\\varepsilon dW` from ``x0`` by Euler–Maruyama on
        ``num_steps`` steps; returns (num_steps + 1, N, D) (time grid ``linspace(0, 1, num_steps + 1)``)."""
        check_key(key)
        x0 = self._x(x0, "x0")
        num_steps = check_positive_int(num_steps, "num_steps")
        return _simulate(key, self.params, x0, self.epsilon, num_steps)

    # ------------------------------------------------------------------ io
    def save(self, path) -> None:
        """Save parameters to ``.npz`` (plain arrays, no pickle)."""
        arrays = {"log_alpha": np.asarray(self.params.log_alpha), "r": np.asarray(self.params.r),
                  "log_s": np.asarray(self.params.log_s), "epsilon": np.asarray(self.epsilon),
                  "loss_history": np.asarray(self.loss_history)}
        if self.params.rotation is not None:
            arrays["rotation"] = np.asarray(self.params.rotation)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "LightSB":
        """Load parameters written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            rotation = jnp.asarray(z["rotation"]) if "rotation" in z.files else None
            params = LightSBParams(jnp.asarray(z["log_alpha"]), jnp.asarray(z["r"]), jnp.asarray(z["log_s"]), rotation)
            return cls(params=params, epsilon=float(z["epsilon"]), loss_history=np.asarray(z["loss_history"]))

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the fitted parameters as one draw: a point
        estimate) and ``optimization`` (loss per ``iteration``)."""
        from bayeskit.diagnostics import one_run, to_datatree

        params = {"log_alpha": self.params.log_alpha, "r": self.params.r, "log_s": self.params.log_s}
        if self.params.rotation is not None:
            params["rotation"] = self.params.rotation
        dims = {"log_alpha": ["component"], "r": ["component", "dim"], "log_s": ["component", "dim"],
                "rotation": ["component", "dim", "dim_col"], "loss": ["iteration"]}
        return to_datatree({"posterior": one_run(params), "optimization": {"loss": self.loss_history}}, dims=dims,
                           attrs={"epsilon": self.epsilon, "covariance": self.covariance,
                                  "fit_seconds": self.fit_seconds, "method": "LightSB"})


@partial(jax.jit, static_argnames=("num_steps",))
def _simulate(key, params, x0, epsilon, num_steps):
    fn = lambda x, t: drift(params, x, t, epsilon)  # noqa: E731
    return euler_maruyama(key, fn, x0, num_steps=num_steps, diffusion=jnp.sqrt(epsilon))
