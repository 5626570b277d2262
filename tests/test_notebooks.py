"""Every committed notebook was run top to bottom in a fresh kernel.

nbval compares outputs cell by cell; this checks they came from one clean run:
execution counts 1..N in order, no error outputs, no volatile cell timings, and
every ignore/skip marker carries a reason in the notebook's text.
"""

import json
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(_DIR.glob("*.ipynb")) + sorted((_DIR / "zh").glob("*.ipynb"))  # and the Chinese edition


def _code_cells(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def _run_cells(path):
    """The code cells that were run: all but those nbval skips (CI does not run them either)."""
    return [c for c in _code_cells(path) if "nbval-skip" not in c["metadata"].get("tags", [])]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_was_run_top_to_bottom(path):
    cells = _run_cells(path)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: re-run it with scripts/run_notebooks.py"
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{path.name} has error outputs"
    assert not any("execution" in c["metadata"] for c in cells), "volatile timings were saved"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skipped_cells_say_why(path):
    for cell in _code_cells(path):
        tags = cell["metadata"].get("tags", [])
        if any(t.startswith("nbval-") for t in tags):
            first_line = "".join(cell["source"]).splitlines()[0]
            low = first_line.lower()
            assert first_line.startswith("#") and ("because" in low or "reason" in low), (
                f"{path.name}: a cell tagged {tags} must start with a comment giving the reason"
            )
