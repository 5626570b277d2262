"""The chat's core streams the same tokens as `generate` and ends where the chapter's
answers end; the chat box answers a question through its send button."""

import pytest
import torch

from ftlib.classroom.chat import chat_box, chat_reply
from ftlib.data.instructions import format_input
from ftlib.model.generate import generate, generate_stream, text_to_token_ids, token_ids_to_text
from ftlib.model.gpt import GPTModel, get_config
from ftlib.evaluation.responses import extract_response
from ftlib.data.tokenizer import END_OF_TEXT_ID, get_gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = {**get_config("tiny"), "context_length": 64}
    return GPTModel(cfg).eval()


@pytest.mark.parametrize("temperature,top_k,new", [(0.0, None, 20), (1.0, 5, 20), (0.0, None, 70)])
def test_stream_yields_the_tokens_generate_appends(model, temperature, top_k, new, one_thread):
    idx = torch.randint(0, 50000, (1, 10), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    expected = generate(model, idx, new, 64, temperature, top_k, eos_id=None)[0, 10:].tolist()
    torch.manual_seed(3)
    assert list(generate_stream(model, idx, new, 64, temperature, top_k)) == expected  # 70 > context


def test_stream_stops_before_eos(model, one_thread):
    idx = torch.tensor([[1, 2, 3]])
    first = next(generate_stream(model, idx, 5, 64))
    assert list(generate_stream(model, idx, 5, 64, eos_id=first)) == []


def test_chat_reply_is_the_extracted_greedy_answer(model, tokenizer, one_thread):
    question = "Name a colour."
    answers = list(chat_reply(model, tokenizer, question, max_new_tokens=12))
    prompt = format_input({"instruction": question, "input": ""})
    idx = text_to_token_ids(prompt, tokenizer)
    out = generate(model, idx, 12, 64, eos_id=END_OF_TEXT_ID)
    assert answers[-1] == extract_response(token_ids_to_text(out, tokenizer), prompt)
    assert 1 <= len(answers) <= 12  # one value per token: the answer grows as it streams
    assert not model.training


class StopAfterAnswer:
    """A fake model that writes "### Response:\\nParis.\\n\\n### Instruction:" and more."""

    def __init__(self, tokenizer):
        self.ids = tokenizer.encode("\n\n### Response:\nParis.\n\n### Instruction:\nmore text here")
        self.cfg, self.training = {"context_length": 1024}, False

    def parameters(self):
        yield torch.zeros(1)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def test_chat_reply_stops_when_the_model_starts_a_new_prompt(tokenizer, monkeypatch):
    fake = StopAfterAnswer(tokenizer)
    monkeypatch.setattr("ftlib.classroom.chat.generate_stream", lambda *a, **k: iter(fake.ids))
    answers = list(chat_reply(fake, tokenizer, "Capital of France?"))
    assert answers[-1] == "Paris."
    assert len(answers) < len(fake.ids)  # stopped at "### Instruction:", not at the end


def test_chat_box_send_streams_an_answer_into_the_history(model, tokenizer, one_thread):
    pytest.importorskip("ipywidgets")
    box = chat_box(model, tokenizer, base_model=model, max_new_tokens=6).widget
    history, (text, send), (temperature, top_k, use_base) = box.children[0], box.children[1].children, \
        box.children[2].children
    text.value = "Name a colour."
    send.click()
    expected = list(chat_reply(model, tokenizer, "Name a colour.", max_new_tokens=6))[-1]
    assert "<b>you:</b>" in history.value and "Name a colour." in history.value
    assert f"<b>fine-tuned:</b> <span style=\"white-space:pre-wrap\">" in history.value
    assert text.value == ""
    use_base.value = True
    text.value = "Again"
    send.click()
    assert "<b>base model:</b>" in history.value
    assert expected.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in history.value
