"""The engine's while variant (``bk.smc.engine.run_while``) against its definition.

A toy tempering model whose move draws exactly from the current tempered target (a Gaussian prior x
Gaussian likelihood: :math:`\\pi_\\lambda` is Gaussian in closed form), so the run is checked against
(i) its definition, step by step (``init_aux`` then ``step_aux`` with keys ``fold_in(key, t)``),
(ii) its stopping rules (:math:`\\lambda = 1`, ``max_steps``, a failed step), and (iii) the exact
evidence (unbiasedness of :math:`\\hat Z`, Monte Carlo error bound over vmapped runs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayeskit as bk

engine = bk.smc.engine
Y, SIGMA = 1.5, 0.5  # one observation y ~ N(x, SIGMA^2), prior x ~ N(0, 1)
N = 500


def exact_log_z():
    return float(-0.5 * np.log(2 * np.pi * (1 + SIGMA**2)) - 0.5 * Y**2 / (1 + SIGMA**2))


def loglik(x):
    return -0.5 * np.log(2 * np.pi * SIGMA**2) - 0.5 * (Y - x) ** 2 / SIGMA**2


def toy(target_ess=0.5, step=None):
    """Tempering model: aux = lambda; the move draws exactly from pi_lambda; the potential picks the next
    lambda by the ESS bisection (or a fixed increment ``step``) and weights by (lambda' - lambda) l(x)."""

    def init(key, n):
        return jax.random.normal(key, (n,)), jnp.zeros(())

    def move(key, t, x, lam):
        prec = 1.0 + lam / SIGMA**2
        mean = lam * Y / SIGMA**2 / prec
        return mean + jax.random.normal(key, x.shape) / jnp.sqrt(prec), lam

    def log_potential(t, prev, x, lam):
        ll = loglik(x)
        if step is None:
            nxt = bk.smc.kernels.solve_next_tempering(ll, lam, target_ess)
        else:
            nxt = jnp.minimum(lam + step, 1.0)
        return (nxt - lam) * ll, nxt

    return engine.AuxFeynmanKac(init, move, log_potential, lambda lam: lam >= 1.0)


ALWAYS = bk.smc.resampling.always()


@pytest.fixture(scope="module")
def fixed_runs():
    model = toy(step=0.3)  # lambda = 0.3, 0.6, 0.9, 1.0: stops after 4 steps

    @jax.jit
    def both(key):
        full = engine.run_while(key, model, N, max_steps=10, strategy=ALWAYS)
        capped = engine.run_while(key, model, N, max_steps=2, strategy=ALWAYS)
        first = engine.start_while(key, model, N, max_steps=10, strategy=ALWAYS)
        chunked = engine.advance_while(key, engine.advance_while(key, first, model, stop=2, strategy=ALWAYS),
                                       model, strategy=ALWAYS)
        # the definition: step 0 then steps t = 1, 2, 3 with keys fold_in(key, t)
        state, lam, info0 = engine.init_aux(jax.random.fold_in(key, 0), model, N, strategy=ALWAYS)
        incrs = [info0.log_evidence_increment]
        for t in range(1, 4):
            state, lam, info = engine.step_aux(jax.random.fold_in(key, t), state, lam, model, t, strategy=ALWAYS)
            incrs.append(info.log_evidence_increment)
        return full, capped, chunked, state, lam, jnp.stack(incrs)

    return both(jax.random.key(0))


def test_run_while_is_its_definition_and_stops_at_one(fixed_runs):
    full, _, chunked, state, lam, incrs = fixed_runs
    assert int(full.num_steps) == 4 and float(full.aux) == 1.0 and not bool(full.failed)
    np.testing.assert_allclose(np.asarray(full.aux_history[:4]), [0.3, 0.6, 0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(full.state.particles), np.asarray(state.particles), rtol=1e-10)  # fusion
    np.testing.assert_allclose(float(full.state.log_evidence), float(jnp.sum(incrs)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(full.info.log_evidence_increment[:4]), np.asarray(incrs), rtol=1e-6)
    assert np.all(np.asarray(full.info.resampled[1:4]))
    # stopping after 2 steps and continuing is the same run
    assert int(chunked.num_steps) == 4
    np.testing.assert_allclose(np.asarray(chunked.state.particles), np.asarray(full.state.particles), rtol=1e-10)


def test_run_while_respects_max_steps(fixed_runs):
    _, capped, _, _, _, _ = fixed_runs
    assert int(capped.num_steps) == 2
    np.testing.assert_allclose(float(capped.aux), 0.6, rtol=1e-6)  # stopped before lambda = 1


def test_run_while_stops_on_a_failed_step_and_on_cond():
    model = toy(step=0.3)
    bad = model._replace(log_potential=lambda t, prev, x, lam: (jnp.where(t == 2, jnp.nan, 0.0) + 0 * x,
                                                                 lam + 0.3))

    @jax.jit
    def go(key):
        failed = engine.run_while(key, bad, 50, max_steps=10, strategy=ALWAYS)
        by_cond = engine.run_while(key, model, 50, max_steps=10, strategy=ALWAYS,
                                   cond=lambda state, lam, n: n < 3)
        return failed, by_cond

    failed, by_cond = go(jax.random.key(1))
    assert bool(failed.failed) and int(failed.num_steps) == 3 and bool(failed.info.nonfinite[2])
    assert int(by_cond.num_steps) == 3


def test_adaptive_while_reaches_one_with_target_ess_and_unbiased_evidence():
    model = toy(target_ess=0.5)
    runs = jax.jit(jax.vmap(lambda k: engine.run_while(k, model, N, max_steps=50, strategy=ALWAYS)))(
        jax.random.split(jax.random.key(2), 200))
    n = np.asarray(runs.num_steps)
    assert np.all(np.asarray(runs.aux) == 1.0) and np.all(n >= 2) and not np.any(np.asarray(runs.failed))
    ess = np.asarray(runs.info.ess)
    for r in range(5):
        np.testing.assert_allclose(ess[r, : n[r] - 1], 0.5 * N, rtol=1e-4)  # each step hits the target ESS
        assert ess[r, n[r] - 1] >= 0.5 * N * (1 - 1e-4)
    # Z_hat is unbiased: the mean of Z_hat / Z is 1 within 4 standard errors
    ratio = np.exp(np.asarray(runs.state.log_evidence) - exact_log_z())
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / np.sqrt(ratio.size)
