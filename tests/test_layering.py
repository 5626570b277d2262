"""The README's package map is the one map: every module is on it, and each imports
only modules below it (data flows one way, and so do imports). Inside ftlib a module
imports other modules by their full name (`ftlib.data.collate`), never a folder's
re-exports (`ftlib.data`), which are for the notebooks."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p.parent.name for p in (ROOT / "ftlib").glob("*/__init__.py"))


def map_order():
    """Module names from the README's map ("data.collate", "pipeline"), top (imports
    most) to bottom."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## The package"):]
    return [name.replace("/", ".") for name in
            re.findall(r"^ftlib/((?:\w+/)?\w+)\.py ", block, flags=re.MULTILINE)]


def modules():
    """Every module of the package, as map names."""
    found = set()
    for path in (ROOT / "ftlib").rglob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            found.add(".".join(path.relative_to(ROOT / "ftlib").with_suffix("").parts))
    return found


def ftlib_imports(path):
    """ftlib modules imported anywhere in a file (top level or inside functions), as map names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlib."):
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "ftlib":
            names += [f"ftlib.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("ftlib.")]
        found.update(name[len("ftlib."):] for name in names if name[len("ftlib."):] in modules()
                     or name[len("ftlib."):] in FOLDERS)
    return found


def test_every_module_is_on_the_map_once():
    order = map_order()
    assert len(order) == len(set(order))
    assert sorted(order) == sorted(modules())


def test_no_folder_is_deeper_than_one_level():
    assert all(len(name.split(".")) <= 2 for name in modules())


def test_modules_import_only_modules_below_them():
    order = map_order()
    wrong = []
    for name in order:
        for imported in ftlib_imports(ROOT / "ftlib" / (name.replace(".", "/") + ".py")):
            if imported in FOLDERS:
                wrong.append(f"{name} imports the folder {imported} (import its module)")
            elif order.index(imported) <= order.index(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_a_folder_re_exports_only_its_own_modules():
    for folder in FOLDERS:
        imported = ftlib_imports(ROOT / "ftlib" / folder / "__init__.py")
        assert all(name.startswith(folder + ".") for name in imported), (folder, imported)
