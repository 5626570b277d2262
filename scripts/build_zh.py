"""Build the Chinese edition, notebooks/zh/, from the English notebooks and one
translation file per notebook (notebooks/zh/translations/NAME.md).

A translation file is a list of blocks, one per markdown cell of the English notebook:

    <!-- cell 3f2a9c1e en 5d41402a -->
    中文的文字……

`cell` is the cell's id in the English notebook; `en` is the first 8 hex digits of the
sha256 of its English source when it was translated. A block whose `en` no longer
matches is stale: the English prose changed and the translation must be checked.

    python scripts/build_zh.py              # write notebooks/zh/*.ipynb (code cells copied as they are)
    python scripts/build_zh.py --check      # exit 1 if a translation is missing or stale
    python scripts/build_zh.py --skeleton   # add a block, with the English text to translate,
                                            # for every markdown cell that has none

The built notebooks keep the English notebook's code cells, with their outputs, and its
metadata; `python scripts/run_notebooks.py notebooks/zh/*.ipynb` then re-executes them.
"""

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlib.plumbing.fileio import atomic_write_text  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
ZH = NOTEBOOKS / "zh"
TRANSLATIONS = ZH / "translations"
# The lesson notebooks (the exercises and their solutions are not translated).
LESSONS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
MARKER = re.compile(r"^<!-- cell (\S+) en ([0-9a-f]{8}) -->$", re.MULTILINE)


def source_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def cell_text(cell):
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def read_translations(path):
    """{cell id: (en hash, chinese text)} of a translation file (empty if it is missing)."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    marks = list(MARKER.finditer(text))
    blocks = {}
    for mark, following in zip(marks, marks[1:] + [None]):
        end = following.start() if following else len(text)
        blocks[mark.group(1)] = (mark.group(2), text[mark.end():end].strip("\n"))
    return blocks


def _load(name):
    """(the English notebook, its translation file's path, that file's blocks)."""
    english = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    path = TRANSLATIONS / name.replace(".ipynb", ".md")
    return english, path, read_translations(path)


def problems(name):
    """Missing and stale translations of one lesson notebook, as lines."""
    english, _, blocks = _load(name)
    found = []
    for cell in english["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        block = blocks.get(cell["id"])
        if block is None or not block[1].strip() or block[1].startswith("TODO"):
            found.append(f"{name}: cell {cell['id']} has no translation")
        elif block[0] != source_hash(cell_text(cell)):
            found.append(f"{name}: cell {cell['id']} is stale (the English text changed)")
    return found


def build(name):
    """notebooks/zh/NAME: the English notebook with its markdown cells translated."""
    english, _, blocks = _load(name)
    chinese = copy.deepcopy(english)
    for cell in chinese["cells"]:
        if cell["cell_type"] == "markdown":
            text = blocks[cell["id"]][1]
            cell["source"] = text.splitlines(keepends=True)
    chinese["metadata"]["ftlib"] = {"translated_from": f"../{name}", "language": "zh-Hans"}
    atomic_write_text(ZH / name, json.dumps(chinese, indent=1, ensure_ascii=False) + "\n")


def skeleton(name):
    """Append a block with the English text for every markdown cell without a translation."""
    english, path, blocks = _load(name)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    added = 0
    for cell in english["cells"]:
        if cell["cell_type"] == "markdown" and cell["id"] not in blocks:
            text += f"<!-- cell {cell['id']} en {source_hash(cell_text(cell))} -->\nTODO\n{cell_text(cell)}\n\n"
            added += 1
    atomic_write_text(path, text)
    return added


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report missing or stale translations")
    parser.add_argument("--skeleton", action="store_true", help="add blocks to translate")
    parser.add_argument("names", nargs="*", help="lesson notebooks (default: all)")
    args = parser.parse_args(argv)
    names = args.names or LESSONS
    if args.skeleton:
        for name in names:
            print(f"{name}: {skeleton(name)} blocks added")
        return 0
    found = [line for name in names for line in problems(name)]
    if found or args.check:
        print("\n".join(found) or "every translation is present and current")
        return 1 if found else 0
    for name in names:
        build(name)
        print(f"wrote notebooks/zh/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
