"""The example notebooks: built from the example scripts (the only source), so they cannot drift.

Checks, without running a kernel (CI executes every notebook: `python notebooks/build.py --execute`):
each example converts to a notebook that opens with a title and whose code cells each parse (a ``# %%``
marker inside a function would split it); the docs hook rebuilds a notebook page whose script changed,
and with ``BAYESKIT_DOCS_EXECUTED_NOTEBOOKS=1`` refuses to render an unexecuted one.
"""

import ast
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build():
    # imported here, not at collection: jupytext + nbformat take about 2 s to import in each xdist worker
    pytest.importorskip("jupytext")
    pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_a_notebook_with_a_title_and_parseable_cells(build):
    from bayeskit import cli

    scripts = build.scripts()
    assert set(cli.EXAMPLES.values()) == {p.name for p in scripts.values()}  # each is also `reproduce NAME`
    for name, path in scripts.items():
        nb = build.convert(path)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), name
        for cell in nb.cells:
            if cell.cell_type == "code":
                ast.parse(cell.source)  # raises on a cell cut out of a function body
        assert nb.metadata["bayeskit"]["source_sha256"] == build._sha(path)


def test_docs_hook_rebuilds_stale_pages_and_can_require_executed_ones(build, tmp_path, monkeypatch):
    from mkdocs.exceptions import PluginError

    docs = tmp_path / "docs"
    out = docs / "notebooks"
    out.mkdir(parents=True)
    stale = out / "paris_ppg.ipynb"
    stale.write_text(json.dumps({"cells": [], "metadata": {"bayeskit": {"source_sha256": "old", "executed": True}},
                                 "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.delenv("BAYESKIT_DOCS_EXECUTED_NOTEBOOKS", raising=False)
    build.on_pre_build({"docs_dir": str(docs)})
    assert {p.stem for p in out.glob("*.ipynb")} == set(build.scripts())
    meta = json.loads(stale.read_text())["metadata"]["bayeskit"]
    assert meta["source_sha256"] == build._sha(build.scripts()["paris_ppg"]) and meta["executed"] is False
    monkeypatch.setenv("BAYESKIT_DOCS_EXECUTED_NOTEBOOKS", "1")
    with pytest.raises(PluginError, match="build.py --execute"):
        build.on_pre_build({"docs_dir": str(docs)})
