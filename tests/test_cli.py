import subprocess
import sys

import pytest

from bayeskit import __version__, cli


# slow: the demo compiles four programs at its fixed sizes (23 s of CPU, the largest single fast test); CI
# runs `bayeskit demo` verbatim before the suites, and the fast suite covers its parts (particle filter,
# plots, ArviZ round trip) and the command line's argument handling
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    cli.main(["demo", "--outdir", str(out), "--num-particles", "256", "--no-progress"])
    captured = capsys.readouterr()
    text = captured.out
    assert "bayeskit demo" not in captured.err and "repeated filters" not in captured.err  # --no-progress
    assert "Kalman log-lik (exact)" in text and "stochastic volatility" in text
    assert (out / "filtered_states.png").stat().st_size > 10_000
    import arviz as az

    tree = az.from_netcdf(out / "linear_gaussian.nc")
    assert {"posterior", "sample_stats", "log_likelihood"} <= set(tree.children)
    assert az.from_netcdf(out / "stochastic_volatility.nc")["posterior"]["x"].sizes["draw"] == 256


def test_every_reproduce_name_has_an_example_script():
    for name, filename in cli.EXAMPLES.items():
        assert (cli.REPO_ROOT / "examples" / filename).exists(), name


@pytest.mark.parametrize("argv, kind", [(["reproduce", "nonexistent"], "example"),
                                        (["bench", "nonexistent"], "benchmark"),
                                        (["bench"], None), (["reproduce"], None)])
def test_unknown_or_missing_names_give_one_line_and_exit_2(argv, kind, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    if kind:
        assert f"unknown {kind} 'nonexistent'" in err
    valid = cli.EXAMPLES if argv[0] == "reproduce" else cli.benchmarks()
    assert all(name in err for name in valid)


def test_console_script_unknown_name_exits_2_without_traceback():
    run = subprocess.run([sys.executable, "-m", "bayeskit.cli", "bench", "nonexistent"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "particle_filter" in run.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bayeskit {__version__}"


def test_list_names(capsys):
    cli.main(["bench", "--list"])
    assert capsys.readouterr().out.split() == sorted(cli.benchmarks())
    cli.main(["reproduce", "--list"])
    assert capsys.readouterr().out.split() == sorted(cli.EXAMPLES)


def _fake_benchmark(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(cli.REPO_ROOT / 'benchmarks')!r})\n"
        "from _common import save_text\n"
        "print('fake table')\n"
        "save_text('fake', '| a | b |')\n")
    return script


def test_bench_writes_to_outdir_not_the_committed_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "benchmarks", lambda: {"fake": _fake_benchmark(tmp_path)})
    committed = cli.REPO_ROOT / "benchmarks" / "results" / "fake.md"
    out = tmp_path / "out"
    assert cli.main(["bench", "fake", "--outdir", str(out)]) == 0
    assert (out / "fake.md").read_text() == "| a | b |\n"
    assert "fake table" in capsys.readouterr().out
    assert not committed.exists()


def test_update_results_refuses_without_a_comparison_library(tmp_path, monkeypatch, capsys):
    results = cli.REPO_ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    monkeypatch.setattr(cli, "benchmarks", lambda: {"fake": _fake_benchmark(tmp_path)})
    monkeypatch.setitem(cli.COMPARISONS, "fake", ("numpy", "no_such_comparison_library"))
    assert cli.main(["bench", "fake", "--update-results"]) == 2
    err = capsys.readouterr().err
    assert "missing: no_such_comparison_library" in err and "numpy" not in err.split("missing:")[1]
    assert results.read_text() == before
    assert not (cli.REPO_ROOT / "benchmarks" / "results" / "fake.md").exists()


def test_numpyro_example_is_registered(capsys):
    assert cli.EXAMPLES["numpyro"] == "numpyro_models.py"
    cli.main(["reproduce", "--list"])
    assert "numpyro" in capsys.readouterr().out.split()


def test_prepare_example_run_sets_quick_xla_level_and_keeps_the_users_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    cli.prepare_example_run(str(tmp_path), quick=True)
    import os

    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", cli.QUICK_XLA_FLAG]
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    cli.prepare_example_run(str(tmp_path), quick=True)
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=3"
    monkeypatch.delenv("XLA_FLAGS")
    cli.prepare_example_run(str(tmp_path), quick=False)
    assert "XLA_FLAGS" not in os.environ


def test_prepare_example_run_puts_the_compile_cache_in_the_outdir_unless_one_is_configured(tmp_path):
    import jax

    configured = jax.config.jax_compilation_cache_dir
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        if configured:  # the test suite's cache wins
            cli.prepare_example_run(str(tmp_path), quick=False)
            assert jax.config.jax_compilation_cache_dir == configured
        jax.config.update("jax_compilation_cache_dir", None)
        cli.prepare_example_run(str(tmp_path / "out"), quick=False)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "out" / "jax-cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)


def test_example_args_add_no_progress_and_parse_the_given_argv():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--outdir", default="out")
    args = cli.parse_example_args(parser, ["--quick", "--no-progress"])
    assert args.quick and args.progress_bar is False and args.outdir == "out"
    parser = argparse.ArgumentParser()
    parser.add_argument("--outdir", default="out")
    assert cli.parse_example_args(parser, []).progress_bar is True
