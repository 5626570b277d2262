"""Notebook 07's figure: `plot_scores`, the `contains` score per task family, before
and after fine-tuning."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ftlib.evaluation import contains_answer, plot_scores, score_responses  # noqa: E402

ENTRIES = [
    {"task": "capital", "output": "Oslo", "model_response_before": "The answer is Oslo.",
     "model_response": "Oslo"},
    {"task": "capital", "output": "Paris", "model_response_before": "Rome",
     "model_response": "Paris"},
    {"task": "antonym", "output": "short", "model_response_before": "tall",
     "model_response": "short"},
]


def test_the_base_is_right_in_content_wrong_in_form():
    assert contains_answer("The answer is Oslo.", "Oslo") == 1.0
    assert contains_answer("Rome", "Paris") == 0.0


def test_plot_scores_draws_contains_before_and_after_per_family():
    before = score_responses(ENTRIES, json_key="model_response_before")
    after = score_responses(ENTRIES)
    fig = plot_scores(after, before=before, metric="contains_answer")
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["all", "antonym", "capital"]
        widths = [round(bar.get_width(), 1) for bar in ax.patches]
        assert widths == [33.3, 0.0, 50.0, 100.0, 100.0, 100.0]  # before bars, then after bars
        assert ax.get_xlabel() == "contains (%)"
    finally:
        plt.close(fig)
