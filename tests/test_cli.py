import pytest

from bayeskit import cli
from bayeskit.errors import ConfigurationError


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    cli.main(["demo", "--outdir", str(out), "--num-particles", "256"])
    text = capsys.readouterr().out
    assert "Kalman log-lik (exact)" in text and "stochastic volatility" in text
    assert (out / "filtered_states.png").stat().st_size > 10_000
    assert (out / "linear_gaussian_arviz" / "sample_stats.nc").exists()


def test_every_reproduce_name_has_an_example_script():
    for name, filename in cli.EXAMPLES.items():
        assert (cli.REPO_ROOT / "examples" / filename).exists(), name


def test_unknown_names_are_rejected():
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "nonexistent"])
    with pytest.raises(ConfigurationError, match="unknown benchmark"):
        cli.main(["bench", "nonexistent"])
