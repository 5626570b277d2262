"""The Chinese edition (notebooks/zh/): one per lesson notebook, built by
scripts/build_zh.py from the English notebook and its translation file. The code is
the English notebook's, cell for cell; only the prose is translated, and every
translation matches the English text it was made from."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("build_zh", ROOT / "scripts" / "build_zh.py")
build_zh = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(build_zh)
LESSONS = build_zh.LESSONS
CJK = re.compile(r"[\u4e00-\u9fff]")


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    return "".join(cell["source"])


def test_every_lesson_notebook_has_a_chinese_edition():
    assert len(LESSONS) >= 9
    missing = [name for name in LESSONS if not (ROOT / "notebooks" / "zh" / name).is_file()]
    assert not missing, f"run: python scripts/build_zh.py (missing {missing})"


@pytest.mark.parametrize("name", LESSONS)
def test_code_cells_are_the_english_ones(name):
    english, chinese = _cells(ROOT / "notebooks" / name), _cells(ROOT / "notebooks" / "zh" / name)
    assert [c["cell_type"] for c in chinese] == [c["cell_type"] for c in english]
    assert [c["id"] for c in chinese] == [c["id"] for c in english]
    for en, zh in zip(english, chinese):
        if en["cell_type"] == "code":
            assert _source(zh) == _source(en), f"{name}: code cell {en['id']} differs; rebuild"
            assert zh["metadata"].get("tags") == en["metadata"].get("tags")


@pytest.mark.parametrize("name", LESSONS)
def test_prose_is_translated_and_current(name):
    assert build_zh.problems(name) == []  # no missing or stale translation
    for cell in _cells(ROOT / "notebooks" / "zh" / name):
        if cell["cell_type"] == "markdown":
            text = _source(cell)
            assert CJK.search(text), f"{name}: cell {cell['id']} has no Chinese text"
            assert not text.startswith("TODO")


@pytest.mark.parametrize("name", LESSONS)
def test_chinese_edition_was_built_from_its_translation_file(name):
    blocks = build_zh.read_translations(build_zh.TRANSLATIONS / name.replace(".ipynb", ".md"))
    for cell in _cells(ROOT / "notebooks" / "zh" / name):
        if cell["cell_type"] == "markdown":
            assert _source(cell) == blocks[cell["id"]][1], f"{name}: rebuild with scripts/build_zh.py"


def test_translation_blocks_parse_and_stale_ones_are_found(tmp_path, monkeypatch):
    english = {"cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": ["# Title\n", "Text"]},
                         {"cell_type": "code", "id": "a2", "metadata": {}, "source": ["1 + 1"],
                          "outputs": [], "execution_count": None}],
               "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "zh" / "translations").mkdir(parents=True)
    (tmp_path / "01_x.ipynb").write_text(json.dumps(english), encoding="utf-8")
    monkeypatch.setattr(build_zh, "NOTEBOOKS", tmp_path)
    monkeypatch.setattr(build_zh, "ZH", tmp_path / "zh")
    monkeypatch.setattr(build_zh, "TRANSLATIONS", tmp_path / "zh" / "translations")
    assert build_zh.problems("01_x.ipynb") == ["01_x.ipynb: cell a1 has no translation"]
    good = build_zh.source_hash("# Title\nText")
    path = tmp_path / "zh" / "translations" / "01_x.md"
    path.write_text(f"<!-- cell a1 en {good} -->\n# 标题\n文字\n", encoding="utf-8")
    assert build_zh.problems("01_x.ipynb") == []
    build_zh.build("01_x.ipynb")
    built = json.loads((tmp_path / "zh" / "01_x.ipynb").read_text(encoding="utf-8"))
    assert _source(built["cells"][0]) == "# 标题\n文字" and _source(built["cells"][1]) == "1 + 1"
    path.write_text("<!-- cell a1 en 00000000 -->\n# 标题\n", encoding="utf-8")
    assert build_zh.problems("01_x.ipynb") == ["01_x.ipynb: cell a1 is stale (the English text changed)"]
