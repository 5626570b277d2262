"""Evaluation: the model's responses, offline scores, the chapter's LLM judge.

The names the notebooks use, from the modules of this folder (ftlib's own code
imports each from its module).
"""

from ftlib.evaluation.responses import extract_response, generate_responses  # noqa: F401
from ftlib.evaluation.scores import (contains_answer, exact_match, format_scores, loose_match,
                                     loose_normalize, normalize_answer, plot_scores, rouge_l,
                                     score_responses, token_f1)  # noqa: F401
from ftlib.evaluation.judge import (check_if_running, format_judge_summary,
                                    generate_model_scores, judge_prompt, parse_score)  # noqa: F401
