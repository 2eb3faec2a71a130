r"""NIW-Meta's predictive for new episodes: Monte Carlo over the local posterior, or the linearised
Student-t posterior predictive.

**Monte Carlo** (``method="closed_form"`` / ``"vi"``, the paper's recipe): draw θ from the local posterior
:math:`q_* = \mathcal N(m^*, \Gamma^{*-1})` and average :math:`p(y \mid x, \theta)`. Its width is only as
good as the curvature :math:`A` of the quadratic approximation. The SGLD-moment curvature
:math:`1/\mathrm{var}` of a few SGLD iterates measures the SGLD noise :math:`2\eta T`, not the
likelihood, so :math:`q_*` can be nearly a point mass.

**Linearised** (``method="linearized"``, for a Gaussian likelihood :math:`y \sim \mathcal N(f(x, \theta),
\sigma^2)`): linearise the network at the local posterior mean :math:`c`,
:math:`f(x, \theta) \approx f(x, c) + J(x)(\theta - c)`, and condition exactly on the support set, using
the likelihood's own curvature :math:`J^\top J / \sigma^2` (the Gauss-Newton matrix) instead of
:math:`A`. The prior of a new episode's θ integrates :math:`q(\phi)`: the marginal of
:math:`\theta \mid \mu, \Sigma \sim \mathcal N(\mu, \Sigma)` under the NIW is a multivariate Student-t
:math:`t_\nu(m_0, S_0)` with :math:`S_0 = (1 + 1/l_0)\,\Gamma_0^{-1} / \nu` and :math:`\nu = n_0 - d + 1`
(full; exact). The diagonal variant's marginal is a product of one-dimensional :math:`t_{n_0}`; we use
the multivariate :math:`t_{n_0}` with the same scales. Writing :math:`t_\nu(m_0, S_0)` as
:math:`\mathcal N(m_0, S_0/\lambda)` with :math:`\lambda \sim \mathrm{Gamma}(\nu/2, \nu/2)`, and letting the
noise share the scale (:math:`\sigma^2/\lambda`, the conjugate Normal-Gamma convention), the posterior
predictive is Student-t in closed form. With :math:`r = y_s - f(x_s, c) - J_s(m_0 - c)`,
:math:`K_{ss} = J_s S_0 J_s^\top + \sigma^2 I` and :math:`n_s` support values:

.. math::
    y_* \mid D_s \sim t_{\nu + n_s}\Big(f(x_*, c) + J_*(m_0 - c) + K_{*s}K_{ss}^{-1} r,\;
      \tfrac{\nu + r^\top K_{ss}^{-1} r}{\nu + n_s}\,\big(J_* S_0 J_*^\top - K_{*s}K_{ss}^{-1}K_{s*} + \sigma^2\big)\Big).

Episodes whose support residuals are large get wider predictives. The cost is :math:`n_s` Jacobian rows
and an :math:`n_s \times n_s` solve per episode, never a :math:`d \times d` matrix. For a linear-Gaussian
episode model this is the exact conjugate posterior predictive (``tests/meta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import gammaln

from bayeskit.errors import ConfigurationError
from bayeskit.inference.meta.conjugate import LocalPosterior, NIWPosterior, expected_kl_local

__all__ = ["MetaPrediction", "linearized_predictive", "sample_linearized", "sample_local_predictive",
           "refine_local_vi", "student_t_prior", "student_t_logpdf",
           "linearized_batch", "draw_gamma"]


@dataclass(frozen=True)
class MetaPrediction:
    """Predictive of new episodes: Monte Carlo draws, and for ``method="linearized"`` its closed form.

    Attributes:
        theta: (num_samples, num_episodes, d) draws of θ (from the local posteriors, or from the linearised
            posterior).
        outputs: (num_samples, num_episodes, num_query, ...) ``predict_fn`` outputs (regression means /
            class probabilities) per draw (linearised: of the linearised network), or ``None`` if the
            episode model has no ``predict_fn``.
        y_samples: posterior-predictive draws of y (same leading axes) or ``None``.
        log_predictive_density: (num_episodes, num_query) log predictive density of the query y if given:
            ``log mean_s p(y_q | x_q, θ_s)`` (Monte Carlo) or the exact Student-t log density (linearised).
        local: the :class:`LocalPosterior` of each episode (batched); the linearised predictive expands the
            network at its mean.
        query_y: the query y, if given.
        predictive_mean: (num_episodes, num_query, ...) Student-t location (linearised only, else ``None``).
        predictive_scale: Student-t scale, same shape (linearised only).
        predictive_df: (num_episodes,) Student-t degrees of freedom (linearised only).
    """

    theta: jax.Array
    outputs: jax.Array | None
    y_samples: jax.Array | None
    log_predictive_density: jax.Array | None
    local: LocalPosterior
    query_y: jax.Array | None = None
    predictive_mean: jax.Array | None = None
    predictive_scale: jax.Array | None = None
    predictive_df: jax.Array | None = None

    @property
    def mean(self) -> jax.Array:
        """Predictive mean of the outputs (regression mean / class probabilities), (num_episodes, num_query, ...)."""
        if self.predictive_mean is not None:
            return self.predictive_mean
        if self.outputs is None:
            raise ConfigurationError("the episode model has no `predict_fn`: no outputs to average")
        return jnp.mean(self.outputs, axis=0)

    @property
    def std(self) -> jax.Array:
        """Predictive standard deviation of y (linearised: exact, ``inf`` where df <= 2; else from ``y_samples``,
        or of the outputs if none)."""
        if self.predictive_scale is not None:
            df = self._df()
            return self.predictive_scale * jnp.sqrt(jnp.where(df > 2, df / jnp.maximum(df - 2, 1e-30), jnp.inf))
        src = self.y_samples if self.y_samples is not None else self.outputs
        return jnp.std(src, axis=0)

    def _df(self):
        df = self.predictive_df
        return jnp.reshape(df, df.shape + (1,) * (self.predictive_scale.ndim - df.ndim))

    def interval(self, level: float = 0.9):
        """Central predictive interval ``(lower, upper)`` of y at ``level``, each (num_episodes, num_query, ...).

        Linearised: exact Student-t quantiles; otherwise empirical quantiles of ``y_samples``.

        Args:
            level: the interval's probability, in (0, 1).
        """
        if not 0.0 < float(level) < 1.0:
            raise ConfigurationError(f"`level` must lie in (0, 1), got {level}")
        if self.predictive_scale is not None:
            from scipy.stats import t as student_t

            half = student_t.ppf(0.5 + level / 2.0, np.asarray(self._df())) * np.asarray(self.predictive_scale)
            mean = np.asarray(self.predictive_mean)
            return mean - half, mean + half
        if self.y_samples is None:
            raise ConfigurationError("no predictive draws of y: the episode model has no `sample_fn`")
        lo, hi = np.quantile(np.asarray(self.y_samples), [0.5 - level / 2.0, 0.5 + level / 2.0], axis=0)
        return lo, hi

    def to_arviz(self):
        """DataTree: ``posterior`` θ draws (chain=1), ``posterior_predictive`` y draws, ``log_likelihood``-like
        predictive densities and the query data as ``observed_data``."""
        from bayeskit.diagnostics import to_datatree

        groups = {"posterior": {"theta": np.asarray(self.theta)[None]}, "predictions": {}}
        if self.outputs is not None:
            groups["predictions"]["outputs_mean"] = np.asarray(self.mean)
        dims = {"theta": ["episode", "theta_dim"], "outputs_mean": ["episode", "query"],
                "y": ["episode", "query"], "log_predictive_density": ["episode", "query"]}
        if self.y_samples is not None:
            groups["posterior_predictive"] = {"y": np.asarray(self.y_samples)[None]}
        if self.log_predictive_density is not None:
            groups["predictions"]["log_predictive_density"] = np.asarray(self.log_predictive_density)
        if self.query_y is not None:
            groups["observed_data"] = {"y": np.asarray(self.query_y)}
        return to_datatree(groups, dims=dims, attrs={"method": "NIW-Meta predictive"})


# ----------------------------------------------------------------------------- linearised Student-t predictive
def student_t_prior(q: NIWPosterior):
    """The Student-t marginal ``t_ν(m0, S0)`` of a new episode's θ under q(φ), as ``(ν, apply_S0, sqrt_S0)``.

    ``ν = n0`` (diagonal) or ``n0 - d + 1`` (full); ``S0 = (1 + 1/l0) Γ0^{-1} / ν``. ``apply_S0(M)`` returns
    ``S0 @ M`` for M (d, k); ``sqrt_S0(z)`` maps z (d,) ~ N(0, I) to a draw of N(0, S0).

    Args:
        q: the learned :class:`NIWPosterior`.
    """
    d = q.mean.shape[0]
    nu = q.dof if q.is_diagonal else q.dof - d + 1.0
    factor = (1.0 + 1.0 / q.kappa) / nu
    if q.is_diagonal:
        s0 = factor / q.scale
        return nu, (lambda m: s0[:, None] * m), (lambda z: jnp.sqrt(s0) * z)
    chol = jnp.linalg.cholesky(q.scale)  # Γ0 = L Lᵀ -> Γ0^{-1} = L^{-T} L^{-1}
    return (nu, lambda m: factor * jax.scipy.linalg.cho_solve((chol, True), m),
            lambda z: jnp.sqrt(factor) * jax.scipy.linalg.solve_triangular(chol.T, z, lower=False))


def _flat_fn(model):
    return lambda th, x: jnp.reshape(model.predict_fn(th, x), (-1,))


def _condition(model, q, center, sx, sy, qx):
    """Shared algebra of the linearised predictive for one episode (see the module docstring)."""
    f = _flat_fn(model)
    sigma2 = jnp.asarray(model.noise_scale, center.dtype) ** 2
    nu, apply_s0, _ = student_t_prior(q)
    Js = jax.jacrev(f)(center, sx)  # (n_s, d)
    Jq = jax.jacrev(f)(center, qx)  # (n_q, d)
    prior_s = f(center, sx) + Js @ (q.mean - center)
    prior_q = f(center, qx) + Jq @ (q.mean - center)
    S0Js = apply_s0(Js.T)  # (d, n_s)
    Kss = Js @ S0Js + sigma2 * jnp.eye(Js.shape[0], dtype=center.dtype)
    chol = jnp.linalg.cholesky(Kss)
    r = jnp.reshape(sy, (-1,)) - prior_s
    return dict(f=f, sigma2=sigma2, nu=nu, apply_s0=apply_s0, Js=Js, Jq=Jq, prior_q=prior_q, S0Js=S0Js, chol=chol, r=r,
                alpha=jax.scipy.linalg.cho_solve((chol, True), r))


def linearized_predictive(model, q: NIWPosterior, center, sx, sy, qx):
    r"""Student-t posterior predictive of one episode's query outputs under the linearised network.

    Args:
        model: an :class:`~bayeskit.inference.meta.episode.EpisodeModel` with ``predict_fn`` and
            ``noise_scale`` (a Gaussian likelihood).
        q: the learned :class:`NIWPosterior` q(φ).
        center: (d,) the expansion point (the local posterior mean).
        sx: support x (K, ...).
        sy: support y (K, ...).
        qx: query x (Q, ...).

    Returns:
        ``(mean (Q,), scale (Q,), df ())`` of the marginal Student-t of each query value.
    """
    c = _condition(model, q, center, sx, sy, qx)
    Kqs = c["Jq"] @ c["S0Js"]  # (n_q, n_s)
    mean = c["prior_q"] + Kqs @ c["alpha"]
    prior_var = jnp.sum(c["Jq"] * c["apply_s0"](c["Jq"].T).T, -1)
    v = jax.scipy.linalg.solve_triangular(c["chol"], Kqs.T, lower=True)
    var = prior_var - jnp.sum(v**2, 0) + c["sigma2"]
    n_s = c["r"].shape[0]
    maha = c["r"] @ c["alpha"]
    df = c["nu"] + n_s
    return mean, jnp.sqrt(var * (c["nu"] + maha) / df), df


def sample_linearized(key, model, q: NIWPosterior, center, sx, sy, qx, lam):
    """Exact draws of (θ, linearised outputs, y) for one episode given draws ``lam`` (S,) of the scale λ.

    λ | D_s ~ Gamma((ν + n_s)/2, rate (ν + rᵀK⁻¹r)/2) (see :func:`linearized_predictive`); θ | λ by Matheron's
    rule (a prior draw, then the exact Gaussian update on the support set); outputs ``f(x_q, c) + J_q(θ - c)``;
    y adds N(0, σ²/λ).

    Args:
        key: a ``jax.random`` key.
        model: the episode model (Gaussian likelihood, see :func:`linearized_predictive`).
        q: the learned :class:`NIWPosterior`.
        center: (d,) the expansion point.
        sx: support x (K, ...).
        sy: support y (K,).
        qx: query x (Q, ...).
        lam: (S,) draws of λ from its posterior.

    Returns:
        ``(theta (S, d), outputs (S, Q), y (S, Q))``.
    """
    c = _condition(model, q, center, sx, sy, qx)
    _, _, sqrt_s0 = student_t_prior(q)
    n_s, d = c["Js"].shape
    num_samples = lam.shape[0]
    kz, ke, ky = jax.random.split(key, 3)
    z = jax.random.normal(kz, (num_samples, d), center.dtype)
    e = jax.random.normal(ke, (num_samples, n_s), center.dtype)
    scale = 1.0 / jnp.sqrt(lam)[:, None]
    dtheta0 = jax.vmap(sqrt_s0)(z) * scale  # θ0 - m0 ~ N(0, S0/λ)
    resid = c["r"][None] - dtheta0 @ c["Js"].T - jnp.sqrt(c["sigma2"]) * e * scale
    gain = jax.scipy.linalg.cho_solve((c["chol"], True), resid.T)  # (n_s, S)
    theta = q.mean + dtheta0 + (c["S0Js"] @ gain).T
    outputs = c["f"](center, qx)[None] + (theta - center) @ c["Jq"].T
    y = outputs + jnp.sqrt(c["sigma2"]) * scale * jax.random.normal(ky, outputs.shape, outputs.dtype)
    return theta, outputs, y


def student_t_logpdf(y, df, loc, scale):
    """Log density of the Student-t ``t_df(loc, scale)`` (elementwise, broadcasting).

    Args:
        y: the values.
        df: degrees of freedom.
        loc: location.
        scale: scale.
    """
    z = (y - loc) / scale
    return (gammaln((df + 1.0) / 2.0) - gammaln(df / 2.0) - 0.5 * jnp.log(df * jnp.pi) - jnp.log(scale)
            - (df + 1.0) / 2.0 * jnp.log1p(z**2 / df))


def linearized_batch(key, model, q: NIWPosterior, centers, sx, sy, qx, qy, gamma_draws):
    """:func:`linearized_predictive` and :func:`sample_linearized` over a batch of episodes (jit me).

    One scalar output per query point (``predict_fn(θ, x)`` of shape (Q,)). ``gamma_draws`` (B, S) are
    standard Gamma((ν + n_s)/2) draws (see :func:`draw_gamma`); ``λ = gamma_draws / rate`` with
    ``rate = (ν + rᵀK⁻¹r)/2``. Returns ``(theta (S, B, d), outputs (S, B, Q), y (S, B, Q), lpd (B, Q) or None,
    mean (B, Q), scale (B, Q), df (B,))``.

    Args:
        key: a ``jax.random`` key.
        model: the episode model.
        q: the learned :class:`NIWPosterior`.
        centers: (B, d) expansion points.
        sx: support x (B, K, ...).
        sy: support y (B, K).
        qx: query x (B, Q, ...).
        qy: query y (B, Q) or ``None``.
        gamma_draws: (B, S) standard Gamma((ν + n_s)/2) draws.
    """
    def one(k, c, xs, ys, xq, g):
        mean, scale, df = linearized_predictive(model, q, c, xs, ys, xq)
        cond = _condition(model, q, c, xs, ys, xq)
        lam = g * 2.0 / (cond["nu"] + cond["r"] @ cond["alpha"])
        theta, outputs, y = sample_linearized(k, model, q, c, xs, ys, xq, lam)
        return mean, scale, df, theta, outputs, y

    keys = jax.random.split(key, qx.shape[0])
    mean, scale, df, theta, outputs, y = jax.vmap(one)(keys, centers, sx, sy, qx, gamma_draws)
    lpd = None if qy is None else student_t_logpdf(qy, df[:, None], mean, scale)
    theta, outputs, y = (jnp.swapaxes(a, 0, 1) for a in (theta, outputs, y))
    return theta, outputs, y, lpd, mean, scale, df


@partial(jax.jit, static_argnums=(2, 3))
def draw_gamma(key, shape, batch: int, num_samples: int):
    """(batch, num_samples) draws of the standard Gamma(shape) (a scalar); compiled once per size.

    Args:
        key: a ``jax.random`` key.
        shape: the Gamma shape parameter.
        batch: rows.
        num_samples: columns.
    """
    return jax.random.gamma(key, shape, (batch, num_samples))


# ----------------------------------------------------------------------------- Monte Carlo predictive
def refine_local_vi(key, model, q, local, x, y, num_steps, learning_rate, num_mc):
    """Reparameterised VI for the local posteriors (diagonal Gaussian q), started at the closed form."""
    if local.precision.ndim == local.mean.ndim:  # batched diagonal precisions (B, d)
        var0 = 1.0 / local.precision
    else:
        var0 = jax.vmap(lambda P: jnp.diag(jnp.linalg.inv(P)))(local.precision)
    opt = optax.adam(learning_rate)

    def neg_elbo(params, k, xe, ye):
        mean, log_std = params
        eps = jax.random.normal(k, (num_mc, mean.shape[0]), mean.dtype)
        th = mean + jnp.exp(log_std) * eps
        ell = jnp.mean(jax.vmap(lambda t: model.log_likelihood(t, xe, ye))(th))
        prec = jnp.exp(-2.0 * log_std)
        kl = expected_kl_local(LocalPosterior(mean, prec), q)
        return -(ell - kl)

    def one(k, mean, var, xe, ye):
        params = (mean, 0.5 * jnp.log(var))
        state = opt.init(params)

        def body(carry, kk):
            p, s = carry
            g = jax.grad(neg_elbo)(p, kk, xe, ye)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, state), jax.random.split(k, num_steps))
        return LocalPosterior(p[0], jnp.exp(-2.0 * p[1]))

    keys = jax.random.split(key, x.shape[0])
    return jax.jit(jax.vmap(one))(keys, local.mean, var0, x, y)



def sample_local_predictive(model, k_draw, k_pred, local, qx, qy, num_samples):
    """θ draws from the local posteriors, outputs, predictive draws and log predictive densities."""

    def draw(k, loc):
        eps = jax.random.normal(k, (num_samples, loc.mean.shape[0]), loc.mean.dtype)
        if loc.precision.ndim == 1:
            return loc.mean + eps / jnp.sqrt(loc.precision)
        chol = jnp.linalg.cholesky(loc.precision)  # Γ = L Lᵀ -> θ = m + L^{-T} ε
        return loc.mean + jax.scipy.linalg.solve_triangular(chol.T, eps.T, lower=False).T

    B = qx.shape[0]
    theta = jnp.swapaxes(jax.vmap(draw)(jax.random.split(k_draw, B), local), 0, 1)  # (S, B, d)
    outputs = None
    if model.predict_fn is not None:
        outputs = jax.vmap(jax.vmap(model.predict_fn, in_axes=(0, 0)), in_axes=(0, None))(theta, qx)
    y_samples = None
    if model.sample_fn is not None:
        keys = jax.random.split(k_pred, (num_samples, B))
        y_samples = jax.vmap(jax.vmap(model.sample_fn, in_axes=(0, 0, 0)), in_axes=(0, 0, None))(keys, theta, qx)
    lpd = None
    if qy is not None:
        ll = jax.vmap(jax.vmap(model.pointwise_log_likelihood, in_axes=(0, 0, 0)), in_axes=(0, None, None))(
            theta, qx, qy)
        lpd = jax.scipy.special.logsumexp(ll, axis=0) - math.log(num_samples)
    return theta, outputs, y_samples, lpd
