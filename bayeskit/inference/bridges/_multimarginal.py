r"""Multi-marginal Schrödinger bridges with iterative reference refinement (SBIRR).

Shen, Berlinghieri & Broderick, "Multi-marginal Schrödinger bridges with iterative reference refinement"
(AISTATS 2025, arXiv:2408.06277). Given snapshots :math:`X^{(0)}, \dots, X^{(M)}` (unpaired particle clouds)
at times :math:`t_0 < \dots < t_M` and a parametric reference family :math:`dX = b_\theta(X,t)dt + \sigma dW`:

repeat ``num_refinements`` times

1. for every interval :math:`[t_i, t_{i+1}]` solve the two-marginal SB between :math:`X^{(i)}` and
   :math:`X^{(i+1)}` under the current reference by **iterative proportional fitting with Gaussian-process
   drift regression** (Vargas et al. 2021, "Solving Schrödinger bridges via maximum likelihood"):
   simulate the reference forward from :math:`X^{(i)}`, regress the time-reversed increments on
   :math:`(x, \tau)` to get a backward drift; then ``num_ipf_iterations`` times: simulate backward from
   :math:`X^{(i+1)}`, regress the reversed increments to get the forward drift, simulate forward from
   :math:`X^{(i)}`, regress to get the backward drift. Each regression is GP regression of the
   Euler–Maruyama velocities :math:`(x_{k+1}-x_k)/\Delta t` with kernel variance :math:`1/\Delta t`
   and noise variance :math:`\sigma^2/\Delta t` (exponential kernel by default, as SBIRR's code);
2. stitch trajectories across intervals: every particle of every snapshot :math:`j` is pushed forward
   with the forward drifts of intervals :math:`j, \dots, M-1` and backward with the backward drifts of
   intervals :math:`j-1, \dots, 0`;
3. refit :math:`\theta` by Euler–Maruyama maximum likelihood on the stitched trajectories
   (:meth:`Reference.fit`) and use it as the next reference.

One pass under a Brownian reference is the "vanilla SB" baseline (:func:`vanilla_sb`).

**Closed-form per-interval solver** (``solver="lightsb"``, Brownian / OU / Linear references): step 1 fits
:class:`~bayeskit.bridges.LinearLightSB` forward and backward plans per interval (LightSB
under the linear reference, an exact reduction) and step 2 draws the plan's end points and fills in exact
reference bridges on the grid. No IPF, no GP regression; on OU ground truths it recovers :math:`\theta`
where the IPF-GP solver stays biased (docs/bridges.md).

**Departure.** The GP regressions use a random subset of at most ``max_gp_points`` of the
:math:`N \times n` (particle, step) pairs (SBIRR's code uses all of them, an :math:`O((Nn)^3)` solve)
so that one IPF step costs milliseconds on a CPU. Besides SBIRR's zero-mean GP, ``gp_mean="linear"``
puts an explicit least-squares basis :math:`(1, x, \tau, x\tau)` under the GP, and ``kernel_variance`` can
shrink the GP's variance below SBIRR's :math:`1/\Delta t`: the default GP fits part of the Euler noise as
drift, which biases IPF (on Gaussian marginals it converges to a front-loaded bridge; docs/bridges.md).
The defaults are ``gp_mean="linear"``, ``kernel_variance=1``: on the shipped Lotka–Volterra snapshots
(4 refinements, 5 IPF iterations, step 0.04) SBIRR's own settings give held-out EMD ~1.95 for both SBIRR and vanilla
SB (the IPF stalls between snapshots that are far apart for a zero-mean GP), ours 0.29 vs 1.05.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_choice, check_finite_array, check_key, check_positive_int, renamed_kwargs
from bayeskit._linalg import single_threaded_blas
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError
from bayeskit.inference.bridges._gp import ipf_interval, simulate_gp_drift
from bayeskit.inference.bridges._linear import LinearLightSB, bridge_step_matrices, fill_bridge
from bayeskit.inference.bridges._mm_result import MultiMarginalResult
from bayeskit.inference.bridges._reference import Brownian, Reference
from bayeskit.progress import chunk_loop

__all__ = ["multimarginal", "vanilla_sb"]

def _check_snapshots(snapshots, times):
    if isinstance(snapshots, np.ndarray) or isinstance(snapshots, jax.Array):
        check_finite_array(snapshots, "snapshots", ndim=3)
        snaps = [np.asarray(s) for s in np.asarray(snapshots)]
    else:
        snaps = []
        for j, s in enumerate(snapshots):
            check_finite_array(s, f"snapshots[{j}]", ndim=2)
            snaps.append(np.asarray(s))
    if len(snaps) < 2:
        raise DataError(f"`snapshots` must hold at least 2 time points, got {len(snaps)}")
    dims = {s.shape[1] for s in snaps}
    if len(dims) != 1:
        raise DataError(f"all `snapshots` must have the same dimension, got dimensions {[s.shape[1] for s in snaps]}")
    check_finite_array(times, "times", ndim=1)
    times = np.asarray(times, float)
    if times.shape[0] != len(snaps):
        raise DataError(f"`times` must have one entry per snapshot ({len(snaps)}), got {times.shape[0]}")
    if np.any(np.diff(times) <= 0):
        raise DataError(f"`times` must be strictly increasing, got {times.tolist()}")
    return snaps, times


def _one_pass(key, snaps, times, reference, steps, dts, opts):
    m = len(snaps) - 1
    dtype = jnp.result_type(float)
    sigma = jnp.asarray(reference.sigma, dtype)
    ell = jnp.asarray(opts["lengthscale"], dtype)
    static = dict(drift_fn=reference.drift_fn, kind=opts["kernel"], use_reference_mean=opts["gp_mean"] == "reference",
                  kernel_variance=opts["kernel_variance"])
    linear_basis = opts["gp_mean"] == "linear"
    key_ipf, key_push = jax.random.split(key)
    models = []
    for i in range(m):
        models.append(ipf_interval(
            jax.random.fold_in(key_ipf, i), jnp.asarray(snaps[i], dtype), jnp.asarray(snaps[i + 1], dtype),
            reference.params, jnp.asarray(times[i], dtype), jnp.asarray(dts[i], dtype), sigma, ell,
            num_steps=steps[i], num_ipf_iterations=opts["num_ipf_iterations"], max_gp_points=opts["max_gp_points"],
            linear_basis=linear_basis, **static))
    # the stitching simulations read the reference only through a GP prior mean: without one, they get neither
    # its drift function nor its parameters, so every reference family (and the vanilla pass) shares one program
    use_mean = static["use_reference_mean"]
    push_static = {**static, "drift_fn": static["drift_fn"] if use_mean else None}
    push_params = reference.params if use_mean else None
    pieces = []
    for j in range(m + 1):
        x0 = jnp.asarray(snaps[j], dtype)
        segs = []
        x = x0
        back = []
        for i in range(j - 1, -1, -1):  # backward through intervals j-1..0
            p = simulate_gp_drift(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i)), models[i][1], x, push_params,
                                  jnp.asarray(times[i], dtype), jnp.asarray(dts[i], dtype), sigma, ell,
                                  num_steps=steps[i], direction="backward", **push_static)
            back.append(p[::-1][:-1])  # real-time order, drop the duplicate endpoint
            x = p[-1]
        segs.extend(back[::-1])
        x = x0
        for i in range(j, m):
            p = simulate_gp_drift(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i) + 1), models[i][0], x,
                                  push_params, jnp.asarray(times[i], dtype), jnp.asarray(dts[i], dtype), sigma, ell,
                                  num_steps=steps[i], direction="forward", **push_static)
            segs.append(p[:-1])
            x = p[-1]
        segs.append(x[None])
        pieces.append(jnp.concatenate(segs, 0))
    return np.asarray(jnp.concatenate(pieces, 1))


_LIGHTSB_DEFAULTS = dict(num_components=4, covariance="full", num_iterations=1000, batch_size=128, learning_rate=1e-2)


def _one_pass_lightsb(key, snaps, times, reference, steps, dts, opts):
    """One pass with the closed-form per-interval solver (:class:`LinearLightSB`, exact bridge filling)."""
    m = len(snaps) - 1
    dtype = jnp.result_type(float)
    dim = snaps[0].shape[1]
    a, c = (np.asarray(z, float) for z in reference.linear_coefficients(dim))
    key_fit, key_push = jax.random.split(key)
    models, mats = [], []
    for i in range(m):
        models.append(LinearLightSB.fit(jax.random.fold_in(key_fit, i), jnp.asarray(snaps[i], dtype),
                                        jnp.asarray(snaps[i + 1], dtype), reference=reference,
                                        duration=float(times[i + 1] - times[i]), backward=True,
                                        **opts["lightsb_options"]))
        mats.append(tuple(jnp.asarray(z, dtype) for z in bridge_step_matrices(a, c, reference.sigma,
                                                                       float(times[i + 1] - times[i]), steps[i])))
    pieces = []
    for j in range(m + 1):
        x0 = jnp.asarray(snaps[j], dtype)
        back = []
        x = x0
        for i in range(j - 1, -1, -1):  # backward through intervals j-1..0: x_i ~ pi_i(. | x_{i+1}), then bridge
            k1, k2 = jax.random.split(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i)))
            prev = models[i].sample_backward(k1, x)
            back.append(fill_bridge(k2, prev, x, *mats[i])[:-1])
            x = prev
        segs = back[::-1]
        x = x0
        for i in range(j, m):
            k1, k2 = jax.random.split(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i) + 1))
            nxt = models[i].sample(k1, x)
            segs.append(fill_bridge(k2, x, nxt, *mats[i])[:-1])
            x = nxt
        segs.append(x[None])
        pieces.append(jnp.concatenate(segs, 0))
    return np.asarray(jnp.concatenate(pieces, 1))


def multimarginal(key: jax.Array, snapshots: Sequence, times: Any, *, reference: Reference | None = None,
                  num_refinements: int = 10, num_ipf_iterations: int = 10, time_step: float | None = None,
                  kernel: str = "exponential", lengthscale: float = 1.0, kernel_variance: float | None = 1.0,
                  max_gp_points: int = 1000,
                  gp_mean: str = "linear", num_fit_iterations: int = 200, solver: str = "ipf-gp",
                  lightsb_options: dict | None = None, progress_bar: bool = False,
                  **deprecated) -> MultiMarginalResult:
    """Multi-marginal SB with iterative reference refinement (module docstring).

    Args:
        key: ``jax.random`` key.
        snapshots: sequence of (N_j, D) particle clouds (or an array (M + 1, N, D)).
        times: (M + 1,) strictly increasing snapshot times.
        reference: initial reference and parametric family (``bk.bridges.OU``, ``LotkaVolterra``, ...);
            default ``Brownian(sigma=1)``. Its ``sigma`` is the bridge's diffusion.
        num_refinements: passes of (bridges, stitch, refit); 1 = no refinement.
        num_ipf_iterations: IPF iterations per interval and pass (SBIRR: 10).
        time_step: Euler–Maruyama step (default: shortest interval / 50); each interval uses
            ``ceil(duration / time_step)`` equal steps.
        kernel: ``"exponential"`` (SBIRR) or ``"rbf"`` GP kernel on (x, tau); ``lengthscale`` its length scale;
            ``kernel_variance`` its variance (``None``: ``1 / time_step`` as SBIRR's code; default 1).
        max_gp_points: size of the random subset used by each GP regression.
        gp_mean: ``"linear"`` (default: GP on the residuals of a least-squares fit of the basis
            (1, x, tau, x tau)), ``"zero"`` (SBIRR's code; use with ``kernel_variance=None``) or ``"reference"``
            (GP prior mean = reference drift).
        num_fit_iterations: L-BFGS iterations of each reference refit (nonlinear families; ``fit_iterations``
            before this release, which still works with a DeprecationWarning).
        solver: per-interval two-marginal solver: ``"ipf-gp"`` (the paper's IPF with GP drift regression; any
            reference) or ``"lightsb"`` (closed-form LightSB under a linear reference, :class:`LinearLightSB`:
            Brownian, OU or Linear references only; bridges between the plan's end points are sampled
            exactly, so ``time_step`` only sets the grid of the Euler–Maruyama refit, whose bias is
            of order ``|A| * time_step``). The ``num_ipf_iterations``, ``kernel``, ``lengthscale``,
            ``kernel_variance``, ``max_gp_points`` and ``gp_mean`` options belong to ``"ipf-gp"``.
        lightsb_options: options of :meth:`LightSB.fit` for ``solver="lightsb"`` (default
            ``num_components=4, covariance="full", num_iterations=1000, batch_size=128, learning_rate=1e-2``).
        progress_bar: show a tqdm bar over the refinement passes.
        **deprecated: ``fit_iterations``, the old name of ``num_fit_iterations``.

    Example:
        >>> import numpy as np, jax
        >>> import bayeskit as bk
        >>> rng = np.random.default_rng(0)
        >>> snaps = [rng.normal(m, 0.1, (30, 1)) for m in (2.0, 1.2, 0.7)]
        >>> res = bk.bridges.multimarginal(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=bk.bridges.OU(sigma=0.2),
        ...                     num_refinements=2, num_ipf_iterations=2, time_step=0.05)
        >>> res.trajectories.shape
        (21, 90, 1)
    """
    num_fit_iterations = renamed_kwargs("multimarginal", deprecated, {"fit_iterations": "num_fit_iterations"}).get(
        "num_fit_iterations", num_fit_iterations)
    check_key(key)
    snaps, times = _check_snapshots(snapshots, times)
    reference = Brownian(1.0) if reference is None else reference
    if not isinstance(reference, Reference):
        raise ConfigurationError(f"`reference` must be a bayeskit.bridges Reference, got {type(reference).__name__}")
    reference = reference.for_dim(snaps[0].shape[1])
    num_refinements = check_positive_int(num_refinements, "num_refinements")
    num_ipf_iterations = check_positive_int(num_ipf_iterations, "num_ipf_iterations")
    max_gp_points = check_positive_int(max_gp_points, "max_gp_points")
    num_fit_iterations = check_positive_int(num_fit_iterations, "num_fit_iterations")
    check_choice(kernel, "kernel", {"exponential", "rbf"})
    check_choice(gp_mean, "gp_mean", {"zero", "reference", "linear"})
    check_choice(solver, "solver", {"ipf-gp", "lightsb"})
    if lightsb_options is not None and not isinstance(lightsb_options, dict):
        raise ConfigurationError(f"`lightsb_options` must be a dict, got {type(lightsb_options).__name__}")
    lsb_opts = {**_LIGHTSB_DEFAULTS, **(lightsb_options or {})}
    if "epsilon" in lsb_opts:
        raise ConfigurationError("`lightsb_options` must not set `epsilon` (the reference fixes it)")
    if solver == "lightsb":
        reference.linear_coefficients(snaps[0].shape[1])  # raises for nonlinear families
    if not (np.isfinite(lengthscale) and lengthscale > 0):
        raise ConfigurationError(f"`lengthscale` must be positive, got {lengthscale}")
    durations = np.diff(times)
    if time_step is None:
        time_step = float(durations.min()) / 50.0
    if not (np.isfinite(time_step) and time_step > 0):
        raise ConfigurationError(f"`time_step` must be positive, got {time_step}")
    steps = [max(1, int(math.ceil(dur / time_step - 1e-9))) for dur in durations]
    dts = [dur / n for dur, n in zip(durations, steps)]
    grid = np.concatenate([t + dt * np.arange(n) for t, dt, n in zip(times[:-1], dts, steps)] + [times[-1:]])
    snapshot_grid_index = np.concatenate([[0], np.cumsum(steps)])
    opts = dict(lengthscale=float(lengthscale), kernel=kernel, gp_mean=gp_mean, kernel_variance=kernel_variance,
                num_ipf_iterations=num_ipf_iterations, max_gp_points=max_gp_points, lightsb_options=lsb_opts)
    one_pass = _one_pass_lightsb if solver == "lightsb" else _one_pass
    initial = reference

    def refine(carry, r, _):
        reference, _ = carry
        with single_threaded_blas():  # many small Cholesky factorisations (GP regressions); see the helper
            traj = one_pass(jax.random.fold_in(key, r), snaps, times, reference, steps, dts, opts)
        if not np.all(np.isfinite(traj)):
            raise ConvergenceError(f"non-finite bridge trajectories at refinement {r}; decrease `time_step` "
                                   "or rescale the data")
        reference = reference.fit(traj, grid, num_iterations=num_fit_iterations)
        return (reference, traj), reference.to_dict()

    (reference, traj), history = chunk_loop(refine, (reference, None), num_refinements, chunk_size=1,
                                            progress_bar=progress_bar, desc="SBIRR")
    return MultiMarginalResult(traj, grid, times, reference, tuple(history), snapshot_grid_index, initial)


def vanilla_sb(key, snapshots: Sequence, times, *, reference: Reference | None = None, sigma: float | None = None,
               **options: Any) -> MultiMarginalResult:
    """The "vanilla SB" baseline: one pass of per-interval bridges under a Brownian reference.

    If a parametric ``reference`` family is given, it is fitted once to the vanilla trajectories (its
    parameters are reported in ``result.reference``; the bridges never used it). ``sigma`` defaults to
    ``reference.sigma`` (or 1).
    """
    options.update(renamed_kwargs("vanilla_sb", {k: options.pop(k) for k in ("fit_iterations",) if k in options},
                                  {"fit_iterations": "num_fit_iterations"}))
    if sigma is None:
        sigma = reference.sigma if reference is not None else 1.0
    result = multimarginal(key, snapshots, times, reference=Brownian(sigma), num_refinements=1, **options)
    if reference is not None:
        fitted = reference.replace(sigma=sigma).fit(result.trajectories, result.grid,
                                                    num_iterations=options.get("num_fit_iterations", 200))
        result = dataclasses.replace(result, reference=fitted, reference_history=(fitted.to_dict(),))
    return result
