r"""Particle filters for state-space models: bootstrap and guided, with the checked driver.

``particle_filter`` builds the bootstrap (or guided, given a :class:`Proposal`) Feynman–Kac model of a
:class:`~bayeskit.StateSpaceModel` inside ``jit`` and runs the SMC engine. Filtering moments
:math:`\mathbb{E}[X_t \mid y_{0:t}]` and :math:`\mathrm{Var}[X_t \mid y_{0:t}]` are accumulated inside
the loop; :math:`\log \hat p(y_{0:T-1})` is unbiased on the natural scale.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError, DegenerateWeightsError, ModelError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._feynman_kac import Proposal, bootstrap, guided
from bayeskit.inference.smc.resampling import adaptive, always, get_scheme, never, normalize_log_weights
from bayeskit.progress import progress

__all__ = ["ParticleFilterResult", "particle_filter", "weighted_moments"]


@partial(jax.tree_util.register_dataclass,
         data_fields=["log_evidence", "log_evidence_increments", "filter_mean", "filter_var", "ess",
                      "resampled", "particles", "log_weights", "ancestors", "particles_history",
                      "log_weights_history", "nonfinite", "ys"],
         meta_fields=["num_particles", "resampling", "ess_threshold"])
@dataclasses.dataclass(frozen=True)
class ParticleFilterResult:
    """Output of :func:`particle_filter`.

    Attributes:
        log_evidence: :math:`\\log \\hat p(y_{0:T-1})`, scalar.
        log_evidence_increments: (T,) per-step increments :math:`\\log \\hat p(y_t \\mid y_{0:t-1})`.
        filter_mean, filter_var: (T, *state_shape) weighted filtering mean and variance.
        ess: (T,) effective sample size after weighting; ``resampled``: (T,) bool.
        particles, log_weights: final cloud (N, *state_shape) and (N,).
        ancestors: (T, N) ancestor indices (only with ``history=True``, else None).
        particles_history, log_weights_history: (T, N, ...) (only with ``history=True``).
        nonfinite: (T,) bool, a NaN weight or all weights zero at that step.
    """

    log_evidence: Any
    log_evidence_increments: Any
    filter_mean: Any
    filter_var: Any
    ess: Any
    resampled: Any
    particles: Any
    log_weights: Any
    ancestors: Any
    particles_history: Any
    log_weights_history: Any
    nonfinite: Any
    ys: Any
    num_particles: int
    resampling: str
    ess_threshold: float

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the filtering marginals as N equally weighted
        draws: ``x_final`` at the last step, and ``x`` over ``time`` with ``history=True``), ``sample_stats``
        (the run as one draw: ess, resampled, log_evidence_increment over time, log_evidence),
        ``log_likelihood`` (``y``: log p(y_t | y_{0:t-1}) estimates), ``filtering`` (moments over time),
        ``particles`` (the weighted cloud) and ``observed_data``."""
        from bayeskit.diagnostics import equal_weight_draws, one_chain, one_run, to_datatree

        T = int(np.shape(self.ess)[0])
        state_dims = [f"state_dim_{i}" for i in range(np.ndim(self.filter_mean) - 1)]
        obs_dims = [f"obs_dim_{i}" for i in range(np.ndim(self.ys) - 1)]
        posterior = {"x_final": equal_weight_draws(self.particles, self.log_weights)}
        if self.particles_history is not None:
            posterior["x"] = equal_weight_draws(self.particles_history, self.log_weights_history)
        groups = {
            "posterior": one_chain(posterior),
            "sample_stats": one_run({"ess": self.ess, "log_evidence_increment": self.log_evidence_increments,
                                     "resampled": self.resampled, "log_evidence": self.log_evidence}),
            "log_likelihood": one_run({"y": self.log_evidence_increments}),
            "filtering": {"filter_mean": self.filter_mean, "filter_var": self.filter_var},
            "particles": {"particles": self.particles, "log_weights": self.log_weights},
            "observed_data": {"y": self.ys},
        }
        dims = {"x": ["time", *state_dims], "x_final": state_dims,
                "filter_mean": ["time", *state_dims], "filter_var": ["time", *state_dims],
                "particles": ["particle", *state_dims], "log_weights": ["particle"],
                "ess": ["time"], "log_evidence_increment": ["time"], "resampled": ["time"], "y": ["time"],
                "observed_data/y": ["time", *obs_dims],
                "particles_history": ["time", "particle", *state_dims],
                "log_weights_history": ["time", "particle"], "ancestors": ["time", "particle"]}
        if self.particles_history is not None:
            groups["particles"].update(particles_history=self.particles_history,
                                       log_weights_history=self.log_weights_history,
                                       ancestors=self.ancestors)
        coords = {"time": np.arange(T), "particle": np.arange(self.num_particles)}
        return to_datatree(groups, dims=dims, coords=coords,
                           attrs={"log_evidence": float(self.log_evidence), "num_particles": self.num_particles,
                                  "resampling": str(self.resampling), "ess_threshold": self.ess_threshold})


def weighted_moments(particles, log_weights):
    """Weighted mean and (elementwise) variance over the leading particle axis."""
    w, _ = normalize_log_weights(log_weights)
    wb = w.reshape((-1,) + (1,) * (particles.ndim - 1))
    mean = jnp.sum(wb * particles, axis=0)
    var = jnp.sum(wb * (particles - mean) ** 2, axis=0)
    return mean, var


def _strategy_mode(ess_threshold) -> str:
    try:
        thr = float(ess_threshold)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return "adaptive"
    return "always" if thr >= 1.0 else "never" if thr <= 0.0 else "adaptive"


@partial(jax.jit, static_argnames=("ssm", "num_particles", "resampling", "history", "proposal", "sharding",
                                   "mode", "progress_bar"))
def _run_filter(key, ssm, params, ys, ess_threshold, *, num_particles, resampling, history, proposal,
                sharding, mode="adaptive", progress_bar=False):
    fk = bootstrap(ssm, params, ys) if proposal is None else guided(ssm, params, ys, proposal)
    strategy = {"always": lambda: always(resampling), "never": never,
                "adaptive": lambda: adaptive(resampling, ess_threshold)}[mode]()
    state, out = engine.run(key, fk, num_particles, strategy=strategy,
                            accumulators=(engine.summary(weighted_moments),), history=history, sharding=sharding,
                            progress_bar=progress_bar)
    return state, out


def _is_traced(*trees) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _is_single_typed_key(key) -> bool:
    return (isinstance(key, jax.Array) and key.shape == ()
            and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key))


_VALIDATED: dict = {}  # (model, parameter fingerprint) -> observation shape, for check_model
_VALIDATED_MAX = 64  # models hold closures (possibly data): keep few
_FINGERPRINT_MAX = 65536  # parameters with more numbers than this are validated on every call


def _fingerprint(params):
    """A hashable copy of the parameter values (tree structure, shapes, dtypes, bytes), or None."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    try:
        arrays = [np.asarray(leaf) for leaf in leaves]
    except Exception:  # e.g. typed PRNG keys: not cached
        return None
    if sum(a.size for a in arrays) > _FINGERPRINT_MAX or any(a.dtype == object for a in arrays):
        return None
    return treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in arrays)


def check_model(ssm, params, ys, name: str = "params"):
    """:func:`check_model_params` and ``ssm.validate(params, ys)``, with the model part remembered per
    (model, parameter values): repeated calls with the same model and parameters (e.g. many filters
    in a Python loop) only re-check ``ys``. Returns the observation shape."""
    fp = _fingerprint(params)
    key = None
    if fp is not None:
        try:
            key = (ssm, fp)
            hash(key)
        except TypeError:  # a model object that is not hashable
            key = None
    obs_shape = _VALIDATED.get(key) if key is not None else None
    if obs_shape is not None:
        from bayeskit.model.ssm import check_observations

        check_observations(ys, obs_shape)
        return obs_shape
    check_model_params(ssm, params, name)
    obs_shape = ssm.validate(params, ys)
    if key is not None:
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.pop(next(iter(_VALIDATED)))
        _VALIDATED[key] = obs_shape
    return obs_shape


def check_model_params(ssm, params, name: str = "params"):
    """Build each distribution of ``ssm`` at ``params`` with NumPyro's argument validation on, so that
    invalid parameters (negative scales, ...) raise a :class:`ModelError` naming ``params``; a model
    that is not a :class:`~bayeskit.StateSpaceModel`, a key of ``params`` the model uses but ``params``
    lacks, and a callable that returns no distribution each get their own message."""
    import numpyro
    import numpyro.distributions as dist

    from bayeskit.model.ssm import StateSpaceModel

    if not isinstance(ssm, StateSpaceModel):
        raise ModelError(f"`ssm` must be a bayeskit.StateSpaceModel, got {type(ssm).__name__}")

    def built(part, value):
        if not isinstance(value, dist.Distribution):
            raise ModelError(f"`ssm.{part}` must return a numpyro distribution, got {type(value).__name__}")
        return value

    try:
        with numpyro.validation_enabled():
            d0 = built("initial", ssm.initial(params))
            x0 = d0.sample(jax.random.key(0))
            xb = x0[None] if ssm.vectorized else x0
            built("transition", ssm.transition(params, xb, 1))
            built("observation", ssm.observation(params, xb, 0))
    except ModelError:
        raise
    except KeyError as exc:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ModelError(f"`{name}` has no key {exc}, which the model uses; `{name}` has keys {keys}") from exc
    except Exception as exc:
        raise ModelError(f"the model rejects `{name}`: {exc}") from exc


def particle_filter(key, ssm, params, ys, num_particles: int = 1000, *, resampling: str = "systematic",
                    ess_threshold: float = 0.5, proposal: Proposal | None = None, history: bool = False,
                    sharding=None, progress_bar: bool = False) -> ParticleFilterResult:
    """Run a bootstrap (or guided) particle filter on ``ys`` under ``ssm`` at ``params``.

    Args:
        key: ``jax.random`` key.
        ssm: a :class:`~bayeskit.StateSpaceModel`.
        params: parameter pytree passed to the model's callables.
        ys: observations, shape ``(T, *obs_shape)``; finite.
        num_particles: N >= 1.
        resampling: ``"systematic"`` (default, O(N)), ``"stratified"``, ``"residual"``, ``"multinomial"``,
            or a function ``(key, log_weights, num_samples) -> indices``.
        ess_threshold: resample when ESS < threshold * N; in [0, 1].
        proposal: a :class:`Proposal` for a guided filter (default: bootstrap).
        history: keep the particles, log-weights and ancestors of every step (O(TN) memory).
        sharding: a ``jax.sharding.Sharding`` for the particle axis (see
            :func:`bayeskit.distributed.particle_sharding`).
        progress_bar: show a tqdm bar of the time steps (ignored when called inside ``jit``/``vmap``).

    Returns:
        :class:`ParticleFilterResult`.

    Raises:
        ConfigurationError, DataError, ModelError: bad input, before compiling.
        DegenerateWeightsError: all weights vanished or became NaN at some step.

    Example:
        >>> import jax, bayeskit as bk
        >>> from bayeskit.models import linear_gaussian as lg
        >>> params = lg.example_params(state_dim=1)
        >>> xs, ys = lg.ssm.simulate(jax.random.key(0), params, 50)
        >>> pf = bk.smc.particle_filter(jax.random.key(1), lg.ssm, params, ys, num_particles=500)
        >>> pf.filter_mean.shape
        (50, 1)
    """
    traced = _is_traced(key, params, ys)
    ys = ys if isinstance(ys, jax.Array) else jnp.asarray(ys)
    if not traced:
        num_particles, ess_threshold = _check_filter_call(key, ssm, params, ys, num_particles, resampling,
                                                          ess_threshold, sharding)
    progress_bar = bool(progress_bar) and not traced
    with progress(progress_bar, jnp.shape(ys)[0], "particle filter"):
        state, out = _run_filter(key, ssm, params, ys, ess_threshold, num_particles=num_particles,
                                 resampling=resampling, history=history, proposal=proposal, sharding=sharding,
                                 mode=_strategy_mode(ess_threshold), progress_bar=progress_bar)
        if progress_bar:
            jax.block_until_ready(state.log_evidence)
    ((mean, var),) = out.records
    result = ParticleFilterResult(
        log_evidence=state.log_evidence,
        log_evidence_increments=out.info.log_evidence_increment,
        filter_mean=mean,
        filter_var=var,
        ess=out.info.ess,
        resampled=out.info.resampled,
        particles=state.particles,
        log_weights=state.log_weights,
        ancestors=out.info.ancestors if history else None,
        particles_history=out.particles,
        log_weights_history=out.log_weights,
        nonfinite=out.info.nonfinite,
        ys=ys,
        num_particles=num_particles,
        resampling=resampling if isinstance(resampling, str) else getattr(resampling, "__name__", "custom"),
        ess_threshold=ess_threshold if not traced else float("nan"),
    )
    if not traced:
        # the evidence's host copy starts with the flags' (on an accelerator a later float(result.log_evidence)
        # finds it on the host; on CPU both are views of the device buffers)
        state.log_evidence.copy_to_host_async()
        check_weights(out.info.nonfinite, "particle_filter")
    return result


def _check_filter_call(key, ssm, params, ys, num_particles, resampling, ess_threshold, sharding):
    """The input checks of :func:`particle_filter`; returns ``(num_particles, ess_threshold)``. The model part is
    remembered per (model, parameter values) by :func:`check_model`, so a filter called in a loop only has
    ``ys`` re-checked."""
    if not _is_single_typed_key(key):  # the common case skips the full (slower) check
        _checks.check_key(key)
    num_particles = _checks.check_positive_int(num_particles, "num_particles")
    get_scheme(resampling)
    ess_threshold = _checks.check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
    check_model(ssm, params, ys)
    if sharding is not None:
        n_dev = len(sharding.device_set)
        if num_particles % n_dev:
            raise ConfigurationError(
                f"`num_particles` ({num_particles}) must be divisible by the number of devices in "
                f"`sharding` ({n_dev})")
    return num_particles, ess_threshold


def check_weights(nonfinite, where: str):
    """Raise :class:`DegenerateWeightsError` if a step's weights all vanished or became NaN."""
    flags = np.asarray(nonfinite)
    if flags.any():
        t = int(np.argmax(flags))
        raise DegenerateWeightsError(
            f"{where}: at time step {t} the importance weights are all zero or NaN "
            "(observations impossible under the model at these parameters, or a NaN log-potential); "
            "check `params` and `ys`, or use more particles / a better proposal"
        )
