"""Small things several test modules share (plain functions; fixtures live in conftest.py)."""

import random
import socket
import threading

# What a finished run of `python -m ftlib finetune` leaves in its folder.
RUN_FILES = {"config.json", "loss-plot.png", "test-responses.json", "metrics.json", "ftlib-run.json",
             "model.pth", "checkpoint.pt", "history.jsonl"}

# Four entries with the model's responses: two of task family "A", one of "B", one
# without a task; their offline scores are worked out by hand in test_scores.py.
SCORED_ENTRIES = [
    {"instruction": "i", "input": "", "output": "Paris", "model_response": "Paris", "task": "A"},
    {"instruction": "i", "input": "", "output": "Paris", "model_response": "paris.", "task": "A"},
    {"instruction": "i", "input": "", "output": "the cat is on the mat",
     "model_response": "the cat sat on the mat", "task": "B"},
    {"instruction": "i", "input": "", "output": "y", "model_response": "x"},  # no task
]


def toy_items(n, seed=0, prompt_lengths=(4, 9), response_lengths=(2, 5)):
    """`n` synthetic (token_ids, prompt_length) items: prompts of ids 100-199 and
    responses of ids 300-399, their lengths drawn from the inclusive ranges given."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        prompt = [rng.randrange(100, 200) for _ in range(rng.randint(*prompt_lengths))]
        response = [rng.randrange(300, 400) for _ in range(rng.randint(*response_lengths))]
        items.append((prompt + response, len(prompt)))
    return items


def quick_args(data, out, *extra, max_new_tokens=3):
    """`finetune` arguments for a short run on a small data file."""
    return ["finetune", "--data", str(data), "--out", str(out), "--batch-size", "4",
            "--max-new-tokens", str(max_new_tokens), "--no-progress", *extra]


def varied_items(n, seed=0):
    """Like `toy_items`, with lengths that vary more (prompts 3-12, responses 1-9), so
    batches and micro-batches differ in how many targets they hold."""
    return toy_items(n, seed, prompt_lengths=(3, 12), response_lengths=(1, 9))


# --- a misbehaving HTTP server on 127.0.0.1 (tests/test_faults*.py) -------------------

def read_request_head(conn):
    """Read one request's line and headers (and a Content-Length body); returns the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return head


class RawServer:
    """An HTTP server on 127.0.0.1 that answers each connection with
    `reply(conn, stop)`: whatever bytes it writes. `.heads` keeps each request's head."""

    def __init__(self, reply):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.stop, self.heads = reply, threading.Event(), []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.heads.append(read_request_head(conn))
                    self.reply(conn, self.stop)
                    conn.shutdown(socket.SHUT_WR)
                except OSError:  # the client gave up: what these servers are for
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()
