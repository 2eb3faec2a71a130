"""Every ```python example in README.md and docs/*.md runs (issue 16).

The blocks of one page run in order in one namespace, in a temporary working directory (examples write
files). Two HTML comments, invisible on the rendered page, may stand on the line before a block:

* ``<!-- test-setup: ... -->`` holds Python code run before the block; it defines the names a fragment
  takes as given (``result``, ``ssm``, ``key``, ...) with small sizes.
* ``<!-- skip-test: REASON -->`` skips a block that cannot run here (it needs a package or a file the
  tests do not have); the reason is required.
"""

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(skip-test|test-setup)\s*:((?:(?!-->).)*)-->\s*\Z", re.S)


def blocks(path):
    """[(line, code, setup, skip_reason)] of one page's python blocks, in order."""
    text = path.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        before = text[:m.start()].rstrip()
        marker = _MARKER.search(before)
        setup = skip = None
        if marker is not None:
            kind, body = marker.group(1), marker.group(2)
            if kind == "skip-test":
                skip = body.strip()
            else:
                setup = body.strip("\n")
        out.append((text[:m.start()].count("\n") + 2, m.group(1), setup, skip))
    return out


EXAMPLE_PAGES = [p for p in PAGES if blocks(p)]
# pages whose examples take about 8 s or more each run with -m slow: compiling each page's few jitted programs is
# most of it, so smaller sizes barely help. Measured with a cold compilation cache on 2 busy cores (user+sys per page):
# smoothing 34 s, smc 28 s, scaling 25 s, bridges 21 s; in the fast suite's own profile (wall per page): numpyro-models
# 13-16 s, meta 10-13 s, gpdp 12-14 s, sde 10-11 s, tempered 7-9 s. README, getting-started, arviz and scale (3-8 s
# each) stay in the fast suite.
SLOW_PAGES = {"docs/bridges.md", "docs/smc.md", "docs/smoothing.md", "docs/scaling.md", "docs/numpyro-models.md",
              "docs/meta.md", "docs/gpdp.md", "docs/sde.md", "docs/tempered.md"}


def _page_param(p):
    name = p.relative_to(ROOT).as_posix()
    return pytest.param(p, id=name, marks=[pytest.mark.slow] if name in SLOW_PAGES else [])


def test_every_page_with_examples_is_collected_and_skips_say_why():
    names = {p.relative_to(ROOT).as_posix() for p in EXAMPLE_PAGES}
    assert {"README.md", "docs/getting-started.md", "docs/smc.md"} <= names, names
    for page in EXAMPLE_PAGES:
        for line, _, _, skip in blocks(page):
            assert skip is None or len(skip) > 10, f"{page.name}:{line}: skip-test needs a reason"
    # the parser sees a marker only on the line right before a block
    text = ("<!-- test-setup:\nz = 0\n-->\n```python\nw = 0\n```\n<!-- skip-test: needs a GPU and a model download -->\n"
            "```python\nx = 1\n```\n\n```python\ny = 2\n```\n")
    probe = ROOT / ".pytest_cache" / "docs_probe.md"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(text)
    got = blocks(probe)
    probe.unlink()
    assert [b[1:] for b in got] == [("w = 0\n", "z = 0", None), ("x = 1\n", None, "needs a GPU and a model download"),
                                    ("y = 2\n", None, None)]


@pytest.mark.parametrize("page", [_page_param(p) for p in EXAMPLE_PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_example_{page.stem}"}
    ran = 0
    for line, code, setup, skip in blocks(page):
        if skip is not None:
            continue
        where = f"{page.relative_to(ROOT)}:{line}"
        if setup:
            exec(compile(setup, f"{where} (test-setup)", "exec"), namespace)
        exec(compile(code, where, "exec"), namespace)
        ran += 1
    plt.close("all")
    assert ran >= 1, f"{page.name}: every example is skipped"
    assert os.getcwd() == str(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# every page, in the fast suite: its examples parse and every bayeskit name they use exists (SLOW_PAGES run in full
# only with -m slow; this catches the commonest way an example breaks, a renamed or removed name, in seconds)
# ------------------------------------------------------------------------------------------------------------------
def _bayeskit_aliases(tree, aliases):
    """Add ``{local name: object}`` for the page's ``import bayeskit...`` / ``from bayeskit... import ...``;
    return the problems (names that do not import)."""
    import importlib

    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "bayeskit":
                    mod = importlib.import_module(a.name)
                    aliases[a.asname or a.name.split(".")[0]] = mod if a.asname else importlib.import_module("bayeskit")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bayeskit":
            mod = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(mod, a.name):
                    problems.append(f"`from {node.module} import {a.name}`: no such name")
                else:
                    aliases[a.asname or a.name] = getattr(mod, a.name)
    return problems


def _chain(node):
    """``["bk", "smc", "ffbs"]`` for the expression ``bk.smc.ffbs``, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def check_bayeskit_names(code: str, aliases: dict) -> list[str]:
    """Problems with the bayeskit names ``code`` uses: attributes that do not exist, and keyword arguments that a
    bayeskit function or class does not take (a renamed keyword kept only as a deprecated alias counts)."""
    import inspect

    tree = ast.parse(code)
    problems = _bayeskit_aliases(tree, aliases)
    resolved = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (chain := _chain(node)) and chain[0] in aliases:
            obj = aliases[chain[0]]
            for i, attr in enumerate(chain[1:], 1):
                if not hasattr(obj, attr):
                    problems.append(f"`{'.'.join(chain[:i + 1])}`: no such name")
                    break
                obj = getattr(obj, attr)
            else:
                resolved[id(node)] = obj
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in aliases:
            fn, name = aliases[node.func.id], node.func.id
        elif id(node.func) in resolved:
            fn, name = resolved[id(node.func)], ".".join(_chain(node.func))
        else:
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        var_kw = [p.name for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        if var_kw and var_kw[0] != "deprecated":
            continue  # the function forwards other keywords (e.g. a model's)
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in params:
                problems.append(f"`{name}(..., {kw.arg}=...)`: {name} takes no keyword `{kw.arg}`")
    return problems


def test_name_check_sees_a_missing_name_and_a_renamed_keyword():
    aliases = {}
    code = ("import bayeskit as bk\nfrom bayeskit.models import linear_gaussian as lg\n"
            "bk.smc.ffbs(key, lg.ssm, p, ys, num_samples=5)\nbk.smc.ffbs(key, lg.ssm, p, ys, num_paths=5)\n"
            "bk.smc.no_such_driver(key)\nlg.no_such_model\n")
    assert sorted(check_bayeskit_names(code, aliases)) == [
        "`bk.smc.ffbs(..., num_paths=...)`: bk.smc.ffbs takes no keyword `num_paths`",
        "`bk.smc.no_such_driver`: no such name", "`lg.no_such_model`: no such name"]


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=[p.relative_to(ROOT).as_posix() for p in EXAMPLE_PAGES])
def test_page_examples_parse_and_use_existing_names(page):
    aliases, problems = {}, []
    for line, code, setup, _ in blocks(page):
        for part in (setup, code):
            if part:
                problems += [f"{page.name}:{line}: {p}" for p in check_bayeskit_names(part, aliases)]
    assert not problems, "\n".join(problems)
