r"""The Parisian particle Gibbs sampler (PPG): PaRIS driven by conditional SMC.

**PPG** (Cardoso, Janati, Le Corff, Moulines & Olsson, ICML 2023) runs PaRIS *conditionally* on a frozen
path :math:`\zeta_{0:T-1}`: the path occupies slot 0 at every step, the other :math:`N-1` particles are
resampled multinomially (over all :math:`N`) and moved as usual, every particle draws :math:`K` backward
indices from :math:`\Lambda_t` except that the frozen particle's first index is pinned to the frozen
predecessor (slot 0). The estimate of iteration :math:`\ell` is :math:`\sum_i W_{T-1}^i \tau_{T-1}^i`; the next
frozen path is drawn by :math:`b_{T-1} \sim \mathrm{Cat}(W_{T-1})` and
:math:`b_{t-1} = J_t^{b_t, U_t}` with :math:`U_t` uniform on :math:`\{1..K\}`. This is a Gibbs sampler on the
extended target in which the path is one of the :math:`K` backward draws of each of its particles (the
frozen particle's forward ancestor is marginalised, which gives exactly the normaliser of
:math:`\Lambda_t`), so the smoothing distribution is invariant for every :math:`N \ge 2`, :math:`K \ge 1`. Started from an exact smoothing draw, the
estimate of every iteration is unbiased (the particle system then follows the extended target, under which the
traced path is a smoothing draw and the :math:`\tau`'s are conditionally unbiased for the backward-kernel
expectations). The roll-out estimator averages the estimates of iterations :math:`k_0+1, \dots, k`; its bias
comes only from the start and decays geometrically in :math:`k`, faster for larger :math:`N`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit import _checks
from bayeskit.errors import ConfigurationError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._backward import DEFAULT_NUM_TRIALS, log_bound_fn
from bayeskit.inference.smc._feynman_kac import FeynmanKac, bootstrap
from bayeskit.inference.smc._paris import (default_functional, leaves_dict, paris_accumulator,
                                          validate_smoother_args, weighted_mean)
from bayeskit.inference.smc.resampling import conditional
from bayeskit.progress import progress, tick

__all__ = ["PPGResult", "ppg", "conditional_paris", "ConditionalPaRISOutput", "initial_reference"]


class ConditionalPaRISOutput(NamedTuple):
    """One PPG iteration: ``estimate`` (:math:`\\sum_i W_{T-1}^i\\tau_{T-1}^i`), ``path`` (the next frozen
    path, (T, ...)), ``online_estimates`` (leading T, or None), ``num_fallback`` (T,), ``log_weights``
    (final, (N,))."""

    estimate: Any
    path: Any
    online_estimates: Any
    num_fallback: Any
    log_weights: Any


def conditional_paris(key, fk: FeynmanKac, reference, num_particles: int, functional: Callable, *,
                      num_backward: int = 2, log_bound: Callable | None = None,
                      num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
                      chunk_size: int | None = None, online: bool = False) -> ConditionalPaRISOutput:
    """One PPG iteration on the engine: the conditional strategy pins the frozen path ``reference``
    (T, ...) to slot 0, the PaRIS accumulator pins that slot's first backward index (module docstring);
    then the next frozen path is traced through one uniformly chosen backward index per step from
    :math:`b_{T-1} \\sim \\mathrm{Cat}(W_{T-1})`. Memory O(TN) (the path must be traced back)."""
    k_run, k_path = jax.random.split(key)
    acc = paris_accumulator(functional, num_backward=num_backward, log_bound=log_bound, num_trials=num_trials,
                            max_trials=max_trials, chunk_size=chunk_size, online=online, pinned_slot=0)
    state, out = engine.run(k_run, fk, num_particles, strategy=conditional(reference, slot=0), accumulators=(acc,),
                            history=True)
    (stats,), (rec,) = out.carries, out.records
    b_last = jax.random.categorical(k_path, state.log_weights).astype(jnp.int32)
    idx = engine.trace_lineage(rec.pick, b_last)
    path = jax.tree_util.tree_map(lambda a: a[jnp.arange(a.shape[0]), idx], out.particles)
    return ConditionalPaRISOutput(weighted_mean(state.log_weights, stats), path, rec.estimate, rec.num_fallback,
                                  state.log_weights)


# ------------------------------------------------------------------------------------ PPG driver
@partial(jax.tree_util.register_dataclass,
         data_fields=["estimate", "estimates", "paths", "final_path", "num_fallback"],
         meta_fields=["num_particles", "num_backward", "num_iterations", "burn_in"])
@dataclasses.dataclass(frozen=True)
class PPGResult:
    """Output of :func:`ppg`.

    Attributes:
        estimate: the roll-out estimator, the mean of ``estimates`` over iterations ``burn_in+1 .. k``.
        estimates: per-iteration PPG estimates (leading axis ``num_iterations``).
        paths: the frozen paths ``(num_iterations, T, ...)`` (only with ``keep_paths=True``, else None).
        final_path: the last frozen path (T, ...), to continue the chain (``initial_path=``).
        num_fallback: (num_iterations,) total exact fallback draws per iteration.
    """

    estimate: Any
    estimates: Any
    paths: Any
    final_path: Any
    num_fallback: Any
    num_particles: int
    num_backward: int
    num_iterations: int
    burn_in: int

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (one chain: per-iteration estimates, and the paths
        ``x`` over time if kept, as draws), ``smoothing`` (the roll-out estimate), ``sample_stats``
        (num_fallback per iteration and time)."""
        from bayeskit.diagnostics import one_chain, to_datatree

        post = one_chain(leaves_dict("estimate", self.estimates))
        if self.paths is not None:
            post["x"] = np.asarray(self.paths)[None]
        T = int(np.shape(self.final_path)[0])
        return to_datatree({"posterior": post, "sample_stats": one_chain({"num_fallback": self.num_fallback}),
                            "smoothing": leaves_dict("estimate", self.estimate)},
                           dims={"x": ["time"]}, coords={"time": np.arange(T)},
                           attrs={"num_particles": self.num_particles, "num_backward": self.num_backward,
                                  "burn_in": self.burn_in})


@partial(jax.jit, static_argnames=("ssm", "num_particles", "functional", "num_backward", "num_trials", "max_trials",
                                   "log_transition_bound", "chunk_size", "num_iterations", "keep_paths",
                                   "progress_bar"))
def _ppg_jit(key, ssm, params, ys, initial_path, *, num_particles, functional, num_backward, num_trials,
             log_transition_bound, chunk_size, num_iterations, keep_paths, max_trials=None, progress_bar=False):
    fk = bootstrap(ssm, params, ys)
    bound = log_bound_fn(ssm, params, log_transition_bound)

    def it(path, inp):
        k, i = inp
        out = conditional_paris(k, fk, path, num_particles, functional, num_backward=num_backward,
                                log_bound=bound, num_trials=num_trials, max_trials=max_trials,
                                chunk_size=chunk_size)
        tick(i + 1, num_iterations, progress_bar)
        return out.path, (out.estimate, out.path if keep_paths else None, jnp.sum(out.num_fallback))

    keys = jax.random.split(key, num_iterations)
    final, (ests, paths, nfb) = jax.lax.scan(it, initial_path, (keys, jnp.arange(num_iterations)))
    return final, ests, paths, nfb


def initial_reference(key, ssm, params, ys, num_particles: int = 100):
    """A starting frozen path: one path drawn from a bootstrap filter's genealogy (FFBS-free, O(TN))."""
    from bayeskit.inference.smc._smoothing import ffbs

    return ffbs(key, ssm, params, ys, num_particles=num_particles, num_samples=1).paths[0]


def ppg(key, ssm, params, ys, num_particles: int = 100, *, num_iterations: int = 100, burn_in: int = 0,
        num_backward: int = 2, functional: Callable | None = None, initial_path=None,
        num_trials: int = DEFAULT_NUM_TRIALS, max_trials: int | None = None,
        log_transition_bound: Callable | None = None, keep_paths: bool = False,
        chunk_size: int | None = None, progress_bar: bool = False) -> PPGResult:
    r"""The Parisian particle Gibbs sampler (Cardoso et al., ICML 2023): PaRIS driven by conditional SMC.

    Runs ``num_iterations`` conditional PaRIS passes, each with the frozen path drawn by the previous
    one, and returns the roll-out estimator :math:`\frac{1}{k - k_0}\sum_{\ell = k_0+1}^{k} \hat h^\ell` of
    :math:`\mathbb E[\sum_t \tilde h_t(X_{t-1}, X_t) \mid y_{0:T-1}]` (``burn_in`` = :math:`k_0`). Its bias comes
    only from the initial path (each iteration is unbiased once the chain is stationary) and decreases
    geometrically with the number of iterations, at a rate that improves with N; PaRIS's bias is :math:`O(1/N)`.
    At equal cost (PaRIS with N (k + 1) particles) PPG is less biased once N is large enough for the
    conditional SMC to mix (docs: smoothing.md has the measured table).

    Args:
        key: as in :func:`paris`.
        ssm: as in :func:`paris`.
        params: as in :func:`paris`.
        ys: as in :func:`paris`.
        num_particles: N >= 2.
        num_iterations: k >= 1.
        burn_in: :math:`k_0 < k`.
        num_backward: as in :func:`paris`.
        functional: as in :func:`paris`.
        num_trials: as in :func:`paris`.
        max_trials: as in :func:`paris`.
        log_transition_bound: as in :func:`paris`.
        chunk_size: as in :func:`paris`.
        initial_path: the first frozen path (T, *state_shape); default: a draw from a bootstrap filter
            with N particles (backward sampling).
        keep_paths: return every frozen path (O(k T) memory).
        progress_bar: show a tqdm bar of the iterations (ignored when called inside ``jit``/``vmap``).

    Returns:
        :class:`PPGResult`.
    """
    functional = default_functional if functional is None else functional
    traced = _checks.is_traced(key, params, ys, initial_path)
    if not traced:
        # the options first: they need no model evaluation (which compiles)
        num_iterations = _checks.check_positive_int(num_iterations, "num_iterations")
        burn_in = _checks.check_positive_int(burn_in, "burn_in", 0)
        if burn_in >= num_iterations:
            raise ConfigurationError(f"`burn_in` ({burn_in}) must be smaller than `num_iterations` ({num_iterations})")
        num_particles, num_backward, num_trials = validate_smoother_args(
            key, ssm, params, ys, num_particles, num_backward, num_trials, functional, log_transition_bound,
            max_trials=max_trials)
    ys = jnp.asarray(ys)
    k_init, k_run = jax.random.split(key)
    if initial_path is None:
        initial_path = initial_reference(k_init, ssm, params, ys, num_particles)
    elif not traced:
        _checks.check_finite_array(initial_path, "initial_path",
                                   shape=(ys.shape[0],) + tuple(ssm.state_shape(params)))
    initial_path = jnp.asarray(initial_path)
    progress_bar = bool(progress_bar) and not traced
    with progress(progress_bar, num_iterations, "PPG"):
        final, ests, paths, nfb = _ppg_jit(k_run, ssm, params, ys, initial_path, num_particles=num_particles,
                                           functional=functional, num_backward=num_backward, num_trials=num_trials,
                                           log_transition_bound=log_transition_bound, chunk_size=chunk_size,
                                           num_iterations=num_iterations, keep_paths=keep_paths,
                                           max_trials=max_trials, progress_bar=progress_bar)
        if progress_bar:
            jax.block_until_ready(final)
    estimate = jax.tree_util.tree_map(lambda e: jnp.mean(e[burn_in:], axis=0), ests)
    return PPGResult(estimate=estimate, estimates=ests, paths=paths, final_path=final, num_fallback=nfb,
                     num_particles=num_particles, num_backward=num_backward, num_iterations=num_iterations,
                     burn_in=burn_in)
