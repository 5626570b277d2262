"""How long does each notebook take under nbval, alone on every core (as a learner runs it)?

    python benchmarks/bench_notebooks.py                   # every notebook, once each
    python benchmarks/bench_notebooks.py --reps 3          # median of 3 runs each
    python benchmarks/bench_notebooks.py notebooks/04_dataloaders.ipynb
    python benchmarks/bench_notebooks.py --nbclient        # execute only, no output comparison

Each notebook runs in its own `python -m pytest --nbval` process, with the
options of `make test` (current environment, the project's sanitizers); the wall
time covers the whole process: interpreter start, kernel start, every cell and
the comparison. (`make test` runs one file per core at a time, each on one thread,
so there a notebook takes longer and the whole suite less time.) `--nbclient`
executes the notebook in a fresh kernel instead, without comparing outputs (the
kernel's start is timed too).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table  # noqa: E402


def code_cells(path):
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip())


def run_nbval(path, timeout):
    """(seconds, result) of `pytest --nbval` on one notebook, in a new process."""
    cmd = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", str(REPO_ROOT / "notebooks" / "sanitize.cfg"),
           "-p", "no:cacheprovider", "-q", str(path)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timeout {timeout} s"
    seconds = time.perf_counter() - start
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    return seconds, ("ok: " if proc.returncode == 0 else "FAILED: ") + summary


def run_nbclient(path, timeout):
    """(seconds, result) of executing one notebook in a fresh kernel (no comparison)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        result = "ok: executed"
    except Exception as exc:  # a failing cell: report it, time the rest
        result = f"FAILED: {type(exc).__name__}"
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--reps", type=int, default=1, help="runs per notebook (median)")
    parser.add_argument("--nbclient", action="store_true", help="execute with nbclient, no comparison")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per notebook run")
    parser.add_argument("--list", action="store_true", help="list the notebooks and their cells, run nothing")
    args = parser.parse_args(argv)

    paths = args.notebooks or sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    runner = run_nbclient if args.nbclient else run_nbval
    how = "nbclient (execute only)" if args.nbclient else "pytest --nbval (execute + compare)"
    print(f"Notebook suite: {len(paths)} notebooks, {how}, median of {args.reps} run(s) each")
    rows = []
    for path in paths:
        row = {"notebook": Path(path).name, "cells": code_cells(path)}
        if not args.list:
            times, result = [], ""
            for _ in range(args.reps):
                seconds, result = runner(path, args.timeout)
                times.append(seconds)
            row.update(seconds=statistics.median(times), result=result)
            print(f"  {row['notebook']}: {row['seconds']:.1f} s, {result}", flush=True)
        rows.append(row)
    if not args.list:
        rows.append({"notebook": "total", "cells": sum(r["cells"] for r in rows),
                     "seconds": sum(r["seconds"] for r in rows), "result": ""})
    print(format_table(rows, [("notebook", "notebook", "{}"), ("code cells", "cells", "{}"),
                              ("wall s", "seconds", "{:.1f}"), ("result", "result", "{}")]))
    return rows


if __name__ == "__main__":
    main()
