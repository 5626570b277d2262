"""The chapter's LLM judge: a larger model, served by Ollama, scores each response 0-100.

`generate_model_scores` asks the judge (Llama 3 by default) about every entry with
the chapter's prompt (`judge_prompt`) and keeps the replies that are a score. It
needs Ollama running (`ollama serve`) with the judge model pulled; the requests go
to Ollama's HTTP API with the standard library alone.
"""

import http.client
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

from tqdm.auto import tqdm

from ftlib.data.instructions import format_input
from ftlib.plumbing.download import Deadline
from ftlib.plumbing.errors import ConfigError, DataError, FtlibError

OLLAMA_URL = "http://localhost:11434/api/chat"
JUDGE_MODEL = "llama3"  # the chapter's judge: Llama 3 8B Instruct, via Ollama
# The chapter's options: a fixed seed and temperature 0 make the judge repeatable;
# 2048 tokens of context hold the prompt, the reference and the response.
JUDGE_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
# A whole reply is a few tokens; 10 minutes leaves room for loading the model first,
# and stops a server that trickles a line (or a header) now and then from holding the
# loop forever: it bounds the whole exchange, connecting, headers and body.
QUERY_DEADLINE_S = 600


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


def query_model(prompt, model=JUDGE_MODEL, url=OLLAMA_URL, timeout=300, deadline=QUERY_DEADLINE_S):
    """Send `prompt` to a model served by Ollama's chat API and return its reply text.

    The request is the chapter's: one user message, with options seed 123,
    temperature 0 and num_ctx 2048. Ollama streams its answer as JSON lines, each
    with a piece of `message.content`, the last with `"done": true`; the pieces
    are joined (`read_ollama_stream`: a stream cut before the last line is an error).
    `timeout` is in seconds per network read (the first reply can take a while, as
    Ollama loads the model); `deadline` bounds the whole exchange: connecting, the
    status line and headers, and the streamed reply (None: no limit).

    Raises `FtlibError` if nothing listens at `url` (the message says how to start
    Ollama) and, for an HTTP error such as an unknown model, with Ollama's message.

    Not in a notebook: the request under `generate_model_scores`, which notebook 07 calls.
    """
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "options": dict(JUDGE_OPTIONS)}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    clock = Deadline(deadline, per_read=timeout)
    try:
        with clock.open(request) as response:
            return read_ollama_stream(_lines(response), url)
    except urllib.error.HTTPError as exc:
        error = _ollama_error_text(_error_body(exc))
        hint = f" (download it with `ollama pull {model}`)" if exc.code == 404 else ""
        raise FtlibError(
            f"Ollama at {url} answered HTTP {exc.code} for model {model!r}: {error}{hint}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        if clock.spent():
            raise FtlibError(
                f"Ollama at {url} did not finish its reply within {deadline:g} s") from exc
        raise _connection_error(exc, url, model, timeout) from exc


def _error_body(exc):
    """The body of an HTTP error reply, or b"" if it cannot be read (cut, or no time left)."""
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _connection_error(exc, url, model, timeout):
    """The FtlibError for a request to Ollama that failed before its reply was whole."""
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, (ConnectionRefusedError, socket.gaierror)):
            return FtlibError(_start_ollama_hint(url, model))
        return FtlibError(f"cannot reach Ollama at {url}: {exc.reason}. "
                          + _start_ollama_hint(url, model))
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return FtlibError(
            f"Ollama at {url} did not answer within {timeout} s; a first request loads "
            "the model and can be slow: try again, or pass a larger timeout")
    return FtlibError(f"the connection to Ollama at {url} broke: {exc!r}")  # reset, a cut chunk


def _ollama_line(line, url):
    """One line of Ollama's stream as a dict; FtlibError if it is not such a message."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict):
        raise FtlibError(f"the reply from {url} is not Ollama's JSON lines: {line[:200]!r}")
    if "error" in message:
        raise FtlibError(f"Ollama at {url} reported an error: {message['error']}")
    body = message.get("message", {})
    text = body.get("content", "") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise FtlibError(f"the reply from {url} has no text in message.content: {line[:200]!r}")
    return message, text


def read_ollama_stream(lines, url=OLLAMA_URL):
    """The reply text of Ollama's streamed answer: the `message.content` pieces of its
    JSON lines, joined. The stream must end with a line that has `"done": true`;
    one that closes before it (a cut connection, a crashed server) raises FtlibError,
    so a cut reply ("8" of "85") is never taken for the whole one.

    Not in a notebook: the wire format under `query_model`.
    """
    pieces = []
    for raw in lines:  # one JSON object per line
        line = raw.strip()
        if not line:
            continue
        message, text = _ollama_line(line, url)
        pieces.append(text)
        if message.get("done") is True:
            return "".join(pieces)
    raise FtlibError(f"the reply from {url} ended before Ollama's final message "
                     f"(\"done\": true); the partial reply {''.join(pieces)[:60]!r} is not used")


def _lines(response):
    """The lines of `response` as they arrive (each read keeps to the query's Deadline,
    so a trickle of bytes ends in TimeoutError once the deadline is spent)."""
    buffer = b""
    while chunk := response.read1(1 << 16):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from complete
    if buffer:
        yield buffer


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
