"""Evaluate a fine-tuned model: its responses, offline scores, and the chapter's LLM judge.

Three steps, as in the chapter's last section:

1. `generate_responses` asks the model for a response to every test entry (greedy,
   with the KV cache, stopping at `<|endoftext|>`) and keeps it under
   `"model_response"`; `save_responses` writes them as JSON.
2. Offline scores that need nothing but the references: exact match, a looser
   match, token F1 and ROUGE-L, overall and per task family (`score_responses`).
   They are cheap and repeatable, but they reward copying the reference's words.
3. The chapter's judge: a larger model served by Ollama scores each response from
   0 to 100 (`generate_model_scores`). It is closer to what a person would say,
   and it needs Ollama running (`ollama serve`) with the judge model pulled.
"""

import json
import re
import socket
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict

import torch
from tqdm.auto import tqdm

from ftlib.data import ALPACA_PREAMBLE, format_input
from ftlib.errors import ConfigError, DataError, FtlibError
from ftlib.fileio import atomic_path, atomic_write_json
from ftlib.generate import generate, text_to_token_ids, token_ids_to_text
from ftlib.tokenizer import END_OF_TEXT, END_OF_TEXT_ID

# ----------------------------------------------------------------------------------
# 1. Responses
# ----------------------------------------------------------------------------------

# Headers the model writes before its answer (`format_response` of the chapter's
# Alpaca style, and of the Phi-3 style of exercise 7.1).
RESPONSE_HEADERS = ("### Response:", "<|assistant|>:", "<|assistant|>")

# Where a model's answer has ended even if it did not write <|endoftext|>: it began
# a new prompt or a new section of one. Our answers are one paragraph, so text after
# these markers is never part of the answer.
STOP_MARKERS = (
    "### Instruction:",
    "### Input:",
    "### Response:",
    "<|user|>",
    "<|assistant|>",
    END_OF_TEXT,
    ALPACA_PREAMBLE[:45],  # "Below is an instruction that describes a task"
)

DEFAULT_MAX_NEW_TOKENS = 64  # the chapter uses 256; the bundled answers are short


def extract_response(generated_text, input_text):
    """The model's answer inside `generated_text` (the prompt plus what the model wrote).

    The chapter's way, made robust:
    - remove the prompt: `generated_text[len(input_text):]` (only if `generated_text`
      starts with `input_text`; otherwise the whole text is taken as the continuation);
    - remove the "### Response:" header the model writes first (the chapter removes
      every "### Response:"; we remove the leading one, and a later one ends the answer);
    - cut at the first "### Instruction:", "### Input:", a second "### Response:",
      "<|endoftext|>" or a new "Below is an instruction ..." preamble (for the Phi-3
      style: "<|user|>", a second "<|assistant|>"): a model that keeps going after
      its answer starts a new prompt, which is not its answer;
    - strip surrounding whitespace.

    >>> extract_response("PROMPT\\n\\n### Response:\\nParis.\\n\\n### Instruction:\\n", "PROMPT")
    'Paris.'

    Introduced in: notebooks/07_evaluation.ipynb
    """
    text = generated_text
    if text.startswith(input_text):
        text = text[len(input_text):]
    text = text.lstrip()
    for header in RESPONSE_HEADERS:
        if text.startswith(header):
            text = text[len(header):]
            break
    for marker in STOP_MARKERS:
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    return text.strip()


def _context_size(model):
    return model.pos_emb.weight.shape[0]  # the number of positions the model knows


def generate_response(model, entry, tokenizer, device, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                      style="alpaca", eos_id=END_OF_TEXT_ID):
    """The model's greedy answer to one entry, as a string (the chapter's loop body).

    The prompt is `format_input(entry, style)`; the model writes the response
    header itself, as it learned to in fine-tuning. Generation stops at
    `<|endoftext|>` (id 50256) or after `max_new_tokens`. Switches the model to
    eval mode and restores its mode afterwards.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return generate_responses(model, [entry], tokenizer, device, max_new_tokens=max_new_tokens,
                              style=style, progress=False, batch_size=1,
                              eos_id=eos_id)[0]["model_response"]


def _length_groups(lengths, batch_size):
    """Indices grouped into batches of at most `batch_size` with equal prompt length.

    Equal lengths need no padding, so each row computes exactly what it would alone.
    Longest prompts first, ties in entry order: the order is fixed by the data alone.
    """
    by_length = defaultdict(list)
    for i, n in enumerate(lengths):
        by_length[n].append(i)
    groups = []
    for n in sorted(by_length, reverse=True):
        idx = by_length[n]
        groups.extend(idx[k:k + batch_size] for k in range(0, len(idx), batch_size))
    return groups


def generate_responses(model, entries, tokenizer, device, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                       style="alpaca", progress=True, batch_size=8, eos_id=END_OF_TEXT_ID):
    """Copies of `entries`, each with the model's answer under `"model_response"`.

    Greedy decoding with the KV cache, stopping at `<|endoftext|>` (id 50256), as in
    the chapter. The input entries are not changed. A tqdm bar counts entries
    (`progress=False` hides it).

    `batch_size`: entries whose prompts have the same number of tokens are generated
    together, up to this many at a time. No padding is needed, so each row computes
    what it would alone, only faster; a row that ends early is cut at its first end
    token. On the CPU the answers equal the one-by-one loop token for token (the
    tests check this); on a GPU, kernels picked per batch size may round differently,
    which can flip a rare near-tie. `batch_size=1` is the chapter's one-by-one loop.

    Switches the model to eval mode (no dropout) and restores its mode afterwards.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    input_texts = []
    for i, entry in enumerate(entries):
        try:
            input_texts.append(format_input(entry, style))
        except KeyError as exc:
            raise DataError(
                f"entry {i} has no field {exc.args[0]!r} to build a prompt from"
            ) from exc
    prompt_ids = [text_to_token_ids(text, tokenizer) for text in input_texts]  # each (1, n_i)
    responses = [None] * len(entries)
    context_size = _context_size(model)

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(entries), desc="Generating responses", disable=not progress)
    try:
        for group in _length_groups([ids.shape[1] for ids in prompt_ids], batch_size):
            batch = torch.cat([prompt_ids[i] for i in group]).to(device)  # (b, n)
            n = batch.shape[1]
            out = generate(model, batch, max_new_tokens=max_new_tokens,
                           context_size=context_size, temperature=0.0, eos_id=eos_id)
            for row, i in zip(out.tolist(), group):
                new = row[n:]
                if eos_id is not None and eos_id in new:
                    # In a batch, a row that ended is padded with eos_id until all end.
                    new = new[:new.index(eos_id)]
                generated_text = token_ids_to_text(torch.tensor(row[:n] + new), tokenizer)
                responses[i] = extract_response(generated_text, input_texts[i])
            bar.update(len(group))
    finally:
        bar.close()
        model.train(was_training)
    return [{**entry, "model_response": response} for entry, response in zip(entries, responses)]


# ----------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------


def _find_unserialisable(entries):
    """(index, field, value) of the first value json cannot write, or None."""
    for i, entry in enumerate(entries):
        items = entry.items() if isinstance(entry, dict) else [(None, entry)]
        for key, value in items:
            try:
                json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError):
                return i, key, value
    return None


def save_responses(entries, path):
    """Write `entries` (with their responses) to `path` as JSON, atomically.

    Indented by 4 like the book's `instruction-data-with-response.json`, non-ASCII
    kept readable. The file is written to a temporary name and renamed, so a failure
    leaves the previous file as it was. A value JSON cannot hold raises `DataError`
    naming the entry and the field.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    entries = list(entries)
    bad = _find_unserialisable(entries)
    if bad is not None:
        i, key, value = bad
        where = f"entry {i}" + (f", field {key!r}" if key is not None else "")
        raise DataError(
            f"cannot save responses to {path}: {where} holds a {type(value).__name__}, "
            "which JSON cannot store (convert it to str, int, float, list or dict)"
        )
    atomic_write_json(path, entries, indent=4)


def sft_file_name(model_name):
    """The book's file name for a fine-tuned model.

    >>> sft_file_name("gpt2-medium (355M)")
    'gpt2-medium355M-sft.pth'

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return re.sub(r"[ ()]", "", model_name) + "-sft.pth"


def save_model(model, path):
    """Save `model.state_dict()` to `path` with `torch.save`, atomically.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load_model_state(model, path, map_location=None):
    """Load a state dict saved by `save_model` into `model`; return `model`.

    `torch.load(..., weights_only=True)`: only tensors are read, never code.
    `map_location` defaults to the device of the model's parameters. A missing file,
    or a state dict of another model size, raises an `FtlibError` naming the file.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    if map_location is None:
        first = next(model.parameters(), None)
        map_location = first.device if first is not None else "cpu"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise FtlibError(f"model file not found: {path}") from exc
    except Exception as exc:  # a truncated or foreign file: pickle and zip errors vary
        raise FtlibError(f"cannot read model file {path}: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"the weights in {path} do not fit this model (was it saved from another "
            f"model size or config?): {first_line}"
        ) from exc
    return model


# ----------------------------------------------------------------------------------
# 2. Offline scores
# ----------------------------------------------------------------------------------

METRICS = ("exact_match", "loose_match", "token_f1", "rouge_l")
METRIC_LABELS = {"exact_match": "exact", "loose_match": "loose",
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
                     "token_f1": 0.55, "rouge_l": 0.52},
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
               "token_f1": token_f1(pred, ref), "rouge_l": rouge_l(pred, ref)}
        rows.append(row)
        rows_by_task[entry.get("task") or UNLABELLED].append(row)
    return {
        "overall": _mean_scores(rows),
        "per_task": {task: _mean_scores(rows_by_task[task]) for task in sorted(rows_by_task)},
    }


def format_scores(scores):
    """A fixed-width table of `score_responses`' result, in percent.

        task               n   exact   loose  token F1  ROUGE-L
        all              110   12.7%   20.9%     55.3%    52.1%
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
    gets two bars: before (light) and after. Saved as PNG when `path` is given.
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

    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    y = list(range(len(names)))
    if before is None:
        ax.barh(y, values(scores), color="tab:blue", label="model")
    else:
        h = 0.4
        ax.barh([v - h / 2 for v in y], values(before), height=h, color="tab:gray",
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


# ----------------------------------------------------------------------------------
# 3. The LLM judge (Ollama)
# ----------------------------------------------------------------------------------

OLLAMA_URL = "http://localhost:11434/api/chat"
JUDGE_MODEL = "llama3"  # the chapter's judge: Llama 3 8B Instruct, via Ollama
# The chapter's options: a fixed seed and temperature 0 make the judge repeatable;
# 2048 tokens of context hold the prompt, the reference and the response.
JUDGE_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}


def _start_ollama_hint(url, model):
    return (
        f"Nothing answers at {url}. The LLM judge needs Ollama (https://ollama.com): "
        f"start it in a terminal with `ollama serve`, download the judge model once with "
        f"`ollama pull {model}`, then run this again."
    )


def _ollama_error_text(body):
    """Ollama's own error message from an error reply's body, else the body itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text or "(no message)"


def query_model(prompt, model=JUDGE_MODEL, url=OLLAMA_URL, timeout=300):
    """Send `prompt` to a model served by Ollama's chat API and return its reply text.

    The request is the chapter's: one user message, with options seed 123,
    temperature 0 and num_ctx 2048. Ollama streams its answer as JSON lines, each
    with a piece of `message.content`, the last with `"done": true`; the pieces
    are joined. `timeout` is in seconds per network read (the first reply can take
    a while, as Ollama loads the model).

    Raises `FtlibError` if nothing listens at `url` (the message says how to start
    Ollama) and, for an HTTP error such as an unknown model, with Ollama's message.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "options": dict(JUDGE_OPTIONS)}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    pieces = []
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for line in response:  # one JSON object per line
                line = line.strip()
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise FtlibError(
                        f"the reply from {url} is not Ollama's JSON lines: {line[:200]!r}"
                    ) from exc
                if "error" in message:
                    raise FtlibError(f"Ollama at {url} reported an error: {message['error']}")
                pieces.append((message.get("message") or {}).get("content", ""))
                if message.get("done"):
                    break
    except urllib.error.HTTPError as exc:
        error = _ollama_error_text(exc.read())
        hint = f" (download it with `ollama pull {model}`)" if exc.code == 404 else ""
        raise FtlibError(
            f"Ollama at {url} answered HTTP {exc.code} for model {model!r}: {error}{hint}"
        ) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionRefusedError, socket.gaierror)):
            raise FtlibError(_start_ollama_hint(url, model)) from exc
        raise FtlibError(f"cannot reach Ollama at {url}: {exc.reason}. "
                         + _start_ollama_hint(url, model)) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise FtlibError(
            f"Ollama at {url} did not answer within {timeout} s; a first request loads "
            "the model and can be slow: try again, or pass a larger timeout"
        ) from exc
    except ConnectionError as exc:
        raise FtlibError(f"the connection to Ollama at {url} broke: {exc}") from exc
    return "".join(pieces)


def _host_port(url):
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ConfigError(
            f"expected Ollama's URL, like {OLLAMA_URL!r}, got {url!r} (the book passes the "
            "process name 'ollama'; ftlib checks the server's port instead)"
        )
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def check_if_running(url=OLLAMA_URL, timeout=1.0):
    """True if a server accepts connections at `url`'s host and port (Ollama's, by default).

    The book looks for an "ollama" process with psutil; checking the port needs no
    extra package and also works when Ollama runs on another machine or in a container.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    host, port = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def judge_prompt(entry, response):
    """The chapter's prompt asking the judge to score `response` for `entry` from 0 to 100.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{response}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def parse_score(reply):
    """The judge's score as an int if `reply` is an integer from 0 to 100 (after strip), else None.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    text = reply.strip()
    if re.fullmatch(r"\d{1,3}", text) and int(text) <= 100:
        return int(text)
    return None


def generate_model_scores(entries, json_key="model_response", model=JUDGE_MODEL, url=OLLAMA_URL,
                          progress=True, timeout=300):
    """Ask the judge to score every entry's `json_key` response; the chapter's loop.

    Returns `(scores, invalid)`: `scores` is a list of ints from 0 to 100, one per
    entry whose reply was such a number; `invalid` lists `(index, reply)` for the
    others (the judge wrote words, or a number out of range). Nothing is dropped
    silently: `format_judge_summary` reports both.

    Every entry is checked for `json_key` and "output" before the first request.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    entries = list(entries)
    for i, entry in enumerate(entries):
        for key in (json_key, "output"):
            if key not in entry:
                raise DataError(f"entry {i} has no field {key!r} for the judge to score")
    scores, invalid = [], []
    for i, entry in enumerate(tqdm(entries, desc="Scoring entries", disable=not progress)):
        reply = query_model(judge_prompt(entry, entry[json_key]), model=model, url=url,
                            timeout=timeout)
        score = parse_score(reply)
        if score is None:
            invalid.append((i, reply))
        else:
            scores.append(score)
    return scores, invalid


def format_judge_summary(scores, invalid, total=None, show_invalid=5):
    """The judge's results as text: counts, the average, and the replies that were not scores.

        Number of scores: 108 of 110
        Average score: 50.32
        Replies that were not a score: 2
          entry 17: 'The model response is ...'

    `total` defaults to `len(scores) + len(invalid)`; at most `show_invalid`
    invalid replies are quoted (shortened to 60 characters).

    Introduced in: notebooks/07_evaluation.ipynb
    """
    total = len(scores) + len(invalid) if total is None else total
    average = f"{sum(scores) / len(scores):.2f}" if scores else "n/a (no valid scores)"
    lines = [f"Number of scores: {len(scores)} of {total}",
             f"Average score: {average}",
             f"Replies that were not a score: {len(invalid)}"]
    for index, reply in invalid[:show_invalid]:
        short = reply if len(reply) <= 60 else reply[:57] + "..."
        lines.append(f"  entry {index}: {short!r}")
    if len(invalid) > show_invalid:
        lines.append(f"  ... and {len(invalid) - show_invalid} more")
    return "\n".join(lines)
