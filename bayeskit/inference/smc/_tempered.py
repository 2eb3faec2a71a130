r"""Tempered SMC for any static NumPyro model: adaptive temperatures, MCMC moves, log-evidence.

For a model with prior :math:`p(\theta)` and likelihood :math:`p(y \mid \theta)`, work in NumPyro's
unconstrained space :math:`z` (``bk.model.log_density``: the prior carries the Jacobian) and define the
path of tempered targets

.. math::
    \pi_\lambda(z) \propto p(z)\, p(y \mid z)^\lambda, \qquad 0 = \lambda_0 < \lambda_1 < \dots < \lambda_K = 1 .

Tempered SMC (Neal 2001; Del Moral, Doucet & Jasra 2006; Chopin & Papaspiliopoulos 2020, ch. 17) is the
SMC engine over the Feynman–Kac model with ``M_n = MCMC kernel invariant for`` :math:`\pi_{\lambda_n}`
and log-potential :math:`\log G_n(z) = (\lambda_n - \lambda_{n-1}) \log p(y \mid z)`. Starting from
:math:`N` prior draws, each step

1. chooses :math:`\lambda_n` (adaptive, Jasra et al. 2011): with :math:`\ell^i = \log p(y \mid z^i)`, solve
   by bisection :math:`\mathrm{ESS}\big(\{e^{\delta \ell^i}\}\big) = \rho N` for :math:`\delta \in (0,
   1 - \lambda_{n-1}]`, where :math:`\rho` is ``target_ess`` (ESS is non-increasing in :math:`\delta`;
   take :math:`\delta = 1 - \lambda_{n-1}` when even that keeps the ESS above :math:`\rho N`); or reads
   :math:`\lambda_n` from a fixed ``schedule``;
2. reweights with the incremental weights :math:`w^i = e^{(\lambda_n - \lambda_{n-1}) \ell^i}` (the *same*
   sign as in the ESS equation: BlackJAX issue #914 was a sign mismatch between the two, invisible on
   symmetric log-likelihoods) and adds
   :math:`\log \hat Z_n - \log \hat Z_{n-1} = \log \frac1N \sum_i w^i` to the log-evidence;
3. resamples (weights are equal after every step, so the particles are draws from :math:`\pi_{\lambda_n}`);
4. moves every particle with ``num_mcmc_steps`` steps of an MCMC kernel invariant for
   :math:`\pi_{\lambda_n}`: random-walk Metropolis with proposal covariance
   :math:`s^2 \hat\Sigma` (:math:`\hat\Sigma` the particle cloud's covariance, :math:`s` started at
   :math:`2.38/\sqrt{d}` and adapted from the previous step's acceptance rate), or HMC / NUTS
   (BlackJAX's kernels) with the cloud's variances as inverse mass matrix and a step size adapted the same way.

:math:`\hat Z = \prod_n \frac1N \sum_i w_n^i` is an unbiased estimate of :math:`p(y)`. The number of
steps is random: the algorithm is the SMC engine's while variant (:func:`bayeskit.smc.engine.run_while`,
a ``lax.while_loop`` capped at ``max_steps``) over the model of :func:`tempered_model`, resampling at every
step; the driver :func:`tempered` validates input, runs it and returns a :class:`TemperedSMCResult` with
constrained posterior draws (deterministic sites included) and ``.to_arviz()``.

Layers: :func:`solve_next_tempering` (the bisection), :func:`rwm_move` / :func:`hmc_move` /
:func:`nuts_move` / :func:`blackjax_move` (the move kernels; module ``_tempered_kernels``),
:func:`tempered_model` (the Feynman–Kac model) and :func:`run` (the whole loop, pure,
``jit``/``vmap``-able; module ``_tempered_model``), :func:`tempered` (the checked driver for NumPyro
models, here).

**No recompilation on repeated calls.** The driver compiles its program once per model function (by
identity), shapes and dtypes of the array arguments, values of the non-array arguments, and static options
(``num_particles``, ``kernel``, ``num_mcmc_steps``, ``kernel_parameters``, ``resampling``, ``max_steps``,
whether a ``schedule`` is given); new data of the same shapes, a new ``key``, ``target_ess`` or schedule
values reuse it. A model defined anew on every call (a fresh closure or ``functools.partial``) is a new
function and compiles again: define the model once and pass data as array arguments.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, ConvergenceError, DegenerateWeightsError, ModelError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._tempered_kernels import (KERNELS, Move, blackjax_move, build_move, hmc_move, nuts_move,
                                                      prior_and_likelihood_fn, rwm_move, solve_next_tempering)
from bayeskit.inference.smc._tempered_model import (TemperedAux, TemperedInfo, TemperedState, finish_run, run,
                                                    tempered_model, until_final)
from bayeskit.inference.smc.resampling import always, get_scheme

__all__ = [
    "TemperedState",
    "TemperedInfo",
    "TemperedAux",
    "Move",
    "TemperedSMCResult",
    "solve_next_tempering",
    "rwm_move",
    "hmc_move",
    "nuts_move",
    "blackjax_move",
    "prior_and_likelihood_fn",
    "tempered_model",
    "run",
    "tempered",
]

DEFAULT_NUM_MCMC_STEPS = {"rwm": 10, "hmc": 5, "nuts": 2, "custom": 5}


# --------------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TemperedSMCResult:
    """Output of :func:`tempered`.

    Attributes:
        samples: dict of constrained posterior draws, leading axis N, latent and deterministic sites.
        unconstrained: dict of the same draws in NumPyro's unconstrained space.
        log_evidence: :math:`\\log \\hat p(y)`, scalar.
        tempering: (K,) the ladder :math:`\\lambda_1, \\dots, \\lambda_K = 1` (:math:`\\lambda_0 = 0`).
        log_evidence_increments: (K,) :math:`\\log \\frac1N \\sum_i e^{(\\lambda_n - \\lambda_{n-1})\\ell^i}`.
        ess: (K,) ESS of the incremental weights at each step (before resampling).
        acceptance_rate: (K,) mean MCMC acceptance rate at each temperature.
        move_scale: (K,) RWM scale or HMC/NUTS step size used at each temperature.
        log_likelihood: (N,) log-likelihood of the final particles.
        num_steps: K.
        num_particles, target_ess, kernel, num_mcmc_steps, resampling: the settings used
            (``target_ess`` is None with a fixed schedule).
    """

    samples: dict
    unconstrained: dict
    log_evidence: Any
    tempering: Any
    log_evidence_increments: Any
    ess: Any
    acceptance_rate: Any
    move_scale: Any
    log_likelihood: Any
    num_steps: int
    num_particles: int
    target_ess: float | None
    kernel: str
    num_mcmc_steps: int
    resampling: str

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (chain 1, draw = particle; weights are equal after
        the final resampling), ``log_likelihood`` (``total``: each draw's log-likelihood summed over the
        observed sites), ``sample_stats`` (the run as one draw: tempering, ess, acceptance_rate,
        log_evidence_increment, move_scale over ``tempering_step``, log_evidence); settings as attributes."""
        from bayeskit.diagnostics import one_chain, one_run, to_datatree

        stats = {"tempering": self.tempering, "ess": self.ess, "acceptance_rate": self.acceptance_rate,
                 "log_evidence_increment": self.log_evidence_increments, "move_scale": self.move_scale}
        dims = {name: ["tempering_step"] for name in stats}
        groups = {"posterior": one_chain(self.samples),
                  "log_likelihood": one_chain({"total": self.log_likelihood}),
                  "sample_stats": one_run({**stats, "log_evidence": self.log_evidence})}
        return to_datatree(groups, dims=dims, coords={"tempering_step": np.arange(self.num_steps)},
                           attrs={"log_evidence": float(self.log_evidence), "num_particles": self.num_particles,
                                  "num_tempering_steps": self.num_steps,
                                  "target_ess": self.target_ess, "kernel": self.kernel,
                                  "num_mcmc_steps": self.num_mcmc_steps, "resampling": self.resampling})


# --------------------------------------------------------------------------------------------------
# the compiled program, cached on what determines it
# --------------------------------------------------------------------------------------------------
class _Program(NamedTuple):
    density: Any  # the LogDensity built from the first call's arguments (structure, site names, shapes)
    kernel_name: str
    whole: Callable  # (k_init, k_run, dynamic, target_ess, schedule) -> (initial particles, run, finished)
    start: Callable  # (k_init, k_run, dynamic, target_ess, schedule) -> WhileRun after step 0
    advance: Callable  # (k_run, run, dynamic, target_ess, schedule, stop) -> WhileRun
    finish: Callable  # (run, dynamic) -> (TemperedState, TemperedInfo, K, samples, z)


_PROGRAMS: OrderedDict = OrderedDict()
_MAX_PROGRAMS = 32


def _freeze(value):
    """A hashable stand-in for an option value (arrays by content); TypeError if there is none."""
    if isinstance(value, (jax.Array, np.ndarray)):
        a = np.asarray(value)
        return ("array", a.shape, str(a.dtype), a.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_freeze(v) for v in value))
    hash(value)
    return value


def _split_arguments(args, kwargs):
    """The model's arguments as (treedef, dynamic leaves, signature): arrays are traced (a new value of the
    same shape and dtype reuses the compiled program), every other leaf is static (part of the key)."""
    leaves, treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
    is_array = [isinstance(a, (jax.Array, np.ndarray)) for a in leaves]
    dynamic = [jnp.asarray(a) for a, d in zip(leaves, is_array) if d]
    signature = tuple(("array", tuple(np.shape(a)), str(jnp.asarray(a).dtype)) if d else ("static", _freeze(a))
                      for a, d in zip(leaves, is_array))
    static = [None if d else a for a, d in zip(leaves, is_array)]
    return treedef, dynamic, signature, (is_array, static)


def _rebind(density, treedef, layout, dynamic):
    """``density`` with the model's arguments replaced by (traced) ``dynamic`` values."""
    from numpyro.infer.util import constrain_fn

    is_array, static = layout
    it = iter(dynamic)
    leaves = [next(it) if d else s for d, s in zip(is_array, static)]
    args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)

    def postprocess(z):
        return constrain_fn(density.model, args, kwargs, z, return_deterministic=True)

    return dataclasses.replace(density, args=args, kwargs=kwargs, _postprocess=postprocess)


def _build_program(density, treedef, layout, *, kernel, num_particles, num_mcmc_steps, kernel_parameters,
                   resampling, max_steps, use_schedule) -> _Program:
    fn = prior_and_likelihood_fn(density)
    _, kernel_name = build_move(kernel, fn, density.dim, num_mcmc_steps, kernel_parameters)  # validates
    strategy = always(resampling)
    cond = until_final(max_steps)

    def parts(dynamic, target_ess, schedule, particles):
        dens = _rebind(density, treedef, layout, dynamic)
        f = prior_and_likelihood_fn(dens)
        move, _ = build_move(kernel, f, dens.dim, num_mcmc_steps, kernel_parameters)
        model = tempered_model(particles, f, move, target_ess=target_ess,
                               schedule=schedule if use_schedule else None)
        return dens, model

    def start(k_init, k_run, dynamic, target_ess, schedule):
        dens = _rebind(density, treedef, layout, dynamic)
        particles = jax.vmap(dens.flatten)(dens.sample_prior(k_init, num_particles))
        _, model = parts(dynamic, target_ess, schedule, particles)
        return engine.start_while(k_run, model, num_particles, max_steps=max_steps + 1, strategy=strategy)

    def advance(k_run, run_, dynamic, target_ess, schedule, stop):
        _, model = parts(dynamic, target_ess, schedule, run_.state.particles[0])
        return engine.advance_while(k_run, run_, model, cond=cond, stop=stop, strategy=strategy)

    def finish(run_, dynamic):
        dens = _rebind(density, treedef, layout, dynamic)
        state, info, k = finish_run(run_)
        z = jax.vmap(dens.unflatten)(state.particles)
        return state, info, k, jax.vmap(dens.constrain)(z), z

    def whole(k_init, k_run, dynamic, target_ess, schedule):
        run0 = start(k_init, k_run, dynamic, target_ess, schedule)
        run_ = advance(k_run, run0, dynamic, target_ess, schedule, max_steps + 1)
        return run0.state.particles, run_, finish(run_, dynamic)

    return _Program(density, kernel_name, jax.jit(whole), jax.jit(start), jax.jit(advance), jax.jit(finish))


def _program(model, args, model_kwargs, **options) -> tuple[_Program, Any]:
    """The cached :class:`_Program` for this model, argument shapes and static options (built, and the model
    checked, on the first call), and the dynamic (traced) arguments."""
    from bayeskit.model.density import log_density

    treedef, dynamic, signature, layout = _split_arguments(args, model_kwargs)
    try:
        cache_key = (model, treedef, signature, _freeze(options))
        hash(cache_key)
    except TypeError:  # an unhashable option or argument: no caching
        cache_key = None
    program = None if cache_key is None else _PROGRAMS.get(cache_key)
    if program is None:
        density = log_density(model, *args, **model_kwargs)
        if not density.observed_sites:
            raise ModelError(
                "`model` has no observed sites (no `obs=` sample site or `numpyro.factor`): the likelihood is "
                "constant, so there is nothing to temper; sample the prior with numpyro.infer.Predictive")
        program = _build_program(density, treedef, layout, **options)
        if cache_key is not None:
            _PROGRAMS[cache_key] = program
            while len(_PROGRAMS) > _MAX_PROGRAMS:
                _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(cache_key)
    return program, dynamic


def _check_schedule(schedule):
    arr = np.asarray(schedule, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigurationError(f"`schedule` must be a 1-D array of temperatures, got shape {arr.shape}")
    if arr[0] == 0.0:
        arr = arr[1:]
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1) \
            or np.any(np.diff(arr) <= 0) or arr[-1] != 1.0:
        raise ConfigurationError(
            "`schedule` must be strictly increasing temperatures in (0, 1] ending at 1.0 "
            f"(a leading 0 is allowed), got {np.asarray(schedule)!r}")
    return arr


def tempered(key, model: Callable, *args, num_particles: int = 2000, target_ess: float = 0.5,
             schedule=None, kernel="rwm", num_mcmc_steps: int | None = None,
             resampling: str | Callable = "systematic", kernel_parameters: dict | None = None,
             max_steps: int = 500, progress_bar: bool = False, **model_kwargs) -> TemperedSMCResult:
    r"""Tempered SMC for ``model(*args, **model_kwargs)``: posterior draws and :math:`\log p(y)`.

    Args:
        key: ``jax.random`` key.
        model: a NumPyro model with continuous latent sites and at least one observed site (or factor).
        *args: the model's positional arguments.
        **model_kwargs: the model's keyword arguments (names that clash with the options below cannot
            be passed; wrap the model in a closure).
        num_particles: N >= 2.
        target_ess: :math:`\rho \in (0, 1)`: each new temperature makes the ESS of the incremental
            weights :math:`\rho N` (smaller: fewer, bigger steps).
        schedule: optional fixed ladder, strictly increasing in (0, 1] and ending at 1 (a leading 0
            is dropped); overrides ``target_ess``.
        kernel: ``"rwm"`` (random-walk Metropolis, cloud covariance), ``"hmc"`` or ``"nuts"`` (BlackJAX's
            kernels, cloud variances as inverse mass matrix, adapted step size), a NumPyro
            ``HMC``/``NUTS`` object (its step size, number of steps / tree depth, target acceptance
            and mass matrix are used with BlackJAX's integrator), or a BlackJAX algorithm
            (e.g. ``blackjax.mala``) whose kernel takes ``kernel_parameters``.
        num_mcmc_steps: MCMC steps per temperature (default 10 for RWM, 5 for HMC, 2 for NUTS, 5 otherwise).
        resampling: ``"systematic"``, ``"stratified"``, ``"residual"``, ``"multinomial"`` or a function.
        kernel_parameters: options of the move (see :func:`rwm_move`, :func:`hmc_move`, :func:`nuts_move`;
            for a BlackJAX algorithm, its kernel's parameters).
        max_steps: cap on the number of temperatures.
        progress_bar: show a tqdm bar of :math:`\lambda` (the loop then runs in jitted chunks).

    Returns:
        :class:`TemperedSMCResult`.

    Raises:
        ConfigurationError: bad options (e.g. ``target_ess`` outside (0, 1), a bad schedule).
        ModelError: discrete latent sites, no latent or no observed sites, a log-likelihood or
            log-prior that is NaN (or +inf) at the initial prior draws.
        DegenerateWeightsError: the incremental weights vanished or became NaN during the run.
        ConvergenceError: :math:`\lambda` did not reach 1 within ``max_steps``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from bayeskit.inference.smc._tempered import tempered
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> res = tempered(jax.random.key(0), model, jnp.array([0.3, 0.8]), num_particles=500)
        >>> res.samples["mu"].shape, float(res.tempering[-1])
        ((500,), 1.0)
    """
    _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles", minimum=2)
    target_ess = _checks.check_in_interval(target_ess, "target_ess", 0.0, 1.0, closed="neither")
    max_steps = _checks.check_positive_int(max_steps, "max_steps")
    get_scheme(resampling)
    if schedule is not None:
        schedule = _check_schedule(schedule)
        max_steps = int(schedule.shape[0])
    kernel_label = kernel if isinstance(kernel, str) else "custom"
    if isinstance(kernel, str):
        _checks.check_choice(kernel, "kernel", KERNELS)
    if num_mcmc_steps is None:
        num_mcmc_steps = DEFAULT_NUM_MCMC_STEPS.get(kernel_label, 5)
        if not isinstance(kernel, str) and kernel.__class__.__name__ == "NUTS":
            num_mcmc_steps = DEFAULT_NUM_MCMC_STEPS["nuts"]
    num_mcmc_steps = _checks.check_positive_int(num_mcmc_steps, "num_mcmc_steps")

    program, dynamic = _program(model, args, model_kwargs, kernel=kernel, num_particles=num_particles,
                                num_mcmc_steps=num_mcmc_steps, kernel_parameters=kernel_parameters,
                                resampling=resampling, max_steps=max_steps, use_schedule=schedule is not None)
    dtype = jnp.result_type(float)
    target = jnp.asarray(target_ess, dtype)
    sched = jnp.zeros((max_steps,), dtype) if schedule is None else jnp.asarray(schedule, dtype)
    k_init, k_run = jax.random.split(key)
    if progress_bar:  # a jitted chunk of steps at a time, the bar between chunks
        from tqdm.auto import tqdm

        run_ = program.start(k_init, k_run, dynamic, target, sched)
        _check_initial(run_.state.particles, program.density)
        chunk = 5
        with tqdm(total=1.0, desc="tempered SMC (lambda)", bar_format="{l_bar}{bar}| {n:.3f}/1") as bar:
            while True:
                lam = float(run_.aux.tempering)
                bar.n = lam
                bar.refresh()
                if bool(run_.aux.final) or bool(run_.failed) or (lam < 1.0 and int(run_.num_steps) >= max_steps):
                    break
                run_ = program.advance(k_run, run_, dynamic, target, sched, run_.num_steps + chunk)
        state, info, k, samples, z = program.finish(run_, dynamic)
    else:  # one compiled program for the whole run
        initial, run_, (state, info, k, samples, z) = program.whole(k_init, k_run, dynamic, target, sched)
        _check_initial(initial, program.density)

    k = int(k)
    infos = jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], info)  # numpy: no slice op compiled per k
    if bool(run_.failed):
        bad = int(np.argmax(infos.nonfinite))
        raise DegenerateWeightsError(
            f"tempered: at tempering step {bad} (lambda {float(infos.tempering[bad]):.3g}) the incremental "
            "weights are NaN or all zero (a NaN log-likelihood reached by the MCMC moves, or every particle "
            "in a region of zero likelihood); check the model, or use more particles")
    if float(state.tempering) < 1.0:
        raise ConvergenceError(
            f"tempered: the temperature reached only {float(state.tempering):.3g} < 1 after "
            f"`max_steps`={max_steps} steps; raise `max_steps` or lower `target_ess`")
    return TemperedSMCResult(
        samples=dict(samples), unconstrained=dict(z), log_evidence=state.log_evidence,
        tempering=infos.tempering, log_evidence_increments=infos.log_evidence_increment, ess=infos.ess,
        acceptance_rate=infos.acceptance_rate, move_scale=infos.move_scale,
        log_likelihood=state.log_likelihood, num_steps=k, num_particles=num_particles,
        target_ess=None if schedule is not None else target_ess, kernel=program.kernel_name,
        num_mcmc_steps=num_mcmc_steps,
        resampling=resampling if isinstance(resampling, str) else getattr(resampling, "__name__", "custom"))


def _check_initial(particles, density):
    """Clear errors for a likelihood or prior that is NaN / +inf at the initial prior draws."""
    x, log_prior, log_likelihood = particles
    for name, values in (("log-likelihood", log_likelihood), ("log-prior", log_prior)):
        v = np.asarray(values)
        bad = np.isnan(v) | (v == np.inf)
        if bad.any():
            i = int(np.argmax(bad))
            point = {k: np.asarray(a) for k, a in density.constrain(
                density.unflatten(x[i]), deterministic=False).items()}
            raise ModelError(
                f"the model's {name} is NaN or +inf at {int(bad.sum())} of {v.size} initial particles "
                f"(prior draws), first at particle {i} with latent values {point}; fix the model's "
                "densities (e.g. parameters outside a distribution's support, 0 * inf, log of a negative)")
    if np.all(np.asarray(log_likelihood) == -np.inf):
        raise ModelError("the model's likelihood is zero at every initial particle (prior draw): the data "
                         "are impossible under the prior; check the observations and the model")
