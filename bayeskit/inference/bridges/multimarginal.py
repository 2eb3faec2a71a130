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
:class:`~bayeskit.inference.bridges.linear.LinearLightSB` forward and backward plans per interval (LightSB
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
from functools import partial
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_choice, check_finite_array, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, ConvergenceError, DataError
from bayeskit.inference.bridges.linear import LinearLightSB, bridge_step_matrices, fill_bridge
from bayeskit.inference.bridges.metrics import emd as _emd
from bayeskit.inference.bridges.reference import Brownian, Reference
from bayeskit.inference.bridges.reference import simulate as _simulate_reference
from bayeskit.progress import chunk_loop

__all__ = ["GPDrift", "MultiMarginalResult", "multimarginal", "vanilla_sb", "ipf_interval", "gp_fit", "gp_predict"]


class GPDrift(NamedTuple):
    """A GP-regression drift :math:`\\hat b(x,\\tau) = m(x,\\tau) + k((x,\\tau), Z) A`.

    Attributes:
        inputs: (M, D + 1) training inputs :math:`Z = (x, \\tau)`.
        weights: (M, D) :math:`A = (K_{ZZ} + \\text{noise}\\, I)^{-1}(Y - m(Z) - \\Phi(Z)\\beta)`.
        coef: (P, D) least-squares coefficients :math:`\\beta` of the explicit basis
            :math:`\\Phi(x,\\tau) = (1, x, \\tau, x\\tau)` (``gp_mean="linear"``; zeros otherwise).
    """

    inputs: jax.Array
    weights: jax.Array
    coef: jax.Array


def _features(z):
    """Explicit basis of the ``gp_mean="linear"`` GP: (1, x, tau, x * tau)."""
    x, tau = z[..., :-1], z[..., -1:]
    return jnp.concatenate([jnp.ones_like(tau), x, tau, x * tau], -1)


def _kernel(z1, z2, lengthscale, variance, kind):
    d2 = jnp.sum(((z1[:, None, :] - z2[None, :, :]) / lengthscale) ** 2, -1)
    if kind == "rbf":
        return variance * jnp.exp(-0.5 * d2)
    return variance * jnp.exp(-jnp.sqrt(jnp.maximum(d2, 1e-30)))


def gp_fit(key, path, dt, mean_fn, *, num_points, lengthscale, variance, noise, kind, linear_basis=False):
    """GP regression of EM velocities on (x, tau) from a path (n + 1, N, D) on the grid ``tau_k = k dt``."""
    n, num, d = path.shape[0] - 1, path.shape[1], path.shape[2]
    tau = (jnp.arange(n) * dt).astype(path.dtype)
    z = jnp.concatenate([path[:-1], jnp.broadcast_to(tau[:, None, None], (n, num, 1))], -1).reshape(-1, d + 1)
    y = ((path[1:] - path[:-1]) / dt).reshape(-1, d)
    if num_points < n * num:
        idx = jax.random.choice(key, n * num, (num_points,), replace=False)
        z, y = z[idx], y[idx]
    resid = y - mean_fn(z)
    feats = _features(z)
    if linear_basis:
        ridge = 1e-6 * jnp.eye(feats.shape[-1], dtype=z.dtype)
        coef = jnp.linalg.solve(feats.T @ feats + ridge, feats.T @ resid)
        resid = resid - feats @ coef
    else:
        coef = jnp.zeros((feats.shape[-1], d), z.dtype)
    kmat = _kernel(z, z, lengthscale, variance, kind) + (noise + 1e-6 * variance) * jnp.eye(z.shape[0], dtype=z.dtype)
    chol = jnp.linalg.cholesky(kmat)
    weights = jax.scipy.linalg.cho_solve((chol, True), resid)
    return GPDrift(z, weights, coef)


def gp_predict(model: GPDrift, x, tau, mean_fn, *, lengthscale, variance, kind):
    z = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), tau, x.dtype)], -1)
    return _kernel(z, model.inputs, lengthscale, variance, kind) @ model.weights + mean_fn(z) + _features(z) @ model.coef


def _simulate_gp(key, model, x0, dt, num_steps, sigma, mean_fn, gp_kw):
    keys = jax.random.split(key, num_steps)

    def body(x, inp):
        k, i = inp
        b = gp_predict(model, x, i * dt, mean_fn, **gp_kw)
        x = x + b * dt + sigma * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype)
        return x, x

    _, path = jax.lax.scan(body, x0, (keys, jnp.arange(num_steps)))
    return jnp.concatenate([x0[None], path], 0)


def _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean):
    """Prior means of the forward (time t_start + tau) and backward (time t_end - tau) GP drifts."""
    if not use_reference_mean:
        zero = lambda z: jnp.zeros(z.shape[:-1] + (z.shape[-1] - 1,), z.dtype)  # noqa: E731
        return zero, zero

    def fwd(z):
        return jax.vmap(lambda zi: drift_fn(ref_params, zi[:-1], t_start + zi[-1]))(z)

    def bwd(z):
        return -jax.vmap(lambda zi: drift_fn(ref_params, zi[:-1], t_end - zi[-1]))(z)

    return fwd, bwd


@partial(jax.jit, static_argnames=("drift_fn", "num_steps", "num_ipf_iterations", "max_gp_points", "kind",
                                   "use_reference_mean", "linear_basis"))
def ipf_interval(key, x_start, x_end, ref_params, t_start, dt, sigma, lengthscale, *, drift_fn, num_steps,
                 num_ipf_iterations, max_gp_points, kind="exponential", use_reference_mean=False, linear_basis=False,
                 kernel_variance=None):
    """IPF with GP drift regression for one interval :math:`[t_s, t_s + n\\,dt]` (module docstring, step 1).

    Returns ``(forward, backward)`` :class:`GPDrift` models: the forward drift is a function of
    :math:`(x, \\tau)` with :math:`\\tau = t - t_s`; the backward one of :math:`(x, \\tau)` with
    :math:`\\tau = t_s + n\\,dt - t` (reversed time).
    """
    t_end = t_start + num_steps * dt
    fwd_mean, bwd_mean = _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean)
    variance = 1.0 / dt if kernel_variance is None else kernel_variance
    noise = sigma**2 / dt
    gp_kw = dict(lengthscale=lengthscale, variance=variance, kind=kind)
    m_bwd = min(max_gp_points, num_steps * x_start.shape[0])
    m_fwd = min(max_gp_points, num_steps * x_end.shape[0])
    fit_b = partial(gp_fit, dt=dt, mean_fn=bwd_mean, num_points=m_bwd, noise=noise, linear_basis=linear_basis, **gp_kw)
    fit_f = partial(gp_fit, dt=dt, mean_fn=fwd_mean, num_points=m_fwd, noise=noise, linear_basis=linear_basis, **gp_kw)
    k0, k1, kloop = jax.random.split(key, 3)
    ref_path = _simulate_reference(k0, drift_fn, ref_params, x_start, sigma, t_start, dt, num_steps)
    backward = fit_b(k1, ref_path[::-1])
    d = x_start.shape[-1]
    forward = GPDrift(jnp.zeros((m_fwd, d + 1), x_start.dtype), jnp.zeros((m_fwd, d), x_start.dtype),
                      jnp.zeros((2 * d + 2, d), x_start.dtype))

    def body(i, carry):
        _, bwd = carry
        ka, kb, kc, kd = jax.random.split(jax.random.fold_in(kloop, i), 4)
        path_b = _simulate_gp(ka, bwd, x_end, dt, num_steps, sigma, bwd_mean, gp_kw)
        fwd = fit_f(kb, path_b[::-1])
        path_f = _simulate_gp(kc, fwd, x_start, dt, num_steps, sigma, fwd_mean, gp_kw)
        bwd = fit_b(kd, path_f[::-1])
        return fwd, bwd

    return jax.lax.fori_loop(0, num_ipf_iterations, body, (forward, backward))


@partial(jax.jit, static_argnames=("drift_fn", "num_steps", "kind", "use_reference_mean", "direction"))
def _push(key, model, x0, ref_params, t_start, dt, sigma, lengthscale, *, drift_fn, num_steps, kind,
          use_reference_mean, direction, kernel_variance=None):
    t_end = t_start + num_steps * dt
    fwd_mean, bwd_mean = _mean_fns(drift_fn, ref_params, t_start, t_end, use_reference_mean)
    gp_kw = dict(lengthscale=lengthscale, variance=1.0 / dt if kernel_variance is None else kernel_variance, kind=kind)
    mean_fn = fwd_mean if direction == "forward" else bwd_mean
    return _simulate_gp(key, model, x0, dt, num_steps, sigma, mean_fn, gp_kw)


@dataclasses.dataclass(frozen=True)
class MultiMarginalResult:
    """Result of :func:`multimarginal` / :func:`vanilla_sb`.

    Attributes:
        trajectories: (num_grid, num_trajectories, D) stitched trajectories of the last pass.
        grid: (num_grid,) time grid of the trajectories.
        times: (M + 1,) snapshot times.
        reference: the reference refitted on the last pass's trajectories.
        reference_history: parameters (flat dicts of arrays) after each refinement.
        snapshot_grid_index: (M + 1,) position of each snapshot time on ``grid``.
        initial_reference: the reference the first pass used.
    """

    trajectories: np.ndarray
    grid: np.ndarray
    times: np.ndarray
    reference: Reference
    reference_history: tuple
    snapshot_grid_index: np.ndarray
    initial_reference: Reference

    @property
    def num_refinements(self) -> int:
        return len(self.reference_history)

    def marginal(self, t: float) -> np.ndarray:
        """Particles (num_trajectories, D) at the grid time closest to ``t`` (linear interpolation between
        the two neighbouring grid times)."""
        if not (self.grid[0] <= t <= self.grid[-1]):
            raise ConfigurationError(f"`t` must lie in [{self.grid[0]}, {self.grid[-1]}], got {t}")
        j = int(np.clip(np.searchsorted(self.grid, t) - 1, 0, len(self.grid) - 2))
        w = (t - self.grid[j]) / (self.grid[j + 1] - self.grid[j])
        return (1 - w) * self.trajectories[j] + w * self.trajectories[j + 1]

    def emd(self, snapshot, t: float) -> float:
        """Earth mover's distance between a (held-out) snapshot observed at ``t`` and the bridge at ``t``."""
        return _emd(self.marginal(t), snapshot)

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the trajectories ``x`` as draws of one chain,
        dims time x dim), ``reference`` (the reference's parameters per refinement)."""
        from bayeskit.diagnostics import one_chain, to_datatree

        ref = {k: np.stack([h[k] for h in self.reference_history]) for k in self.reference_history[0]}
        dims = {"x": ["time", "dim"], **{k: ["refinement"] for k in ref}}
        groups = {"posterior": one_chain({"x": np.moveaxis(np.asarray(self.trajectories), 1, 0)}), "reference": ref}
        return to_datatree(groups, dims=dims, coords={"time": self.grid},
                           attrs={"method": "SBIRR", "reference_family": self.reference.name,
                                  "sigma": self.reference.sigma, "snapshot_times": list(map(float, self.times))})


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
    pieces = []
    for j in range(m + 1):
        x0 = jnp.asarray(snaps[j], dtype)
        segs = []
        x = x0
        back = []
        for i in range(j - 1, -1, -1):  # backward through intervals j-1..0
            p = _push(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i)), models[i][1], x, reference.params,
                      jnp.asarray(times[i], dtype), jnp.asarray(dts[i], dtype), sigma, ell, num_steps=steps[i],
                      direction="backward", **static)
            back.append(p[::-1][:-1])  # real-time order, drop the duplicate endpoint
            x = p[-1]
        segs.extend(back[::-1])
        x = x0
        for i in range(j, m):
            p = _push(jax.random.fold_in(key_push, 2 * (j * (m + 1) + i) + 1), models[i][0], x, reference.params,
                      jnp.asarray(times[i], dtype), jnp.asarray(dts[i], dtype), sigma, ell, num_steps=steps[i],
                      direction="forward", **static)
            segs.append(p[:-1])
            x = p[-1]
        segs.append(x[None])
        pieces.append(jnp.concatenate(segs, 0))
    return np.asarray(jnp.concatenate(pieces, 1))


_LIGHTSB_DEFAULTS = dict(num_components=4, covariance="full", num_steps=1000, batch_size=128, learning_rate=1e-2)


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
                  gp_mean: str = "linear", fit_iterations: int = 200, solver: str = "ipf-gp",
                  lightsb_options: dict | None = None, progress_bar: bool = False) -> MultiMarginalResult:
    """Multi-marginal SB with iterative reference refinement (module docstring).

    Args:
        key: ``jax.random`` key.
        snapshots: sequence of (N_j, D) particle clouds (or an array (M + 1, N, D)).
        times: (M + 1,) strictly increasing snapshot times.
        reference: initial reference and parametric family (:mod:`bayeskit.inference.bridges.reference`);
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
        fit_iterations: L-BFGS iterations of each reference refit (nonlinear families).
        solver: per-interval two-marginal solver: ``"ipf-gp"`` (the paper's IPF with GP drift regression; any
            reference) or ``"lightsb"`` (closed-form LightSB under a linear reference, :class:`LinearLightSB`:
            Brownian, OU or Linear references only; bridges between the plan's end points are sampled
            exactly, so ``time_step`` only sets the grid of the Euler–Maruyama refit, whose bias is
            of order ``|A| * time_step``). The ``num_ipf_iterations``, ``kernel``, ``lengthscale``,
            ``kernel_variance``, ``max_gp_points`` and ``gp_mean`` options belong to ``"ipf-gp"``.
        lightsb_options: options of :meth:`LightSB.fit` for ``solver="lightsb"`` (default
            ``num_components=4, covariance="full", num_steps=1000, batch_size=128, learning_rate=1e-2``).

    Example:
        >>> import numpy as np, jax
        >>> rng = np.random.default_rng(0)
        >>> snaps = [rng.normal(m, 0.1, (30, 1)) for m in (2.0, 1.2, 0.7)]
        >>> res = multimarginal(jax.random.key(0), snaps, [0.0, 0.5, 1.0], reference=OU(sigma=0.2),
        ...                     num_refinements=2, num_ipf_iterations=2, time_step=0.05)
        >>> res.trajectories.shape
        (21, 90, 1)
    """
    check_key(key)
    snaps, times = _check_snapshots(snapshots, times)
    reference = Brownian(1.0) if reference is None else reference
    if not isinstance(reference, Reference):
        raise ConfigurationError(f"`reference` must be a bayeskit.bridges Reference, got {type(reference).__name__}")
    reference = reference.for_dim(snaps[0].shape[1])
    num_refinements = check_positive_int(num_refinements, "num_refinements")
    num_ipf_iterations = check_positive_int(num_ipf_iterations, "num_ipf_iterations")
    max_gp_points = check_positive_int(max_gp_points, "max_gp_points")
    fit_iterations = check_positive_int(fit_iterations, "fit_iterations")
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
        traj = one_pass(jax.random.fold_in(key, r), snaps, times, reference, steps, dts, opts)
        if not np.all(np.isfinite(traj)):
            raise ConvergenceError(f"non-finite bridge trajectories at refinement {r}; decrease `time_step` "
                                   "or rescale the data")
        reference = reference.fit(traj, grid, num_iterations=fit_iterations)
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
    if sigma is None:
        sigma = reference.sigma if reference is not None else 1.0
    result = multimarginal(key, snapshots, times, reference=Brownian(sigma), num_refinements=1, **options)
    if reference is not None:
        fitted = reference.replace(sigma=sigma).fit(result.trajectories, result.grid,
                                                    num_iterations=options.get("fit_iterations", 200))
        result = dataclasses.replace(result, reference=fitted, reference_history=(fitted.to_dict(),))
    return result


# keep a name for the docstring example
from bayeskit.inference.bridges.reference import OU  # noqa: E402
