"""ftlib.evaluate: responses, offline scores, saving, and the judge against a fake Ollama."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ftlib.data import format_input, format_response  # noqa: E402
from ftlib.errors import ConfigError, DataError, FtlibError  # noqa: E402
from ftlib.evaluate import (  # noqa: E402
    check_if_running,
    exact_match,
    extract_response,
    format_judge_summary,
    format_scores,
    generate_model_scores,
    generate_response,
    generate_responses,
    judge_prompt,
    load_model_state,
    loose_match,
    loose_normalize,
    normalize_answer,
    parse_score,
    plot_scores,
    query_model,
    rouge_l,
    save_model,
    save_responses,
    score_responses,
    sft_file_name,
    token_f1,
)
from ftlib.generate import generate, text_to_token_ids, token_ids_to_text  # noqa: E402
from ftlib.model import GPTModel  # noqa: E402
from ftlib.tokenizer import get_gpt2_tokenizer  # noqa: E402

PROMPT = format_input({"instruction": "Name the capital of France.", "input": ""})

# --- extract_response ---------------------------------------------------------------


@pytest.mark.parametrize("continuation, expected", [
    ("\n\n### Response:\nParis.", "Paris."),                       # the chapter's case
    ("\n\n### Response:\n  Paris.  \n", "Paris."),
    ("Paris.", "Paris."),                                          # no header written
    ("\n\n### Response:\nParis.\n\n### Instruction:\nName a river.", "Paris."),
    ("\n\n### Response:\nParis.\n\n### Input:\nx", "Paris."),
    ("\n\n### Response:\nParis.\n\n### Response:\nLyon.", "Paris."),  # a second answer
    ("\n\n### Response:\nParis.<|endoftext|>junk", "Paris."),
    ("\n\n### Response:\nParis.\n\nBelow is an instruction that describes a task.", "Paris."),
    ("\n\n### Response:\n", ""),
])
def test_extract_response(continuation, expected):
    assert extract_response(PROMPT + continuation, PROMPT) == expected


def test_extract_response_phi3_style():
    entry = {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}
    prompt = format_input(entry, style="phi3")
    assert extract_response(prompt + format_response(entry, style="phi3"), prompt) == "Paris."
    assert extract_response(prompt + "\n<|assistant|>:\nParis.\n<|user|>\nMore?", prompt) \
        == "Paris."


def test_extract_response_without_the_prompt_keeps_the_text():
    # Only the continuation was passed: slicing len(prompt) off would cut the answer.
    assert extract_response("### Response:\nParis.", PROMPT) == "Paris."


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


ENTRIES = [
    {"instruction": "i", "input": "", "output": "Paris", "model_response": "Paris", "task": "A"},
    {"instruction": "i", "input": "", "output": "Paris", "model_response": "paris.", "task": "A"},
    {"instruction": "i", "input": "", "output": "the cat is on the mat",
     "model_response": "the cat sat on the mat", "task": "B"},
    {"instruction": "i", "input": "", "output": "y", "model_response": "x"},  # no task
]


def test_score_responses_overall_and_per_task():
    scores = score_responses(ENTRIES)
    overall = scores["overall"]
    assert overall["n"] == 4
    assert overall["exact_match"] == pytest.approx(1 / 4)   # only the first
    assert overall["loose_match"] == pytest.approx(2 / 4)   # "paris." also matches
    assert overall["token_f1"] == pytest.approx((1 + 1 + 5 / 6 + 0) / 4)  # = 17/24
    assert overall["rouge_l"] == pytest.approx(17 / 24)
    assert list(scores["per_task"]) == ["A", "B", "unlabelled"]
    a, b, u = (scores["per_task"][k] for k in ("A", "B", "unlabelled"))
    assert a == {"n": 2, "exact_match": 0.5, "loose_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}
    assert b["n"] == 1 and b["exact_match"] == 0.0 and b["token_f1"] == pytest.approx(5 / 6)
    assert u == {"n": 1, "exact_match": 0.0, "loose_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}


def test_score_responses_names_the_bad_entry():
    with pytest.raises(DataError, match=r"entry 1 has no field 'model_response'"):
        score_responses([ENTRIES[0], {"output": "x"}])
    with pytest.raises(DataError, match=r"entry 0, field 'model_response'"):
        score_responses([{"output": "x", "model_response": None}])
    with pytest.raises(DataError, match="empty"):
        score_responses([])


def test_format_scores_table():
    lines = format_scores(score_responses(ENTRIES)).splitlines()
    assert lines[0].split() == ["task", "n", "exact", "loose", "token", "F1", "ROUGE-L"]
    assert lines[1].split() == ["all", "4", "25.0%", "50.0%", "70.8%", "70.8%"]  # 17/24
    assert lines[2].split() == ["A", "2", "50.0%", "100.0%", "100.0%", "100.0%"]
    assert [line.split()[0] for line in lines] == ["task", "all", "A", "B", "unlabelled"]
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_plot_scores_before_after(tmp_path):
    after = score_responses(ENTRIES)
    before = score_responses([{**e, "model_response": "nothing"} for e in ENTRIES])
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


# --- saving -------------------------------------------------------------------------


def test_save_responses_writes_the_books_json(tmp_path):
    path = tmp_path / "responses.json"
    entries = [{"instruction": "Übersetze", "output": "café", "model_response": "café"}]
    save_responses(entries, path)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == entries
    assert '    "output": "café"' in text  # indent 4, non-ASCII kept readable


def test_save_responses_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "responses.json"
    save_responses(ENTRIES, path)
    old = path.read_bytes()

    with pytest.raises(DataError, match=r"entry 1, field 'model_response' holds a Tensor"):
        save_responses([ENTRIES[0], {**ENTRIES[1], "model_response": torch.tensor(1)}], path)
    assert path.read_bytes() == old

    # A write that dies half-way (disk full): the old file stays, no temp file is left.
    def half_write(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="No space"):
        save_responses([{"output": "new", "model_response": "new"}], path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["responses.json"]


TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 32, "n_layers": 2,
        "n_heads": 2, "drop_rate": 0.0, "qkv_bias": False}


def _tiny_model(seed=123, cfg=TINY):
    torch.manual_seed(seed)
    return GPTModel(cfg)


def test_save_and_load_model_round_trip(tmp_path):
    path = tmp_path / "models" / sft_file_name("gpt2-medium (355M)")
    assert path.name == "gpt2-medium355M-sft.pth"
    saved = _tiny_model(seed=1)
    save_model(saved, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left

    loaded = load_model_state(_tiny_model(seed=2), path)
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    with pytest.raises(ConfigError, match="do not fit this model"):
        load_model_state(_tiny_model(cfg={**TINY, "emb_dim": 64}), path)
    with pytest.raises(FtlibError, match="not found"):
        load_model_state(_tiny_model(), tmp_path / "missing.pth")


# --- generating responses -----------------------------------------------------------

# Prompts of equal token length (one word differs), so batch_size > 1 batches them.
GEN_ENTRIES = [
    {"instruction": f"Name a {word}.", "input": "", "output": "x", "task": "t"}
    for word in ["colour", "fruit", "river", "planet", "city"]
] + [{"instruction": "Rewrite the sentence in passive voice.", "input": "The cat ate it.",
      "output": "It was eaten by the cat."}]


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one CPU thread: the tiny model's ops are too small to gain from more, and
    on a busy 2-core machine two threads made these tests 20x slower (waiting threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _chapter_loop(model, entries, tokenizer, max_new_tokens, eos_id):
    """The chapter's one-by-one loop, written out: the reference for generate_responses."""
    out = []
    for entry in entries:
        input_text = format_input(entry)
        ids = generate(model, text_to_token_ids(input_text, tokenizer), max_new_tokens,
                       context_size=TINY["context_length"], eos_id=eos_id)
        out.append(extract_response(token_ids_to_text(ids, tokenizer), input_text))
    return out


def test_generate_responses_tiny_model(tokenizer):
    model = _tiny_model()
    model.train()  # generate_responses must switch to eval and back
    originals = [dict(e) for e in GEN_ENTRIES]
    first = generate_responses(model, GEN_ENTRIES, tokenizer, "cpu", max_new_tokens=8,
                               progress=False)
    assert model.training
    assert GEN_ENTRIES == originals  # copies: the inputs are unchanged
    assert all(isinstance(e["model_response"], str) for e in first)
    assert [{k: v for k, v in e.items() if k != "model_response"} for e in first] == originals

    second = generate_responses(model, GEN_ENTRIES, tokenizer, "cpu", max_new_tokens=8,
                                progress=False)
    assert first == second  # greedy: deterministic
    model.eval()
    assert [e["model_response"] for e in first] == _chapter_loop(
        model, GEN_ENTRIES, tokenizer, 8, eos_id=50256)
    assert generate_response(model, GEN_ENTRIES[0], tokenizer, "cpu", max_new_tokens=8) \
        == first[0]["model_response"]


def test_batched_generation_equals_one_by_one(tokenizer):
    model = _tiny_model().eval()
    lengths = [text_to_token_ids(format_input(e), tokenizer).shape[1] for e in GEN_ENTRIES]
    assert len(set(lengths[:5])) == 1 and lengths[5] != lengths[0]  # a real batch of 5 + 1

    # Pick as end token one that the first prompt produces as its 3rd new token, so
    # that row stops early while (some) others run on: the batch must cut each row
    # at its own end token.
    ids = generate(model, text_to_token_ids(format_input(GEN_ENTRIES[0]), tokenizer), 3,
                   context_size=TINY["context_length"])
    eos_id = ids[0, -1].item()

    # Prompts of 28 (and 43) tokens + 105 new ones pass the 128-position window, where
    # generate drops the cache and slides: batching must agree there too.
    kwargs = dict(max_new_tokens=105, progress=False, eos_id=eos_id)
    batched = generate_responses(model, GEN_ENTRIES, tokenizer, "cpu", batch_size=4, **kwargs)
    single = generate_responses(model, GEN_ENTRIES, tokenizer, "cpu", batch_size=1, **kwargs)
    expected = _chapter_loop(model, GEN_ENTRIES, tokenizer, 105, eos_id)
    assert [e["model_response"] for e in batched] == [e["model_response"] for e in single] \
        == expected
    assert len({len(r) for r in expected}) > 1  # rows really ended at different points


def test_generate_responses_rejects_bad_arguments(tokenizer):
    with pytest.raises(ConfigError, match="batch_size"):
        generate_responses(_tiny_model(), GEN_ENTRIES[:1], tokenizer, "cpu", batch_size=0)
    with pytest.raises(DataError, match="entry 1 has no field 'instruction'"):
        generate_responses(_tiny_model(), [GEN_ENTRIES[0], {"input": ""}], tokenizer, "cpu")


# --- the LLM judge against a fake Ollama on 127.0.0.1 -------------------------------


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
