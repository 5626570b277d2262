"""Re-execute notebooks top to bottom in a fresh kernel and save their outputs.

    python scripts/run_notebooks.py                     # every notebook
    python scripts/run_notebooks.py notebooks/02_*.ipynb

Run this after changing ftlib or a notebook, then commit the notebooks: CI
re-executes them with nbval and compares the outputs. Volatile metadata (cell
timings) is not recorded, so diffs show only real changes. Cells tagged
`nbval-skip` (they need a network or a server, as CI does not have) are not run
here either: their outputs are cleared, as nbval would skip them. The kernel's
metadata is written as JupyterLab writes it, so opening a notebook does not mark
it modified.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
# What JupyterLab writes for ipykernel's kernel: kept the same, a notebook opens unmodified.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _skipped(cell):
    return cell.cell_type == "code" and "nbval-skip" in cell.metadata.get("tags", [])


def run_notebook(path, timeout=900):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    nb.cells = [cell for cell in cells if not _skipped(cell)]  # run the others, in order
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()
    for cell in cells:
        cell.metadata.pop("execution", None)
        if _skipped(cell):
            cell.outputs, cell.execution_count = [], None
    nb.cells = cells
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nbformat.write(nb, path)


def main(argv):
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        run_notebook(path)
        print(f"{path}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
