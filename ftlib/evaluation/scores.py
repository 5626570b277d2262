"""Offline scores of a model's responses: exact and loose match, contains the answer,
token F1, ROUGE-L.

They need nothing but the references, overall and per task family
(`score_responses`): cheap and repeatable, but they reward copying the reference's
words. The chapter's LLM judge (ftlib/evaluation/judge.py) is closer to what a person would say.
"""

import unicodedata
from collections import Counter, defaultdict

from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.plumbing.fileio import atomic_path

METRICS = ("exact_match", "loose_match", "contains_answer", "token_f1", "rouge_l")
METRIC_LABELS = {"exact_match": "exact", "loose_match": "loose", "contains_answer": "contains",
                 "token_f1": "token F1", "rouge_l": "ROUGE-L"}
UNLABELLED = "unlabelled"


def normalize_answer(text):
    """The strict normalisation for exact match: strip, and collapse inner whitespace.

    Case and punctuation count: "Paris." and "paris" are different answers here
    (`loose_normalize` forgives both).

    >>> normalize_answer("  The  sky\\nis blue. ")
    'The sky is blue.'

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return " ".join(text.split())


def _is_punct(ch):
    return unicodedata.category(ch).startswith("P")  # Unicode punctuation: . , ! ? " ' - ( ) ...


def _strip_punct(token):
    """Remove punctuation at both ends of one word; keep the minus of "-4"."""
    start, end = 0, len(token)
    while end > start and _is_punct(token[end - 1]):
        end -= 1
    while start < end and _is_punct(token[start]):
        if token[start] == "-" and start + 1 < end and token[start + 1].isdigit():
            break  # a negative number: "-4" and "4" are different answers
        start += 1
    return token[start:end]


def loose_normalize(text):
    """The forgiving normalisation: case-folded, punctuation removed at word edges.

    Punctuation inside a word stays ("don't", "well-known", "3.14", "U.S"), so
    numbers and contractions keep their meaning; a leading minus sign stays too.
    Words that were only punctuation ("-", "...") disappear.

    >>> loose_normalize('  "The sky is BLUE." ')
    'the sky is blue'

    Introduced in: notebooks/07_evaluation.ipynb
    """
    words = (_strip_punct(word) for word in text.casefold().split())
    return " ".join(word for word in words if word)


def exact_match(pred, ref):
    """1.0 if the answers are equal after `normalize_answer` (strict), else 0.0.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return float(normalize_answer(pred) == normalize_answer(ref))


def loose_match(pred, ref):
    """1.0 if the answers are equal after `loose_normalize`, else 0.0.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return float(loose_normalize(pred) == loose_normalize(ref))


def _prf(overlap, n_pred, n_ref):
    """F1 from an overlap count; two empty answers agree perfectly (as SQuAD)."""
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def contains_answer(pred, ref):
    """1.0 if the reference's words appear in the response, in order and together,
    after `loose_normalize` ("The answer is Moscow." contains "Moscow"), else 0.0.

    What a model knows, whatever the form of its answer: the base often says the right
    thing in the wrong form; exact match counts only the form asked for.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    answer, response = loose_normalize(ref).split(), loose_normalize(pred).split()
    if not answer:
        return float(not response)
    n = len(answer)
    return float(any(response[i:i + n] == answer for i in range(len(response) - n + 1)))


def token_f1(pred, ref):
    """SQuAD-style F1 of the two answers' bags of words (after `loose_normalize`).

    Precision: shared words / words in `pred`; recall: shared words / words in
    `ref`; a word shared twice counts twice only if both have it twice. Unlike
    SQuAD, articles ("a", "the") are kept: they are words the reference asked for.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    p, r = loose_normalize(pred).split(), loose_normalize(ref).split()
    overlap = sum((Counter(p) & Counter(r)).values())
    return _prf(overlap, len(p), len(r))


def _lcs_length(a, b):
    """Length of the longest common subsequence of two word lists (one DP row at a time)."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as possible
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred, ref):
    """ROUGE-L F1: the longest common word subsequence, as precision and recall.

    Like `token_f1`, but the shared words must also come in the same order:
    "blue is sky the" against "the sky is blue" has token F1 1.0, ROUGE-L 0.25.
    Words are compared after `loose_normalize`.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    p, r = loose_normalize(pred).split(), loose_normalize(ref).split()
    return _prf(_lcs_length(p, r), len(p), len(r))


def _mean_scores(rows):
    n = len(rows)
    return {"n": n, **{m: sum(row[m] for row in rows) / n for m in METRICS}}


def score_responses(entries, json_key="model_response", ref_key="output"):
    """Offline scores of `entries[i][json_key]` against `entries[i][ref_key]`.

    Returns fractions from 0 to 1 (format them with `format_scores`):

        {"overall": {"n": 110, "exact_match": 0.12, "loose_match": 0.21,
                     "contains_answer": 0.48, "token_f1": 0.55, "rouge_l": 0.52},
         "per_task": {"antonym": {...same fields...}, ...}}

    `per_task` groups entries by their `"task"` key (sorted by name); entries
    without one are grouped as "unlabelled". A missing or non-text response or
    reference raises `DataError` naming the entry and the field.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    entries = list(entries)
    if not entries:
        raise DataError("no entries to score: the list of responses is empty")
    rows_by_task = defaultdict(list)
    rows = []
    for i, entry in enumerate(entries):
        for key in (json_key, ref_key):
            if key not in entry:
                raise DataError(f"entry {i} has no field {key!r} to score")
            if not isinstance(entry[key], str):
                raise DataError(
                    f"entry {i}, field {key!r}: expected text, got {type(entry[key]).__name__}"
                )
        pred, ref = entry[json_key], entry[ref_key]
        row = {"exact_match": exact_match(pred, ref), "loose_match": loose_match(pred, ref),
               "contains_answer": contains_answer(pred, ref), "token_f1": token_f1(pred, ref),
               "rouge_l": rouge_l(pred, ref)}
        rows.append(row)
        rows_by_task[entry.get("task") or UNLABELLED].append(row)
    return {
        "overall": _mean_scores(rows),
        "per_task": {task: _mean_scores(rows_by_task[task]) for task in sorted(rows_by_task)},
    }


def format_scores(scores):
    """A fixed-width table of `score_responses`' result, in percent.

        task               n   exact   loose contains token F1  ROUGE-L
        all              110   12.7%   20.9%    48.0%    55.3%    52.1%
        antonym           12   ...

    Introduced in: notebooks/07_evaluation.ipynb
    """
    rows = [("all", scores["overall"]), *scores["per_task"].items()]
    width = max(len("task"), *(len(name) for name, _ in rows))
    header = f"{'task':<{width}} {'n':>5}" + "".join(f" {METRIC_LABELS[m]:>8}" for m in METRICS)
    lines = [header]
    for name, s in rows:
        cells = "".join(f" {100 * s[m]:>7.1f}%" for m in METRICS)
        lines.append(f"{name:<{width}} {s['n']:>5}{cells}")
    return "\n".join(lines)


def plot_scores(scores, before=None, path=None, metric="token_f1"):
    """A horizontal bar per task family (and "all") for one metric, in percent.

    With `before` (the scores of the model before fine-tuning, say), each family
    gets two bars: before (light) and after; when `before` is 0 everywhere, the title
    says so instead of drawing empty bars. Saved as PNG when `path` is given.
    Returns the figure; end the notebook cell with `plt.show()`.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    names = ["all", *scores["per_task"]]

    def values(s):
        table = {"all": s["overall"], **s["per_task"]}
        return [100 * table[name][metric] if name in table else 0.0 for name in names]

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))  # readable on a projector
    y = list(range(len(names)))
    before_values = values(before) if before is not None else None
    if before_values is None or not any(before_values):
        ax.barh(y, values(scores), color="tab:blue")
        if before_values is not None:  # no bars to draw, so no legend entry: say it
            ax.set_title(f"before: {METRIC_LABELS[metric]} 0 % in every family", fontsize=10)
    else:
        h = 0.4
        ax.barh([v - h / 2 for v in y], before_values, height=h, color="tab:gray",
                alpha=0.6, label="before")
        ax.barh([v + h / 2 for v in y], values(scores), height=h, color="tab:blue",
                label="after")
        ax.legend(loc="lower right")
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # "all" on top
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{METRIC_LABELS[metric]} (%)")
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    return fig
