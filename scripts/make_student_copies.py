"""Write the students' copies of the notebooks: outputs cleared, answers removed.

    python scripts/make_student_copies.py            # -> student/ (and student/zh/)
    python scripts/make_student_copies.py --out DIR

What a student gets: every lesson notebook (01-09, and the Chinese edition under zh/)
and exercises.ipynb, each with every output and execution count cleared (nbconvert's
ClearOutputPreprocessor) and every cell tagged "solution" or "answer" removed
(TagRemovePreprocessor). What stays with the instructor: exercise_solutions.ipynb and
answer_keys.ipynb. The copies import `ftlib` as the originals do, so hand them out
with the repository (or run them from a folder inside it).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlib.plumbing.fileio import atomic_path  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
INSTRUCTOR_ONLY = {"exercise_solutions.ipynb", "answer_keys.ipynb"}
ANSWER_TAGS = {"solution", "answer"}


def student_notebooks():
    """(source, path relative to the output folder) of every notebook a student gets."""
    found = [(p, Path(p.name)) for p in sorted(NOTEBOOKS.glob("*.ipynb")) if p.name not in INSTRUCTOR_ONLY]
    found += [(p, Path("zh") / p.name) for p in sorted((NOTEBOOKS / "zh").glob("*.ipynb"))]
    return found


def student_copy(path):
    """The notebook at `path` as a student gets it (an nbformat node)."""
    import nbformat
    from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

    nb = nbformat.read(path, as_version=4)
    resources = {}
    nb, resources = TagRemovePreprocessor(remove_cell_tags=ANSWER_TAGS, enabled=True).preprocess(nb, resources)
    nb, resources = ClearOutputPreprocessor().preprocess(nb, resources)
    nb.metadata.pop("widgets", None)  # saved widget views are outputs too
    return nb


def main(argv=None):
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "student", help="folder (default student/)")
    args = parser.parse_args(argv)
    for source, relative in student_notebooks():
        with atomic_path(args.out / relative) as tmp:
            nbformat.write(student_copy(source), tmp)
    print(f"wrote {len(student_notebooks())} notebooks to {args.out} (outputs cleared, answers removed; "
          f"not copied: {', '.join(sorted(INSTRUCTOR_ONLY))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
