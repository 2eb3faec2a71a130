r"""Fractional Ornstein–Uhlenbeck model and its exact Gaussian ground truth under the Markov approximation.

.. math::
    X(0) = x_0, \qquad dX = -\theta X\, dt + \sigma\, d\hat B_H(t), \qquad y_j \sim \mathcal N(X(t_j), \rho^2),

with :math:`\hat B_H` the OU-mixture approximation of fBM (:class:`bayeskit.model.noise.FractionalBM`),
or Brownian motion. Parameters are a dict with keys ``theta``, ``sigma``, ``obs_sd``.

Because the augmented state :math:`Z = (X, Y_1, \dots, Y_K)` solves the *linear* SDE
:math:`dZ = F Z dt + G dW` with

.. math::
    F = \begin{pmatrix} -\theta & -\sigma (\omega \odot \gamma)^\top \\ 0 & -\operatorname{diag}\gamma \end{pmatrix},
    \qquad G = \begin{pmatrix} \sigma \textstyle\sum_k \omega_k \\ \mathbf 1_K \end{pmatrix},

the prior of X on any grid is Gaussian with moments from the exact transitions
:math:`\Phi(\Delta) = e^{F\Delta}` and :math:`Q(\Delta) = \int_0^\Delta e^{Fs} G G^\top e^{F^\top s} ds`
(Van Loan's block exponential). Conditioning on the Gaussian observations gives the exact posterior
and the exact log-evidence :func:`exact_posterior` — the ground truth for variational inference.
For :math:`\theta = 0`, type I, the prior covariance reduces to
:math:`\sigma^2 \sum_{ij}\omega_i\omega_j [1 - e^{-\gamma_i t} - e^{-\gamma_j s} + e^{-\gamma_i (t-s)}]/(\gamma_i+\gamma_j)`.
"""

from __future__ import annotations

import numpy as np
import numpyro.distributions as dist
import scipy.linalg

from bayeskit._linalg import linear_sde_transition
from bayeskit.model.noise import BrownianMotion, FractionalBM
from bayeskit.model.sde import SDE

__all__ = ["make_sde", "example_params", "exact_moments", "exact_posterior", "log_likelihood", "simulate_exact",
           "hurst_posterior"]


def _drift(p, t, x):
    return -p["theta"] * x


def _diffusion(p, t, x):
    return p["sigma"]


def _observation(p, x, t):
    import jax.numpy as jnp

    return dist.Normal(x[0], jnp.abs(p["obs_sd"]))


def make_sde(*, hurst: float | None = 0.5, num_ou: int = 5, gamma_max: float = 20.0, kind: str = "I",
             t0: float = 0.0, t1: float = 2.0, x0: float = 0.0, time_horizon: float | None = None) -> SDE:
    """The fOU model as a :class:`bayeskit.model.sde.SDE` (``hurst=None``: Brownian noise, the plain OU)."""
    noise = BrownianMotion() if hurst is None else FractionalBM(hurst=hurst, num_ou=num_ou, gamma_max=gamma_max,
                                                                kind=kind, time_horizon=time_horizon)
    return SDE(drift=_drift, diffusion=_diffusion, observation=_observation, initial=[float(x0)], noise=noise,
               state_dim=1, t0=t0, t1=t1)


def example_params(theta: float = 0.0, sigma: float = 1.0, obs_sd: float = 0.1) -> dict:
    """``{"theta", "sigma", "obs_sd"}`` (defaults: the fBM bridge of the paper)."""
    return {"theta": float(theta), "sigma": float(sigma), "obs_sd": float(obs_sd)}


def _x64():
    """Context manager enabling float64 in JAX (``jax.enable_x64``; older JAX: ``jax.experimental``)."""
    import jax

    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


def _linear_system(params, sde: SDE, hurst=None):
    with _x64():  # the ground truth is computed in float64 whatever the package default
        gammas, omega, scale = (np.asarray(a, np.float64) for a in sde.ou_parameters(hurst, dtype=np.float64))
    K = gammas.shape[0]
    theta, sigma = float(params["theta"]), float(params["sigma"])
    F = np.zeros((K + 1, K + 1))
    F[0, 0] = -theta
    F[0, 1:] = -sigma * omega * gammas
    F[1:, 1:] = -np.diag(gammas)
    G = np.concatenate([[sigma * float(scale)], np.ones(K)])[:, None]
    P0 = np.zeros((K + 1, K + 1))
    if K:
        with _x64():
            P0[1:, 1:] = np.asarray(sde.noise.initial_covariance(np.float64))
    return F, G, P0


def _transition(F, G, dt):
    """Exact (Phi, Q) of dX = F X dt + G dW over a step dt (see :func:`bayeskit._linalg.linear_sde_transition`)."""
    return linear_sde_transition(F, G @ G.T, dt)


def exact_moments(params, sde: SDE, grid, *, hurst=None, x0_mean=None, x0_var: float = 0.0):
    """Exact prior mean ``(n,)`` and covariance ``(n, n)`` of X on the increasing ``grid`` (float64, NumPy).

    ``grid[0]`` must be ``sde.t0``; ``x0_mean`` defaults to the model's fixed initial state.
    """
    grid = np.asarray(grid, np.float64)
    F, G, P = _linear_system(params, sde, hurst)
    n = grid.shape[0]
    m = np.zeros(F.shape[0])
    m[0] = float(np.asarray(sde.initial)[0]) if x0_mean is None else float(x0_mean)
    P = P.copy()
    P[0, 0] = x0_var
    means = np.zeros((n, F.shape[0]))
    covs = np.zeros((n, F.shape[0], F.shape[0]))
    Phis = []
    means[0], covs[0] = m, P
    for i in range(1, n):
        Phi, Q = _transition(F, G, grid[i] - grid[i - 1])
        Phis.append(Phi)
        means[i] = Phi @ means[i - 1]
        covs[i] = Phi @ covs[i - 1] @ Phi.T + Q
    # cross-covariances Cov(Z_i, Z_j) = Phi_{i-1} ... Phi_j P_j for i > j
    cov_x = np.zeros((n, n))
    for j in range(n):
        C = covs[j]
        cov_x[j, j] = C[0, 0]
        for i in range(j + 1, n):
            C = Phis[i - 1] @ C
            cov_x[i, j] = cov_x[j, i] = C[0, 0]
    return means[:, 0], cov_x


def exact_posterior(params, sde: SDE, grid, obs_index, observations, *, hurst=None, x0_mean=None,
                    x0_var: float = 0.0):
    """Exact posterior of X on ``grid`` given ``y_j ~ N(X(grid[obs_index[j]]), obs_sd^2)``.

    Returns ``(mean (n,), cov (n, n), log_evidence)``, all float64 NumPy.
    """
    mean, cov = exact_moments(params, sde, grid, hurst=hurst, x0_mean=x0_mean, x0_var=x0_var)
    idx = np.asarray(obs_index)
    y = np.asarray(observations, np.float64).reshape(-1)
    S = cov[np.ix_(idx, idx)] + float(params["obs_sd"]) ** 2 * np.eye(idx.size)
    C = cov[:, idx]
    L = np.linalg.cholesky(S)
    r = y - mean[idx]
    alpha = scipy.linalg.cho_solve((L, True), r)
    post_mean = mean + C @ alpha
    post_cov = cov - C @ scipy.linalg.cho_solve((L, True), C.T)
    log_evidence = -0.5 * r @ alpha - np.sum(np.log(np.diag(L))) - 0.5 * idx.size * np.log(2 * np.pi)
    return post_mean, post_cov, float(log_evidence)


# ----------------------------------------------------------------------------------------------------
# Kalman-filter ground truth: exact likelihood in H, exact simulation, grid posterior over H


def _transitions(F, G, times, t0):
    """Exact (Phi, Q) from ``t0`` to ``times[0]`` and between consecutive times (cached for equal steps)."""
    dts = np.diff(np.concatenate([[t0], np.asarray(times, np.float64)]))
    cache, out = {}, []
    for dt in dts:
        key = round(float(dt), 12)
        if key not in cache:
            cache[key] = _transition(F, G, float(dt)) if dt > 0 else (np.eye(F.shape[0]), np.zeros_like(F))
        out.append(cache[key])
    return out


def log_likelihood(params, sde: SDE, times, observations, *, hurst=None) -> np.ndarray:
    r"""Exact log-likelihood :math:`\log p(y_s \mid H, \theta, \sigma, \rho)` of each observed series (float64).

    The augmented state :math:`Z = (X, Y_1..Y_K)` solves the linear SDE of the module docstring, so a
    Kalman filter on its exact discretisation (:math:`\Phi = e^{F\Delta}`, Van Loan's ``Q``) over the
    observation times gives the marginal likelihood with no time-discretisation error.
    ``observations`` is ``(num_times,)`` or ``(num_series, num_times)``; ``X(t0)`` is the model's fixed
    initial state and ``Y(0)`` has its prior (stationary for type I). Returns ``(num_series,)``.
    The covariance recursion does not depend on the data, so all series share it.
    """
    y = np.atleast_2d(np.asarray(observations, np.float64))
    times = np.asarray(times, np.float64)
    if y.shape[1] != times.shape[0]:
        raise ValueError(f"observations must have {times.shape[0]} columns, got shape {y.shape}")
    F, G, P = _linear_system(params, sde, hurst)
    m = np.zeros((y.shape[0], F.shape[0]))
    m[:, 0] = float(np.asarray(sde.initial)[0])
    r2 = float(params["obs_sd"]) ** 2
    ll = np.zeros(y.shape[0])
    for j, (Phi, Q) in enumerate(_transitions(F, G, times, sde.t0)):
        m = m @ Phi.T
        P = Phi @ P @ Phi.T + Q
        s = P[0, 0] + r2
        resid = y[:, j] - m[:, 0]
        ll += -0.5 * (np.log(2 * np.pi * s) + resid**2 / s)
        gain = P[:, 0] / s
        m = m + resid[:, None] * gain[None, :]
        P = P - np.outer(gain, P[0, :])
        P = 0.5 * (P + P.T)
    return ll


def simulate_exact(rng, params, sde: SDE, times, *, num_series: int = 1, hurst=None):
    """Exact draws of ``(states, observations)``, each ``(num_series, num_times)``, from the augmented linear SDE.

    Uses the exact Gaussian transitions (no solver), so data simulated here follow precisely the model
    whose likelihood :func:`log_likelihood` evaluates. ``rng`` is a ``numpy.random.Generator``.
    """
    times = np.asarray(times, np.float64)
    F, G, P0 = _linear_system(params, sde, hurst)
    n = F.shape[0]

    def root(C):
        w, v = np.linalg.eigh(0.5 * (C + C.T))
        return v * np.sqrt(np.clip(w, 0.0, None))[None, :]

    z = rng.standard_normal((num_series, n)) @ root(P0).T
    z[:, 0] += float(np.asarray(sde.initial)[0])
    xs = np.zeros((num_series, times.shape[0]))
    for j, (Phi, Q) in enumerate(_transitions(F, G, times, sde.t0)):
        z = z @ Phi.T + rng.standard_normal((num_series, n)) @ root(Q).T
        xs[:, j] = z[:, 0]
    ys = xs + float(params["obs_sd"]) * rng.standard_normal(xs.shape)
    return xs, ys


def hurst_posterior(params, sde: SDE, times, observations, *, hurst_grid=None, log_prior=None) -> dict:
    r"""Exact posterior of H on a grid: :math:`p(H \mid y) \propto p(H) \prod_s p(y_s \mid H)` (Kalman filter).

    ``log_prior(h)`` defaults to the flat prior on (0, 1). Returns a dict with ``grid``, ``density``
    (normalised by the trapezoid rule), ``log_evidence_per_h`` (summed over series), ``mean``, ``sd``,
    ``mode``, ``log_evidence`` (:math:`\log \int p(y \mid H) p(H) dH`, the bound an ELBO with q(H)
    must respect; the prior must integrate to 1 over the grid's range) and the central 95% interval ``q025``/``q975`` (from the trapezoid CDF). The default grid
    (0.01..0.99, 197 points) is refined around the mass by calling again with a narrower grid.
    """
    grid = np.linspace(0.01, 0.99, 197) if hurst_grid is None else np.asarray(hurst_grid, np.float64)
    ll = np.array([np.sum(log_likelihood(params, sde, times, observations, hurst=float(h))) for h in grid])
    lp = ll + (0.0 if log_prior is None else np.array([float(log_prior(h)) for h in grid]))
    w = np.exp(lp - lp.max())
    log_evidence = float(lp.max() + np.log(np.trapezoid(w, grid)))
    dens = w / np.trapezoid(w, grid)
    mean = np.trapezoid(grid * dens, grid)
    sd = np.sqrt(np.trapezoid((grid - mean) ** 2 * dens, grid))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    q025, q975 = np.interp([0.025, 0.975], cdf, grid)
    return {"grid": grid, "density": dens, "log_evidence_per_h": ll, "log_evidence": log_evidence,
            "mean": float(mean), "sd": float(sd),
            "mode": float(grid[np.argmax(lp)]), "q025": float(q025), "q975": float(q975)}
