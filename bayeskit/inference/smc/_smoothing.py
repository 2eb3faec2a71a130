r"""Forward filtering backward sampling (FFBS), the reference particle smoother. (The O(N^2) forward-only
smoother is :func:`~bayeskit.smc.forward_smoother`, next to PaRIS.)

It draws paths backwards through the stored particle system with the backward kernel
(:mod:`~bayeskit.inference.smc._backward`).

**FFBS** (Godsill, Doucet & West 2004): run a filter storing every cloud, draw :math:`b_{T-1} \sim
\mathrm{Cat}(W_{T-1})` and :math:`b_{t-1} \sim \Lambda_t(b_t, \cdot)`; each path is an exact draw from the
particle approximation of the joint smoothing distribution. Cost O(TNM) for M paths, memory O(TN).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bayeskit import _checks
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._backward import backward_sample, check_backward_model
from bayeskit.inference.smc._feynman_kac import bootstrap
from bayeskit.inference.smc._filtering import check_model, check_weights
from bayeskit.inference.smc.resampling import adaptive, get_scheme
from bayeskit.progress import progress

__all__ = ["FFBSResult", "ffbs", "path_functional"]


def path_functional(functional: Callable, paths):
    """:math:`\\sum_t \\tilde h_t(x_{t-1}, x_t)` for each path of ``paths`` (M, T, ...) -> pytree (M, ...)."""
    T = paths.shape[1]

    def one(path):
        h0 = functional(0, None, path[0])
        if T == 1:
            return h0
        hs = jax.vmap(lambda t, xp, x: functional(t, xp, x))(jnp.arange(1, T), path[:-1], path[1:])
        return jax.tree_util.tree_map(lambda a, b: a + jnp.sum(b, axis=0), h0, hs)

    return jax.vmap(one)(paths)


@partial(jax.tree_util.register_dataclass, data_fields=["paths", "estimate", "log_evidence", "ess"],
         meta_fields=["num_particles", "num_samples"])
@dataclasses.dataclass(frozen=True)
class FFBSResult:
    """Output of :func:`ffbs`: ``paths`` (M, T, ...), ``estimate`` (mean over paths of the additive functional),
    ``log_evidence``, ``ess`` (T,), ``num_particles`` and ``num_samples`` (M; ``num_paths`` before this release,
    which still works with a DeprecationWarning)."""

    paths: Any
    estimate: Any
    log_evidence: Any
    ess: Any
    num_particles: int
    num_samples: int

    num_paths = _checks.renamed_attribute("FFBSResult", "num_paths", "num_samples")

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the M paths ``x`` as draws of one chain, dims
        time), ``sample_stats`` (the forward filter as one draw: ess over time, log_evidence)."""
        import numpy as np

        from bayeskit.diagnostics import one_chain, one_run, to_datatree

        T = int(np.shape(self.paths)[1])
        return to_datatree({"posterior": one_chain({"x": self.paths}),
                            "sample_stats": one_run({"ess": self.ess, "log_evidence": self.log_evidence})},
                           dims={"x": ["time"], "ess": ["time"]}, coords={"time": np.arange(T)},
                           attrs={"log_evidence": float(self.log_evidence), "num_particles": self.num_particles})


@partial(jax.jit, static_argnames=("ssm", "num_particles", "num_samples", "resampling", "functional", "progress_bar"))
def _ffbs_jit(key, ssm, params, ys, ess_threshold, *, num_particles, num_samples, resampling, functional,
              progress_bar=False):
    fk = bootstrap(ssm, params, ys)
    k_f, k_b = jax.random.split(key)
    state, out = engine.run(k_f, fk, num_particles, strategy=adaptive(resampling, ess_threshold), history=True,
                            progress_bar=progress_bar)
    paths, _ = backward_sample(k_b, fk, out.particles, out.log_weights, num_samples)
    est = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), path_functional(functional, paths))
    return paths, est, state.log_evidence, out.info


def ffbs(key, ssm, params, ys, num_particles: int = 100, *, num_samples: int = 100, functional: Callable | None = None,
         resampling: str | Callable = "systematic", ess_threshold: float = 0.5,
         progress_bar: bool = False, **deprecated) -> FFBSResult:
    """Forward filtering backward sampling: ``num_samples`` paths from a bootstrap filter's backward kernel.

    ``functional`` (``h(t, x_prev, x)`` per particle, as in :func:`~bayeskit.smc.paris`) gives ``estimate``,
    the average over paths of :math:`\\sum_t \\tilde h_t`. O(T N M) time, O(T N) memory. ``progress_bar``
    shows a tqdm bar of the forward filter's time steps (default False; ignored inside ``jit``/``vmap``).
    ``num_paths``, the old name of ``num_samples``, warns for one release.

    Example:
        >>> import jax, bayeskit as bk
        >>> from bayeskit.models import linear_gaussian as lg
        >>> p = lg.example_params(1)
        >>> _, ys = lg.ssm.simulate(jax.random.key(0), p, 20)
        >>> bk.smc.ffbs(jax.random.key(1), lg.ssm, p, ys, num_particles=50, num_samples=10).paths.shape
        (10, 20, 1)
    """
    from bayeskit.inference.smc._paris import check_functional, default_functional

    num_samples = _checks.renamed_kwargs("ffbs", deprecated, {"num_paths": "num_samples"}).get("num_samples",
                                                                                               num_samples)
    functional = default_functional if functional is None else functional
    traced = _checks.is_traced(key, params, ys)
    if not traced:  # inside jit/vmap the host-side checks (which need concrete values) are skipped
        _checks.check_key(key)
        num_particles = _checks.check_positive_int(num_particles, "num_particles")
        num_samples = _checks.check_positive_int(num_samples, "num_samples")
        get_scheme(resampling)
        ess_threshold = _checks.check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
        check_model(ssm, params, ys)
        check_functional(functional, ssm, params)
        check_backward_model(ssm, params, None, 0)
    progress_bar = bool(progress_bar) and not traced
    with progress(progress_bar, jnp.shape(ys)[0], "FFBS (forward filter)"):
        paths, est, logz, info = _ffbs_jit(key, ssm, params, jnp.asarray(ys), ess_threshold,
                                           num_particles=num_particles, num_samples=num_samples, resampling=resampling,
                                           functional=functional, progress_bar=progress_bar)
        if progress_bar:
            jax.block_until_ready(paths)
    if not traced:
        check_weights(info.nonfinite, "ffbs")
    return FFBSResult(paths, est, logz, info.ess, num_particles, num_samples)
