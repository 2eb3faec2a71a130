r"""State-space models written with NumPyro distributions.

A state-space model (hidden Markov model) with parameters :math:`\theta` is

.. math::
    X_0 \sim \chi_\theta, \qquad X_t \mid X_{t-1} \sim m_\theta(X_{t-1}, \cdot), \qquad
    Y_t \mid X_t \sim g_\theta(X_t, \cdot), \quad t = 0, \dots, T-1.

Each of the three callables returns a ``numpyro.distributions.Distribution`` for ONE state (the
engine ``vmap``\ s them over particles), or, with ``vectorized=True``, for a batch of states with a
leading particle axis (faster: one fused sample for all particles). States may be scalars or vectors
(``event_shape`` of the initial distribution); ``params`` is any pytree (usually a dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import DataError, ModelError

__all__ = ["StateSpaceModel"]


@dataclass(frozen=True)
class StateSpaceModel:
    """A state-space model ``(initial, transition, observation)`` of NumPyro distributions.

    Args:
        initial: ``initial(params) -> Distribution`` of :math:`X_0`.
        transition: ``transition(params, x_prev, t) -> Distribution`` of :math:`X_t` given :math:`X_{t-1}`.
        observation: ``observation(params, x, t) -> Distribution`` of :math:`Y_t` given :math:`X_t`.
        vectorized: if True the callables accept a batch of states with a leading particle axis and
            return distributions with that batch shape; otherwise they see one state and are vmapped.
        prior: optional ``prior() -> params``, a function of NumPyro ``sample`` statements returning the
            parameter pytree; used by :meth:`to_numpyro` to give NUTS a full Bayesian model.

    Example:
        >>> import jax, numpyro.distributions as dist, bayeskit as bk
        >>> ssm = bk.StateSpaceModel(
        ...     initial=lambda p: dist.Normal(0.0, 1.0),
        ...     transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
        ...     observation=lambda p, x, t: dist.Normal(x, 0.5))
        >>> xs, ys = ssm.simulate(jax.random.key(0), {"rho": 0.9}, num_steps=50)
        >>> xs.shape, ys.shape
        ((50,), (50,))
    """

    initial: Callable[[Any], Any]
    transition: Callable[[Any, Any, Any], Any]
    observation: Callable[[Any, Any, Any], Any]
    vectorized: bool = False
    prior: Callable[[], Any] | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_numpyro(cls, model: Callable, *args, **kwargs):
        """Convert a NumPyro time-series model written with ``numpyro.contrib.control_flow.scan``.

        The model samples its global parameters, then an initial state, then runs one ``scan`` whose
        body samples the next latent state (returned as the carry: one site, or a tuple / dict of
        sites) and the observed site(s). Its structure is read with NumPyro's effect handlers; the
        model itself is not changed, so the same function still runs under NumPyro's NUTS.

        Args:
            model: the NumPyro model function.
            *args: positional arguments of ``model`` (its data included).
            **kwargs: keyword arguments of ``model``.

        Returns:
            A :class:`~bayeskit.model.numpyro_scan.NumPyroStateSpaceModel` with ``S + 1`` steps (step 0
            is the initial state, step ``t`` the state after scan step ``t - 1``): ``params`` are a
            dict of the global sites, ``.ys`` the model's observations packed per step, ``.prior``
            samples the global sites, and ``path_from_sites`` / ``sites_from_path`` convert between
            state paths and NumPyro site values.

        Raises:
            ModelError: the model is not of that form (no scan or more than one, a latent body site
                that is not in the carry or depends on future steps, an observation that depends on
                the previous carry, a body that returns no carry, ...); the message names the site.

        Example:
            >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, bayeskit as bk
            >>> from numpyro.contrib.control_flow import scan
            >>> def local_level(y):
            ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
            ...     x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))
            ...     def step(x_prev, y_t):
            ...         x = numpyro.sample("x", dist.Normal(x_prev, sigma))
            ...         numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
            ...         return x, None
            ...     scan(step, x0, y)
            >>> ssm = bk.StateSpaceModel.from_numpyro(local_level, jnp.zeros(20))
            >>> ssm.ys.shape, ssm.structure.global_sites
            ((21,), ('sigma',))
        """
        from bayeskit.model.numpyro_scan import from_numpyro

        return from_numpyro(model, *args, **kwargs)

    # ------------------------------------------------------------------ shapes
    def state_shape(self, params) -> tuple[int, ...]:
        d = self.initial(params)
        shape = tuple(d.event_shape)
        if self.vectorized:
            return shape
        return tuple(d.batch_shape) + shape

    def observation_shape(self, params) -> tuple[int, ...]:
        x0 = jnp.zeros(self.state_shape(params))
        if self.vectorized:
            d = self.observation(params, x0[None], 0)
            return tuple(d.event_shape)
        d = self.observation(params, x0, 0)
        return tuple(d.batch_shape) + tuple(d.event_shape)

    # ------------------------------------------------- batched building blocks
    def sample_initial(self, key, params, num_particles: int):
        """Draw ``num_particles`` initial states, shape ``(N, *state_shape)``."""
        d = self.initial(params)
        return d.sample(key, (num_particles,))

    def sample_transition(self, key, params, x_prev, t):
        """Move a batch of states one step: ``x_t ~ m(x_{t-1}, .)``, shape preserved."""
        if self.vectorized:
            return self.transition(params, x_prev, t).sample(key)
        keys = jax.random.split(key, x_prev.shape[0])
        return jax.vmap(lambda k, x: self.transition(params, x, t).sample(k))(keys, x_prev)

    def log_transition(self, params, x_prev, x, t):
        """``log m_t(x_prev, x)`` for matching batches (broadcasting over a leading axis)."""
        if self.vectorized:
            return _sum_event(self.transition(params, x_prev, t), x)
        return jax.vmap(lambda xp, xx: _sum_event(self.transition(params, xp, t), xx))(x_prev, x)

    def log_transition_matrix(self, params, x_prev, x, t):
        """``L[i, j] = log m_t(x_prev[j], x[i])`` for all pairs, shape ``(len(x), len(x_prev))``."""
        return jax.vmap(lambda xi: self.log_transition(
            params, x_prev, jnp.broadcast_to(xi, x_prev.shape), t))(x)

    def log_observation(self, params, x, y, t):
        """``log g_t(x, y)`` for a batch of states and one observation."""
        if self.vectorized:
            return _sum_event(self.observation(params, x, t), y)
        return jax.vmap(lambda xx: _sum_event(self.observation(params, xx, t), y))(x)

    def log_initial(self, params, x):
        d = self.initial(params)
        return jax.vmap(lambda xx: _sum_event(d, xx))(x)

    # ------------------------------------------------------------- simulation
    def simulate(self, key, params, num_steps: int):
        """Simulate ``(xs, ys)`` with shapes ``(T, *state_shape)`` and ``(T, *obs_shape)``."""
        from bayeskit._checks import check_key, check_positive_int

        check_key(key)
        num_steps = check_positive_int(num_steps, "num_steps")
        return _simulate(self, key, params, num_steps)

    # ---------------------------------------------------------------- NumPyro
    def to_numpyro(self, ys, params=None):
        """A NumPyro model of the same joint ``p(theta, x_{0:T-1}, y_{0:T-1})`` (``scan`` over time).

        Latent states are the site ``"x"`` (shape ``(T, *state_shape)``) and observations the site
        ``"y"``. Parameters come from ``params`` if given, else from the ``prior`` function (whose
        sample sites become latent sites of the model). The returned function takes no arguments,
        so ``numpyro.infer.MCMC(NUTS(model)).run(key)`` runs NUTS on the same model. The callables
        receive single (unbatched) states here, so vectorized callables must broadcast.
        """
        import numpyro
        from numpyro.contrib.control_flow import scan

        if params is None and self.prior is None:
            raise ModelError("to_numpyro needs `params` or a StateSpaceModel built with `prior=`")
        ys = jnp.asarray(ys)
        num_steps = ys.shape[0]
        ssm = self

        def model():
            theta = params if params is not None else ssm.prior()
            x0 = numpyro.sample("x_0", ssm.initial(theta))
            numpyro.sample("y_0", ssm.observation(theta, x0, 0), obs=ys[0])

            def body(x_prev, inp):
                t, y = inp
                x = numpyro.sample("x", ssm.transition(theta, x_prev, t))
                numpyro.sample("y", ssm.observation(theta, x, t), obs=y)
                return x, None

            if num_steps > 1:
                scan(body, x0, (jnp.arange(1, num_steps), ys[1:]))

        return model

    def validate(self, params, ys, name: str = "ys"):
        """Check observations against the model: finite values, shape ``(T, *obs_shape)``, and
        parameters the model accepts (finite initial log-density). Raises bayeskit errors."""
        try:
            obs_shape = self.observation_shape(params)
        except Exception as exc:  # the model rejected the parameters
            raise ModelError(f"the model rejects `params`: {exc}") from exc
        check_observations(ys, obs_shape, name)
        return obs_shape


def check_observations(ys, obs_shape: tuple, name: str = "ys"):
    """``ys`` must be finite with shape ``(T, *obs_shape)``, T >= 1 (raises DataError)."""
    from bayeskit._checks import check_finite_array

    arr = np.asarray(ys)
    check_finite_array(arr, name)
    if arr.ndim != 1 + len(obs_shape) or tuple(arr.shape[1:]) != tuple(obs_shape):
        raise DataError(f"`{name}` must have shape (num_steps, {', '.join(map(str, obs_shape))})"
                        .replace(", )", ")") + f", got {arr.shape}")
    if arr.shape[0] < 1:
        raise DataError(f"`{name}` must hold at least one time step")


def _sum_event(d, value):
    lp = d.log_prob(value)
    return lp


@partial(jax.jit, static_argnums=(0, 3))
def _simulate(ssm: StateSpaceModel, key, params, num_steps: int):
    k0, ky0, kscan = jax.random.split(key, 3)
    x0 = ssm.sample_initial(k0, params, 1)
    y0 = _sample_obs(ssm, ky0, params, x0, 0)

    def body(x_prev, inp):
        t, k = inp
        kx, ky = jax.random.split(k)
        x = ssm.sample_transition(kx, params, x_prev, t)
        y = _sample_obs(ssm, ky, params, x, t)
        return x, (x[0], y[0])

    ts = jnp.arange(1, num_steps)
    keys = jax.random.split(kscan, num_steps - 1)
    _, (xs, ys) = jax.lax.scan(body, x0, (ts, keys))
    xs = jnp.concatenate([x0, xs], axis=0)
    ys = jnp.concatenate([y0, ys], axis=0)
    return xs, ys


def _sample_obs(ssm, key, params, x, t):
    if ssm.vectorized:
        return ssm.observation(params, x, t).sample(key)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, xx: ssm.observation(params, xx, t).sample(k))(keys, x)
