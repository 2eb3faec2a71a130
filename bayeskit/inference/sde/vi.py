r"""Variational inference for SDEs driven by (Markov-approximate) fractional noise.

Daems, Opper, Crevecoeur and Birdal, "Variational inference for SDEs driven by fractional noise"
(ICLR 2024). With the Markov approximation :math:`\hat B_H = \sum_k \omega_k (Y_k - Y_k(0))` the prior
is a Markov SDE for :math:`Z = (X, Y)` driven by one Brownian motion per state dimension
(:mod:`bayeskit.model.sde`). The variational posterior adds a control :math:`u(t, Z)` to the OU drifts,

.. math::
    dY_k = (-\gamma_k Y_k + u)\, dt + dW, \qquad
    dX = b\, dt + s \odot \textstyle\sum_k \omega_k\, dY_k ,

which changes the drift of Z only inside the column space of its diffusion, so by Girsanov's theorem
:math:`\mathrm{KL}(Q \,\|\, P) = \mathrm{KL}(q(Z_0) \,\|\, p(Z_0)) + E_Q \tfrac12 \int |u|^2 dt` and

.. math::
    \mathrm{ELBO} = \sum_{\text{series}} E_Q\Big[\sum_j \log p(y_j \mid X(t_j))
      - \tfrac12 \int_{t_0}^{t_1} |u(t, Z_t)|^2 dt\Big]
      - \mathrm{KL}(q(X_0) \,\|\, p(X_0)) - \mathrm{KL}(q(Y_0) \,\|\, p(Y_0))
      \;[- \mathrm{KL}(q(H) \,\|\, p(H))] \le \log p(y).

The expectation is estimated with reparameterised path samples (the exact-OU scheme of
:func:`bayeskit.model.sde.solve_augmented` on a fixed grid containing the observation times, for which
the estimate is a valid bound for every H), and maximised with optax over: the control (a neural network
:class:`MLPControl`, or :class:`AffineControl`, which contains the exact optimal control of linear
Gaussian models), per-series Gaussian :math:`q(X_0)` and :math:`q(Y_0)` (full covariance in the OU
coordinates whitened by the prior), the model parameters of the drift / diffusion / observation model
(point estimates, i.e. variational EM), and the Hurst index: a point estimate
:math:`H = \mathrm{sigmoid}(\eta)` as in the paper, or with ``hurst_prior`` a logit-normal
:math:`q(H)`; :math:`\omega(H)` is recomputed differentiably in closed form at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bayeskit._checks import check_finite_array, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError, ModelError
from bayeskit.model.sde import SDE, make_grid, solve_augmented, validate_times

__all__ = [
    "MLPControl",
    "AffineControl",
    "VIState",
    "VIInfo",
    "VIResult",
    "build_elbo",
    "init",
    "step",
    "fit_vi",
]


# ----------------------------------------------------------------------------------------------------
# controls


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

    def apply(self, params, series, tau, x, y, hurst):
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
        }

    def apply(self, params, series, tau, x, y, hurst):
        knots = jax.lax.stop_gradient(params["knots"])
        interp = jax.vmap(lambda v: jnp.interp(tau, knots, v), in_axes=1)
        d = x.shape[0]
        # coefficients are sinh of the parameters: Adam moves parameters by about the learning rate per
        # step, and the optimal gains span orders of magnitude (~1/sigma_obs^2 just before a precise
        # observation), which sinh reaches in a few steps while staying linear near zero
        A = jnp.sinh(interp(params["A"].reshape(knots.shape[0], -1))).reshape(d, -1)
        c = jnp.sinh(interp(params["c"][series]))
        return A @ jnp.concatenate([x, y.reshape(-1)]) + c


# ----------------------------------------------------------------------------------------------------
# variational family and ELBO


def _logit(p):
    return math.log(p) - math.log1p(-p)


def _kl_std_normal(mean, scale_tril):
    """KL(N(mean, L L^T) || N(0, I)) for a lower-triangular L (last two axes)."""
    k = mean.shape[-1]
    diag = jnp.diagonal(scale_tril, axis1=-2, axis2=-1)
    return 0.5 * (jnp.sum(scale_tril**2, axis=(-2, -1)) + jnp.sum(mean**2, -1) - k) - jnp.sum(jnp.log(jnp.abs(diag)), -1)


def _tril(raw):
    """Lower-triangular factor with a positive (softplus) diagonal from an unconstrained matrix."""
    k = raw.shape[-1]
    lower = jnp.tril(raw, -1)
    diag = jax.nn.softplus(jnp.diagonal(raw, axis1=-2, axis2=-1)) + 1e-6
    return lower + diag[..., None] * jnp.eye(k, dtype=raw.dtype)


def _softplus_inv(x):
    return x + math.log(-math.expm1(-x))


def _kl_initial(prior, mean, scale):
    """KL(N(mean, diag scale^2) || prior), closed form when NumPyro knows it, else one-sample Monte Carlo."""
    import numpyro.distributions as dist
    from numpyro.distributions.kl import kl_divergence

    q = dist.Normal(mean, scale).to_event(1)
    p = prior
    if p.event_shape == ():
        p = p.expand((mean.shape[-1],)).to_event(1) if p.batch_shape == () else p.to_event(1)
    try:
        return kl_divergence(q, p), None
    except NotImplementedError:
        return None, (q, p)


class _Setup(NamedTuple):
    grid: Any
    obs_index: Any
    times: Any
    observations: Any
    mask: Any


def build_elbo(sde: SDE, times, observations, mask=None, *, control=None, fixed_params=None,
               learn_hurst=False, hurst_prior=None, num_steps=200, refine=4, refine_ratio=2.0, solver=None,
               dtype=None):
    r"""Return ``(elbo_fn, init_fn)`` for the model and data.

    ``init_fn(key, params) -> variational_params`` (a pytree: ``model`` parameters, ``control``,
    ``x0``, ``y0``, ``hurst``); ``elbo_fn(key, variational_params, num_samples) -> (elbo, aux)`` is an
    unbiased estimate of the ELBO (sum over series) with ``aux`` a dict of its parts (``loglik``,
    ``kl_path``, ``kl_x0``, ``kl_y0``, ``kl_hurst``, ``hurst``). Both are pure and jittable.
    """
    control = MLPControl() if control is None else control
    fixed_params = dict(fixed_params or {})
    dtype = dtype or jnp.result_type(float)
    grid, obs_index = make_grid(sde.t0, sde.t1, times, num_steps, refine, refine_ratio)
    grid_j = jnp.asarray(grid, dtype)
    times_j = jnp.asarray(times, dtype)
    obs_j = jnp.asarray(observations, dtype)
    num_series = obs_j.shape[0]
    mask_j = jnp.ones(obs_j.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    obs_j = jnp.where(mask_j.reshape(mask_j.shape + (1,) * (obs_j.ndim - 2)), obs_j, 0.0)
    d, K = sde.state_dim, sde.num_ou
    fractional = bool(getattr(sde.noise, "fractional", False))
    if learn_hurst and not fractional:
        raise ConfigurationError("`learn_hurst=True` needs a fractional noise: pass noise=bk.sde.FractionalBM(...)")
    hurst0 = float(getattr(sde.noise, "hurst", 0.5))
    span = float(sde.t1 - sde.t0)
    learn_y0 = fractional and sde.noise.kind == "I"
    if learn_y0:
        prior_cov = sde.noise.initial_covariance(dtype)
        evals, evecs = jnp.linalg.eigh(prior_cov)
        y0_sqrt = evecs * jnp.sqrt(jnp.clip(evals, 0.0))[None, :]
    variational_hurst = learn_hurst and hurst_prior is not None

    def init_fn(key, params):
        k1, k2 = jax.random.split(key)
        vp = {
            "model": jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), dict(params or {})),
            "control": control.init(k1, state_dim=d, num_ou=K, num_series=num_series, dtype=dtype, grid=grid),
        }
        if not sde.fixed_initial:
            prior = sde.initial({**vp["model"], **fixed_params})
            m = jnp.broadcast_to(jnp.asarray(prior.mean, dtype), (d,))
            sd = jnp.broadcast_to(jnp.sqrt(jnp.asarray(prior.variance, dtype)), (d,))
            vp["x0"] = {"mean": jnp.tile(m, (num_series, 1)),
                        "log_scale": jnp.tile(jnp.log(sd), (num_series, 1))}
        if learn_y0:
            eye = jnp.eye(K, dtype=dtype) * _softplus_inv(1.0)
            vp["y0"] = {"mean": jnp.zeros((num_series, d, K), dtype),
                        "tril_raw": jnp.tile(eye, (num_series, d, 1, 1))}
        if fractional:  # also when H is fixed: a traced H lets one compiled step serve several H (vmap)
            vp["hurst"] = {"loc": jnp.asarray(_logit(hurst0), dtype)}
            if variational_hurst:
                vp["hurst"]["log_scale"] = jnp.asarray(math.log(0.3), dtype)
        return vp

    def sample_hurst(key, vp):
        if not fractional:
            return 0.5, jnp.zeros((), dtype)
        loc = vp["hurst"]["loc"]
        if not learn_hurst:
            return jax.lax.stop_gradient(jax.nn.sigmoid(loc)), jnp.zeros((), dtype)
        if not variational_hurst:
            return jax.nn.sigmoid(loc), jnp.zeros((), dtype)
        scale = jnp.exp(vp["hurst"]["log_scale"])
        eps = jax.random.normal(key, (), dtype)
        logit_h = loc + scale * eps
        h = jax.nn.sigmoid(logit_h)
        # log q(H) = log N(logit H) - log H(1 - H); one-sample KL estimate (reparameterised)
        log_q = -0.5 * eps**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi) - jnp.log(h) - jnp.log1p(-h)
        return h, log_q - hurst_prior.log_prob(h)

    def one_path(key, vp, series, hurst):
        params = {**vp["model"], **fixed_params}
        kx, ky, kw = jax.random.split(key, 3)
        if sde.fixed_initial:
            x0 = jnp.asarray(sde.initial, dtype)
            kl_x0 = jnp.zeros((), dtype)
        else:
            mean = vp["x0"]["mean"][series]
            scale = jnp.exp(vp["x0"]["log_scale"][series])
            x0 = mean + scale * jax.random.normal(kx, (d,), dtype)
            kl, qp = _kl_initial(sde.initial(params), mean, scale)
            kl_x0 = kl if qp is None else qp[0].log_prob(x0) - qp[1].log_prob(x0)
        if learn_y0:
            m = vp["y0"]["mean"][series]
            L = _tril(vp["y0"]["tril_raw"][series])
            w = m + jnp.einsum("dij,dj->di", L, jax.random.normal(ky, (d, K), dtype))
            y0 = w @ y0_sqrt.T
            kl_y0 = jnp.sum(_kl_std_normal(m, L))
        else:
            y0 = jnp.zeros((d, K), dtype)
            kl_y0 = jnp.zeros((), dtype)

        def u(t, x, y):
            return control.apply(vp["control"], series, (t - sde.t0) / span, x, y, hurst)

        path, kl_path = solve_augmented(kw, sde, params, grid_j, x0, y0, control=u, hurst=hurst, solver=solver)
        xs = path[obs_index]

        def lp(x, t, y):
            return jnp.sum(sde.observation(params, x, t).log_prob(y))

        logliks = jax.vmap(lp)(xs, times_j, obs_j[series])
        loglik = jnp.sum(jnp.where(mask_j[series], logliks, 0.0))
        return loglik, kl_path, kl_x0, kl_y0, path

    def draw(key, vp, num_samples, pick):
        """Run ``one_path`` for every series and ``num_samples`` paths; returns (outputs, hursts, kl_h)."""
        kh, kp = jax.random.split(key)
        keys = jax.random.split(kp, (num_series, num_samples))
        series = jnp.arange(num_series)
        if variational_hurst:
            hursts, kl_h = jax.vmap(lambda k: sample_hurst(k, vp))(jax.random.split(kh, num_samples))
            out = jax.vmap(lambda ks, s: jax.vmap(lambda k, h: pick(one_path(k, vp, s, h)))(ks, hursts))(keys, series)
        else:  # one H for all paths: the weights are computed once per call
            h, _ = sample_hurst(kh, vp)
            hursts, kl_h = jnp.full((num_samples,), h, dtype), jnp.zeros((num_samples,), dtype)
            out = jax.vmap(lambda ks, s: jax.vmap(lambda k: pick(one_path(k, vp, s, h)))(ks))(keys, series)
        return out, hursts, kl_h

    def elbo_fn(key, vp, num_samples):
        out, hursts, kl_h = draw(key, vp, num_samples, lambda o: o[:4])
        loglik, kl_path, kl_x0, kl_y0 = (jnp.mean(o, axis=1).sum() for o in out)
        kl_hurst = jnp.mean(kl_h)
        elbo = loglik - kl_path - kl_x0 - kl_y0 - kl_hurst
        aux = {"loglik": loglik, "kl_path": kl_path, "kl_x0": kl_x0, "kl_y0": kl_y0, "kl_hurst": kl_hurst,
               "hurst": jnp.mean(hursts)}
        return elbo, aux

    def paths_fn(key, vp, num_samples):
        """Posterior paths on the grid: ``(num_series, num_samples, len(grid), d)`` and the H draws."""
        paths, hursts, _ = draw(key, vp, num_samples, lambda o: o[4])
        return paths, hursts

    def evaluate_fn(key, vp, num_samples):
        """One pass: per-draw ELBO terms ``(num_samples,)`` (summed over series) and the paths."""
        (loglik, kl_path, kl_x0, kl_y0, paths), hursts, kl_h = draw(key, vp, num_samples, lambda o: o)
        per_draw = jnp.sum(loglik - kl_path - kl_x0 - kl_y0, axis=0) - kl_h
        return per_draw, paths, hursts

    elbo_fn.paths = paths_fn
    elbo_fn.evaluate = evaluate_fn
    elbo_fn.setup = _Setup(grid, obs_index, np.asarray(times), observations, mask)
    return elbo_fn, init_fn


# ----------------------------------------------------------------------------------------------------
# kernel and driver


class VIState(NamedTuple):
    """Optimiser state: ``params`` (variational parameters pytree), ``opt_state`` (optax), ``step`` ()."""

    params: Any
    opt_state: Any
    step: jax.Array


class VIInfo(NamedTuple):
    """Per-step diagnostics: ``elbo`` (estimate before the update), its parts, ``hurst`` (mean of the
    H draws) and ``nonfinite`` (bool: the ELBO or a gradient was NaN/inf)."""

    elbo: jax.Array
    loglik: jax.Array
    kl_path: jax.Array
    kl_initial: jax.Array
    hurst: jax.Array
    nonfinite: jax.Array


def init(params, optimizer) -> VIState:
    """Initial :class:`VIState` for variational parameters ``params``."""
    return VIState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def step(key, state: VIState, elbo_fn, optimizer, num_samples: int):
    """One optax step on :math:`-\\mathrm{ELBO}`; returns ``(state, VIInfo)``. Non-finite gradients are skipped."""
    def loss(p):
        elbo, aux = elbo_fn(key, p, num_samples)
        return -elbo, aux

    (neg, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    finite = jnp.isfinite(neg) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), params, state.params)
    info = VIInfo(-neg, aux["loglik"], aux["kl_path"], aux["kl_x0"] + aux["kl_y0"] + aux["kl_hurst"], aux["hurst"],
                  ~finite)
    return VIState(params, opt_state, state.step + 1), info


@dataclass(frozen=True)
class VIResult:
    """Result of :func:`fit_vi`.

    Attributes:
        params: learned model parameters (the ``params`` argument, updated; ``fixed_params`` merged in).
        variational_params: the whole variational pytree (control, q(X0), q(Y0), Hurst).
        hurst: the point estimate of H (or the posterior mean of q(H)); 0.5 for Brownian noise.
        hurst_sd: posterior standard deviation of H under q(H) (None for a point estimate).
        elbo: ELBO estimates per iteration, ``(num_iterations,)``; ``info`` the full :class:`VIInfo` history.
        final_elbo: a fresh estimate from the ``num_posterior_samples`` stored paths; ``final_elbo_se`` its standard error.
        grid: solver time grid; ``paths``: posterior paths ``(num_series, num_posterior_samples, len(grid), d)``.
    """

    params: dict
    variational_params: Any
    hurst: float
    hurst_sd: float | None
    elbo: np.ndarray
    info: VIInfo
    final_elbo: float
    final_elbo_se: float
    grid: np.ndarray
    paths: np.ndarray
    hurst_draws: np.ndarray
    times: np.ndarray
    observations: np.ndarray
    sde: Any = field(repr=False, default=None)
    elbo_fn: Any = field(repr=False, default=None)

    @property
    def posterior_mean(self) -> np.ndarray:
        """Mean of the posterior paths, ``(num_series, len(grid), d)``."""
        return self.paths.mean(axis=1)

    @property
    def posterior_variance(self) -> np.ndarray:
        """Variance of the posterior paths, ``(num_series, len(grid), d)``."""
        return self.paths.var(axis=1)

    def sample_paths(self, key, num_samples: int):
        """Fresh posterior paths ``(num_series, num_samples, len(grid), d)`` from the fitted control."""
        check_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        paths, _ = self.elbo_fn.paths_jit(key, self.variational_params, num_samples)
        return np.asarray(paths)

    def to_arviz(self):
        """ArviZ DataTree: ``posterior`` (paths ``x`` with dims series/time/state, H draws), optimisation
        history (``elbo`` per iteration), ``observed_data`` and ``constant_data`` (times, grid)."""
        from bayeskit.diagnostics import to_datatree

        S, M, n, d = self.paths.shape
        posterior = {"x": np.moveaxis(self.paths, 0, 1)[None]}
        if self.hurst_sd is not None:
            posterior["hurst"] = self.hurst_draws[None]
        obs = np.asarray(self.observations)
        optimisation = {name: np.asarray(getattr(self.info, name)) for name in ("elbo", "loglik", "kl_path", "kl_initial", "hurst")}
        constant = {"times": np.asarray(self.times), "grid": np.asarray(self.grid)}
        for k, v in self.params.items():
            constant[f"param_{k}"] = np.asarray(v)
        return to_datatree(
            {"posterior": posterior, "optimization": optimisation, "observed_data": {"y": obs},
             "constant_data": constant},
            dims={"x": ["series", "grid_time", "state"], "y": ["series", "time"] + [f"obs_dim_{i}" for i in range(obs.ndim - 2)],
                  "times": ["time"], "grid": ["grid_time"], **{n_: ["iteration"] for n_ in optimisation}},
            coords={"grid_time": np.asarray(self.grid), "time": np.asarray(self.times), "series": np.arange(S),
                    "iteration": np.arange(len(self.elbo))},
            attrs={"method": "fbm_sde_vi", "hurst": self.hurst, "hurst_sd": self.hurst_sd,
                   "final_elbo": self.final_elbo, "final_elbo_se": self.final_elbo_se},
        )


def _as_series(observations, num_times):
    obs = np.asarray(observations)
    if obs.dtype == object or not np.issubdtype(obs.dtype, np.number):
        raise DataError(f"`observations` must be a numeric array, got dtype {obs.dtype}")
    if obs.ndim == 1:
        obs = obs[None]
    if obs.shape[1] != num_times:
        raise DataError(f"`observations` must have shape (num_times,) or (num_series, num_times, ...) with "
                        f"num_times = len(times) = {num_times}, got shape {np.asarray(observations).shape}")
    return obs


def fit_vi(key: Any, sde: SDE, observations: Any, times: Any, *, params: dict | None = None,
           fixed_params: dict | None = None, mask: Any = None, control: Any = None,
           learn_hurst: bool = False, hurst_prior: Any = None, num_steps: int = 200, refine: int = 4,
           refine_ratio: float = 2.0, num_samples: int = 16,
           num_iterations: int = 1000, optimizer: Any = None, learning_rate: float = 1e-2, solver: Any = None,
           num_posterior_samples: int = 256, chunk_size: int = 50,
           progress_bar: bool = True, dtype=None) -> VIResult:
    r"""Fit the variational posterior of an SDE model to observed series (Daems et al., ICLR 2024).

    Args:
        key: a ``jax.random`` key.
        sde: the model, :class:`bayeskit.model.sde.SDE` (Brownian or ``FractionalBM`` noise).
        observations: ``(num_times,)`` for one series of scalars, or ``(num_series, num_times, *obs_shape)``.
        times: strictly increasing observation times ``(num_times,)`` inside ``[sde.t0, sde.t1]``
            (shared by all series; use ``mask`` for missing values).
        params: model parameters learned by maximising the ELBO (dict of arrays; may be empty).
        fixed_params: model parameters held fixed (merged with ``params`` for the model callables).
        mask: optional boolean ``(num_series, num_times)``; False entries are ignored.
        control: :class:`MLPControl` (default) or :class:`AffineControl`.
        learn_hurst: learn H (needs ``FractionalBM`` noise; its ``hurst`` is the starting value).
        hurst_prior: NumPyro distribution on (0, 1); with it H gets a logit-normal q(H) (posterior
            mean and sd reported), without it a point estimate as in the paper.
        num_steps: uniform solver steps on [t0, t1] (the observation times are added to the grid).
        refine: extra steps of sizes dt/2, dt/4, ... placed before each observation time, where the
            optimal control is steepest (``bayeskit.model.sde.make_grid``); ``refine_ratio`` (default 2)
            the ratio of successive refined steps (closer to 1: a graded mesh, a tighter ELBO).
        num_samples: Monte Carlo paths per series per gradient step.
        num_iterations: optimiser steps; ``optimizer`` (default ``optax.adam(learning_rate)``).
        solver: ``"exact_ou"`` (default: exact OU transitions with a piecewise-constant control, the
            only choice for which the ELBO is a valid bound at any step size and H; see
            :func:`bayeskit.model.sde.solve_augmented`) or a diffrax solver (its ELBO is not a bound).
        num_posterior_samples: posterior paths per series stored in the result; the final ELBO
            estimate (and its standard error) uses the same paths.
        chunk_size: the loop runs in jitted chunks of ``chunk_size`` steps.
        progress_bar: show a tqdm bar, updated between chunks.

    Returns:
        :class:`VIResult`.

    Raises:
        DataError: bad times (unsorted, outside [t0, t1]) or observations (shape, NaN without mask).
        ConfigurationError: bad options (e.g. a diffrax solver step too coarse for the fastest OU speed).
        ConvergenceError: the ELBO or its gradient stayed non-finite.
    """
    check_key(key)
    if not isinstance(sde, SDE):
        raise ModelError(f"`sde` must be a bayeskit SDE model (bk.sde.SDE), got {type(sde).__name__}")
    times = validate_times(sde, times)
    obs = _as_series(observations, times.shape[0])
    if mask is None:
        check_finite_array(obs, "observations")
    else:
        mask = np.asarray(mask, bool)
        if mask.shape != obs.shape[:2]:
            raise DataError(f"`mask` must have shape {obs.shape[:2]} (num_series, num_times), got {mask.shape}")
    num_steps = check_positive_int(num_steps, "num_steps")
    num_samples = check_positive_int(num_samples, "num_samples")
    num_iterations = check_positive_int(num_iterations, "num_iterations", minimum=0)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    num_posterior_samples = check_positive_int(num_posterior_samples, "num_posterior_samples")
    if sde.num_ou and not (solver is None or isinstance(solver, str)):  # explicit stepping of stiff OU drifts
        dt = (sde.t1 - sde.t0) / num_steps
        gmax = float(np.max(np.asarray(sde.noise.gammas(jnp.float32))))
        if gmax * dt > 1.0:
            raise ConfigurationError(
                f"`num_steps`={num_steps} is too coarse for the fastest OU speed gamma_max={gmax:g}: need "
                f"gamma_max * dt <= 1, i.e. num_steps >= {math.ceil(gmax * (sde.t1 - sde.t0))}")
    if hurst_prior is not None and not learn_hurst:
        raise ConfigurationError("`hurst_prior` is only used with `learn_hurst=True`")
    optimizer = optax.adam(learning_rate) if optimizer is None else optimizer
    elbo_fn, init_fn = build_elbo(sde, times, obs, mask, control=control, fixed_params=fixed_params,
                                  learn_hurst=learn_hurst, hurst_prior=hurst_prior, num_steps=num_steps, refine=refine,
                                  refine_ratio=refine_ratio, solver=solver, dtype=dtype)
    k_init, k_loop, k_paths = jax.random.split(key, 3)
    state = init(init_fn(k_init, params), optimizer)

    def chunk(state, keys):
        return jax.lax.scan(lambda s, k: step(k, s, elbo_fn, optimizer, num_samples), state, keys)

    chunk_j = jax.jit(chunk)
    infos = []
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_iterations, desc="fit_vi")
    done = 0
    while done < num_iterations:
        n = min(chunk_size, num_iterations - done)
        keys = jax.vmap(lambda i: jax.random.fold_in(k_loop, i))(jnp.arange(done, done + n))
        state, info = chunk_j(state, keys)
        infos.append(info)
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(elbo=f"{float(info.elbo[-1]):.3f}")
    if bar is not None:
        bar.close()
    if infos:
        info = jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *infos)
    else:
        info = VIInfo(*(np.zeros((0,)) for _ in VIInfo._fields))
    if num_iterations and bool(np.all(info.nonfinite[-min(10, num_iterations):])):
        raise ConvergenceError("the ELBO or its gradient was non-finite for the last iterations; "
                               "reduce the learning rate or check the model callables")
    vp = state.params
    # final ELBO estimate and posterior paths from one compiled pass
    evaluate_j = jax.jit(elbo_fn.evaluate, static_argnums=2)
    per_draw, paths, hursts = evaluate_j(k_paths, vp, num_posterior_samples)
    per_draw = np.asarray(per_draw)
    final_elbo = float(per_draw.mean())
    final_se = float(per_draw.std(ddof=1) / math.sqrt(per_draw.size)) if per_draw.size > 1 else float("nan")
    elbo_fn.paths_jit = lambda k, v, n: evaluate_j(k, v, n)[1:]
    learned = {**jax.tree_util.tree_map(np.asarray, vp["model"]), **dict(fixed_params or {})}
    hursts = np.asarray(hursts)
    if learn_hurst and hurst_prior is not None:
        z = np.random.default_rng(0).standard_normal(20000)
        draws = 1 / (1 + np.exp(-(float(vp["hurst"]["loc"]) + np.exp(float(vp["hurst"]["log_scale"])) * z)))
        hurst, hurst_sd = float(draws.mean()), float(draws.std())
    elif learn_hurst:
        hurst, hurst_sd = float(jax.nn.sigmoid(vp["hurst"]["loc"])), None
    else:
        hurst, hurst_sd = float(getattr(sde.noise, "hurst", 0.5)), None
    return VIResult(
        params=learned, variational_params=vp, hurst=hurst, hurst_sd=hurst_sd, elbo=np.asarray(info.elbo),
        info=info, final_elbo=final_elbo, final_elbo_se=final_se, grid=np.asarray(elbo_fn.setup.grid),
        paths=np.asarray(paths), hurst_draws=hursts, times=times, observations=obs, sde=sde, elbo_fn=elbo_fn,
    )
