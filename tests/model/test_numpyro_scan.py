"""``bk.StateSpaceModel.from_numpyro``: exact densities for every supported shape, exact evidence against a
Kalman filter, every driver on a converted model, and one named ModelError per unsupported model."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.infer.util import log_density as np_log_density

import bayeskit as bk
from bayeskit.errors import ModelError
from bayeskit.models import linear_gaussian as lg

_spec = importlib.util.spec_from_file_location("numpyro_scan_models",
                                               pathlib.Path(__file__).with_name("numpyro_scan_models.py"))
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)
MODELS = M.data()


def _draws(model, args, key, num):
    def one(k):
        tr = numpyro.handlers.trace(numpyro.handlers.seed(model, k)).get_trace(*args)
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}

    return jax.vmap(one)(jax.random.split(key, num))


def _converted_log_joint(ssm):
    def joint(sites):
        params = {g: sites[g] for g in ssm.structure.global_sites}
        prior = np_log_density(ssm.prior, (), {}, params)[0]
        return prior + bk.smc.kernels.path_log_density(ssm, params, ssm.path_from_sites(sites), ssm.ys)

    return joint


_CONVERTED = {}


def _converted(name):
    """(ssm, jitted batched log joint) of one model, built once per test process so that tests at the same
    shapes reuse the compiled program."""
    if name not in _CONVERTED:
        model, args = MODELS[name]
        ssm = bk.StateSpaceModel.from_numpyro(model, *args)
        _CONVERTED[name] = ssm, jax.jit(jax.vmap(_converted_log_joint(ssm)))
    return _CONVERTED[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_joint_log_density_equals_numpyro(name):
    model, args = MODELS[name]
    ssm, joint = _converted(name)
    sites = _draws(model, args, jax.random.key(7), 3)
    ref = jax.jit(jax.vmap(lambda s: np_log_density(model, args, {}, s)[0]))(sites)
    got = joint(sites)
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    # the round trip path <-> sites is the identity
    back = ssm.sites_from_path(ssm.path_from_sites(sites))
    for k, v in back.items():
        np.testing.assert_array_equal(v, sites[k])


def test_structure_read_off_the_model():
    st = bk.StateSpaceModel.from_numpyro(*MODELS["dict_plate_covariates"][:1], *MODELS["dict_plate_covariates"][1]).structure
    assert st.global_sites == ("rho", "beta") and st.initial_sites == ("v0", "z0")
    assert st.state_sites == ("v", "z") and st.observed_sites == ("y", "c")
    assert st.state_shape == (4,) and st.obs_shape == (2,) and st.num_scan_steps == M.T
    st = bk.StateSpaceModel.from_numpyro(*MODELS["stochastic_volatility"][:1], *MODELS["stochastic_volatility"][1]).structure
    assert st.initial_observed_sites == ("r0",) and st.global_sites == ("sigma", "nu")


def test_prior_in_unconstrained_space_keeps_the_log_jacobian():
    # NUTS on the prior sees the log-Jacobian factor of each unconstraining transform (regression: the
    # prior once hid every site but the globals, the Jacobian factors included)
    from numpyro.infer.util import potential_energy

    model, args = MODELS["local_level"]
    ssm = bk.StateSpaceModel.from_numpyro(model, *args)

    def reference():
        numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("tau", dist.HalfNormal(1.0))

    for z in ({"sigma": jnp.asarray(-3.0), "tau": jnp.asarray(0.4)}, {"sigma": jnp.asarray(2.5), "tau": jnp.asarray(-1.0)}):
        np.testing.assert_allclose(potential_energy(ssm.prior, (), {}, z), potential_energy(reference, (), {}, z),
                                   rtol=1e-12)


def test_stochastic_volatility_scan_form_equals_numpyro_example():
    # the scan form of NumPyro's example has the same joint density as the example's GaussianRandomWalk form
    model, (returns,) = MODELS["stochastic_volatility"]
    _, joint = _converted("stochastic_volatility")
    sites = _draws(model, (returns,), jax.random.key(3), 3)
    grw = {"sigma": sites["sigma"], "nu": sites["nu"],
           "s_all": jnp.concatenate([sites["s0"][:, None], sites["s"]], axis=1)}
    ref = jax.jit(jax.vmap(lambda s: np_log_density(M.stochastic_volatility_grw, (returns,), {}, s)[0]))(grw)
    got = joint(sites)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_particle_filter_evidence_matches_kalman():
    # Z_hat / Z has mean 1: within 4 Monte Carlo SE of 1 over independent filters
    model, (y,) = MODELS["linear_gaussian"]
    ssm = bk.StateSpaceModel.from_numpyro(model, y)
    params = {"rho": jnp.asarray(0.8), "scales": jnp.array([0.7, 1.1])}
    A = 0.8 * jnp.eye(2) + 0.1 * jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    Q = jnp.diag(params["scales"] ** 2)
    # the first observation sees x_0 = A x0 + noise with x0 ~ N(0, I)
    kp = {"A": A, "Q": Q, "H": jnp.array([[1.0, 0.5], [0.0, 1.0]]), "R": 0.25 * jnp.eye(2),
          "m0": jnp.zeros(2), "P0": A @ A.T + Q}
    logz = float(lg.kalman_filter(kp, y).log_likelihood)
    reps = 64
    keys = jax.random.split(jax.random.key(11), reps)
    est = jax.jit(jax.vmap(lambda k: bk.smc.particle_filter(k, ssm, params, ssm.ys, num_particles=256).log_evidence))
    ratio = np.exp(np.asarray(est(keys)) - logz)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / np.sqrt(reps), ratio.mean()
    # negative control: a wrong observation noise fails the same check
    wrong = dict(kp, R=0.5 * jnp.eye(2))
    ratio_wrong = np.exp(np.asarray(est(keys)) - float(lg.kalman_filter(wrong, y).log_likelihood))
    assert abs(ratio_wrong.mean() - 1.0) > 4 * ratio_wrong.std(ddof=1) / np.sqrt(reps)


# ------------------------------------------------------------------------------------------ bad models
def _two_scans(y):
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, s))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, None

    def step2(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, s))
        numpyro.sample("w", dist.Normal(z, 1.0), obs=y_t)
        return z, None

    scan(step, x0, y)
    scan(step2, x0, y)


def _reverse(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_next, y_t):
        x = numpyro.sample("x", dist.Normal(x_next, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, None

    scan(step, x0, y, reverse=True)


def _latent_sequence_in_xs(y):
    eps = numpyro.sample("eps", dist.Normal(0.0, 1.0).expand([y.shape[0]]).to_event(1))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, inp):
        y_t, e_t = inp
        x = numpyro.sample("x", dist.Normal(x_prev + e_t, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, None

    scan(step, x0, (y, eps))


def _obs_on_previous_carry(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x_prev, 1.0), obs=y_t)
        return x, None

    scan(step, x0, y)


def _no_carry(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(carry, y_t):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return None, x

    scan(step, None, y)


def _carry_not_a_site(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return 2.0 * x, None

    scan(step, x0, y)


def _body_reads_initial_state(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(0.5 * x_prev + 0.5 * x0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, None

    scan(step, x0, y)


def _unconditioned(y=None, num_steps=5):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, t):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=None if y is None else y[t])
        return x, None

    scan(step, x0, jnp.arange(num_steps))


def _no_scan(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _scale_around_scan(y):
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, None

    with numpyro.handlers.scale(scale=2.0):
        scan(step, x0, y)


_Y = jnp.linspace(-1.0, 1.0, 5)


@pytest.mark.parametrize("model, args, match", [
    (_two_scans, (_Y,), r"`scan` 2 times.*\['z', 'w'\]"),
    (_reverse, (_Y,), r"reverse=True.*\['x'\].*future"),
    (_latent_sequence_in_xs, (_Y,), r"latent site 'eps'.*future steps"),
    (_unconditioned, (), r"site 'y' in the scan body is not conditioned on data"),
    (_no_carry, (_Y,), r"returns no carry.*\['x'\]"),
    (_carry_not_a_site, (_Y,), r"carry leaf .* not the value of a latent sample site.*\['x'\]"),
    (_obs_on_previous_carry, (_Y,), r"observed site 'y' depends on the previous step's carry"),
    (_body_reads_initial_state, (_Y,), r"site 'x' reads the initial state \['x0'\]"),
    (_no_scan, (_Y,), r"calls no `numpyro.contrib.control_flow.scan`"),
    (_scale_around_scan, (_Y,), r"site 'x'.*handler"),
])
def test_unsupported_models_raise_named_model_errors(model, args, match):
    with pytest.raises(ModelError, match=match):
        bk.StateSpaceModel.from_numpyro(model, *args)
