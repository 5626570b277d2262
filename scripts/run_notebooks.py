"""Re-execute notebooks top to bottom in a fresh kernel and save their outputs.

    python scripts/run_notebooks.py                     # every notebook
    python scripts/run_notebooks.py notebooks/02_*.ipynb

Run this after changing ftlib or a notebook, then commit the notebooks: CI
re-executes them with nbval and compares the outputs. Volatile metadata (cell
timings) is not recorded, so diffs show only real changes.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(path, timeout=600):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def main(argv):
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        run_notebook(path)
        print(f"{path}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
