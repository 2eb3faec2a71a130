"""bk.smc.fit: stochastic-gradient MLE on PaRIS / PPG scores converges to the exact Kalman MLE; MSC runs."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
import scipy.optimize as so
from numpyro.distributions import constraints

import bayeskit as bk
from bayeskit.errors import ConfigurationError
from bayeskit.models import linear_gaussian as lg

AR = bk.StateSpaceModel(lambda p: dist.Normal(0.0, 1.0),
                        lambda p, x, t: dist.Normal(p["rho"] * x, p["sigma_x"]),
                        lambda p, x, t: dist.Normal(x, p["sigma_y"]), vectorized=True)
TRUE = {"rho": jnp.array(0.8), "sigma_x": jnp.array(1.0), "sigma_y": jnp.array(0.5)}
FIXED = {"sigma_x": 1.0, "sigma_y": 0.5}


def lg_params(p):
    return {"A": jnp.reshape(p["rho"], (1, 1)), "Q": jnp.reshape(p["sigma_x"] ** 2, (1, 1)), "H": jnp.ones((1, 1)),
            "R": jnp.reshape(p["sigma_y"] ** 2, (1, 1)), "m0": jnp.zeros(1), "P0": jnp.ones((1, 1))}


@pytest.fixture(scope="module")
def problem():
    _, ys = AR.simulate(jax.random.key(0), TRUE, 100)

    @jax.jit
    def loglik(rho):
        return lg.kalman_filter(lg_params({**TRUE, "rho": rho}), ys[:, None]).log_likelihood

    mle = so.minimize(lambda r: -float(loglik(jnp.asarray(r[0]))), [0.5], method="Nelder-Mead",
                      options={"xatol": 1e-10, "fatol": 1e-12}).x[0]
    se = 1.0 / np.sqrt(-float(jax.hessian(loglik)(jnp.asarray(mle))))
    return ys, mle, se


def _fit(ys, estimator, iterations=300):
    schedule = optax.exponential_decay(0.05, iterations, 0.1)
    return bk.smc.fit(jax.random.key(1), AR, {"rho": 0.3}, ys, fixed_params=FIXED, estimator=estimator,
                      num_iterations=iterations, num_particles=30, optimizer=optax.adam(schedule),
                      constraints={"rho": constraints.interval(-1.0, 1.0)})


# slow tier: compile-bound (12 s in the fast suite); capability kept fast by:
# test_msc_gradient_matches_exact_inclusive_kl_gradient (bk.smc.fit, method="msc")
@pytest.mark.slow
def test_fit_ppg_converges_to_kalman_mle(problem):
    """Polyak average of the last 100 PPG-driven iterates within half a standard error of the exact MLE
    (the optimisation + Monte Carlo error is small next to the estimator's statistical error)."""
    ys, mle, se = problem
    res = _fit(ys, "ppg")
    est = float(res.history["rho"][-100:].mean())
    assert abs(est - mle) < 0.5 * se, (est, mle, se)
    assert res.history["rho"].shape == (300,) and res.final_path.shape == (100,)
    tree = res.to_arviz()
    assert tree["optimization"]["rho"].shape == (300,) and tree["posterior"]["rho"].shape == (1, 1)


@pytest.mark.slow
def test_fit_paris_converges_to_kalman_mle(problem):
    ys, mle, se = problem
    res = _fit(ys, "paris")
    est = float(res.history["rho"][-100:].mean())
    assert abs(est - mle) < 0.5 * se, (est, mle, se)
    assert np.all(np.isfinite(res.log_evidence))


Q = bk.smc.Proposal(initial=lambda lam, y0: dist.Normal(lam["m0"], lam["s0"]),
                    transition=lambda lam, xp, y, t: dist.Normal(lam["a"] * xp + lam["b"] * y, lam["s"]))
MSC_CONS = {"s": constraints.positive, "s0": constraints.positive}
# zero learning rate: lambda is held fixed. One object: the optimizer is a static option of fit's compiled
# program, so every chain of _check_msc_gradient reuses one program (a new optax.sgd(0.0) per call recompiled it)
FROZEN = optax.sgd(0.0)


def _expected_log_q(lam, ys):
    """E_p[log q_lam(X_{0:T-1})] under the exact smoothing distribution (RTS moments): the negative inclusive KL
    up to a constant, for q_0 = N(m0, s0^2), q_t(x_t | x_{t-1}, y_t) = N(a x_{t-1} + b y_t, s^2)."""
    sm = lg.rts_smoother(lg_params(TRUE), ys[:, None])
    m, P, C = sm.means[:, 0], sm.covs[:, 0, 0], sm.cross_covs[:, 0, 0]
    y = ys[1:]
    e0 = P[0] + (m[0] - lam["m0"]) ** 2
    # E[(x_t - a x_{t-1} - b y_t)^2] from the exact first and second moments
    ex2, exp2, exx = P[1:] + m[1:] ** 2, P[:-1] + m[:-1] ** 2, C + m[:-1] * m[1:]
    r2 = (ex2 + lam["a"] ** 2 * exp2 + lam["b"] ** 2 * y ** 2 - 2 * lam["a"] * exx - 2 * lam["b"] * y * m[1:]
          + 2 * lam["a"] * lam["b"] * y * m[:-1])
    return (-0.5 * jnp.log(2 * jnp.pi * lam["s0"] ** 2) - e0 / (2 * lam["s0"] ** 2)
            + jnp.sum(-0.5 * jnp.log(2 * jnp.pi * lam["s"] ** 2) - r2 / (2 * lam["s"] ** 2)))


def _msc_optimum(ys):
    """The exact inclusive-KL minimiser in the family Q: a Gaussian regression on the exact smoothing moments."""
    sm = lg.rts_smoother(lg_params(TRUE), ys[:, None])
    m, P, C = (np.asarray(a, dtype=float) for a in (sm.means[:, 0], sm.covs[:, 0, 0], sm.cross_covs[:, 0, 0]))
    y = np.asarray(ys, dtype=float)[1:]
    sxx, sxy, syy = np.sum(P[:-1] + m[:-1] ** 2), np.sum(m[:-1] * y), np.sum(y ** 2)
    a, b = np.linalg.solve([[sxx, sxy], [sxy, syy]], [np.sum(C + m[:-1] * m[1:]), np.sum(m[1:] * y)])
    r2 = np.sum(P[1:] + m[1:] ** 2 + a ** 2 * (P[:-1] + m[:-1] ** 2) + b ** 2 * y ** 2 - 2 * a * (C + m[:-1] * m[1:])
                - 2 * b * y * m[1:] + 2 * a * b * y * m[:-1])
    lam = {"m0": m[0], "s0": np.sqrt(P[0]), "a": a, "b": b, "s": np.sqrt(r2 / len(y))}
    return lam


def _check_msc_gradient(ys, lam, iterations, num_chains):
    """With lambda held fixed (zero learning rate), the MSC gradient estimates of the PPG chain whose cSMC
    proposal is q_lambda average to the exact E_p[grad_z log q_lambda(X)] (unconstrained z): the mean over
    ``num_chains`` independent chains is within 4 standard errors of the chain means.

    (Batch means within one 200-iteration chain underestimate the error here: over 10 seeds, on the code before
    and after the one-engine change alike, they gave |z| of 4 to 6.9 for ``b`` and ``s`` in 3 seeds of 10, and
    ArviZ's ESS-based MCSE did no better. The chains mix slowly in those coordinates, so the error comes from
    independent chains.)"""
    lam = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in lam.items()}
    z = {k: (jnp.log(v) if k in ("s", "s0") else v) for k, v in lam.items()}
    exact = jax.grad(lambda zz: _expected_log_q({k: (jnp.exp(v) if k in ("s", "s0") else v) for k, v in zz.items()},
                                                ys))(z)
    means = {k: [] for k in lam}
    for c in range(num_chains):
        res = bk.smc.fit(jax.random.key(100 + c), AR, lam, ys, method="msc", variational=Q, fixed_params=TRUE,
                         constraints=MSC_CONS, num_iterations=iterations, num_particles=16,
                         optimizer=FROZEN, num_chunks=1)
        assert np.allclose(res.history["a"], lam["a"])  # lambda did not move
        for k in lam:
            means[k].append(np.asarray(res.estimates[k])[iterations // 10:].mean())
    for k in lam:
        m = np.asarray(means[k])
        se = m.std(ddof=1) / np.sqrt(num_chains)
        assert abs(m.mean() - float(exact[k])) < 4 * se, (k, m.mean(), float(exact[k]), se)


def test_msc_gradient_matches_exact_inclusive_kl_gradient(problem):
    """A poor q_lambda as the cSMC proposal still gives a chain targeting p(x | y): the MSC gradient is exact on
    average (the exact value from the RTS moments)."""
    ys, _, _ = problem
    _check_msc_gradient(ys, {"m0": 0.0, "s0": 1.5, "a": 0.5, "b": 0.3, "s": 0.8}, 200, 8)


@pytest.mark.slow
def test_msc_converges_to_the_exact_inclusive_kl_optimum(problem):
    """Markov score climbing with q_lambda as the cSMC proposal: R independent runs; the mean of their Polyak
    averages is within the 99.9% Student-t interval (R - 1 degrees of freedom) of the exact optimum lambda*."""
    from scipy import stats

    ys, _, _ = problem
    star = _msc_optimum(ys)
    R, iters = 4, 300
    runs = []
    for seed in range(R):
        res = bk.smc.fit(jax.random.key(10 + seed), AR, {"m0": 0.0, "s0": 1.0, "a": 0.0, "b": 0.0, "s": 1.0}, ys,
                         method="msc", variational=Q, fixed_params=TRUE, constraints=MSC_CONS,
                         num_iterations=iters, num_particles=20,
                         optimizer=optax.adam(optax.exponential_decay(0.05, iters, 0.05)))
        runs.append({k: float(np.mean(res.history[k][-iters // 3:])) for k in star})
    _check_msc_gradient(ys, star, 400, 4)  # the exact optimum is a zero of the estimated gradient
    q = stats.t.ppf(0.9995, R - 1)
    for k in star:
        v = np.array([r[k] for r in runs])
        se = v.std(ddof=1) / np.sqrt(R)
        assert abs(v.mean() - star[k]) < q * se, (k, v, star[k], se)


def test_bad_inputs(problem):
    ys, _, _ = problem
    with pytest.raises(ConfigurationError, match="method"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, method="em")
    with pytest.raises(ConfigurationError, match="variational"):
        bk.smc.fit(jax.random.key(0), AR, {"a": 0.3}, ys, fixed_params={**FIXED, "rho": 0.8}, method="msc")
    with pytest.raises(ConfigurationError, match="init_params"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 1.5}, ys, fixed_params=FIXED,
                   constraints={"rho": constraints.interval(-1.0, 1.0)})
    with pytest.raises(ConfigurationError, match="optimizer"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, optimizer="adam")
    with pytest.raises(ConfigurationError, match="num_particles"):
        bk.smc.fit(jax.random.key(0), AR, {"rho": 0.3}, ys, fixed_params=FIXED, num_particles=1)
