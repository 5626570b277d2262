"""ftlib.evaluation.scores: normalisation, the offline metrics worked out by hand, the table and the chart."""

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ftlib.plumbing.errors import ConfigError, DataError  # noqa: E402
from ftlib.evaluation.scores import (  # noqa: E402
    contains_answer,
    exact_match,
    format_scores,
    loose_match,
    loose_normalize,
    normalize_answer,
    plot_scores,
    rouge_l,
    score_responses,
    token_f1,
)
from helpers import SCORED_ENTRIES as ENTRIES  # noqa: E402

# --- normalisation and offline metrics ----------------------------------------------


def test_normalize_answer_is_strict_but_collapses_whitespace():
    assert normalize_answer("  The  sky\n is\tblue. ") == "The sky is blue."
    assert exact_match("  Paris  is\nnice ", "Paris is nice") == 1.0
    assert exact_match("paris is nice", "Paris is nice") == 0.0   # case counts
    assert exact_match("Paris is nice", "Paris is nice.") == 0.0  # punctuation counts


def test_loose_normalize_and_match():
    assert loose_normalize('  "The sky is BLUE." ') == "the sky is blue"
    assert loose_normalize("Well-known, don't -- 3.14!") == "well-known don't 3.14"
    assert loose_match("paris", "Paris.") == 1.0
    assert loose_match('"Hello," she said.', "hello she said") == 1.0
    assert loose_match("-4", "4") == 0.0          # a minus sign is not punctuation here
    assert loose_match("(-4)", "-4") == 1.0
    assert loose_match("Paris", "Lyon") == 0.0


def test_contains_answer_finds_the_answer_in_any_form():
    assert contains_answer("The answer is Moscow.", "Moscow") == 1.0
    assert contains_answer("It is New York, I think", "new york") == 1.0
    assert contains_answer("Moscovite", "Moscow") == 0.0       # whole words only
    assert contains_answer("York New", "New York") == 0.0      # in order
    assert contains_answer("", "") == 1.0 and contains_answer("x", "") == 0.0


def test_token_f1_hand_computed():
    # 6 words each; shared: the x2, cat, on, mat = 5 -> P = R = 5/6 -> F1 = 5/6
    assert token_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # pred {a,b,c}, ref {a,b,d,e}: shared 2 -> P = 2/3, R = 2/4 -> F1 = (2/3)/(7/6) = 4/7
    assert token_f1("a b c", "a b d e") == pytest.approx(4 / 7)
    # duplicates count once per match: shared min(3, 1) = 1 -> P = 1/3, R = 1/2 -> F1 = 2/5
    assert token_f1("the the the", "the cat") == pytest.approx(0.4)
    # case and edge punctuation are ignored: all 4 words shared -> 1.0
    assert token_f1("Paris is the capital", "The capital is Paris.") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("...", "") == 1.0  # both empty
    assert token_f1("", "Paris") == 0.0 and token_f1("Lyon", "Paris") == 0.0


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 words each -> 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # same words, reversed order: no two words keep their order -> LCS 1 -> P = R = 1/4
    assert rouge_l("blue is sky the", "the sky is blue") == pytest.approx(0.25)
    assert token_f1("blue is sky the", "the sky is blue") == 1.0
    # pred "c a b", ref "a b d c": LCS "a b" = 2 -> P = 2/3, R = 2/4 -> 4/7;
    # the bag of words shares all 3 -> P = 1, R = 3/4 -> F1 = 6/7
    assert rouge_l("c a b", "a b d c") == pytest.approx(4 / 7)
    assert token_f1("c a b", "a b d c") == pytest.approx(6 / 7)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_score_responses_overall_and_per_task():
    scores = score_responses(ENTRIES)
    overall = scores["overall"]
    assert overall["n"] == 4
    assert overall["exact_match"] == pytest.approx(1 / 4)   # only the first
    assert overall["loose_match"] == pytest.approx(2 / 4)   # "paris." also matches
    assert overall["contains_answer"] == pytest.approx(2 / 4)  # "sat" breaks the third
    assert overall["token_f1"] == pytest.approx((1 + 1 + 5 / 6 + 0) / 4)  # = 17/24
    assert overall["rouge_l"] == pytest.approx(17 / 24)
    assert list(scores["per_task"]) == ["A", "B", "unlabelled"]
    a, b, u = (scores["per_task"][k] for k in ("A", "B", "unlabelled"))
    assert a == {"n": 2, "exact_match": 0.5, "loose_match": 1.0, "contains_answer": 1.0,
                 "token_f1": 1.0, "rouge_l": 1.0}
    assert b["n"] == 1 and b["exact_match"] == 0.0 and b["token_f1"] == pytest.approx(5 / 6)
    assert u == {"n": 1, "exact_match": 0.0, "loose_match": 0.0, "contains_answer": 0.0,
                 "token_f1": 0.0, "rouge_l": 0.0}


def test_score_responses_names_the_bad_entry():
    with pytest.raises(DataError, match=r"entry 1 has no field 'model_response'"):
        score_responses([ENTRIES[0], {"output": "x"}])
    with pytest.raises(DataError, match=r"entry 0, field 'model_response'"):
        score_responses([{"output": "x", "model_response": None}])
    with pytest.raises(DataError, match="empty"):
        score_responses([])


def test_format_scores_table():
    lines = format_scores(score_responses(ENTRIES)).splitlines()
    assert lines[0].split() == ["task", "n", "exact", "loose", "contains", "token", "F1", "ROUGE-L"]
    assert lines[1].split() == ["all", "4", "25.0%", "50.0%", "50.0%", "70.8%", "70.8%"]  # 17/24
    assert lines[2].split() == ["A", "2", "50.0%", "100.0%", "100.0%", "100.0%", "100.0%"]
    assert [line.split()[0] for line in lines] == ["task", "all", "A", "B", "unlabelled"]
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_plot_scores_before_after(tmp_path):
    after = score_responses(ENTRIES)
    before = score_responses([{**e, "model_response": e["output"].split()[0]} for e in ENTRIES])
    fig = plot_scores(after, before=before, path=tmp_path / "scores.png")
    try:
        ax = fig.axes[0]
        assert len(ax.patches) == 2 * 4  # before and after bars for all, A, B, unlabelled
        assert [t.get_text() for t in ax.get_yticklabels()] == ["all", "A", "B", "unlabelled"]
        widths = sorted(round(p.get_width(), 3) for p in ax.patches)
        assert widths[-1] == 100.0  # family A's token F1
        assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.png"]
    finally:
        plt.close(fig)
    with pytest.raises(ConfigError, match="unknown metric"):
        plot_scores(after, metric="bleu")


def test_plot_scores_draws_no_empty_before_series():
    after = score_responses(ENTRIES)
    before = score_responses([{**e, "model_response": "zzz"} for e in ENTRIES])
    assert before["overall"]["token_f1"] == 0
    fig = plot_scores(after, before=before)
    try:
        ax = fig.axes[0]
        assert len(ax.patches) == 4 and ax.get_legend() is None  # after only, no empty legend entry
        assert "0 % in every family" in ax.get_title()
    finally:
        plt.close(fig)
