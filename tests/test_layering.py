"""The README's package map is the one map: every module is on it, and each imports
only modules below it (data flows one way, and so do imports)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def map_order():
    """Module names from the README's map, top (imports most) to bottom."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## The package"):]
    return re.findall(r"^ftlib/(\w+)\.py ", block, flags=re.MULTILINE)


def ftlib_imports(path):
    """ftlib modules imported anywhere in a file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlib."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "ftlib":
            found.update(alias.name for alias in node.names if (ROOT / "ftlib" / f"{alias.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ftlib."))
    return found


def test_every_module_is_on_the_map_once():
    order = map_order()
    modules = {p.stem for p in (ROOT / "ftlib").glob("*.py")} - {"__init__", "__main__"}
    assert sorted(order) == sorted(modules)


def test_modules_import_only_modules_below_them():
    order = map_order()
    wrong = []
    for name in order:
        for imported in ftlib_imports(ROOT / "ftlib" / f"{name}.py"):
            if order.index(imported) <= order.index(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong
