"""The pieces of the variational family and the Hurst schedule, against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bayeskit as bk
from bayeskit.models import fractional_ou as fou


def test_noise_factor_kl_is_the_exact_gaussian_kl():
    """Rescaled step noise R S z of the exact-OU scheme (K = 5, no control): the KL the solver returns equals
    the dense Gaussian KL(N(0, R S S^T R^T) || N(0, R R^T)) summed over steps (float64, steps long enough
    for a well-conditioned OU covariance)."""
    sde = fou.make_sde(hurst=0.3, num_ou=5, gamma_max=20.0, t1=2.0)
    grid = jnp.linspace(0.0, 2.0, 5)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 1, 5, 5)) * 0.3
    factor = np.tril(raw, -1) + np.eye(5) * np.exp(rng.normal(size=(4, 1, 5)) * 0.3)[..., None]
    solve = jax.jit(lambda f: bk.sde.solve_augmented(jax.random.key(0), sde, fou.example_params(theta=1.0), grid,
                                                     jnp.zeros(1), jnp.zeros((1, 5)), noise_factor=f))
    _, kl = solve(jnp.asarray(factor))
    gammas = np.asarray(sde.noise.gammas(jnp.float64))
    ref = 0.0
    for i, dt in enumerate(np.diff(np.asarray(grid))):
        gsum = gammas[:, None] + gammas[None, :]
        cov_p = -np.expm1(-gsum * dt) / gsum
        w, v = np.linalg.eigh(cov_p)
        root = v * np.sqrt(w)
        cov_q = root @ factor[i, 0] @ factor[i, 0].T @ root.T
        ref += 0.5 * (np.trace(np.linalg.solve(cov_p, cov_q)) - 5 + np.linalg.slogdet(cov_p)[1]
                      - np.linalg.slogdet(cov_q)[1])
    assert float(kl) == pytest.approx(ref, rel=1e-7)


def test_noise_factor_scales_brownian_paths():
    """Brownian noise, theta = 0, factor s = 0.5 on every step: Var X(2) = s^2 * 2 (4000 paths, 4 standard
    errors) and the KL is n * (s^2 - 1 - 2 log s) / 2."""
    sde = fou.make_sde(hurst=None, t1=2.0)
    grid = jnp.linspace(0.0, 2.0, 11)
    s = 0.5
    factor = jnp.full((10, 1, 1, 1), s)
    solve = jax.jit(jax.vmap(lambda k: bk.sde.solve_augmented(k, sde, fou.example_params(), grid, jnp.zeros(1),
                                                              jnp.zeros((1, 0)), noise_factor=factor)))
    paths, kl = solve(jax.random.split(jax.random.key(1), 4000))
    var = float(jnp.var(paths[:, -1, 0]))
    assert abs(var - 2 * s**2) < 4 * 2 * s**2 * np.sqrt(2 / 4000)
    np.testing.assert_allclose(np.asarray(kl), 10 * 0.5 * (s**2 - 1 - 2 * np.log(s)), rtol=1e-12)


# slow tier: compile-bound (8 s in the fast suite); capability kept fast by: test_noise_factor_kl_is_the_exact_gaussian_kl
@pytest.mark.slow
def test_recenter_hurst_leaves_the_elbo_unchanged():
    """Moving the expansion point of the H-dependent path posterior to the mean of q(H) is a
    reparametrisation: same key, same ELBO (float64)."""
    sde = fou.make_sde(hurst=0.4, num_ou=5, gamma_max=20.0, t1=2.0)
    times = np.array([0.5, 1.0, 2.0])
    elbo_fn, init_fn = bk.sde.build_elbo(sde, times, np.array([[0.1, -0.2, 0.3]]), control=bk.sde.AffineControl(),
                                         fixed_params=fou.example_params(theta=1.0), learn_hurst=True,
                                         hurst_prior=dist.Uniform(0.0, 1.0), num_steps=8, refine=0,
                                         noise_scale=True)
    vp = init_fn(jax.random.key(0), {})
    leaves, treedef = jax.tree_util.tree_flatten(vp)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    vp = jax.tree_util.tree_unflatten(treedef, [a + 0.1 * jax.random.normal(k, a.shape, a.dtype)
                                                for a, k in zip(leaves, keys)])
    vp["hurst"]["loc"] = vp["hurst"]["center"] + 0.4
    moved = bk.sde.hurst.recenter_hurst(vp)
    assert float(moved["hurst"]["center"]) == float(vp["hurst"]["loc"])
    assert not np.allclose(moved["control"]["A"], vp["control"]["A"])
    assert not np.allclose(moved["noise"]["raw"], vp["noise"]["raw"])
    elbo = jax.jit(lambda v: elbo_fn(jax.random.key(2), v, 4)[0])
    a, b = float(elbo(vp)), float(elbo(moved))
    assert a == pytest.approx(b, rel=1e-10, abs=1e-9)


def test_profile_start_is_the_vertex_of_the_parabola():
    """Warm-up ELBOs on an exact parabola in logit H: start at its vertex with its width; at the edge of the
    grid, start at the best node with no width."""
    nodes = np.array([-1.5, -0.5, 0.5, 1.5])
    elbos = -0.5 * (nodes + 0.3) ** 2 / 0.4**2
    index, start, sd = bk.sde.hurst.profile_start(nodes, elbos)
    assert (index, start, sd) == (1, pytest.approx(-0.3), pytest.approx(0.4))
    assert bk.sde.hurst.profile_start(nodes, -((nodes - 3.0) ** 2)) == (3, 1.5, None)
