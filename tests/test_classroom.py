"""For class: slide metadata and the offline slides export (`make slides`), and the
students' copies (`make student`)."""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", LESSONS + sorted((ROOT / "notebooks" / "zh").glob("0*.ipynb")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_lesson_notebook_has_slide_metadata(path):
    slides = _script("add_slide_metadata")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    kinds = [c["metadata"].get("slideshow", {}).get("slide_type") for c in cells]
    assert kinds == [slides.slide_type(c) for c in cells], "run scripts/add_slide_metadata.py"
    assert kinds[0] == "slide" and kinds.count("slide") >= 3  # a title and its sections


def test_slides_export_is_one_offline_page(tmp_path):
    make_slides = _script("make_slides")
    try:
        for package in make_slides.VENDOR:  # fetched once from the npm registry, then cached
            make_slides.vendor_file(package, "package.json")
    except Exception as exc:  # noqa: BLE001 - any failure to fetch: say so instead of failing
        pytest.skip(f"reveal.js/MathJax could not be fetched from the npm registry: {exc}")
    notebook = ROOT / "notebooks" / "09_preference_tuning_dpo.ipynb"  # formulas, a plot, code
    assert make_slides.main([str(notebook), "--out", str(tmp_path)]) == 0
    html = (tmp_path / "09_preference_tuning_dpo.slides.html").read_text(encoding="utf-8")
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    n_slides = sum(c["metadata"]["slideshow"]["slide_type"] == "slide" for c in cells)
    assert html.count('<section>\n<section>') + html.count("<section><section>") >= 1
    assert "Reveal.initialize" in html and "window.MathJax" in html and "data:image/png;base64" in html
    # nothing is loaded from elsewhere: no script, style sheet or image with a remote source
    assert not re.search(r'<(script|link|img)[^>]*(src|href)="(https?:)?//', html)
    assert html.count("<h1") + html.count("<h2") >= n_slides


def test_student_copies_have_no_outputs_and_no_answers(tmp_path, monkeypatch):
    students = _script("make_student_copies")
    # a notebook with an answer cell, beside the real ones
    fake = tmp_path / "notebooks"
    (fake / "zh").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 10 · A lesson\n**Exercises**\n1. What is 1 + 1?"),
        nbformat.v4.new_code_cell("print(1 + 1)", outputs=[nbformat.v4.new_output("stream", text="2\n")],
                                  execution_count=1),
        nbformat.v4.new_code_cell("# Because: the answer\nassert 1 + 1 == 2", metadata={"tags": ["solution"]}),
    ])
    nbformat.write(nb, fake / "10_lesson.ipynb")
    for path in [*LESSONS, ROOT / "notebooks" / "exercises.ipynb", ROOT / "notebooks" / "exercise_solutions.ipynb"]:
        (fake / path.name).write_bytes(path.read_bytes())
    (fake / "zh" / LESSONS[0].name).write_bytes((ROOT / "notebooks" / "zh" / LESSONS[0].name).read_bytes())
    monkeypatch.setattr(students, "NOTEBOOKS", fake)
    out = tmp_path / "student"
    assert students.main(["--out", str(out)]) == 0

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.ipynb"))
    assert written == sorted([p.name for p in LESSONS] + ["10_lesson.ipynb", "exercises.ipynb",
                                                          f"zh/{LESSONS[0].name}"])
    for path in out.rglob("*.ipynb"):
        copy = nbformat.read(path, as_version=4)
        code = [c for c in copy.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), path.name
        assert not any(set(c.metadata.get("tags", [])) & {"solution", "answer"} for c in copy.cells)
        assert "widgets" not in copy.metadata
    lesson = nbformat.read(out / "10_lesson.ipynb", as_version=4)
    assert [c.source for c in lesson.cells if c.cell_type == "code"] == ["print(1 + 1)"]
    # the code is the original's, cell for cell, so the copies run as the originals do (nbval
    # runs those); one runs here, top to bottom, in a fresh kernel
    for path in LESSONS:
        original = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert [c.source for c in nbformat.read(out / path.name, as_version=4).cells
                if c.cell_type == "code"] == original
    first = nbformat.read(out / "02_collate_drafts.ipynb", as_version=4)
    first.cells = [c for c in first.cells if "nbval-skip" not in c.metadata.get("tags", [])]
    NotebookClient(first, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert all(o.output_type != "error" for c in first.cells if c.cell_type == "code" for o in c.outputs)
