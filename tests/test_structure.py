"""The package's structure: the import graph has no cycle, the model layer imports no backend, no private name
is imported across modules, and every public name of a backend is the object it names on every access."""

import ast
import importlib
import pathlib
import types

import pytest

import bayeskit as bk

ROOT = pathlib.Path(bk.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _nodes(tree):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(path: pathlib.Path, name: str):
    """(imported module, [imported names]) for every import statement in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((mod, [alias.name for alias in node.names]))
    return out


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, names in _imports(path, m):
            if not target.startswith("bayeskit"):
                continue
            for n in names:  # `from pkg import submodule` depends on the submodule
                if f"{target}.{n}" in mods:
                    graph[m].add(f"{target}.{n}")
            if target in mods:
                graph[m].add(target)
    return graph


def _is_package_of(a, b):
    return b.startswith(a + ".")


# lazy (in-function) imports that close a cycle, each with its reason; every other cycle fails
ALLOWED_LAZY = {
    ("bayeskit.model.ssm", "bayeskit.model.numpyro_scan"):
        "the factory classmethod StateSpaceModel.from_numpyro returns a subclass defined in numpyro_scan",
}


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ importing its own submodules, and submodules importing their package's public names,
    # is the normal package pattern: drop edges from a package to its own submodules
    edges = {m: {t for t in ts if t != m and not _is_package_of(m, t) and (m, t) not in ALLOWED_LAZY}
             for m, ts in graph.items()}
    color, stack, cycles = {}, [], []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if color.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in color:
                visit(t)
        stack.pop()
        color[m] = 2

    for m in sorted(edges):
        if m not in color:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_model_layer_imports_no_backend():
    graph = _graph()
    bad = {m: sorted(t for t in ts if t.startswith("bayeskit.inference"))
           for m, ts in graph.items() if m == "bayeskit.model" or m.startswith("bayeskit.model.")}
    assert not {m: ts for m, ts in bad.items() if ts}, bad


def test_no_private_name_imported_across_modules():
    mods = _modules()
    bad = []
    for m, path in mods.items():
        for target, names in _imports(path, m):
            if not target.startswith("bayeskit"):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in mods:
                    bad.append(f"{m}: from {target} import {n}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("backend", ["smc", "scaling", "gpdp", "bridges", "meta", "sde", "models", "datasets",
                                     "diagnostics"])
def test_public_names_resolve_to_the_same_object_on_every_access(backend):
    """Every name in a backend's ``__all__`` imports, is not shadowed by a module of the same name (the
    ``bk.smc.tempered`` bug), and is the same object on a second access, also after every submodule of the
    backend has been imported."""
    mod = getattr(bk, backend)
    first = {name: getattr(mod, name) for name in mod.__all__}
    for sub in _modules():
        if sub.startswith(mod.__name__ + "."):
            importlib.import_module(sub)
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert obj is first[name], name
        if isinstance(obj, types.ModuleType):
            assert obj.__name__.rpartition(".")[2] == name, (name, obj)
            assert not name.startswith("_")


def test_moved_names_warn_and_resolve():
    """Names moved by the one-engine change stay reachable for one release, with a FutureWarning naming the new
    place; removed ones raise an AttributeError naming the replacement."""
    cases = [(bk.smc, "csmc", bk.smc.kernels.csmc), (bk.smc, "SMCState", bk.smc.engine.SMCState),
             (bk.bridges, "bw2_uvp", bk.testing.bw2_uvp), (bk.meta, "baselines", bk.testing.meta_baselines),
             (bk.scaling, "random_markov_world", bk.testing.random_markov_world),
             (bk.scaling, "GaussianMixture", bk.testing.GaussianMixture),
             (bk.scaling, "smc_sweep", bk.scaling.kernels.smc_sweep)]
    for mod, name, new in cases:
        with pytest.warns(FutureWarning, match="moved to"):
            assert getattr(mod, name) is new
    with pytest.raises(AttributeError, match="paris_accumulator"):
        bk.smc.paris_step  # noqa: B018
