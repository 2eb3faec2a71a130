r"""Conditional SMC and particle Gibbs (Andrieu, Doucet & Holenstein 2010).

**Conditional SMC** with a reference path :math:`x^\star_{0:T-1}` held in slot 0: at each step the other
:math:`N-1` particles pick ancestors :math:`A_t^i \sim \mathrm{Cat}(W_{t-1})` over all :math:`N` particles
(multinomial conditional resampling) and move with :math:`M_t`; slot 0 keeps :math:`x^\star_t`. Its ancestor is
either slot 0 itself or, with **ancestor sampling** (Lindsten, Jordan & Schön 2014), drawn from
:math:`\mathbb P(A_t^0 = j) \propto W_{t-1}^j m_t(\xi_{t-1}^j, x^\star_t)`. The new path is drawn either by tracing
the genealogy from :math:`b_{T-1} \sim \mathrm{Cat}(W_{T-1})`, or by **backward sampling** (Whiteley 2010),
:math:`b_{t-1} \sim \Lambda_t(b_t, \cdot) \propto W_{t-1}^j m_t(\xi_{t-1}^j, \xi_t^{b_t})`. Every variant leaves the
smoothing distribution :math:`p_\theta(x_{0:T-1} \mid y_{0:T-1})` invariant for any :math:`N \ge 2`.

**Particle Gibbs** alternates the cSMC update of the states at the *current* parameters with a parameter
update given the states: a user function, or any NumPyro MCMC kernel (NUTS, HMC, ...) run on
:math:`p(\theta \mid x_{0:T-1}, y_{0:T-1}) \propto p(\theta)\, p_\theta(x, y)`, with the prior from
``StateSpaceModel.prior`` and the complete-data log-density from the model's own distributions.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ModelError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._backward import backward_sample, check_backward_model
from bayeskit.inference.smc._feynman_kac import FeynmanKac, bootstrap
from bayeskit.inference.smc._filtering import check_model
from bayeskit.inference.smc.resampling import conditional
from bayeskit.progress import run_chunked

__all__ = [
    "CSMCInfo",
    "csmc",
    "step_log_density",
    "path_log_density",
    "NumPyroUpdate",
    "ParticleGibbsResult",
    "particle_gibbs",
]


class CSMCInfo(NamedTuple):
    """Diagnostics of one cSMC sweep: ``ess`` (T,), ``log_evidence`` (the conditional filter's estimate,
    not unbiased), ``reference_kept`` (bool: the new path equals the old one at every step),
    ``indices`` (T,) slot of the new path at each step."""

    ess: jax.Array
    log_evidence: jax.Array
    reference_kept: jax.Array
    indices: jax.Array


def csmc(key, fk: FeynmanKac, reference, num_particles: int, *, backward_sampling: bool = True,
         ancestor_sampling: bool = False):
    """One conditional SMC sweep on ``fk`` with the reference path ``reference`` (T, ...) in slot 0: the
    engine with the :func:`~bayeskit.inference.smc.resampling.conditional` strategy, then a new path by
    backward sampling or by tracing the lineage of :math:`b_{T-1} \\sim \\mathrm{Cat}(W_{T-1})`.

    Returns ``(new_path, CSMCInfo)``. Pure and jittable; ``fk.log_transition`` is needed for backward or
    ancestor sampling.
    """
    k_run, k_path = jax.random.split(key)
    strategy = conditional(reference, slot=0, ancestor_sampling=ancestor_sampling)
    state, out = engine.run(k_run, fk, num_particles, strategy=strategy, history=True)
    if backward_sampling:
        paths, idx = backward_sample(k_path, fk, out.particles, out.log_weights, 1)
        path, idx = jax.tree_util.tree_map(lambda a: a[0], paths), idx[0]
    else:
        b_last = jax.random.categorical(k_path, state.log_weights).astype(jnp.int32)
        idx = engine.trace_lineage(out.info.ancestors, b_last)
        path = jax.tree_util.tree_map(lambda a: a[jnp.arange(a.shape[0]), idx], out.particles)
    info = CSMCInfo(out.info.ess, state.log_evidence, jnp.all(idx == 0), idx)
    return path, info


# -------------------------------------------------------------------------- complete-data log-density
def step_log_density(ssm, params, t, x_prev, x, y):
    """:math:`\\log m_t(x_{t-1}, x_t) + \\log g_t(x_t, y_t)` for ONE state (``x_prev`` None: the initial law)."""
    xb = x[None]
    if x_prev is None:
        lm = ssm.log_initial(params, xb)[0]
    else:
        lm = ssm.log_transition(params, x_prev[None], xb, t)[0]
    return lm + ssm.log_observation(params, xb, y, t)[0]


def path_log_density(ssm, params, path, ys):
    """:math:`\\log p_\\theta(x_{0:T-1}, y_{0:T-1})` of one path (T, ...)."""
    total = step_log_density(ssm, params, 0, None, path[0], ys[0])
    if path.shape[0] > 1:
        ts = jnp.arange(1, path.shape[0])
        total = total + jnp.sum(jax.vmap(lambda t, xp, x, y: step_log_density(ssm, params, t, xp, x, y))(
            ts, path[:-1], path[1:], ys[1:]))
    return total


# -------------------------------------------------------------------------- parameter updates
class _NumPyroUpdateFields(NamedTuple):
    kernel: Any
    kernel_kwargs: dict = {}
    num_iterations: int = 1
    num_warmup: int = 100


class NumPyroUpdate(_NumPyroUpdateFields):
    """Update :math:`\\theta` given the states with a NumPyro MCMC kernel.

    Fields: ``kernel`` (a NumPyro ``MCMCKernel`` class such as ``numpyro.infer.NUTS``), ``kernel_kwargs``
    (its options, e.g. ``{"target_accept_prob": 0.9}``), ``num_iterations`` (kernel iterations per Gibbs sweep;
    ``num_steps`` before this release, which still works, as a keyword and an attribute, with a
    DeprecationWarning), ``num_warmup`` (Gibbs sweeps during which the kernel adapts its step size / mass matrix).
    """

    __slots__ = ()

    def __new__(cls, kernel, kernel_kwargs: dict = {}, num_iterations: int = 1, num_warmup: int = 100,  # noqa: B006
                **deprecated):
        num_iterations = _checks.renamed_kwargs("NumPyroUpdate", deprecated, {"num_steps": "num_iterations"}).get(
            "num_iterations", num_iterations)
        return super().__new__(cls, kernel, kernel_kwargs, num_iterations, num_warmup)

    num_steps = _checks.renamed_attribute("NumPyroUpdate", "num_steps", "num_iterations")


def _theta_model(ssm):
    import numpyro

    def model(path, ys):
        theta = ssm.prior()
        numpyro.factor("complete_data_log_density", path_log_density(ssm, theta, path, ys))

    return model


def _params_from_sites(ssm, sites):
    from numpyro import handlers

    return handlers.seed(handlers.substitute(ssm.prior, data=sites), jax.random.key(0))()


def _refresh_potential(kernel, state, model_args):
    """``state`` with ``potential_energy`` and ``z_grad`` evaluated under ``model_args`` (HMC/NUTS states;
    other kernels' states are returned unchanged)."""
    if not (hasattr(state, "potential_energy") and hasattr(state, "z_grad")):
        return state
    potential_fn = kernel._potential_fn_gen(*model_args)
    energy, grad = jax.value_and_grad(potential_fn)(state.z)
    return state._replace(potential_energy=energy, z_grad=grad)


def _is_numpyro_kernel(obj) -> bool:
    try:
        from numpyro.infer.mcmc import MCMCKernel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, type) and issubclass(obj, MCMCKernel)


def _numpyro_kernel(ssm, update: NumPyroUpdate):
    """The NumPyro kernel of ``update`` on ``ssm``'s parameter posterior given the states: one object per
    (model, kernel class, options, warm-up length), so that the jitted sweep (static in the kernel) is compiled
    once for them. Options that cannot be hashed (arrays) get a fresh kernel, and a fresh compile, per call."""
    kwargs = dict(update.kernel_kwargs)
    try:
        return _cached_kernel(ssm, update.kernel, tuple(sorted(kwargs.items())),
                              update.num_warmup * update.num_iterations)
    except TypeError:  # unhashable options
        return update.kernel(_theta_model(ssm), **kwargs)


@functools.lru_cache(maxsize=64)
def _cached_kernel(ssm, kernel_cls, kwargs_items, num_warmup):
    # num_warmup is part of the key: NumPyro's init stores the warm-up length in the kernel's sample function
    return kernel_cls(_theta_model(ssm), **dict(kwargs_items))


@partial(jax.jit, static_argnames=("ssm", "num_particles", "backward_sampling", "ancestor_sampling", "update",
                                   "kernel", "kernel_iterations"))
def _pg_chunk(carry, keys, ys, *, ssm, num_particles, backward_sampling, ancestor_sampling, update, kernel,
              kernel_iterations):
    """Particle Gibbs sweeps (a scan over ``keys``) from ``carry = (path, params, kernel_state)``, each with
    ``kernel_iterations`` iterations of the NumPyro kernel."""

    def sweep(carry, k):
        path, theta, ks = carry
        k_csmc, k_par = jax.random.split(k)
        fk = bootstrap(ssm, theta, ys)
        path, info = csmc(k_csmc, fk, path, num_particles, backward_sampling=backward_sampling,
                          ancestor_sampling=ancestor_sampling)
        acc = jnp.asarray(jnp.nan)
        if kernel is not None:
            # the kernel's state caches the potential energy and its gradient at z for the path it was
            # last run on: recompute both for the new path (as NumPyro's HMCGibbs does), otherwise the
            # acceptance test compares energies of two different targets and the chain sticks
            ks = _refresh_potential(kernel, ks, (path, ys))

            def one(st, kk):
                st = st._replace(rng_key=kk)
                st = kernel.sample(st, (path, ys), {})
                return st, st.mean_accept_prob if hasattr(st, "mean_accept_prob") else jnp.nan
            ks, accs = jax.lax.scan(one, ks, jax.random.split(k_par, kernel_iterations))
            sites = kernel.postprocess_fn((path, ys), {})(ks.z)
            theta = _params_from_sites(ssm, sites)
            acc = accs[-1]
        elif update is not None:
            theta = update(k_par, theta, path, ys)
        return (path, theta, ks), (path, theta, info.ess, info.reference_kept, acc)

    return jax.lax.scan(sweep, carry, keys)


# -------------------------------------------------------------------------- particle Gibbs driver
@partial(jax.tree_util.register_dataclass,
         data_fields=["paths", "params", "final_path", "final_params", "ess", "reference_kept", "accept_prob"],
         meta_fields=["num_particles", "num_iterations", "burn_in", "backward_sampling", "ancestor_sampling"])
@dataclasses.dataclass(frozen=True)
class ParticleGibbsResult:
    """Output of :func:`particle_gibbs`.

    Attributes:
        paths: state trajectories (num_iterations, T, ...), one per sweep (burn-in included).
        params: the parameter pytree at every sweep (leading axis num_iterations), or None if fixed.
        final_path, final_params: the chain's last state (to continue it).
        ess: (num_iterations, T) ESS of the conditional filter; reference_kept: (num_iterations,) bool.
        accept_prob: (num_iterations,) NumPyro kernel acceptance statistic (NaN without a NumPyro update).
    """

    paths: Any
    params: Any
    final_path: Any
    final_params: Any
    ess: Any
    reference_kept: Any
    accept_prob: Any
    num_particles: int
    num_iterations: int
    burn_in: int
    backward_sampling: bool
    ancestor_sampling: bool

    def to_arviz(self):
        """ArviZ DataTree, one chain after burn-in: ``posterior`` (``x`` over time, the parameters' leaves),
        ``sample_stats`` (update rate of each path, acceptance of the parameter kernel)."""
        from bayeskit.diagnostics import to_datatree
        from bayeskit.inference.smc._paris import leaves_dict

        b = self.burn_in
        post = {"x": np.asarray(self.paths)[b:][None]}
        if self.params is not None:
            post.update({k: v[b:][None] for k, v in leaves_dict("", self.params).items()})
            post = {k.lstrip("_") if k != "x" else k: v for k, v in post.items()}
        T = int(np.shape(self.paths)[1])
        stats = {"reference_kept": np.asarray(self.reference_kept)[b:][None],
                 "accept_prob": np.asarray(self.accept_prob)[b:][None]}
        return to_datatree({"posterior": post, "sample_stats": stats}, dims={"x": ["time"]},
                           coords={"time": np.arange(T)},
                           attrs={"num_particles": self.num_particles, "backward_sampling": int(self.backward_sampling),
                                  "ancestor_sampling": int(self.ancestor_sampling), "inference_library": "bayeskit"})


def particle_gibbs(key, ssm, params, ys, num_particles: int = 100, *, num_iterations: int = 1000, burn_in: int = 0,
                   backward_sampling: bool = True, ancestor_sampling: bool = False,
                   parameter_update: Callable | NumPyroUpdate | Any = None, initial_path=None,
                   progress_bar: bool = False, num_chunks: int = 20) -> ParticleGibbsResult:
    r"""Particle Gibbs: cSMC state updates alternating with an optional parameter update.

    Sweep :math:`\ell`: :math:`x^{\ell} \sim \mathrm{cSMC}_{\theta^{\ell-1}}(x^{\ell-1}, \cdot)` at the current
    parameters, then :math:`\theta^{\ell} \sim` ``parameter_update`` given :math:`x^\ell` (states refreshed with the
    *current* :math:`\theta`, so the chain targets :math:`p(\theta, x \mid y)`).

    Args:
        key: ``jax.random`` key.
        ssm: a :class:`~bayeskit.StateSpaceModel` (with ``prior=`` for a NumPyro parameter update).
        params: initial (or fixed) parameters.
        ys: observations (T, ...).
        num_particles: N >= 2.
        num_iterations: number of sweeps; burn_in: sweeps dropped by ``to_arviz``.
        backward_sampling: draw the new path by backward sampling (needs the transition density).
        ancestor_sampling: resample the reference's ancestor (used when ``backward_sampling=False``).
        parameter_update: None (parameters fixed), a function ``(key, params, path, ys) -> params``, a
            NumPyro kernel class (``numpyro.infer.NUTS``) or a :class:`NumPyroUpdate`.
        initial_path: first reference (T, *state_shape); default: a bootstrap filter path.
        progress_bar: a tqdm bar over ``num_chunks`` jitted chunks of sweeps.

    Returns:
        :class:`ParticleGibbsResult`.

    Example:
        >>> import jax, bayeskit as bk
        >>> from bayeskit.models import linear_gaussian as lg
        >>> p = lg.example_params(1)
        >>> _, ys = lg.ssm.simulate(jax.random.key(0), p, 30)
        >>> pg = bk.smc.particle_gibbs(jax.random.key(1), lg.ssm, p, ys, num_particles=20, num_iterations=50)
        >>> pg.paths.shape
        (50, 30, 1)
    """
    _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles", 2)
    num_iterations = _checks.check_positive_int(num_iterations, "num_iterations")
    burn_in = _checks.check_positive_int(burn_in, "burn_in", 0)
    if burn_in >= num_iterations:
        raise ConfigurationError(f"`burn_in` ({burn_in}) must be smaller than `num_iterations` ({num_iterations})")
    check_model(ssm, params, ys)
    if backward_sampling or ancestor_sampling:
        check_backward_model(ssm, params, None, 0)
    ys = jnp.asarray(ys)
    T = ys.shape[0]
    state_shape = tuple(ssm.state_shape(params))
    k_init, k_nuts, k_run = jax.random.split(key, 3)
    if initial_path is None:
        from bayeskit.inference.smc._ppg import initial_reference

        initial_path = initial_reference(k_init, ssm, params, ys, num_particles)
    else:
        _checks.check_finite_array(initial_path, "initial_path", shape=(T,) + state_shape)
    initial_path = jnp.asarray(initial_path)
    # strong dtypes, so that the carry keeps its type across jitted chunks (no recompilation)
    params = jax.tree_util.tree_map(lambda a: jnp.array(a, dtype=jnp.result_type(a)), params)

    # ---- parameter update
    if _is_numpyro_kernel(parameter_update):
        parameter_update = NumPyroUpdate(parameter_update)
    kernel, kstate = None, None
    if isinstance(parameter_update, NumPyroUpdate):
        if ssm.prior is None:
            raise ModelError("a NumPyro parameter update needs a StateSpaceModel built with `prior=` (the prior "
                             "of the parameters)")
        from numpyro.infer.util import unconstrain_fn

        kernel = _numpyro_kernel(ssm, parameter_update)
        sites = _prior_sites(ssm)
        init_z = unconstrain_fn(_theta_model(ssm), (initial_path, ys), {}, {k: _site_value(params, ssm, k)
                                                                            for k in sites})
        kstate = kernel.init(k_nuts, parameter_update.num_warmup * parameter_update.num_iterations,
                             init_params=init_z, model_args=(initial_path, ys), model_kwargs={})
    elif parameter_update is not None and not callable(parameter_update):
        raise ConfigurationError("`parameter_update` must be None, a function (key, params, path, ys) -> params, a "
                                 f"NumPyro kernel class or a NumPyroUpdate, got {parameter_update!r}")

    # one compiled program per (model, update, shapes, static options): a second call with the same ones runs it
    # without tracing or compiling again (see docs/smc.md, "Repeated calls")
    run_chunk = partial(_pg_chunk, ys=ys, ssm=ssm, num_particles=num_particles,
                        backward_sampling=bool(backward_sampling), ancestor_sampling=bool(ancestor_sampling),
                        update=parameter_update if kernel is None else None, kernel=kernel,
                        kernel_iterations=parameter_update.num_iterations if kernel is not None else 1)
    keys = jax.random.split(k_run, num_iterations)
    carry = (initial_path, params, kstate)
    carry, (paths, thetas, ess, kept, acc) = run_chunked(run_chunk, carry, keys, num_chunks=num_chunks,
                                                         progress_bar=progress_bar, desc="particle Gibbs")
    return ParticleGibbsResult(paths=paths, params=thetas if parameter_update is not None else None,
                               final_path=carry[0], final_params=carry[1], ess=ess, reference_kept=kept,
                               accept_prob=acc, num_particles=num_particles, num_iterations=num_iterations,
                               burn_in=burn_in, backward_sampling=backward_sampling,
                               ancestor_sampling=ancestor_sampling)


def _prior_sites(ssm):
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(ssm.prior, jax.random.key(0))).get_trace()
    return [name for name, site in tr.items() if site["type"] == "sample" and not site["is_observed"]]


def _site_value(params, ssm, site):
    """The value of prior site ``site`` in the parameter pytree ``params`` (matched through the prior's output)."""
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(ssm.prior, jax.random.key(0))).get_trace()
    out = handlers.seed(handlers.substitute(ssm.prior, data={k: v["value"] for k, v in tr.items()}),
                        jax.random.key(0))()
    flat_out, _ = jax.tree_util.tree_flatten_with_path(out)
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, leaf in flat_out:
        if leaf is tr[site]["value"] and path in flat_params:
            return jnp.asarray(flat_params[path])
    raise ModelError(f"cannot find the prior site {site!r} in `params`: the prior must return the sampled values "
                     "in the same pytree structure as `params`")
