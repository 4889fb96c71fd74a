"""The house rules a maintainer relies on: imports point one way with no cycles, the README stays short with its
two commands on top, and every link in it and in docs/ resolves inside the repository."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGES = ("boomerang", "train", "patching", "evaluate", "baselines", "reproduce")


def test_imports_point_from_orchestration_to_stages_to_library():
    """The layers contract of pyproject.toml, checked by import-linter (run by hand: `lint-imports`)."""
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(exe):
        pytest.skip("import-linter is not installed (requirements_dev.txt)")
    run = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_no_import_cycles_between_modules():
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, REPO)
    graph = grimp.build_graph(*PACKAGES)

    def ours(m):  # Hugging Face's evaluate library can sit in our evaluate package's __path__ (evaluate/__init__.py)
        path = os.path.join(REPO, *m.split("."))
        return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))

    modules = {m for m in graph.modules if ours(m)}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}

    state, cycles = {}, []  # a package importing its own module (or back) is not counted as a cycle

    def visit(m, stack):
        state[m] = 1
        for n in edges[m]:
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def _links(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith(("http://", "https://", "#", "mailto:"))]


def test_readme_is_short_with_the_two_commands_on_top():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 200
    top = "\n".join(lines[:15])
    assert "bash scripts/main.sh" in top and "bash scripts/test.sh" in top


@pytest.mark.parametrize("doc", ["README.md"] + sorted(os.path.relpath(p, REPO) for p in
                                                        glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)))
def test_every_link_resolves_inside_the_repository(doc):
    base = os.path.dirname(os.path.join(REPO, doc))
    missing = []
    for target in _links(os.path.join(REPO, doc)):
        path = os.path.normpath(os.path.join(base, target.split("#")[0]))
        if not path.startswith(REPO) or not os.path.exists(path):
            missing.append(target)
    assert not missing, f"{doc}: {missing}"
