"""Every committed notebook was run top to bottom in a fresh kernel.

nbval compares outputs cell by cell; this checks they came from one clean run:
execution counts 1..N in order, no error outputs, no volatile cell timings, and
every skip marker carries a reason in the cell's first line, and only outputs
of training are compared within a band.
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


# Every nbval tag (a cell not run, or not compared) needs its reason in the cell's first
# line. Outputs of training are compared like the rest (tests/nbcompare.py: numbers within
# one unit of their last printed digit); a cell may widen that to a score band
# (`compare-within-band`) only after the notebook's first training call.
TRAINING_CALLS = ("finetune(", "train_model(", "train_model_simple(", "train_dpo(")


def _says_why(cell):
    first_line = "".join(cell["source"]).splitlines()[0]
    low = first_line.lower()
    return first_line.startswith("#") and ("because" in low or "reason" in low)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skipped_cells_say_why(path):
    cells = _code_cells(path)
    trains = [i for i, c in enumerate(cells) if any(call in "".join(c["source"]) for call in TRAINING_CALLS)]
    for i, cell in enumerate(cells):
        tags = cell["metadata"].get("tags", [])
        if any(t.startswith("nbval-") for t in tags):
            assert _says_why(cell), (
                f"{path.name}: cell {cell['id']} tagged {tags} must start with a comment giving the reason")
        if "compare-within-band" in tags:
            assert trains and trains[0] <= i, (
                f"{path.name}: cell {cell['id']} compares within a band but no training ran before it")
