"""`python -m ftlib chat RUN`: piped questions, a terminal session (a pseudo-terminal),
--base, and the errors. One short run folder for them all."""

import io
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ftlib.classroom.chat import chat_reply, stream_answer
from ftlib.cli import main
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.model.base import load_base_model
from ftlib.model.files import load_run_model
from helpers import quick_args

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Name a color.", "What is the capital of France?"]
NEW_TOKENS = 12  # short answers: the test stays fast
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def run(small_data, tmp_path_factory):
    """A run folder fine-tuned from the committed base for a few steps."""
    out = tmp_path_factory.mktemp("chat") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(quick_args(small_data, out, "--max-steps", "8", "--lr", "3e-4")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def greedy_answers(model, style="alpaca"):
    """What chat_reply answers to QUESTIONS, greedily (its last value), one thread."""
    tokenizer, threads = get_gpt2_tokenizer(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [list(chat_reply(model, tokenizer, q, max_new_tokens=NEW_TOKENS, style=style))[-1]
                for q in QUESTIONS]
    finally:
        torch.set_num_threads(threads)


def one_line(answer):
    return answer.replace("\n", " ")  # piped, an answer is one line


@pytest.fixture(scope="module")
def run_answers(run):
    model, config = load_run_model(run)
    return greedy_answers(model, config["prompt_style"])


def test_piped_questions_get_one_greedy_answer_line_each(run, run_answers):
    result = subprocess.run([sys.executable, "-m", "ftlib", "chat", str(run),
                             "--max-new-tokens", str(NEW_TOKENS)],
                            input="\n".join(QUESTIONS) + "\n\n", capture_output=True, text=True,
                            cwd=ROOT, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(one_line(a) + "\n" for a in run_answers)
    assert result.stderr == ""


def test_answers_stream_piece_by_piece(run, run_answers):
    model, config = load_run_model(run)
    pieces = []
    answer = stream_answer(model, get_gpt2_tokenizer(), QUESTIONS[1], pieces.append,
                           max_new_tokens=NEW_TOKENS, style=config["prompt_style"])
    assert answer == run_answers[1] == "".join(pieces)
    assert len([p for p in pieces if p]) > 1  # written as the tokens arrive, not at the end


def _read_until(fd, text, seconds=60):
    """What the terminal shows until `text` appears (or the program ends)."""
    shown, deadline = b"", time.monotonic() + seconds
    while text.encode() not in shown and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the program ended: the terminal is gone
                break
            if not chunk:
                break
            shown += chunk
    return shown.decode("utf-8", "replace").replace("\r\n", "\n")


def _terminal_session(run, keys):
    """Run `chat RUN` on a pseudo-terminal, type each of `keys` at a "you> " prompt;
    returns (what the terminal showed, exit status)."""
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ftlib", "chat", str(run),
                                "--max-new-tokens", str(NEW_TOKENS)],
                               stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=ENV,
                               start_new_session=True)
    os.close(slave)
    shown = ""
    try:
        for key in keys:
            shown += _read_until(master, "you> ")
            os.write(master, key)
        shown += _read_until(master, "\0")  # to the end
        return shown, process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)


def test_a_terminal_session_shows_the_header_the_prompt_and_the_answer(run, run_answers):
    shown, rc = _terminal_session(run, [(QUESTIONS[0] + "\n").encode(), b"\n", b"/quit\n"])
    assert rc == 0, shown
    header, rest = shown.split("\n", 1)
    assert header.startswith(f"Chatting with {run} (fine-tuned from gpt2-tiny-base): alpaca prompt, greedy")
    assert "/quit or Ctrl-D ends." in rest
    assert f"you> {QUESTIONS[0]}\nmodel> {run_answers[0]}\nyou> \nyou> /quit\n" in shown
    assert "Traceback" not in shown


def test_ctrl_d_ends_a_terminal_session(run):
    shown, rc = _terminal_session(run, [b"\x04"])  # Ctrl-D at the prompt
    assert rc == 0, shown
    assert shown.endswith("you> \n") and "Traceback" not in shown


def test_base_answers_as_the_pretrained_model_before_fine_tuning(run, run_answers, monkeypatch, capsys):
    base_answers = greedy_answers(load_base_model()[0])
    assert base_answers != run_answers  # fine-tuning changed them
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(QUESTIONS) + "\n"))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["chat", str(run), "--base", "--max-new-tokens", str(NEW_TOKENS)]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    assert capsys.readouterr().out == "".join(one_line(a) + "\n" for a in base_answers)


def _one_line_error(argv, capsys, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err


def test_a_missing_run_and_base_of_random_weights_are_one_line_errors(run, tmp_path, capsys):
    _one_line_error(["chat", str(tmp_path / "nowhere")], capsys, str(tmp_path / "nowhere"), "not found")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    (scratch / "config.json").write_text(json.dumps({**config, "model": "tiny"}), encoding="utf-8")
    _one_line_error(["chat", str(scratch), "--base"], capsys, "--base", "random weights")
    _one_line_error(["chat", str(run), "--temperature", "-1"], capsys, "--temperature")
