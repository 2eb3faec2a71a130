"""The ``bayeskit`` command line: ``demo``, ``reproduce NAME [--quick]``, ``bench [NAME|all]``."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bayeskit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="short end-to-end particle-filter job on simulated data")
    demo.add_argument("--outdir", default="bayeskit-output/demo", help="folder for the plot and ArviZ output")
    demo.add_argument("--num-particles", type=int, default=2000)

    rep = sub.add_parser("reproduce", help="run one paper's example")
    rep.add_argument("name", choices=sorted(EXAMPLES))
    rep.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    rep.add_argument("--outdir", default=None, help="folder for figures and tables")

    bench = sub.add_parser("bench", help="run benchmark scripts (side-by-side timings)")
    bench.add_argument("name", nargs="?", default="all")
    bench.add_argument("--quick", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from bayeskit.demo import run_demo

        run_demo(outdir=args.outdir, num_particles=args.num_particles)
    elif args.command == "reproduce":
        outdir = args.outdir or f"bayeskit-output/{args.name}"
        extra = ["--outdir", outdir] + (["--quick"] if args.quick else [])
        _run_script(_script("examples", EXAMPLES[args.name]), extra)
    elif args.command == "bench":
        available = benchmarks()
        names = sorted(available) if args.name == "all" else [args.name]
        for name in names:
            if name not in available:
                raise ConfigurationError(f"unknown benchmark {name!r}; available: {sorted(available)}")
            print(f"== benchmark {name}")
            _run_script(available[name], ["--quick"] if args.quick else [])
        print(f"updated {merge_results()}")
    return 0


def merge_results() -> Path:
    """Concatenate ``benchmarks/results/*.md`` (one per benchmark script) into ``benchmarks/RESULTS.md``."""
    folder = REPO_ROOT / "benchmarks"
    parts = [p.read_text().strip() for p in sorted((folder / "results").glob("*.md"))]
    header = ("# Benchmark results\n\nWritten by `bayeskit bench` from `benchmarks/results/*.md`; each section "
              "names the machine it ran on. Times are medians after a warm-up (compile excluded) unless "
              "stated; ratios are alternative time / bayeskit time (> 1 means bayeskit is faster).\n")
    path = folder / "RESULTS.md"
    path.write_text(header + "\n" + "\n\n".join(parts) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
