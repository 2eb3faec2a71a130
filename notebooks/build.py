"""Build the example notebooks from the example scripts, and optionally execute them.

The scripts in ``examples/`` (jupytext percent format, ``# %%`` cells) are the only source: nothing here
is committed as a notebook, so a script and its notebook cannot drift. This file

* converts each script to a notebook with jupytext (``python notebooks/build.py``), into
  ``docs/notebooks/NAME.ipynb`` (git-ignored) by default;
* with ``--execute``, runs each notebook top to bottom with nbclient in a fresh Python kernel, in the
  examples' quick configuration (``BAYESKIT_NOTEBOOK_ARGS``, default ``--quick --no-progress``; see
  ``bayeskit.cli.parse_example_args``), prints its run time and number of figures, and fails if a cell
  raises or a notebook shows no figure (CI runs this);
* is also the MkDocs hook (``hooks:`` in mkdocs.yml): before a docs build, every notebook page whose
  executed copy is missing or was built from another version of its script is rewritten, unexecuted,
  from the script. With ``BAYESKIT_DOCS_EXECUTED_NOTEBOOKS=1`` (CI) a missing or stale executed
  notebook fails the build instead, so the site CI builds shows every notebook's figures.

Run: ``python notebooks/build.py --execute [--jobs 2] [NAME ...]`` (names are script stems, e.g.
``paris_ppg``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_OUT = ROOT / "docs" / "notebooks"
META = "bayeskit"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
#: extra arguments of the executed (CI) run beyond ``--args``, to keep the slowest notebooks lean
LEAN_ARGS = {
    "inference_scaling": "--prm verifier",  # the learned-PRM comparison trains a model: the script's job
}


def scripts() -> dict[str, Path]:
    """Every example script, by stem (each is one notebook)."""
    return {p.stem: p for p in sorted(EXAMPLES.glob("*.py")) if not p.name.startswith("_")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert(script: Path):
    """The notebook of ``script`` (unexecuted), with its source's hash in ``metadata.bayeskit``."""
    import jupytext

    nb = jupytext.read(script, fmt="py:percent")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("jupytext", None)
    nb.metadata[META] = {"source": script.relative_to(ROOT).as_posix(), "source_sha256": _sha(script),
                         "executed": False}
    return nb


def figures(nb) -> int:
    """Number of PNG outputs in ``nb``."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def execute(nb, *, timeout: int, args: str) -> float:
    """Run ``nb`` in place in a fresh kernel of this Python (whatever kernels are installed elsewhere), in a
    temporary working folder; returns the seconds taken."""
    import json

    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="bayeskit-nb-") as work:
        spec = Path(work) / "jupyter" / "kernels" / "bayeskit-this-python"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (bayeskit)", "language": "python"}))
        env = {"BAYESKIT_NOTEBOOK_ARGS": args, "TQDM_DISABLE": "1",
               "JUPYTER_PATH": os.pathsep.join(filter(None, [str(spec.parent.parent), os.environ.get("JUPYTER_PATH")]))}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the kernel inherits this process's environment
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name=spec.name,
                                    resources={"metadata": {"path": work}})
            t0 = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - t0
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return seconds


def is_current(path: Path, script: Path, *, executed: bool) -> bool:
    """Whether ``path`` is a notebook built from this version of ``script`` (and executed, if asked)."""
    import nbformat

    if not path.exists():
        return False
    try:
        meta = nbformat.read(path, as_version=4).metadata.get(META, {})
    except Exception:  # an unreadable file is rebuilt
        return False
    return meta.get("source_sha256") == _sha(script) and (meta.get("executed", False) or not executed)


def _run_one(name: str, script: Path, timeout: int, args: str):
    """Convert and execute one notebook (in a worker process): ``(name, notebook, seconds, error)``."""
    nb = convert(script)
    try:
        seconds = execute(nb, timeout=timeout, args=f"{args} {LEAN_ARGS.get(name, '')}".strip())
    except Exception as err:  # nbclient's CellExecutionError carries the cell's traceback
        return name, nb, None, str(err)
    return name, nb, seconds, None


def build(names, out: Path, *, run: bool, timeout: int, args: str, jobs: int = 1) -> int:
    """Write the notebooks of ``names`` (default: all) to ``out``; with ``run``, execute them first,
    ``jobs`` at a time (each in its own kernel), and print a table of run times and figures.
    Returns the exit status: 1 if a notebook failed or showed no figure."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    available = scripts()
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown notebook(s) {unknown}; valid names: {', '.join(available)}", file=sys.stderr)
        return 2
    names = list(names) or list(available)
    if not run:
        for name in names:
            nbformat.write(convert(available[name]), out / f"{name}.ipynb")
        return 0
    from concurrent.futures import ProcessPoolExecutor, as_completed

    failed, rows = [], []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_run_one, name, available[name], timeout, args) for name in names]
        for fut in as_completed(futures):
            name, nb, seconds, err = fut.result()
            if err is not None:
                print(f"FAILED {name}:\n{err}", file=sys.stderr, flush=True)
                failed.append(name)
                continue
            n_fig = figures(nb)
            nb.metadata[META].update(executed=True, seconds=round(seconds, 1), figures=n_fig)
            rows.append((name, seconds, n_fig))
            print(f"== {name}: {seconds:.0f} s, {n_fig} figures", flush=True)
            if n_fig == 0:
                print(f"FAILED {name}: no figure shown", file=sys.stderr)
                failed.append(name)
            nbformat.write(nb, out / f"{name}.ipynb")
    if rows:
        print("\n| notebook | run time (s) | figures |\n|---|---|---|")
        for name, seconds, n_fig in sorted(rows):
            print(f"| {name} | {seconds:.0f} | {n_fig} |")
        print(f"| all ({jobs} at a time): wall time | {time.perf_counter() - t0:.0f} | {sum(r[2] for r in rows)} |")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# --- MkDocs hook -----------------------------------------------------------------------------------


def on_pre_build(config, **kwargs) -> None:
    """Before a docs build: every notebook page in ``docs/notebooks`` is built from its current script."""
    import nbformat
    from mkdocs.exceptions import PluginError

    out = Path(config["docs_dir"]) / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    require = os.environ.get("BAYESKIT_DOCS_EXECUTED_NOTEBOOKS", "") not in ("", "0")
    for name, script in scripts().items():
        path = out / f"{name}.ipynb"
        if is_current(path, script, executed=require):
            continue
        if require:
            raise PluginError(f"docs/notebooks/{name}.ipynb is missing, unexecuted or older than "
                              f"examples/{name}.py: run `python notebooks/build.py --execute` first")
        nbformat.write(convert(script), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="script stems (default: every example)")
    parser.add_argument("--execute", action="store_true", help="run each notebook (quick configuration)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the .ipynb files")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at a time")
    parser.add_argument("--args", default=os.environ.get("BAYESKIT_NOTEBOOK_ARGS", "--quick --no-progress"),
                        help="the examples' arguments inside the kernel")
    a = parser.parse_args(argv)
    return build(a.names, Path(a.out), run=a.execute, timeout=a.timeout, args=a.args, jobs=a.jobs)


if __name__ == "__main__":
    sys.exit(main())
