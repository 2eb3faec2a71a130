import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density as np_log_density

import bayeskit as bk
from bayeskit.errors import ModelError
from bayeskit.models import linear_gaussian as lg
from bayeskit.models import stochastic_volatility as sv

scalar_ssm = bk.StateSpaceModel(
    initial=lambda p: dist.Normal(0.0, 1.0),
    transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
    observation=lambda p, x, t: dist.Normal(x, 0.5),
)


def test_simulate_shapes_and_reproducible():
    xs, ys = scalar_ssm.simulate(jax.random.key(0), {"rho": 0.9}, 40)
    xs2, _ = scalar_ssm.simulate(jax.random.key(0), {"rho": 0.9}, 40)
    assert xs.shape == (40,) and ys.shape == (40,)
    np.testing.assert_array_equal(xs, xs2)
    p = lg.example_params(3, 2)
    xs, ys = lg.ssm.simulate(jax.random.key(0), p, 7)
    assert xs.shape == (7, 3) and ys.shape == (7, 2)


def test_simulate_matches_stationary_moments():
    # AR(1) with rho = 0.5 from X_0 ~ N(0, 1): Var X_t -> 1 / (1 - rho^2) = 4/3, Var Y = Var X + 0.25
    keys = jax.random.split(jax.random.key(1), 4000)
    xs, ys = jax.vmap(lambda k: scalar_ssm.simulate(k, {"rho": 0.5}, 30))(keys)
    v = np.var(np.asarray(xs[:, -1]))
    se = np.sqrt(2 / 4000) * 4 / 3
    assert abs(v - 4 / 3) < 4 * se


def _manual_log_joint(ssm, p, xs, ys):
    lp = ssm.initial(p).log_prob(xs[0]) + ssm.observation(p, xs[0], 0).log_prob(ys[0])
    for t in range(1, xs.shape[0]):
        lp += ssm.transition(p, xs[t - 1], t).log_prob(xs[t]) + ssm.observation(p, xs[t], t).log_prob(ys[t])
    return lp


def test_to_numpyro_has_the_same_joint_density():
    p = {"rho": 0.7}
    xs, ys = scalar_ssm.simulate(jax.random.key(2), p, 6)
    model = scalar_ssm.to_numpyro(ys, params=p)
    lj, _ = np_log_density(model, (), {}, {"x_0": xs[0], "x": xs[1:]})
    np.testing.assert_allclose(lj, _manual_log_joint(scalar_ssm, p, xs, ys), rtol=1e-10)


def test_to_numpyro_vectorized_multivariate_model():
    p = lg.example_params(2)
    xs, ys = lg.ssm.simulate(jax.random.key(3), p, 5)
    model = lg.ssm.to_numpyro(ys, params=p)
    lj, _ = np_log_density(model, (), {}, {"x_0": xs[0], "x": xs[1:]})
    manual = _manual_log_joint(bk.StateSpaceModel(lg._initial, lg._transition, lg._observation), p, xs, ys)
    np.testing.assert_allclose(lj, manual, rtol=1e-10)


# slow tier: compile-bound (7 s in the fast suite); capability kept fast by: test_to_numpyro_has_the_same_joint_density
# (NUTS on that model is NumPyro's own sampler)
@pytest.mark.slow
def test_to_numpyro_with_prior_runs_nuts():
    p = sv.example_params()
    _, ys = sv.ssm.simulate(jax.random.key(0), p, 20)
    model = sv.ssm.to_numpyro(ys)
    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=30, num_samples=30, progress_bar=False)
    mcmc.run(jax.random.key(1))
    s = mcmc.get_samples()
    assert s["x"].shape == (30, 19) and s["phi"].shape == (30,)
    assert np.all(np.abs(s["phi"]) < 1)


def test_to_numpyro_needs_params_or_prior():
    with pytest.raises(ModelError, match="prior"):
        scalar_ssm.to_numpyro(jnp.zeros(3))
