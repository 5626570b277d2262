"""Every public function and class of ftlib says which notebook introduces it, and
that notebook really uses it (d2l's "Defined in" pointer, kept true by a test)."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"Introduced in: (notebooks/[\w.-]+\.ipynb)")
# Modules that are the command line and its plumbing, not a learner's API: what
# they define is run (`python -m ftlib ...`), not imported in a notebook.
NOT_FOR_NOTEBOOKS = {"cli.py", "__main__.py"}


def public_definitions():
    """(module file, name, docstring) of every top-level public function and class."""
    for path in sorted((ROOT / "ftlib").glob("*.py")):
        if path.name in NOT_FOR_NOTEBOOKS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield path.name, node.name, ast.get_docstring(node) or ""


def notebook_code(relative):
    cells = json.loads((ROOT / relative).read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


DEFINITIONS = list(public_definitions())


def test_there_are_public_definitions():
    assert len(DEFINITIONS) > 50


@pytest.mark.parametrize("module,name,doc", DEFINITIONS, ids=[f"{m}:{n}" for m, n, _ in DEFINITIONS])
def test_pointer_names_a_notebook_that_uses_the_name(module, name, doc):
    found = POINTER.findall(doc)
    assert len(found) == 1, f"ftlib/{module}: {name} needs one 'Introduced in: notebooks/...' line"
    path = ROOT / found[0]
    assert path.is_file(), f"ftlib/{module}: {name} points to {found[0]}, which does not exist"
    assert re.search(rf"\b{re.escape(name)}\b", notebook_code(found[0])), (
        f"ftlib/{module}: {name} points to {found[0]}, whose code never uses it")
