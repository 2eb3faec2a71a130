r"""Posterior inference for the dynamics models of GPDP, all through NumPyro.

* :func:`fit_gp`: hyperparameters :math:`(\ell, \sigma_n, \dots)` of the GP model of
  :mod:`bayeskit.model.gp` by NUTS (default) or MAP (L-BFGS on NumPyro's unconstrained potential).
* :func:`fit_parametric`: Ricker / Allen / Myers (:mod:`bayeskit.models.fisheries`) by NUTS with
  the paper's uniform priors, plus the maximum-likelihood estimate (started from the best draw),
  the pointwise log-likelihood matrix, and the model-selection criteria
  WAIC (Watanabe 2010), PSIS-LOO (through ArviZ), AIC and BIC, all on the deviance scale
  (:math:`-2 \times` log predictive density; lower is better).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import initialize_model, log_likelihood

from bayeskit._checks import renamed_kwargs
from bayeskit.model import gp as gpm
from bayeskit.models import fisheries
from bayeskit.progress import progress, tick

__all__ = ["GPPosterior", "fit_gp", "ParametricFit", "fit_parametric", "model_selection", "waic"]


class GPPosterior(NamedTuple):
    """Posterior over GP hyperparameters.

    Fields:
        data: :class:`bayeskit.model.gp.GPData` the GP is conditioned on.
        draws: name -> (num_chains, num_draws) hyperparameter draws (fixed ones as scalars).
        diverging: (num_chains, num_draws) bool NUTS divergences (all False for MAP).
        kernel: the kernel function.
        method: ``"nuts"`` or ``"map"``.
    """

    data: Any
    draws: dict
    diverging: jax.Array
    kernel: Callable
    method: str

    def flat_draws(self, num_samples: int | None = None, **deprecated) -> dict:
        """Draws with chains merged (sampled hyperparameters (D,), fixed ones scalars), optionally
        thinned evenly to ``num_samples`` draws (``num_draws`` before this release; the old name warns)."""
        num_samples = renamed_kwargs("GPPosterior.flat_draws", deprecated, {"num_draws": "num_samples"}).get(
            "num_samples", num_samples)
        out = {}
        for k, v in self.draws.items():
            v = jnp.asarray(v)
            if v.ndim >= 2:
                v = v.reshape(-1)
                if num_samples is not None and num_samples < v.shape[0]:
                    v = v[jnp.linspace(0, v.shape[0] - 1, num_samples).round().astype(int)]
            out[k] = v
        return out

    def predict(self, test_inputs, num_samples: int | None = None, **deprecated):
        """Predictive mean and latent variance at ``test_inputs`` for every draw, the draws thinned evenly to
        ``num_samples`` (``num_draws`` before this release; the old name warns): (D, *shape) each."""
        num_samples = renamed_kwargs("GPPosterior.predict", deprecated, {"num_draws": "num_samples"}).get(
            "num_samples", num_samples)
        return gpm.predict_draws(self.data, self.flat_draws(num_samples), test_inputs, kernel=self.kernel)


def _is_pytree(v) -> bool:
    leaves = jax.tree_util.tree_leaves(v)
    return not (len(leaves) == 1 and leaves[0] is v)


@partial(jax.jit, static_argnames=("model", "static_kwargs"))
def _potential_value_and_grad(params, args, dynamic_kwargs, *, model, static_kwargs):
    from numpyro.infer.util import potential_energy

    kwargs = {**dynamic_kwargs, **dict(static_kwargs)}
    return jax.value_and_grad(lambda p: potential_energy(model, args, kwargs, p))(params)


def _map_estimate(key, model, *args, num_starts: int = 8, **kwargs):
    """Posterior mode by L-BFGS (scipy) on NumPyro's potential in unconstrained space, the best of
    ``num_starts`` starts drawn by NumPyro's ``init_to_uniform`` (the GP posterior can have a second,
    prior-dominated mode at very long length-scales)."""
    from scipy.optimize import minimize

    info, _, postprocess_fn, _ = initialize_model(key, model, model_args=args, model_kwargs=kwargs,
                                                             dynamic_args=False)
    flat0, unravel = jax.flatten_util.ravel_pytree(info.z)
    dtype = flat0.dtype
    # one compiled potential per (model, callable options, shapes): the data and priors are arguments
    static = tuple(sorted((k, v) for k, v in kwargs.items() if callable(v) and not _is_pytree(v)))
    dynamic = {k: v for k, v in kwargs.items() if k not in dict(static)}

    def fun(z):
        v, g = _potential_value_and_grad(unravel(jnp.asarray(z, dtype)), args, dynamic, model=model,
                                         static_kwargs=static)
        g = jax.flatten_util.ravel_pytree(g)[0]
        v = float(v)
        if not np.isfinite(v):
            return 1e30, np.zeros_like(z)
        return v, np.asarray(g, dtype=float)

    starts = [np.asarray(flat0, dtype=float)]
    starts += list(np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (num_starts - 1, flat0.shape[0]),
                                                 minval=-2.0, maxval=2.0), dtype=float))
    best = None
    for z0 in starts:
        res = minimize(fun, z0, jac=True, method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    return postprocess_fn(unravel(jnp.asarray(best.x, dtype))), best


@functools.lru_cache(maxsize=32)
def _nuts_sampler(kernel: Callable):
    """NumPyro's NUTS on :func:`bayeskit.model.gp.gp_regression_model` with covariance function ``kernel``: one
    object per kernel, the static argument of :func:`_run_nuts` (so repeated fits reuse its compiled program)."""
    return NUTS(partial(gpm.gp_regression_model, kernel=kernel))


def _dynamic_priors(priors: Mapping) -> dict:
    """The priors as a pytree of arrays (distributions are pytrees; fixed values become arrays), traced by
    :func:`_run_nuts`: new prior parameters of the same structure reuse its program."""
    return {k: v if isinstance(v, numpyro.distributions.Distribution) else jnp.asarray(v) for k, v in priors.items()}


@partial(jax.jit, static_argnames=("sampler", "num_warmup", "num_samples", "num_chains", "progress_bar"))
def _run_nuts(key, data, priors, *, sampler, num_warmup, num_samples, num_chains, progress_bar):
    """``num_chains`` vectorised NUTS chains (``num_warmup`` adaptation steps, then ``num_samples`` kept) on the GP
    hyperparameter posterior, as NumPyro's ``MCMC.run`` does them, in one compiled program; returns
    ``(draws (num_chains, num_samples) per site, diverging (num_chains, num_samples))``."""
    model_args, model_kwargs = (data,), {"priors": priors}
    total = num_warmup + num_samples

    def chain(k):
        state = sampler.init(k, num_warmup, model_args=model_args, model_kwargs=model_kwargs)

        def one(state, i):
            state = sampler.sample(state, model_args, model_kwargs)
            tick(i + 1, total, progress_bar)
            return state, (state.z, state.diverging)

        _, (zs, diverging) = jax.lax.scan(one, state, jnp.arange(total))
        keep = jax.tree_util.tree_map(lambda a: a[num_warmup:], zs)
        sites = jax.vmap(sampler.postprocess_fn(model_args, model_kwargs))(keep)
        return sites, diverging[num_warmup:]

    keys = jax.random.split(key, num_chains) if num_chains > 1 else key[None]
    return jax.vmap(chain)(keys)


def fit_gp(key, data, *, kernel: Callable = gpm.squared_exponential, priors: Mapping | None = None,
           method: str = "nuts", num_warmup: int = 500, num_samples: int = 500, num_chains: int = 1,
           progress_bar: bool = False) -> GPPosterior:
    """Fit GP hyperparameters to ``data`` (a :class:`~bayeskit.model.gp.GPData`) by NUTS or MAP.

    The NumPyro model is :func:`bayeskit.model.gp.gp_regression_model` (function values marginalised,
    so NUTS moves only in the few hyperparameters). The paper used random-walk Metropolis; NUTS
    targets the same posterior. NUTS runs as NumPyro's vectorised chains in one jitted program, compiled once
    per ``kernel`` function, prior structure, data shape and sampler sizes: pass the same ``kernel`` object
    on every call (a fresh lambda per call is a new program); new data and prior parameters reuse it.
    """
    priors = dict(gpm.default_priors() if priors is None else priors)
    fixed = {k: jnp.asarray(v) for k, v in priors.items() if not isinstance(v, numpyro.distributions.Distribution)}
    if method == "map":
        params, _ = _map_estimate(key, gpm.gp_regression_model, data, kernel=kernel, priors=priors)
        draws = {k: jnp.asarray(v).reshape(1, 1) for k, v in params.items()}
        diverging = jnp.zeros((1, 1), bool)
    else:
        with progress(progress_bar, num_warmup + num_samples, "fit_gp"):
            draws, diverging = _run_nuts(key, data, _dynamic_priors(priors), sampler=_nuts_sampler(kernel),
                                         num_warmup=int(num_warmup), num_samples=int(num_samples),
                                         num_chains=int(num_chains), progress_bar=bool(progress_bar))
            jax.block_until_ready(diverging)
        draws = dict(draws)
    draws.update(fixed)
    return GPPosterior(data, draws, diverging, kernel, method)


def waic(log_lik) -> tuple[float, float]:
    """WAIC on the deviance scale, :math:`-2(\\text{lppd} - p_\\text{WAIC})`, and :math:`p_\\text{WAIC}`,
    from a (num_samples, num_observations) log-likelihood matrix (ArviZ 1.x has no WAIC)."""
    from scipy.special import logsumexp

    ll = np.asarray(log_lik, dtype=float)
    lppd = logsumexp(ll, axis=0) - np.log(ll.shape[0])
    p = np.var(ll, axis=0, ddof=1)
    return float(-2.0 * np.sum(lppd - p)), float(np.sum(p))


@dataclass(frozen=True)
class ParametricFit:
    """A parametric growth model fitted by NUTS, with its MLE and information criteria.

    Attributes:
        growth: ``"ricker"``, ``"allen"`` or ``"myers"``.
        draws: name -> (num_chains, num_draws) posterior draws (growth parameters and ``sigma``).
        log_likelihood: (num_chains, num_draws, T - 1) pointwise log-likelihood.
        diverging: (num_chains, num_draws) NUTS divergences.
        mle: name -> float maximum-likelihood estimate.
        max_log_likelihood: log-likelihood at the MLE.
        series: (T,) the data.
    """

    growth: str
    draws: dict
    log_likelihood: np.ndarray
    diverging: np.ndarray
    mle: dict
    max_log_likelihood: float
    series: np.ndarray
    criteria: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return len(fisheries.PARAMETER_NAMES[self.growth]) + 1

    def flat_draws(self, num_samples: int | None = None, **deprecated) -> dict:
        """Chains merged, optionally thinned evenly to ``num_samples`` draws (``num_draws`` before this release;
        the old name warns): name -> (D,)."""
        num_samples = renamed_kwargs("ParametricFit.flat_draws", deprecated, {"num_draws": "num_samples"}).get(
            "num_samples", num_samples)
        out = {k: np.asarray(v).reshape(-1) for k, v in self.draws.items()}
        n = next(iter(out.values())).shape[0]
        if num_samples is not None and num_samples < n:
            idx = np.linspace(0, n - 1, num_samples).round().astype(int)
            out = {k: v[idx] for k, v in out.items()}
        return out

    def to_arviz(self):
        """ArviZ DataTree: posterior, log_likelihood, sample_stats, observed_data."""
        from bayeskit.diagnostics import to_datatree

        return to_datatree(
            {"posterior": {k: np.asarray(v) for k, v in self.draws.items()},
             "log_likelihood": {"x": self.log_likelihood},
             "sample_stats": {"diverging": self.diverging},
             "observed_data": {"x": self.series[1:]}},
            dims={"x": ["transition"]}, attrs={"growth": self.growth, "method": "gpdp.fit_parametric"})


def _log_lik_fn(growth, series):
    series = jnp.asarray(series)

    def ll(params):
        loc = fisheries.log_growth(growth, series[:-1], params)
        return jnp.sum(jax.scipy.stats.norm.logpdf(jnp.log(series[1:]), loc, params["sigma"]) - jnp.log(series[1:]))

    return ll


def _mle(growth, series, start: Mapping):
    """Maximise the log-likelihood (L-BFGS on log-parameters) from ``start``."""
    from scipy.optimize import minimize

    names = list(fisheries.PARAMETER_NAMES[growth]) + ["sigma"]
    ll = _log_lik_fn(growth, series)
    dtype = jnp.asarray(series).dtype

    def negll(z):
        return -ll({n: jnp.exp(z[i]) for i, n in enumerate(names)})

    vg = jax.jit(jax.value_and_grad(negll))

    def fun(z):
        v, g = vg(jnp.asarray(z, dtype))
        v = float(v)
        if not np.isfinite(v):
            return 1e30, np.zeros_like(z)
        return v, np.asarray(g, dtype=float)

    z0 = np.log([float(start[n]) for n in names])
    res = minimize(fun, z0, jac=True, method="L-BFGS-B")
    est = {n: float(np.exp(res.x[i])) for i, n in enumerate(names)}
    return est, float(-res.fun)


def fit_parametric(key, series, growth: str, *, priors: Mapping | None = None, num_warmup: int = 500,
                   num_samples: int = 500, num_chains: int = 1, progress_bar: bool = False) -> ParametricFit:
    """Fit a parametric growth model to an (unharvested) stock series by NUTS; MLE; WAIC/LOO/AIC/BIC.

    ``series`` is the stock trajectory :math:`x_1, \\dots, x_T` (all > 0); the likelihood is
    :math:`\\prod_t \\operatorname{LogNormal}(x_{t+1}; \\log f(x_t), \\sigma)`, as in the paper's JAGS
    models. AIC :math:`= -2 \\hat\\ell + 2k`, BIC :math:`= -2 \\hat\\ell + k \\log n` with
    :math:`k` = growth parameters + σ, n = number of transitions.
    """
    import warnings

    import arviz as az

    series = np.asarray(series)
    dtype = jnp.result_type(float)
    x = jnp.asarray(series, dtype)
    model = fisheries.growth_model
    mcmc = MCMC(NUTS(model, init_strategy=numpyro.infer.init_to_median), num_warmup=num_warmup,
                num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized" if num_chains > 1 else "sequential", progress_bar=progress_bar)
    mcmc.run(key, x, growth=growth, priors=priors, extra_fields=("diverging",))
    samples = mcmc.get_samples(group_by_chain=True)
    draws = {k: np.asarray(v) for k, v in samples.items()}
    flat = {k: v.reshape(-1) for k, v in draws.items()}
    ll = log_likelihood(model, {k: jnp.asarray(v) for k, v in flat.items()}, x, growth=growth, priors=priors)["x"]
    ll = np.asarray(ll)
    total = ll.sum(axis=1)
    best = int(np.argmax(total))
    mle, max_ll = _mle(growth, x, {k: v[best] for k, v in flat.items()})
    if max_ll < total[best]:  # optimiser failed: keep the best draw
        mle, max_ll = {k: float(v[best]) for k, v in flat.items()}, float(total[best])
    ll_cd = ll.reshape(num_chains, -1, ll.shape[-1])
    n = series.shape[0] - 1
    k = len(fisheries.PARAMETER_NAMES[growth]) + 1
    w, p_w = waic(ll)
    fit = ParametricFit(growth, draws, ll_cd, np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"]),
                        mle, max_ll, series)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(fit.to_arviz())
    criteria = {"waic": w, "p_waic": p_w, "loo": float(-2.0 * loo.elpd), "p_loo": float(loo.p),
                "aic": -2.0 * max_ll + 2 * k, "bic": -2.0 * max_ll + k * np.log(n),
                "max_pareto_k": float(np.max(np.asarray(loo.pareto_k)))}
    object.__setattr__(fit, "criteria", criteria)
    return fit


def model_selection(fits: Mapping[str, ParametricFit]) -> dict:
    """Table ``{criterion: {model: value}}`` plus ``{"selected": {criterion: model}}`` (lowest wins)."""
    crits = ("waic", "loo", "aic", "bic")
    table = {c: {name: f.criteria[c] for name, f in fits.items()} for c in crits}
    table["selected"] = {c: min(table[c], key=table[c].get) for c in crits}
    return table
