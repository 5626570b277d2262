"""ftlib.evaluation.responses: extracting the answer, generating responses (batched = one by one), saving."""

import json
from pathlib import Path

import pytest
import torch

from ftlib.data.instructions import format_input, format_response
from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.model.generate import generate, text_to_token_ids, token_ids_to_text
from ftlib.model.gpt import GPTModel
from ftlib.evaluation.responses import extract_response, generate_responses, save_responses
from ftlib.data.tokenizer import get_gpt2_tokenizer
from helpers import SCORED_ENTRIES as ENTRIES

# One CPU thread: the tiny model's ops are too small to gain from more, and on a busy
# 2-core machine two threads made these tests 20x slower (waiting threads).
pytestmark = pytest.mark.usefixtures("one_thread")

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
