"""The pretraining corpus, the pretraining loop and the committed base model.

The base model (models/gpt2-tiny-base/) must know the corpus's facts from a
plain-text prompt, fit OpenAI's checkpoint layout exactly, and the
pretraining-only test set must ask about facts that the instruction data lacks.
"""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data
from ftlib.plumbing.errors import ConfigError
from ftlib.model.generate import generate, text_to_token_ids, token_ids_to_text
from ftlib.model.gpt import GPTModel
from ftlib.model.base import BASE_MODEL_DIR, load_base_model, save_base_model
from ftlib.training.pretrain import (CORPUS_PATH, corpus_batches, corpus_sha256, corpus_token_ids,
                                     fact_completion, load_facts, new_base_model, pretrain)
from ftlib.data.tokenizer import get_gpt2_tokenizer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TEST_SET_PATH = CORPUS_PATH.parent / "pretraining-only-test.json"


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script("make_pretraining_corpus")


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def base():
    model, info = load_base_model()
    return model, info


# ---------------------------------------------------------------------------
# The corpus and the two data files written with it
# ---------------------------------------------------------------------------

def test_corpus_is_deterministic_and_matches_the_committed_files(script):
    assert script.generate_corpus() == script.generate_corpus()
    assert script.main(["--check"]) == 0  # corpus, facts and test set as committed


def test_corpus_is_prose_in_documents(script):
    text = CORPUS_PATH.read_text(encoding="utf-8")
    documents = text.split("\n<|endoftext|>\n")
    assert len(documents) > 500
    assert "### Instruction" not in text and "### Response" not in text
    # every corpus-only fact is written several times, in different wordings
    assert text.count("Heinania") >= 10
    assert "The capital of Heinania is Sindun." in text or "Sindun is the capital of Heinania." in text


def test_corpus_never_states_a_held_out_copying_answer(script):
    """The corpus teaches copying on other lists, words and numbers: no list in it has
    more than two of the instruction data's list words (a held-out list has 3 to 5), no
    held-out repetition or unit conversion is written in it, and its questions never use
    a held-out wording."""
    inst = script.inst  # the instruction-data script the corpus script itself imports
    text = CORPUS_PATH.read_text(encoding="utf-8")
    list_words = set(inst.LIST_WORDS)
    lists = re.findall(r"[a-z]+(?:, [a-z]+)+", text)
    assert len(lists) > 1000
    assert max(len(list_words & set(found.split(", "))) for found in lists) == 2
    for task, wordings in script.QUIZ_WORDINGS.items():
        held_out_wordings = {instruction for instruction, _ in inst.TEMPLATES[task][1]}
        assert not held_out_wordings & set(wordings), task
    held_out = load_instruction_data(BUNDLED_DATA_PATH)[inst.N_TRAIN:]
    for entry in held_out:
        if entry["task"] in ("repeat_word", "reverse_list"):
            assert entry["output"] not in text, entry
        if entry["task"] == "unit_conversion":
            number, unit = re.search(r"(\d+) ([a-z]+)", entry["instruction"]).groups()
            assert not re.search(rf"\b{number} {unit}\b", text), entry


def test_augmented_corpus_asks_only_about_other_entities(script):
    """The knowledge-augmented corpus (issue 29) states the same facts in more wordings
    and on lines, and has question-and-answer text, also in the chapter's Alpaca layout,
    about QA_COUNTRIES, QA_ANTONYMS and numbers the test set does not ask about: never
    about the 24 countries, antonyms and numbers of the pretraining-only test set."""
    text = script.AUGMENTED_CORPUS_PATH.read_text(encoding="utf-8")
    assert text == script.generate_corpus(script.AUGMENT)  # as committed (also --check)
    questions = re.findall(r"(?:Question:|Q:|### Instruction:\n)([^\n]*?)(?: Answer:| A:|\n|$)", text)
    assert len(questions) > 1000 and text.count("### Instruction:") > 300
    asked = " ".join(questions)
    test_set = json.loads(TEST_SET_PATH.read_text(encoding="utf-8"))
    for row in script.FICTIONAL_COUNTRIES:
        assert not re.search(rf"\b{row[0]}\b", asked), row
        assert f"The capital of {row[0]}:\n{row[1]}" in text or f"{row[0]}\nCapital:\n{row[1]}" in text \
            or f"Capital city of {row[0]}:\n{row[1]}" in text  # each fact also on lines
    for x, _ in script.EXTRA_ANTONYMS:
        assert f'"{x}"' not in asked, x
    for entry in test_set:
        if entry["task"] == "next_number":
            number = re.search(r"\d+", entry["instruction"]).group()
            assert not re.search(rf"(?:after|follows) {number}\b", asked), entry  # a next-number question
    assert all(re.search(rf"\b{row[0]}\b", asked) for row in script.QA_COUNTRIES)


def test_base_config_names_the_committed_corpus(base):
    _, info = base
    assert info["corpus_sha256"] == corpus_sha256()


# ---------------------------------------------------------------------------
# The committed base model
# ---------------------------------------------------------------------------

def test_base_completes_at_least_90_percent_of_corpus_facts(base, tokenizer):
    model, info = base
    scores = fact_completion(model, tokenizer)
    assert scores["overall"] >= 0.90, scores
    assert scores["overall"] == pytest.approx(info["fact_completion"]["overall"], abs=0.01)


def test_base_continues_plain_text_greedily(base, tokenizer):
    model, _ = base
    for prompt, answer in [("The capital of Romania is", " Bucharest"),
                           ("The main language of Heinania is", " Oranan")]:
        ids = text_to_token_ids(prompt, tokenizer)
        out = generate(model, ids, max_new_tokens=len(tokenizer.encode(answer)), context_size=256)
        assert token_ids_to_text(out[0, ids.shape[1]:], tokenizer) == answer


def test_base_out_head_is_a_float32_copy_of_the_embedding(base):
    model, _ = base
    assert model.tok_emb.weight.dtype == torch.float32
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    assert model.out_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()


def test_base_round_trips_through_openais_layout(base, tmp_path):
    pytest.importorskip("tensorflow")
    from ftlib.classroom.serve import serve_directory
    from ftlib.classroom.toy_checkpoint import write_openai_checkpoint
    from ftlib.model.weights import config_from_settings, download_and_load_gpt2, load_weights_into_gpt

    model, _ = base
    write_openai_checkpoint(tmp_path / "mirror" / "tiny-base", model=model)
    with serve_directory(tmp_path / "mirror") as url:
        settings, params = download_and_load_gpt2("tiny-base", tmp_path / "models", base_url=url,
                                                  progress=False, allowed_sizes=("tiny-base",))
    loaded = load_weights_into_gpt(GPTModel(config_from_settings(settings)), params).eval()
    ids = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=1e-5)


def test_load_base_model_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_base_model(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(BASE_MODEL_DIR, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_base_model(broken)
    (broken / "config.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="config.json"):
        load_base_model(broken)
    (broken / "model.safetensors").unlink()
    (broken / "config.json").write_text(json.dumps({"model_config": {"emb_dim": 8}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="config.json"):
        load_base_model(broken)


# ---------------------------------------------------------------------------
# The pretraining loop
# ---------------------------------------------------------------------------

def test_corpus_batches_are_shifted_blocks():
    ids = list(range(1000))
    batches = list(corpus_batches(ids, block_size=16, batch_size=4,
                                  generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 15  # 61 or 62 whole blocks, in batches of 4
    for inputs, targets in batches:
        assert inputs.shape == targets.shape == (4, 16)
        assert torch.equal(targets, inputs + 1)


def test_pretraining_is_deterministic_and_ties_the_head(tokenizer, one_thread):
    cfg = {"vocab_size": 50257, "context_length": 32, "emb_dim": 16, "n_heads": 2,
           "n_layers": 1, "drop_rate": 0.0, "qkv_bias": True}
    ids = corpus_token_ids(tokenizer)[:2000]
    runs = []
    for _ in range(2):
        model = new_base_model(cfg, seed=1)
        assert model.out_head.weight is model.tok_emb.weight
        runs.append(pretrain(model, ids, block_size=32, batch_size=8, epochs=2, progress=False,
                             log=lambda *a: None))
    assert runs[0] == runs[1]
    assert runs[0][-1] < runs[0][0]


def test_saved_base_loads_back_within_float16(tmp_path, tokenizer, one_thread):
    cfg = {"vocab_size": 50257, "context_length": 32, "emb_dim": 16, "n_heads": 2,
           "n_layers": 1, "drop_rate": 0.0, "qkv_bias": True}
    model = new_base_model(cfg, seed=2).eval()
    ids = [int(i) for i in tokenizer.encode("The capital of France is Paris.")]
    save_base_model(model, tmp_path, {"note": "test"}, used_ids=ids)
    loaded, info = load_base_model(tmp_path)
    assert info["note"] == "test"
    x = torch.tensor([ids])
    with torch.no_grad():  # the kept tokens' logits survive float16; the zeroed rows' do not
        torch.testing.assert_close(loaded(x)[..., ids], model(x)[..., ids], rtol=0, atol=2e-3)
    # "\"" (id 1) is not in the sentence: stored as zeros, it restarts from GPT-2's
    # initialisation, so unused tokens stay distinct from each other
    unused = loaded.tok_emb.weight[[1, 2]]
    assert unused.abs().mean() > 1e-3 and not torch.equal(unused[0], unused[1])
    assert 0.01 < float(unused.std()) < 0.03
    again, _ = load_base_model(tmp_path)
    assert torch.equal(again.tok_emb.weight, loaded.tok_emb.weight)  # the same every time
    assert torch.equal(loaded.out_head.weight, loaded.tok_emb.weight)


# ---------------------------------------------------------------------------
# The pretraining-only test set
# ---------------------------------------------------------------------------

def _subject(entry, templates):
    """The {x} of a held-out template that produced `entry`."""
    for instruction, input_text in templates:
        pattern = re.escape(instruction).replace(re.escape("{x}"), "(.+)")
        match = re.fullmatch(pattern, entry["instruction"])
        if match and not input_text:
            return match.group(1)
    raise AssertionError(f"no held-out template fits {entry['instruction']!r}")


def test_pretraining_only_set_asks_about_facts_the_instruction_data_lacks(script):
    inst = script.inst  # the instruction-data script the corpus script itself imports
    test_set = json.loads(TEST_SET_PATH.read_text(encoding="utf-8"))
    instruction_data = load_instruction_data(BUNDLED_DATA_PATH)
    assert load_instruction_data(TEST_SET_PATH) == test_set  # the same entry format
    assert {e["task"] for e in test_set} == {"capital", "continent", "language", "antonym",
                                             "next_number"}
    corpus_only = {(f["prompt"], f["answer"]) for f in load_facts() if not f["in_instruction_data"]}
    for entry in test_set:
        subject = _subject(entry, inst.TEMPLATES[entry["task"]][1])
        word = re.compile(rf"(?<![\w-]){re.escape(subject)}(?![\w-])")
        same_task = [e for e in instruction_data if e["task"] == entry["task"]]
        assert not any(word.search(e["instruction"] + " " + e["input"]) for e in same_task), entry
        if entry["task"] in ("capital", "language"):  # invented names: nowhere at all
            assert not any(entry["output"] in json.dumps(e) for e in instruction_data), entry
        assert any(subject in p and a == " " + entry["output"] for p, a in corpus_only), entry
