r"""Learning in state-space models with PaRIS / PPG: maximum likelihood and Markov score climbing.

**MLE.** By Fisher's identity the score is a smoothed additive functional,

.. math::
    \nabla_\theta \log p_\theta(y_{0:T-1}) = \mathbb E_\theta\Big[\sum_{t} \tilde h_t(X_{t-1}, X_t) \,\Big|\, y_{0:T-1}\Big],
    \qquad \tilde h_t(x_{t-1}, x_t) = \nabla_\theta \log\big(m_{\theta,t}(x_{t-1}, x_t)\, g_{\theta,t}(x_t, y_t)\big),

(:math:`m_{\theta,0}(\cdot, x_0) = \chi_\theta(x_0)`), with :math:`\tilde h_t` from ``jax.grad`` of the model's own
log-densities. Each iteration estimates it with PaRIS (a fresh filter) or with one PPG sweep whose frozen path is
*kept across parameter updates* (Cardoso et al. 2023, the PPG-driven stochastic approximation), and takes an
optax step :math:`\theta \leftarrow \theta + \gamma_\ell \hat s_\ell / T` on unconstrained parameters
:math:`z = T^{-1}(\theta)` (NumPyro ``biject_to`` of each parameter's constraint; the MLE is invariant).

**Markov score climbing** (Naesseth, Lindsten & Blei 2020) fits a Markov variational family
:math:`q_\lambda(x_{0:T-1}) = q_{\lambda,0}(x_0 \mid y_0) \prod_t q_{\lambda,t}(x_t \mid x_{t-1}, y_t)` by minimising the
inclusive KL :math:`\mathrm{KL}(p_\theta(\cdot \mid y) \,\|\, q_\lambda)`, whose gradient
:math:`-\mathbb E_{p_\theta(\cdot\mid y)}[\nabla_\lambda \log q_\lambda(X)]` is again a smoothed additive functional;
the expectation is estimated by a PPG (conditional SMC) Markov chain kept across the updates of :math:`\lambda`
whose proposal is the current :math:`q_\lambda` itself (particles move with :math:`q_\lambda`, weights
:math:`m_\theta g_\theta / q_\lambda`, backward kernels from :math:`m_\theta`), as in Naesseth et al.: the chain leaves
:math:`p_\theta(x \mid y)` invariant for every :math:`\lambda` and mixes better as :math:`q_\lambda` approaches it.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ConvergenceError, ModelError
from bayeskit.inference.smc._csmc import step_log_density
from bayeskit.inference.smc._feynman_kac import Proposal, bootstrap, guided
from bayeskit.inference.smc._filtering import check_model_params
from bayeskit.inference.smc._backward import DEFAULT_NUM_TRIALS, check_backward_model, log_bound_fn
from bayeskit.inference.smc._paris import leaves_dict, run_paris
from bayeskit.inference.smc._ppg import conditional_paris, initial_reference
from bayeskit.inference.smc.resampling import adaptive
from bayeskit.progress import run_chunked

__all__ = ["FitResult", "fit", "score"]


def _bijectors(constraints, params):
    from numpyro.distributions import constraints as C
    from numpyro.distributions.transforms import biject_to

    out = {}
    for k in params:
        c = constraints.get(k, C.real) if constraints else C.real
        out[k] = biject_to(c)
    return out


def _constraints_from_prior(ssm, params):
    """Constraints of the parameters from the supports of ``ssm.prior``'s sample sites (matched by value)."""
    from numpyro import handlers

    if ssm.prior is None or not isinstance(params, dict):
        return {}
    tr = handlers.trace(handlers.seed(ssm.prior, jax.random.key(0))).get_trace()
    out = handlers.seed(handlers.substitute(ssm.prior, data={k: v["value"] for k, v in tr.items()}),
                        jax.random.key(0))()
    cons = {}
    if isinstance(out, dict):
        for name, val in out.items():
            for site in tr.values():
                if site["type"] == "sample" and site["value"] is val:
                    cons[name] = site["fn"].support
    return cons


def score(ssm, params, ys, t, x_prev, x):
    """:math:`\\tilde h_t = \\nabla_\\theta \\log(m_{\\theta,t}(x_{t-1}, x_t) g_{\\theta,t}(x_t, y_t))` for one state."""
    return jax.grad(lambda p: step_log_density(ssm, p, t, x_prev, x, ys[t]))(params)


@partial(jax.tree_util.register_dataclass,
         data_fields=["params", "history", "estimates", "log_evidence", "final_path"],
         meta_fields=["method", "estimator", "num_particles", "num_iterations"])
@dataclasses.dataclass(frozen=True)
class FitResult:
    """Output of :func:`fit`.

    Attributes:
        params: the final parameters (constrained; fixed ones included) — for ``method="msc"``, the final
            variational parameters :math:`\\lambda`.
        history: the learned parameters at every iteration (leading axis ``num_iterations``).
        estimates: the gradient estimates (score, or :math:`\\mathbb E_p[\\nabla_\\lambda \\log q_\\lambda]`) in
            unconstrained coordinates, at every iteration.
        log_evidence: (num_iterations,) PaRIS log-likelihood estimate at the current parameters (NaN with PPG).
        final_path: the PPG frozen path at the end (None with PaRIS).
    """

    params: Any
    history: Any
    estimates: Any
    log_evidence: Any
    final_path: Any
    method: str
    estimator: str
    num_particles: int
    num_iterations: int

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the final parameters as one draw: a point
        estimate), ``optimization`` (the parameter history, gradient estimates and log-likelihood estimates
        over ``iteration``), attributes (method, estimator, N)."""
        from bayeskit.diagnostics import one_run, to_datatree

        final = {k.lstrip("_"): v for k, v in leaves_dict("", self.params).items()}
        hist = {k.lstrip("_"): v for k, v in leaves_dict("", self.history).items()}
        est = leaves_dict("gradient", self.estimates)
        variables = {**hist, **est, "log_evidence": np.asarray(self.log_evidence)}
        dims = {f"optimization/{k}": ["iteration"] for k in variables}
        return to_datatree({"posterior": one_run(final), "optimization": variables}, dims=dims,
                           coords={"iteration": np.arange(self.num_iterations)},
                           attrs={"method": self.method, "estimator": self.estimator,
                                  "num_particles": self.num_particles})


def _q_log_density(variational, ys, lam, t, x_prev, x):
    if x_prev is None:
        return jnp.sum(variational.initial(lam, ys[0]).log_prob(x))
    return jnp.sum(variational.transition(lam, x_prev, ys[t], t).log_prob(x))


@partial(jax.jit, static_argnames=("ssm", "method", "estimator", "optimizer", "num_particles", "num_backward",
                                   "num_trials", "variational"))
def _fit_chunk(carry, keys, *, ys, fixed_params, bij, ssm, method, estimator, optimizer, num_particles,
               num_backward, num_trials, variational):
    """A scan of ``fit`` iterations over ``keys`` from ``carry = (z, opt_state, path)``."""
    import optax

    T = ys.shape[0]

    def constrain(z):
        return {k: bij[k](v) for k, v in z.items()}

    def functional_for(z):
        if method == "mle":
            def h(t, x_prev, x):
                return jax.grad(lambda zz: step_log_density(ssm, {**fixed_params, **constrain(zz)}, t, x_prev, x,
                                                            ys[t]))(z)
        else:
            def h(t, x_prev, x):
                return jax.grad(lambda zz: _q_log_density(variational, ys, constrain(zz), t, x_prev, x))(z)
        return h

    def model_params(z):
        return {**fixed_params, **constrain(z)} if method == "mle" else fixed_params

    def feynman_kac(z, theta):
        if method == "mle":
            return bootstrap(ssm, theta, ys)
        lam = constrain(z)  # MSC: the cSMC moves with the current q_lambda and weights by m g / q_lambda
        q = Proposal(initial=lambda _p, y0: variational.initial(lam, y0),
                     transition=lambda _p, x_prev, y, t: variational.transition(lam, x_prev, y, t),
                     vectorized=variational.vectorized)
        return guided(ssm, theta, ys, q)

    def iteration(carry, k):
        z, opt_state, path = carry
        theta = model_params(z)
        fk = feynman_kac(z, theta)
        h = functional_for(z)
        bound = log_bound_fn(ssm, theta, None)
        if estimator == "paris":
            out = run_paris(k, fk, num_particles, h, strategy=adaptive("systematic", 0.5), num_backward=num_backward,
                            log_bound=bound, num_trials=num_trials)
            est, logz = out.estimate, out.state.log_evidence
        else:
            out = conditional_paris(k, fk, path, num_particles, h, num_backward=num_backward, log_bound=bound,
                                    num_trials=num_trials)
            est, path, logz = out.estimate, out.path, jnp.asarray(jnp.nan)
        grad = jax.tree_util.tree_map(lambda g: -g / T, est)
        updates, opt_state = optimizer.update(grad, opt_state, z)
        z = optax.apply_updates(z, updates)
        return (z, opt_state, path), (constrain(z), est, logz)

    return jax.lax.scan(iteration, carry, keys)


@functools.lru_cache(maxsize=1)
def _default_optimizer():
    # one object, so that calls with the default optimizer share their compiled program
    import optax

    return optax.adam(1e-2)


def fit(key, ssm, init_params, ys, *, method: str = "mle", estimator: str = "ppg", optimizer=None,
        num_iterations: int = 500, num_particles: int = 100, num_backward: int = 2,
        constraints: dict | None = None, fixed_params: dict | None = None, variational: Proposal | None = None,
        num_trials: int = DEFAULT_NUM_TRIALS, progress_bar: bool = False, num_chunks: int = 20) -> FitResult:
    r"""Learn parameters by stochastic gradient on PaRIS / PPG smoothed estimates.

    Args:
        key: ``jax.random`` key.
        ssm: a :class:`~bayeskit.StateSpaceModel`.
        init_params: a dict. For ``method="mle"``: the initial values of the parameters to learn. For
            ``method="msc"``: the initial variational parameters :math:`\lambda`.
        ys: observations (T, ...).
        method: ``"mle"`` (Fisher-identity score ascent) or ``"msc"`` (Markov score climbing of
            ``variational``).
        estimator: ``"ppg"`` (one conditional PaRIS sweep per iteration, frozen path kept across updates) or
            ``"paris"`` (a fresh PaRIS filter per iteration; MLE only).
        optimizer: an ``optax.GradientTransformation`` (default ``optax.adam(1e-2)``); it minimises the negative
            score divided by T.
        num_iterations: optimisation steps.
        num_particles: N >= 2.
        num_backward: K >= 1 backward draws per particle.
        num_trials: rejection-sampling trials before the exact fallback (as in :func:`~bayeskit.smc.paris`).
        constraints: ``{name: numpyro.distributions.constraints.*}`` for the learned parameters (default: the
            supports of ``ssm.prior``'s sites, else real); optimisation runs in unconstrained space.
        fixed_params: parameters held fixed (MLE: merged with the learned ones; MSC: the model's parameters).
        variational: for ``method="msc"``, a :class:`~bayeskit.smc.Proposal` whose callables take
            :math:`\lambda` as their ``params``: ``initial(lam, y0)``, ``transition(lam, x_prev, y_t, t)``. It is
            also the conditional SMC's proposal at the current :math:`\lambda` (weights :math:`m g / q_\lambda`).
        progress_bar: a tqdm bar over ``num_chunks`` jitted chunks.

    Returns:
        :class:`FitResult`.

    Raises:
        ConvergenceError: the estimates became non-finite.

    Example:
        >>> import jax, optax, numpyro.distributions as dist, bayeskit as bk
        >>> ar = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
        ...                         lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
        ...                         lambda p, x, t: dist.Normal(x, 0.5))
        >>> _, ys = ar.simulate(jax.random.key(0), {"rho": 0.8}, 100)
        >>> res = bk.smc.fit(jax.random.key(1), ar, {"rho": 0.3}, ys, num_iterations=20, num_particles=20,
        ...                  optimizer=optax.adam(0.05))
        >>> res.history["rho"].shape
        (20,)
    """
    _checks.check_key(key)
    _checks.check_choice(method, "method", {"mle", "msc"})
    _checks.check_choice(estimator, "estimator", {"ppg", "paris"})
    num_iterations = _checks.check_positive_int(num_iterations, "num_iterations")
    num_particles = _checks.check_positive_int(num_particles, "num_particles", 2)
    num_backward = _checks.check_positive_int(num_backward, "num_backward")
    num_trials = _checks.check_positive_int(num_trials, "num_trials", 0)
    if not isinstance(init_params, dict) or not init_params:
        raise ConfigurationError("`init_params` must be a non-empty dict of the parameters to learn")
    fixed_params = dict(fixed_params or {})
    optimizer = _default_optimizer() if optimizer is None else optimizer
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ConfigurationError("`optimizer` must be an optax.GradientTransformation")
    ys = jnp.asarray(ys)
    T = ys.shape[0]
    init_params = {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in init_params.items()}

    if method == "mle":
        model_params0 = {**fixed_params, **init_params}
        if constraints is None:
            constraints = _constraints_from_prior(ssm, init_params)
    else:
        if estimator != "ppg":
            raise ConfigurationError("`method='msc'` runs a Markov chain: use `estimator='ppg'`")
        if not isinstance(variational, Proposal):
            raise ConfigurationError("`method='msc'` needs `variational=bk.smc.Proposal(initial, transition)` "
                                     "whose callables take the variational parameters as `params`")
        model_params0 = fixed_params
        constraints = constraints or {}
    check_model_params(ssm, model_params0, "init_params" if method == "mle" else "fixed_params")
    ssm.validate(model_params0, ys)
    check_backward_model(ssm, model_params0, None, num_trials)
    bij = _bijectors(constraints, init_params)
    for k, v in init_params.items():
        if not bool(jnp.all(bij[k].codomain(v))):
            raise ConfigurationError(f"`init_params[{k!r}]` = {v} is outside its constraint {bij[k].codomain}")
    z0 = {k: bij[k].inv(v) for k, v in init_params.items()}
    if not all(bool(jnp.all(jnp.isfinite(v))) for v in z0.values()):
        raise ConfigurationError("`init_params` has values on the boundary of their constraints")

    def constrain(z):
        return {k: bij[k](v) for k, v in z.items()}

    if method == "msc":
        try:
            x_ex = ssm.initial(model_params0).sample(jax.random.key(0))
            jax.eval_shape(lambda z: _q_log_density(variational, ys, constrain(z), 1, x_ex, x_ex), z0)
        except Exception as exc:
            raise ModelError(f"`variational` failed on a state of the model: {exc}") from exc

    # one compiled program per (model, optimizer, static options, shapes): the data, the fixed parameters and
    # the bijectors (pytrees) are arguments, so a repeated call runs it again (docs/smc.md, "Repeated calls")
    fixed_params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype=jnp.result_type(v)), fixed_params)
    run_chunk = partial(_fit_chunk, ys=ys, fixed_params=fixed_params, bij=bij, ssm=ssm, method=method,
                        estimator=estimator, optimizer=optimizer, num_particles=num_particles,
                        num_backward=num_backward, num_trials=num_trials, variational=variational)

    k_init, k_run = jax.random.split(key)
    path0 = initial_reference(k_init, ssm, model_params0, ys, num_particles) if estimator == "ppg" else \
        jnp.zeros((T,) + tuple(ssm.state_shape(model_params0)))
    carry = (z0, optimizer.init(z0), path0)
    keys = jax.random.split(k_run, num_iterations)
    carry, (history, estimates, logz) = run_chunked(
        run_chunk, carry, keys, num_chunks=num_chunks, progress_bar=progress_bar,
        desc=f"fit ({method}, {estimator})",
        postfix=lambda c: {k: float(np.ravel(v)[0]) for k, v in constrain(c[0]).items()})
    final = constrain(carry[0])
    if not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(final)):
        raise ConvergenceError("fit: the parameters became non-finite; lower the learning rate or use more particles")
    params = {**fixed_params, **final} if method == "mle" else final
    return FitResult(params=params, history=history, estimates=estimates, log_evidence=logz,
                     final_path=carry[2] if estimator == "ppg" else None, method=method, estimator=estimator,
                     num_particles=num_particles, num_iterations=num_iterations)
