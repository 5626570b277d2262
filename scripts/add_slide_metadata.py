"""Give every cell of the lesson notebooks (and the exercises) its slideshow metadata.

One slide per section, the section's check and output as fragments:
- a markdown cell with a section heading ("# ..." or "## ...", first or after a closing
  paragraph of the section before) opens a slide;
- other markdown (the text before a code cell) is a sub-slide below it, so long
  prose never overflows one screen;
- a code cell, with its output, is a fragment: it appears on the next click.

RISE (jupyterlab-rise) presents these live in JupyterLab; `make slides` exports them
to offline reveal.js HTML. Run after adding or splitting cells, then commit:

    python scripts/add_slide_metadata.py
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlib.plumbing.fileio import atomic_write_text  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "notebooks" / "exercises.ipynb"]


def slide_type(cell):
    """The slide type a cell gets: "slide", "subslide" or "fragment"."""
    if cell["cell_type"] == "markdown":
        lines = "".join(cell["source"]).splitlines()
        return "slide" if any(re.match(r"#{1,2} ", line) for line in lines) else "subslide"
    return "fragment"


def add_metadata(path):
    """Set the metadata in place (the file is rewritten only if something changed)."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for cell in nb["cells"]:
        cell["metadata"]["slideshow"] = {"slide_type": slide_type(cell)}
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        atomic_write_text(path, new)
        return True
    return False


def main(argv):
    paths = [Path(p) for p in argv] or NOTEBOOKS
    for path in paths:
        print(f"{path.name}: {'updated' if add_metadata(path) else 'unchanged'}")


if __name__ == "__main__":
    main(sys.argv[1:])
