"""Every public function and class of ftlib says which notebook introduces it, and
that notebook really uses it (d2l's "Defined in" pointer, kept true by a test).

Plumbing a learner never calls directly says so instead, with its reason: a line
"Not in a notebook: ..." in the definition's docstring, or in the module's docstring
for a whole module (the command line, process groups, downloads, file writing).
"""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"Introduced in: (notebooks/[\w.-]+\.ipynb)")
NOT_IN_A_NOTEBOOK = re.compile(r"Not in a notebook: \S")


def public_definitions():
    """(module file, name, docstring, module docstring) of every top-level public
    function and class."""
    for path in sorted((ROOT / "ftlib").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_doc = ast.get_docstring(tree) or ""
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield path.relative_to(ROOT / "ftlib").as_posix(), node.name, ast.get_docstring(node) or "", module_doc


def notebook_code(relative):
    cells = json.loads((ROOT / relative).read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


DEFINITIONS = list(public_definitions())


def test_there_are_public_definitions():
    assert len(DEFINITIONS) > 50


@pytest.mark.parametrize("module,name,doc,module_doc", DEFINITIONS,
                         ids=[f"{m}:{n}" for m, n, _, _ in DEFINITIONS])
def test_pointer_names_a_notebook_that_uses_the_name(module, name, doc, module_doc):
    found = POINTER.findall(doc)
    if not found and (NOT_IN_A_NOTEBOOK.search(doc) or NOT_IN_A_NOTEBOOK.search(module_doc)):
        return  # plumbing, with its reason
    assert len(found) == 1, (f"ftlib/{module}: {name} needs one 'Introduced in: notebooks/...' "
                             "line (or 'Not in a notebook: <why>')")
    path = ROOT / found[0]
    assert path.is_file(), f"ftlib/{module}: {name} points to {found[0]}, which does not exist"
    assert re.search(rf"\b{re.escape(name)}\b", notebook_code(found[0])), (
        f"ftlib/{module}: {name} points to {found[0]}, whose code never uses it")
