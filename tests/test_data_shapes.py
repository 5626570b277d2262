"""Data files in the shapes learners bring (issue 28): a JSON list or JSON Lines, the
chapter's fields, single-turn `messages`, TRL's `prompt`/`completion`, and for DPO
TRL's `prompt`/`chosen`/`rejected` beside the book's preference layout. One loader,
`load_instruction_data`; each shape trains end to end."""

import json

import pytest

from ftlib.cli import main
from ftlib.data.instructions import InstructionDataset, format_input, load_instruction_data
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.plumbing.errors import DataError
from ftlib.training import read_history
from ftlib.training.dpo import load_preference_data, make_preference_pair

from helpers import quick_args

# The chapter's own layout (its instruction-data.json), two entries as the book prints them.
CHAPTER = [{"instruction": "Identify the correct spelling of the following word.",
            "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"},
           {"instruction": "What is an antonym of 'complicated'?", "input": "",
            "output": "An antonym of 'complicated' is 'simple'."}]


def as_messages(entry, system=None):
    user = entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": entry["output"]}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


def as_prompt_completion(entry, conversational=False):
    user = entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")
    if conversational:
        return {"prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": entry["output"]}]}
    return {"prompt": user, "completion": entry["output"]}


def write(path, items, lines=False):
    text = "".join(json.dumps(i) + "\n" for i in items) if lines else json.dumps(items, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


def flat(entry):
    """The chapter's entry that `as_messages` and `as_prompt_completion` stand for."""
    return {"instruction": entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else ""),
            "input": "", "output": entry["output"]}


@pytest.mark.parametrize("shape", ["chapter", "messages", "prompt-completion", "conversational"])
@pytest.mark.parametrize("lines", [False, True], ids=["json", "jsonl"])
def test_each_shape_loads_as_the_chapters_entries(tmp_path, shape, lines):
    make = {"chapter": lambda e: e, "messages": as_messages, "prompt-completion": as_prompt_completion,
            "conversational": lambda e: as_prompt_completion(e, True)}[shape]
    # JSON Lines is told by its content: the file is named .json either way
    path = write(tmp_path / "data.json", [make(e) for e in CHAPTER], lines)
    want = CHAPTER if shape == "chapter" else [flat(e) for e in CHAPTER]
    assert load_instruction_data(path) == want


def test_a_system_message_replaces_alpacas_preamble(tmp_path):
    path = write(tmp_path / "chat.jsonl", [as_messages(CHAPTER[1], system="Answer in one sentence.")], True)
    entry = load_instruction_data(path)[0]
    assert entry["system"] == "Answer in one sentence."
    assert format_input(entry) == f"Answer in one sentence.\n\n### Instruction:\n{entry['instruction']}"


def test_extra_fields_are_kept_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({**as_messages(CHAPTER[0]), "task": "spelling"}) + "\n\n"
                    + json.dumps(as_prompt_completion(CHAPTER[1])) + "\n", encoding="utf-8")
    entries = load_instruction_data(path)  # shapes may even be mixed
    assert [e.get("task") for e in entries] == ["spelling", None] and len(entries) == 2


def test_a_one_line_jsonl_file_is_one_entry(tmp_path):
    path = write(tmp_path / "one.jsonl", [CHAPTER[0]], True)
    assert load_instruction_data(path) == [CHAPTER[0]]


@pytest.mark.parametrize("item, expected", [
    (as_messages(CHAPTER[0]) | {"messages": as_messages(CHAPTER[0])["messages"] * 2},
     "entry 1 (line 2): messages holds 2 user and 2 assistant messages: multi-turn conversations "
     "are not supported"),
    ({"question": "q", "answer": "a"},
     "entry 1 (line 2): an entry of no known shape (found 'question', 'answer'); an entry has one "
     "of these shapes: (1) the chapter's 'instruction', 'input' (optional) and 'output'; (2) 'messages'"),
    ({"prompt": "q"}, "entry 1 (line 2): 'prompt' without 'completion' (found 'prompt'); an entry has"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     "entry 1 (line 2): messages has unknown role 'bot'; expected an optional system message, "
     "then user then assistant"),
    ({"messages": [{"role": "user", "text": "q"}]},
     "entry 1 (line 2): messages[0] must be an object with string 'role' and 'content'"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}] * 2},
     "entry 1 (line 2): field 'completion' holds 2 messages: multi-turn conversations are not supported"),
    ({"prompt": "q", "completion": "  "}, "entry 1 (line 2): field 'completion' is empty"),
])
def test_shape_errors_name_the_file_the_entry_and_the_shapes(tmp_path, item, expected):
    path = write(tmp_path / "data.jsonl", [as_messages(CHAPTER[0]), item], True)
    with pytest.raises(DataError) as info:
        load_instruction_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_a_bad_json_line_is_named_by_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(CHAPTER[0]) + "\n" + '{"instruction": "x", "output": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl: line 2: not valid JSON \(the file is read as JSON Lines"):
        load_instruction_data(path)


def test_messages_and_the_chapters_fields_train_on_the_same_tokens(tmp_path):
    tokenizer = get_gpt2_tokenizer()
    flat_entries = [flat(e) for e in CHAPTER]
    chats = load_instruction_data(write(tmp_path / "chat.jsonl", [as_messages(e) for e in CHAPTER], True))
    assert InstructionDataset(chats, tokenizer).encoded_texts == \
        InstructionDataset(flat_entries, tokenizer).encoded_texts


# --- preference files ----------------------------------------------------------------

def trl_pair(pair, conversational=False):
    if not conversational:
        return {"prompt": pair["instruction"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
    return {"prompt": [{"role": "user", "content": pair["instruction"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


@pytest.mark.parametrize("shape", ["book", "trl", "trl-conversational"])
def test_each_preference_shape_loads(tmp_path, shape):
    pairs = [make_preference_pair({"instruction": q, "input": "", "output": a})
             for q, a in (("Capital of Norway?", "Oslo"), ("Capital of Peru?", "Lima"))]
    items = pairs if shape == "book" else [trl_pair(p, shape == "trl-conversational") for p in pairs]
    loaded = load_preference_data(write(tmp_path / "pairs.jsonl", items, True))
    assert [(e["instruction"], e["chosen"], e["rejected"]) for e in loaded] == \
        [(p["instruction"], p["chosen"], p["rejected"]) for p in pairs]
    if shape != "book":  # TRL's pairs have no 'output': the chosen response stands for it
        assert [e["output"] for e in loaded] == [p["chosen"] for p in pairs]


def test_a_prompt_completion_file_is_no_preference_file(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [as_prompt_completion(CHAPTER[0])], True)
    with pytest.raises(DataError, match="'prompt' without 'chosen' and 'rejected'.*'prompt', 'chosen' and 'rejected'"):
        load_preference_data(path)


# --- each shape trains end to end ----------------------------------------------------

@pytest.fixture(scope="module")
def entries(small_data):
    return json.loads(small_data.read_text())


@pytest.mark.parametrize("shape", ["jsonl", "messages", "prompt-completion"])
def test_each_shape_trains_end_to_end(entries, tmp_path, shape, capsys):
    make = {"jsonl": lambda e: e, "messages": lambda e: as_messages(e, system="Answer briefly."),
            "prompt-completion": as_prompt_completion}[shape]
    data = write(tmp_path / "data.jsonl", [make(e) for e in entries], True)
    out = tmp_path / "run"
    assert main(quick_args(data, out, "--max-steps", "2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and (out / "history.jsonl").is_file()
    responses = json.loads((out / "test-responses.json").read_text())
    if shape == "messages":  # the system message is the prompt's first line
        assert all(r["system"] == "Answer briefly." for r in responses)


def test_a_system_message_with_the_phi3_style_is_one_line_naming_the_entry(entries, tmp_path, capsys):
    data = write(tmp_path / "data.jsonl", [as_messages(e, system="Be brief.") for e in entries], True)
    assert main(quick_args(data, tmp_path / "run", "--prompt-style", "phi3", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}: entry 0: a system message" in err and "alpaca" in err


def test_dpo_trains_on_trl_pairs_and_logs_its_quantities(entries, tmp_path):
    sft = tmp_path / "sft"
    assert main(quick_args(write(tmp_path / "data.json", entries), sft, "--max-steps", "2")) == 0
    pairs = write(tmp_path / "pairs.jsonl", [trl_pair(make_preference_pair(e), True) for e in entries], True)
    out = tmp_path / "dpo"
    assert main(["dpo", "--run", str(sft), "--out", str(out), "--data", str(pairs), "--batch-size", "8",
                 "--max-train-pairs", "16", "--max-new-tokens", "3", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2  # 16 pairs in batches of 8
    # its training log (history.jsonl): DPO's own quantities, before each step and after the last
    records = read_history(out)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"val_loss", "val_margin", "val_accuracy", "train_loss", "lr", "tokens_seen"} <= set(records[0])
    assert records[0]["val_margin"] == 0 and records[0]["val_loss"] == pytest.approx(0.6931, abs=1e-4)
    assert records[-1]["tokens_seen"] > records[1]["tokens_seen"] > 0
