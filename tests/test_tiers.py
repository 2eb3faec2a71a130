"""The slow tier's claims hold: every test moved to the slow tier names, in its ``# slow tier:`` comment, the fast
tests that keep its capability in the fast suite; they must exist and not be marked slow themselves
(tests/conftest.py explains the two tiers)."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
_REF = re.compile(r"((?:[\w/]+/)?test_\w+\.py)?(?:::)?(test_\w+)?")


def _is_slow(node):
    return any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list)


def _functions(path):
    tree = ast.parse(path.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _resolve(name, here):
    for base in (here.parent, TESTS, TESTS.parent):
        if (base / name).is_file():
            return base / name
    raise AssertionError(f"{here.name}: the slow-tier comment names {name}, which does not exist")


def _claims():
    """[(file, slow test, [(file, fast test or None)])] from each ``# slow tier:`` comment."""
    out = []
    for path in sorted(TESTS.rglob("test_*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("# slow tier:"):
                continue
            j, text = i, []
            while lines[j].startswith("#"):
                text.append(lines[j][1:].strip())
                j += 1
            while lines[j].startswith("@"):
                j += 1
            name = re.match(r"def (\w+)\(", lines[j]).group(1)
            comment = " ".join(text)
            refs = []
            if "capability kept fast by:" in comment:
                named = re.sub(r"\([^)]*\)", "", comment.split("capability kept fast by:", 1)[1])  # not the asides
                for m in _REF.finditer(named):
                    file, func = m.groups()
                    if file or func:
                        refs.append((_resolve(file, path) if file else path, func))
            out.append((path, name, refs))
    return out


def test_every_slow_tier_test_names_fast_tests_that_exist():
    claims = _claims()
    assert len(claims) >= 50, len(claims)
    for path, name, refs in claims:
        slow = _functions(path)[name]
        assert _is_slow(slow), f"{path.name}::{name} has a slow-tier comment but no slow mark"
        assert refs, f"{path.name}::{name}: its slow-tier comment names no fast test"
        for file, func in refs:
            if func is None:
                continue
            funcs = _functions(file)
            assert func in funcs, f"{path.name}::{name} names {file.name}::{func}, which does not exist"
            assert not _is_slow(funcs[func]), f"{path.name}::{name} names {file.name}::{func}, which is slow too"
