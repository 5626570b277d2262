"""ftlib.evaluation.judge: the chapter's LLM judge, against a fake Ollama on 127.0.0.1."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ftlib.data.instructions import format_input
from ftlib.plumbing.errors import ConfigError, DataError, FtlibError
from ftlib.evaluation.judge import (
    check_if_running,
    format_judge_summary,
    generate_model_scores,
    judge_prompt,
    parse_score,
    query_model,
)
from helpers import SCORED_ENTRIES as ENTRIES

class FakeOllama:
    """A real HTTP server that speaks a little of Ollama's /api/chat."""

    def __init__(self, replies, status=200):
        self.replies = list(replies)  # one reply text per request, in order
        self.status = status
        self.bodies = []              # the JSON bodies received
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append((self.path, body))
                if fake.status != 200:
                    error = json.dumps({"error": f"model \"{body['model']}\" not found, "
                                                 "try pulling it first"}).encode()
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                reply = fake.replies.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)]
                lines = [{"model": body["model"], "message": {"role": "assistant", "content": p},
                          "done": False} for p in pieces]
                lines.append({"model": body["model"], "message": {"role": "assistant",
                              "content": ""}, "done": True, "done_reason": "stop"})
                for obj in lines:  # one chunk per JSON line, as Ollama streams them
                    data = (json.dumps(obj) + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_ollama():
    servers = []

    def start(replies=(), status=200):
        servers.append(FakeOllama(replies, status))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_query_model_sends_the_chapters_request(fake_ollama):
    server = fake_ollama(["The sky is blue, mostly."])
    assert query_model("Why is the sky blue?", url=server.url) == "The sky is blue, mostly."
    path, body = server.bodies[0]
    assert path == "/api/chat"
    assert body == {"model": "llama3",
                    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                    "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}


def test_query_model_http_error_carries_ollamas_message(fake_ollama):
    server = fake_ollama(status=404)
    with pytest.raises(FtlibError, match=r'HTTP 404.*model "phi9" not found.*ollama pull phi9'):
        query_model("hi", model="phi9", url=server.url)


def test_nothing_listening_says_how_to_start_ollama():
    url = f"http://127.0.0.1:{_free_port()}/api/chat"
    assert check_if_running(url) is False
    with pytest.raises(FtlibError) as info:
        query_model("hi", url=url)
    message = str(info.value)
    assert "ollama serve" in message and "ollama pull llama3" in message and url in message


def test_check_if_running(fake_ollama):
    server = fake_ollama()
    assert check_if_running(server.url) is True
    with pytest.raises(ConfigError, match="process name"):
        check_if_running("ollama")  # the book's argument; we check a URL instead


def test_judge_prompt_is_the_chapters():
    entry = {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}
    assert judge_prompt(entry, "Lyon.") == (
        f"Given the input `{format_input(entry)}` and correct output `Paris.`, "
        "score the model response `Lyon.` on a scale from 0 to 100, where 100 is the "
        "best score. Respond with the integer number only."
    )


def test_parse_score():
    assert [parse_score(s) for s in ["85", " 90\n", "0", "100"]] == [85, 90, 0, 100]
    assert [parse_score(s) for s in ["101", "-5", "8_5", "85.5", "Score: 85", ""]] == [None] * 6


def test_generate_model_scores_counts_invalid_replies(fake_ollama):
    server = fake_ollama(["85", " 90\n", "I would give it 70", "101"])
    entries = [{**ENTRIES[0], "model_response": f"answer {i}"} for i in range(4)]
    scores, invalid = generate_model_scores(entries, url=server.url, progress=False)
    assert scores == [85, 90]
    assert invalid == [(2, "I would give it 70"), (3, "101")]
    assert [body["messages"][0]["content"] for _, body in server.bodies] == [
        judge_prompt(e, e["model_response"]) for e in entries]
    assert format_judge_summary(scores, invalid).splitlines() == [
        "Number of scores: 2 of 4",
        "Average score: 87.50",
        "Replies that were not a score: 2",
        "  entry 2: 'I would give it 70'",
        "  entry 3: '101'",
    ]


def test_generate_model_scores_checks_entries_before_asking():
    with pytest.raises(DataError, match=r"entry 1 has no field 'model_response'"):
        # Nothing listens at this URL: the entry check must come before any request.
        generate_model_scores([ENTRIES[0], {"output": "x"}],
                              url=f"http://127.0.0.1:{_free_port()}/api/chat", progress=False)


def test_format_judge_summary_without_scores():
    text = format_judge_summary([], [(0, "x" * 100)], total=1)
    assert text.splitlines()[:3] == ["Number of scores: 0 of 1",
                                     "Average score: n/a (no valid scores)",
                                     "Replies that were not a score: 1"]
    assert text.splitlines()[3] == f"  entry 0: '{'x' * 57}...'"
