"""Notebook 01's figure: the prompt's parts, drawn from a real entry."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from ftlib.classroom.figures import draw_prompt_parts  # noqa: E402

WITH_INPUT = {"instruction": "Which word comes first in this list?", "input": "water, money, table",
              "output": "water"}


def _texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_an_entry_with_an_input_has_three_blocks_with_its_text():
    fig = draw_prompt_parts(WITH_INPUT)
    blocks = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    texts = _texts(fig)
    assert len(fig.axes) == 1 and len(blocks) == 3
    assert {"instruction", "input", "response"} <= set(texts)
    assert any(WITH_INPUT["instruction"] in t for t in texts)
    assert "### Input:\nwater, money, table" in texts
    assert "### Response:\nwater" in texts
    assert any("learn to write" in t for t in texts)
    plt.close(fig)


def test_an_entry_without_an_input_has_no_input_block():
    fig = draw_prompt_parts({**WITH_INPUT, "input": ""})
    blocks = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(blocks) == 2 and "input" not in _texts(fig)
    plt.close(fig)
