"""Notebook 09's figure: a preference pair and what the DPO loss pushes."""

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from ftlib.classroom.figures import draw_dpo_pair  # noqa: E402


def test_draw_dpo_pair_shows_the_pair_and_the_pushes():
    fig = draw_dpo_pair("What is the capital of Vietnam?", "Hanoi is the answer.", "Hanoi")
    assert isinstance(fig, Figure)
    text = "\n".join(t.get_text() for t in fig.axes[0].texts)
    assert "'Hanoi is the answer.'" in text and "'Hanoi'" in text and "Vietnam" in text
    assert "pushed up" in text and "pushed down" in text and "margin" in text
