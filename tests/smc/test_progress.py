"""The progress-bar convention: ``progress_bar=True`` shows a bar that reaches its total and changes no
value (same key, same result), for an in-jit time loop (particle_filter: the engine's) and in-jit
iterations over vmapped chains (pmmh). Off by default."""

import jax
import numpy as np
import pytest

import bayeskit as bk
from bayeskit.models import linear_gaussian as lg

T = 24


@pytest.fixture(scope="module")
def data():
    params = lg.example_params(1)
    _, ys = lg.ssm.simulate(jax.random.key(0), params, T)
    return params, ys


def _bar_total(err: str, desc: str) -> str:
    lines = [seg for seg in err.replace("\r", "\n").splitlines() if seg.startswith(desc)]
    assert lines, f"no {desc!r} bar on stderr"
    return lines[-1]


def test_particle_filter_bar_changes_nothing(data, capsys):
    params, ys = data
    quiet = bk.smc.particle_filter(jax.random.key(1), lg.ssm, params, ys, 64)
    assert capsys.readouterr().err == ""  # the default is no bar
    shown = bk.smc.particle_filter(jax.random.key(1), lg.ssm, params, ys, 64, progress_bar=True)
    assert f"{T}/{T}" in _bar_total(capsys.readouterr().err, "particle filter")
    np.testing.assert_array_equal(np.asarray(quiet.filter_mean), np.asarray(shown.filter_mean))
    np.testing.assert_array_equal(np.asarray(quiet.log_evidence), np.asarray(shown.log_evidence))


# slow tier: compile-bound (8 s in the fast suite); capability kept fast by: test_particle_filter_bar_changes_nothing
@pytest.mark.slow
def test_pmmh_bar_changes_nothing(capsys):
    import numpyro
    import numpyro.distributions as dist

    ar = bk.StateSpaceModel(initial=lambda p: dist.Normal(0.0, 1.0),
                            transition=lambda p, x, t: dist.Normal(p["rho"] * x, 1.0),
                            observation=lambda p, x, t: dist.Normal(x, 1.0), vectorized=True,
                            prior=lambda: {"rho": numpyro.sample("rho", dist.Uniform(-1.0, 1.0))})
    _, ys = ar.simulate(jax.random.key(0), {"rho": 0.5}, T)
    kw = dict(num_particles=16, num_iterations=6, num_chains=2, num_warmup=2, step_size=0.3)
    quiet = bk.smc.pmmh(jax.random.key(2), ar, ys, **kw)
    shown = bk.smc.pmmh(jax.random.key(2), ar, ys, progress_bar=True, **kw)
    assert "8/8" in _bar_total(capsys.readouterr().err, "PMMH")
    np.testing.assert_array_equal(quiet.samples["rho"], shown.samples["rho"])
    np.testing.assert_array_equal(quiet.log_evidence, shown.log_evidence)
