r"""The variational family of a (fractional) SDE posterior and its ELBO (Daems et al., ICLR 2024).

With the Markov approximation :math:`\hat B_H = \sum_k \omega_k (Y_k - Y_k(0))` the prior is a Markov
SDE for :math:`Z = (X, Y)` driven by one Brownian motion per state dimension
(:mod:`bayeskit.model.sde`). The variational posterior adds a control :math:`u(t, Z)` to the OU drifts,

.. math::
    dY_k = (-\gamma_k Y_k + u)\, dt + dW, \qquad
    dX = b\, dt + s \odot \textstyle\sum_k \omega_k\, dY_k ,

which changes the drift of Z only inside the column space of its diffusion, so by Girsanov's theorem
the path KL is :math:`E_Q \tfrac12 \int |u|^2 dt`. On the solver grid (the exact-OU scheme of
:func:`bayeskit.model.sde.solve_augmented`) the control is held over each step and the step noise
:math:`\xi_i = R_i z_i` (:math:`R_i R_i^\top` the exact OU transition covariance) may be rescaled to
:math:`R_i S_i z_i` with a learned lower-triangular :math:`S_i` per step and state dimension
(``noise_scale=True``; the default of :func:`~bayeskit.inference.sde.vi.fit_vi` when it learns H): the
posterior of a path pinned by a precise observation has less noise than
the prior just before it, which a control held over a step cannot produce. The Gaussian KL of that
rescaling, :math:`\tfrac12(\|S_i\|_F^2 - k - 2\log|\det S_i|)`, is exact, and
:math:`\tfrac12 |u_i|^2 \Delta_i` bounds the KL of the mean shift, so

.. math::
    \mathrm{ELBO} = \sum_{\text{series}} E_Q\Big[\sum_j \log p(y_j \mid X(t_j))
      - \sum_i \big(\tfrac12 |u_i|^2 \Delta_i + \mathrm{KL}_i(S_i)\big)\Big]
      - \mathrm{KL}(q(X_0) \,\|\, p(X_0)) - \mathrm{KL}(q(Y_0) \,\|\, p(Y_0))
      \;[- \mathrm{KL}(q(H) \,\|\, p(H))] \le \log p(y)

is a lower bound on the log-evidence of the discretised model for every H and step size. Without the
rescaling, the gap left by the piecewise-constant control grows as the noise gets rougher (small H),
which biases a learned H upwards unless the grid is refined heavily before every observation.

The variational parameters: the control (:class:`~bayeskit.inference.sde.controls.MLPControl` or
:class:`~bayeskit.inference.sde.controls.AffineControl`), per-series Gaussian :math:`q(X_0)` and
:math:`q(Y_0)` (full covariance in the OU coordinates whitened by the prior), the noise scales, the
model parameters (point estimates, i.e. variational EM) and the Hurst index: a point estimate
:math:`H = \mathrm{sigmoid}(\eta)` as in the paper, or with ``hurst_prior`` a logit-normal
:math:`q(H)`. In the latter case the path posterior depends on H: the affine control's coefficients,
the noise scales and the mean of :math:`q(Y_0)` move linearly in :math:`\operatorname{logit} H -
E_q \operatorname{logit} H`, so that each draw of H gets a path posterior fitted to it; a path
posterior shared by all draws makes the ELBO fall off faster in H than :math:`\log p(y \mid H)` and
q(H) several times too narrow. :math:`\omega(H)` is recomputed differentiably in closed form.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import ConfigurationError
from bayeskit.inference.sde.controls import MLPControl
from bayeskit.model.fbm import psd_sqrt
from bayeskit.model.sde import SDE, make_grid, solve_augmented

__all__ = ["build_elbo", "ElboSetup", "ElboData", "ElboStatic", "elbo_estimate", "elbo_evaluate"]


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


class ElboSetup(NamedTuple):
    """The data and the solver grid an ELBO was built for (``elbo_fn.setup``)."""

    grid: Any
    obs_index: Any
    times: Any
    observations: Any
    mask: Any


class ElboData(NamedTuple):
    """The arrays an ELBO program reads (a pytree, traced under ``jit``; ``elbo_fn.data``): the solver grid,
    the grid index of each observation time, the times, the (masked) observations, the mask, the fixed model
    parameters and the prior of H (a NumPyro distribution, or None)."""

    grid: Any
    obs_index: Any
    times: Any
    observations: Any
    mask: Any
    fixed_params: Any
    hurst_prior: Any


class _ByIdentity:
    """Hash and compare an object by identity (an SDE with array fields has no value hash)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj


class ElboStatic(NamedTuple):
    """What determines an ELBO program besides the shapes of :class:`ElboData` (hashable: the static argument
    of the jitted drivers; ``elbo_fn.static``). The model is compared by identity."""

    sde: Any
    control: Any
    learn_hurst: bool
    variational_hurst: bool
    solver: Any
    dtype: Any
    learn_noise: bool


def _draw(static, data, key, vp, num_samples, pick, antithetic=False):
    """Run one path for every series and ``num_samples`` paths; returns (outputs, hursts, kl_h).

    ``antithetic`` (training): the standard normal draws behind q(H) are stratified, in pairs
    ``(e, -e)`` that share the path noise, which takes most of the Monte Carlo noise out of the
    gradients in the width of q(H) and in the H-dependence of the path posterior; each draw keeps
    its marginal law, so the estimate stays unbiased.
    """
    sde, control, dtype = static.sde.obj, static.control, static.dtype
    fractional = bool(getattr(sde.noise, "fractional", False))
    d, K = sde.state_dim, sde.num_ou
    span = float(sde.t1 - sde.t0)
    learn_y0 = fractional and sde.noise.kind == "I"
    y0_sqrt = psd_sqrt(sde.noise.initial_covariance(dtype)) if learn_y0 else None
    variational_hurst = static.variational_hurst
    grid_j, times_j = jnp.asarray(data.grid, dtype), jnp.asarray(data.times, dtype)
    obs_j, mask_j, fixed_params = data.observations, data.mask, data.fixed_params
    num_series = obs_j.shape[0]

    def sample_hurst(eps, vp):
        if not fractional:
            return 0.5, jnp.zeros((), dtype)
        loc = vp["hurst"]["loc"]
        if not static.learn_hurst:
            return jax.lax.stop_gradient(jax.nn.sigmoid(loc)), jnp.zeros((), dtype)
        if not variational_hurst:
            return jax.nn.sigmoid(loc), jnp.zeros((), dtype)
        scale = jnp.exp(vp["hurst"]["log_scale"])
        logit_h = loc + scale * eps
        h = jax.nn.sigmoid(logit_h)
        # log q(H) = log N(logit H) - log H(1 - H); one-sample KL estimate (reparameterised)
        log_q = -0.5 * eps**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi) - jnp.log(h) - jnp.log1p(-h)
        return h, log_q - data.hurst_prior.log_prob(h)

    def one_path(key, vp, series, hurst):
        params = {**vp["model"], **fixed_params}
        offset = (jnp.log(hurst) - jnp.log1p(-hurst) - jax.lax.stop_gradient(vp["hurst"]["center"])
                  if variational_hurst else 0.0)
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
            m = vp["y0"]["mean"][series] + offset * vp["y0"]["mean_h"][series]
            L = _tril(vp["y0"]["tril_raw"][series])
            w = m + jnp.einsum("dij,dj->di", L, jax.random.normal(ky, (d, K), dtype))
            y0 = w @ y0_sqrt.T
            kl_y0 = jnp.sum(_kl_std_normal(m, L))
        else:
            y0 = jnp.zeros((d, K), dtype)
            kl_y0 = jnp.zeros((), dtype)

        def u(t, x, y):  # controls written for a fixed H take no offset
            extra = (offset,) if variational_hurst else ()
            return control.apply(vp["control"], series, (t - sde.t0) / span, x, y, hurst, *extra)

        factor = _tril(vp["noise"]["raw"] + offset * vp["noise"]["raw_h"]) if static.learn_noise else None
        path, kl_path = solve_augmented(kw, sde, params, grid_j, x0, y0, control=u, hurst=hurst, solver=static.solver,
                                        noise_factor=factor)
        xs = path[data.obs_index]

        def lp(x, t, y):
            return jnp.sum(sde.observation(params, x, t).log_prob(y))

        logliks = jax.vmap(lp)(xs, times_j, obs_j[series])
        loglik = jnp.sum(jnp.where(mask_j[series], logliks, 0.0))
        return loglik, kl_path, kl_x0, kl_y0, path

    kh, kp = jax.random.split(key)
    series = jnp.arange(num_series)
    if variational_hurst:
        if antithetic:
            half = (num_samples + 1) // 2
            u = (jnp.arange(half, dtype=dtype) + jax.random.uniform(kh, (), dtype)) / half
            e = jax.scipy.special.ndtri(u)
            eps = jnp.concatenate([e, -e])[:num_samples]
            keys = jax.random.split(kp, (num_series, half))
            keys = jnp.concatenate([keys, keys], axis=1)[:, :num_samples]
        else:
            eps = jax.random.normal(kh, (num_samples,), dtype)
            keys = jax.random.split(kp, (num_series, num_samples))
        hursts, kl_h = jax.vmap(lambda e_: sample_hurst(e_, vp))(eps)
        out = jax.vmap(lambda ks, s: jax.vmap(lambda k, h: pick(one_path(k, vp, s, h)))(ks, hursts))(keys, series)
    else:  # one H for all paths: the weights are computed once per call
        keys = jax.random.split(kp, (num_series, num_samples))
        h, _ = sample_hurst(None, vp)
        hursts, kl_h = jnp.full((num_samples,), h, dtype), jnp.zeros((num_samples,), dtype)
        out = jax.vmap(lambda ks, s: jax.vmap(lambda k: pick(one_path(k, vp, s, h)))(ks))(keys, series)
    return out, hursts, kl_h


def elbo_estimate(static: ElboStatic, data: ElboData, key, vp, num_samples: int):
    """``elbo_fn(key, vp, num_samples)`` of :func:`build_elbo` with its static part and data as arguments.

    Args:
        static: ``elbo_fn.static``.
        data: ``elbo_fn.data`` (or other arrays of the same structure).
        key: a ``jax.random`` key.
        vp: the variational parameters.
        num_samples: Monte Carlo paths per series.
    """
    out, hursts, kl_h = _draw(static, data, key, vp, num_samples, lambda o: o[:4], antithetic=True)
    loglik, kl_path, kl_x0, kl_y0 = (jnp.mean(o, axis=1).sum() for o in out)
    kl_hurst = jnp.mean(kl_h)
    elbo = loglik - kl_path - kl_x0 - kl_y0 - kl_hurst
    aux = {"loglik": loglik, "kl_path": kl_path, "kl_x0": kl_x0, "kl_y0": kl_y0, "kl_hurst": kl_hurst,
           "hurst": jnp.mean(hursts)}
    return elbo, aux


def elbo_evaluate(static: ElboStatic, data: ElboData, key, vp, num_samples: int):
    """``elbo_fn.evaluate(key, vp, num_samples)`` of :func:`build_elbo` with its static part and data as arguments.

    Args:
        static: ``elbo_fn.static``.
        data: ``elbo_fn.data``.
        key: a ``jax.random`` key.
        vp: the variational parameters.
        num_samples: paths per series.
    """
    (loglik, kl_path, kl_x0, kl_y0, paths), hursts, kl_h = _draw(static, data, key, vp, num_samples, lambda o: o)
    per_draw = jnp.sum(loglik - kl_path - kl_x0 - kl_y0, axis=0) - kl_h
    return per_draw, paths, hursts


def build_elbo(sde: SDE, times, observations, mask=None, *, control=None, fixed_params=None,
               learn_hurst=False, hurst_prior=None, num_steps=200, refine=4, refine_ratio=2.0, solver=None,
               dtype=None, noise_scale=False):
    r"""Return ``(elbo_fn, init_fn)`` for the model and data.

    ``init_fn(key, params) -> variational_params`` (a pytree: ``model`` parameters, ``control``,
    ``x0``, ``y0``, ``noise`` (step-noise scales, ``noise_scale=True``), ``hurst``);
    ``elbo_fn(key, variational_params, num_samples) -> (elbo, aux)`` is an unbiased estimate of the
    ELBO (sum over series) with ``aux`` a dict of its parts (``loglik``, ``kl_path`` (control and
    noise scales), ``kl_x0``, ``kl_y0``, ``kl_hurst``, ``hurst``). Both are pure and jittable. The
    arguments are those of :func:`bayeskit.inference.sde.vi.fit_vi`.

    ``elbo_fn`` closes over the data: jitting a fresh ``elbo_fn`` compiles a fresh program. To compile once
    for many data sets of the same shapes, jit :func:`elbo_estimate` with ``elbo_fn.static`` as a static
    argument and pass ``elbo_fn.data`` (an :class:`ElboData`) as an argument, as
    :func:`~bayeskit.inference.sde.vi.fit_vi` does.
    """
    control = MLPControl() if control is None else control
    fixed_params = dict(fixed_params or {})
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    grid, obs_index = make_grid(sde.t0, sde.t1, times, num_steps, refine, refine_ratio)
    obs_j = jnp.asarray(observations, dtype)
    num_series = obs_j.shape[0]
    mask_j = jnp.ones(obs_j.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    obs_j = jnp.where(mask_j.reshape(mask_j.shape + (1,) * (obs_j.ndim - 2)), obs_j, 0.0)
    d, K = sde.state_dim, sde.num_ou
    fractional = bool(getattr(sde.noise, "fractional", False))
    if learn_hurst and not fractional:
        raise ConfigurationError("`learn_hurst=True` needs a fractional noise: pass noise=bk.sde.FractionalBM(...)")
    hurst0 = float(getattr(sde.noise, "hurst", 0.5))
    learn_y0 = fractional and sde.noise.kind == "I"
    variational_hurst = learn_hurst and hurst_prior is not None
    learn_noise = noise_scale and (solver is None or solver == "exact_ou")
    k_noise = max(K, 1)
    static = ElboStatic(_ByIdentity(sde), control, bool(learn_hurst), bool(variational_hurst), solver, dtype,
                        bool(learn_noise))
    data = ElboData(jnp.asarray(grid, dtype), jnp.asarray(obs_index), jnp.asarray(times, dtype), obs_j, mask_j,
                    fixed_params, hurst_prior if variational_hurst else None)

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
        if learn_noise:
            eye = jnp.eye(k_noise, dtype=dtype) * _softplus_inv(1.0)
            vp["noise"] = {"raw": jnp.tile(eye, (grid.shape[0] - 1, d, 1, 1)),
                           "raw_h": jnp.zeros((grid.shape[0] - 1, d, k_noise, k_noise), dtype)}
        if learn_y0:
            vp["y0"]["mean_h"] = jnp.zeros((num_series, d, K), dtype)
        if fractional:  # also when H is fixed: a traced H lets one compiled step serve several H (vmap)
            vp["hurst"] = {"loc": jnp.asarray(_logit(hurst0), dtype)}
            if variational_hurst:
                vp["hurst"]["log_scale"] = jnp.asarray(math.log(0.1), dtype)
                vp["hurst"]["center"] = jnp.asarray(_logit(hurst0), dtype)  # see recenter_hurst
        return vp

    def elbo_fn(key, vp, num_samples):
        return elbo_estimate(static, data, key, vp, num_samples)

    def paths_fn(key, vp, num_samples):
        """Posterior paths on the grid: ``(num_series, num_samples, len(grid), d)`` and the H draws."""
        paths, hursts, _ = _draw(static, data, key, vp, num_samples, lambda o: o[4])
        return paths, hursts

    def evaluate_fn(key, vp, num_samples):
        """One pass: per-draw ELBO terms ``(num_samples,)`` (summed over series) and the paths."""
        return elbo_evaluate(static, data, key, vp, num_samples)

    elbo_fn.paths = paths_fn
    elbo_fn.evaluate = evaluate_fn
    elbo_fn.setup = ElboSetup(grid, obs_index, np.asarray(times), observations, mask)
    elbo_fn.static = static
    elbo_fn.data = data
    return elbo_fn, init_fn
