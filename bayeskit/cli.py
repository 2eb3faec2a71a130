"""The ``bayeskit`` command line: ``demo``, ``reproduce NAME [--quick]``, ``bench NAME|all [--update-results]``."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from bayeskit.errors import ConfigurationError

# name -> example script in examples/ (each accepts --quick and --outdir)
EXAMPLES = {
    "ppg": "paris_ppg.py",
    "tempered": "tempered_smc.py",
    "scaling": "inference_scaling.py",
    "gpdp": "fisheries_gpdp.py",
    "lightsb": "light_sb.py",
    "sbirr": "multimarginal_sb.py",
    "niw": "niw_meta.py",
    "fbm": "fbm_sde.py",
    "numpyro": "numpyro_models.py",
    "tutorial": "numpyro_to_arviz.py",
}

REPO_ROOT = Path(__file__).resolve().parent.parent


def _script(folder: str, filename: str) -> Path:
    path = REPO_ROOT / folder / filename
    if not path.exists():
        raise ConfigurationError(
            f"{folder}/{filename} not found next to the installed package ({REPO_ROOT}); "
            "install bayeskit from a clone of the repository (pip install -e .) to run it"
        )
    return path


#: XLA flag for ``--quick`` runs: backend optimisation level 1 compiles the examples' small programs in
#: about half the default's time at about the same run time; a quick run is mostly compilation.
QUICK_XLA_FLAG = "--xla_backend_optimization_level=1"


def prepare_example_run(outdir: str, quick: bool) -> None:
    """Set up JAX for an example run before it computes anything (the one helper every example uses).

    A persistent compilation cache in ``<outdir>/jax-cache`` (unless one is configured already, as in
    the test suite): programs compiled twice within a run, and every program of a re-run, are read back
    instead of recompiled. With ``quick``, XLA's backend optimisation level 1 unless ``XLA_FLAGS`` sets
    it already. XLA reads its flags when JAX first computes, so call this before any computation.

    Args:
        outdir: the example's output folder; the cache goes in its ``jax-cache`` subfolder.
        quick: whether this is a ``--quick`` run (lower XLA optimisation level).
    """
    import os

    import jax

    if quick and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + QUICK_XLA_FLAG).strip()
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(outdir), "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


#: what an example runs with inside a Jupyter kernel (no command line there): quick settings by default;
#: set ``BAYESKIT_NOTEBOOK_ARGS`` (e.g. ``"--outdir out"`` for the full sizes) before starting the kernel.
NOTEBOOK_ARGS_ENV = "BAYESKIT_NOTEBOOK_ARGS"


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (IPython's ``ZMQInteractiveShell``)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def parse_example_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse an example's command line, adding ``--no-progress`` (``args.progress_bar`` is its negation).

    In a script, ``argv`` (default ``sys.argv[1:]``) is parsed as usual. In a Jupyter kernel, with
    ``argv`` None, the arguments come from the ``BAYESKIT_NOTEBOOK_ARGS`` environment variable (default
    ``"--quick"`` where the example has that flag) and :func:`prepare_example_run` is called, as
    ``bayeskit reproduce`` does: the same script runs top to bottom as a notebook.

    Args:
        parser: the example's parser (with an ``--outdir`` option; ``--quick`` optional).
        argv: the arguments, or None for the command line (or the notebook default).

    Returns:
        The parsed ``argparse.Namespace`` with ``progress_bar`` set.
    """
    import os
    import shlex

    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    notebook = argv is None and in_notebook()
    if notebook:
        quick = any(a.option_strings == ["--quick"] for a in parser._actions)
        argv = shlex.split(os.environ.get(NOTEBOOK_ARGS_ENV, "--quick" if quick else ""))
    args = parser.parse_args(argv)
    args.progress_bar = not args.no_progress
    if notebook:
        prepare_example_run(args.outdir, bool(getattr(args, "quick", False)))
    return args


def _run_script(path: Path, argv: list[str]) -> None:
    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old


def benchmarks() -> dict[str, Path]:
    folder = REPO_ROOT / "benchmarks"
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


#: the comparison libraries each benchmark times bayeskit against (beyond bayeskit's own dependencies
#: that can be missing in a user's environment): ``--update-results`` refuses without them, so a
#: committed table never loses a column.
COMPARISONS = {
    "particle_filter": ("particles",),
    "smoothing": ("particles",),
    "tempered": ("blackjax",),
}


class _UsageError(Exception):
    """A bad name on the command line: one line on stderr, exit code 2."""


def _check_name(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise _UsageError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")


def _missing_comparisons(names) -> list[str]:
    import importlib.util

    needed = sorted({mod for n in names for mod in COMPARISONS.get(n, ())})
    return [m for m in needed if importlib.util.find_spec(m) is None]


def _bench(args) -> None:
    import os
    from unittest import mock

    available = benchmarks()
    if args.list:
        print("\n".join(sorted(available)))
        return
    if args.name is None:
        raise _UsageError(f"bench needs a NAME (or 'all'); valid names: {', '.join(sorted(available))}")
    if args.name != "all":
        _check_name("benchmark", args.name, available)
    names = sorted(available) if args.name == "all" else [args.name]
    if args.update_results:
        missing = _missing_comparisons(names)
        if missing:
            raise _UsageError(
                f"--update-results needs every comparison library; missing: {', '.join(missing)} "
                "(pip install -e '.[bench]')")
        out = REPO_ROOT / "benchmarks" / "results"
    else:
        out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, {"BAYESKIT_BENCH_OUT": str(out.resolve())}):
        for name in names:
            print(f"== benchmark {name}")
            _run_script(available[name], ["--quick"] if args.quick else [])
            print(f"wrote {out / (name + '.md')}")
    if args.update_results:
        print(f"updated {merge_results()}")


def main(argv: list[str] | None = None) -> int:
    from bayeskit import __version__

    parser = argparse.ArgumentParser(prog="bayeskit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bayeskit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="short end-to-end particle-filter job on simulated data")
    demo.add_argument("--outdir", default="bayeskit-output/demo", help="folder for the plot and ArviZ output")
    demo.add_argument("--num-particles", type=int, default=2000)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (shown by default)")

    rep = sub.add_parser("reproduce", help="run one paper's example",
                         epilog="names: " + ", ".join(sorted(EXAMPLES)))
    rep.add_argument("name", nargs="?", help="which example (see --list)")
    rep.add_argument("--list", action="store_true", help="print the example names and exit")
    rep.add_argument("--quick", action="store_true", help="small sizes, under two minutes of CPU (wider error bars)")
    rep.add_argument("--outdir", default=None, help="folder for figures and tables")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars (shown by default)")

    bench = sub.add_parser(
        "bench", help="run a side-by-side benchmark script",
        epilog="names: " + ", ".join(sorted(benchmarks())) + ", all. Results go to --outdir; only "
        "--update-results rewrites the committed benchmarks/results/ and benchmarks/RESULTS.md.")
    bench.add_argument("name", nargs="?", help="which benchmark, or 'all' (see --list)")
    bench.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    bench.add_argument("--quick", action="store_true", help="small sizes")
    bench.add_argument("--outdir", default="bayeskit-output/bench", help="folder for NAME.md")
    bench.add_argument("--update-results", action="store_true",
                       help="rewrite the committed benchmarks/results/NAME.md and benchmarks/RESULTS.md "
                       "(refuses unless every comparison library is installed)")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from bayeskit.demo import run_demo

            run_demo(outdir=args.outdir, num_particles=args.num_particles, progress_bar=not args.no_progress)
        elif args.command == "reproduce":
            if args.list:
                print("\n".join(sorted(EXAMPLES)))
                return 0
            if args.name is None:
                raise _UsageError(f"reproduce needs a NAME; valid names: {', '.join(sorted(EXAMPLES))}")
            _check_name("example", args.name, EXAMPLES)
            outdir = args.outdir or f"bayeskit-output/{args.name}"
            extra = (["--outdir", outdir] + (["--quick"] if args.quick else [])
                     + (["--no-progress"] if args.no_progress else []))
            prepare_example_run(outdir, args.quick)
            _run_script(_script("examples", EXAMPLES[args.name]), extra)
        elif args.command == "bench":
            _bench(args)
    except (_UsageError, ConfigurationError) as err:
        print(f"bayeskit {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def merge_results() -> Path:
    """Concatenate ``benchmarks/results/*.md`` (one per benchmark script) into ``benchmarks/RESULTS.md``."""
    folder = REPO_ROOT / "benchmarks"
    parts = [p.read_text().strip() for p in sorted((folder / "results").glob("*.md"))]
    header = ("# Benchmark results\n\nWritten by `bayeskit bench --update-results` from `benchmarks/results/*.md`; each section "
              "names the machine it ran on. Times are medians after a warm-up (compile excluded) unless "
              "stated; ratios are alternative time / bayeskit time (> 1 means bayeskit is faster).\n")
    path = folder / "RESULTS.md"
    path.write_text(header + "\n" + "\n\n".join(parts) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
