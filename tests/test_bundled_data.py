"""The bundled data/instruction-data.json: its shape, that the script reproduces it
byte for byte, that every answer is right, and that test and validation are held
out from train the way the script's docstring says."""

import collections
import importlib.util
import re
from pathlib import Path

import pytest

from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data, split_data
from ftlib.data.tokenizer import get_gpt2_tokenizer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_instruction_data.py"

LOOKUP_FAMILIES = {"capital", "continent", "language", "antonym", "next_number"}
LIST_FAMILIES = {"reverse_list", "first_word", "last_word"}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_instruction_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data():
    return load_instruction_data(BUNDLED_DATA_PATH)


@pytest.fixture(scope="module")
def parts(data):
    train, test, val = split_data(data)
    return {"train": train, "test": test, "val": val}


def by_family(entries):
    groups = collections.defaultdict(list)
    for entry in entries:
        groups[entry["task"]].append(entry)
    return groups


def template_regex(template):
    """(instruction, input) template with {fields} -> compiled regexes."""
    def compile_one(text):
        pattern = re.escape(text)
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", pattern)
        return re.compile(f"^{pattern}$")

    return compile_one(template[0]), compile_one(template[1])


def match(script, entry):
    """(template, fields) of the template in the script that made this entry."""
    train_templates, held_templates = script.TEMPLATES[entry["task"]]
    for template in train_templates + held_templates:
        instruction_re, input_re = template_regex(template)
        m1, m2 = instruction_re.match(entry["instruction"]), input_re.match(entry["input"])
        if m1 and m2:
            return template, {**m1.groupdict(), **m2.groupdict()}
    raise AssertionError(f"no template matches {entry}")


# ---------------------------------------------------------------------------
# shape
# ---------------------------------------------------------------------------

def test_shape(data, parts):
    assert len(data) == 1100
    assert [len(parts[k]) for k in ("train", "test", "val")] == [935, 110, 55]
    assert all(set(e) == {"instruction", "input", "output", "task"} for e in data)
    families = by_family(data)
    assert len(families) >= 10
    assert all(len(by_family(parts[k])) == len(families) for k in parts)  # every family in every part
    with_input = sum(1 for e in data if e["input"]) / len(data)
    assert 0.25 <= with_input <= 0.45, with_input  # about a third
    assert all(e["output"] and len(e["output"]) <= 40 for e in data)  # short, exact answers


def test_check_mode_and_determinism(script, tmp_path):
    text = script.render(script.generate())
    assert text == script.render(script.generate())  # byte-identical run to run
    assert BUNDLED_DATA_PATH.read_text(encoding="utf-8") == text
    assert script.main(["--check"]) == 0
    changed = tmp_path / "instruction-data.json"
    changed.write_text(text.replace('"output": "Paris"', '"output": "Lyon"'), encoding="utf-8")
    assert script.main(["--check", "--out", str(changed)]) == 1


# ---------------------------------------------------------------------------
# every answer is right
# ---------------------------------------------------------------------------

def test_answers(script, data):
    tables = {
        "capital": dict(script.CAPITALS), "continent": dict(script.CONTINENTS),
        "language": dict(script.LANGUAGES), "antonym": dict(script.ANTONYMS),
    }
    units = {(frm, to): factor for frm, to, factor in script.UNITS}
    for entry in data:
        task, out = entry["task"], entry["output"]
        _, f = match(script, entry)
        if task in tables:
            assert tables[task][f["x"]] == out
        elif task == "next_number":
            assert int(out) == int(f["x"]) + 1
        elif task in LIST_FAMILIES:
            words = f["x"].split(", ")
            expected = {"reverse_list": ", ".join(words[::-1]),
                        "first_word": words[0], "last_word": words[-1]}[task]
            assert out == expected
        elif task == "repeat_word":
            times = {v: k for k, v in script.REPEATS.items()}[f["times"]]
            assert out == " ".join([f["x"]] * times)
        elif task == "unit_conversion":
            assert int(out) == int(f["n"]) * units[(f["frm"], f["to"])]
        else:
            raise AssertionError(f"unknown family {task}")


def test_some_facts_by_hand(data):
    facts = {(e["task"], e["instruction"], e["input"]): e["output"] for e in data}
    known = {("capital", "France", "Paris"), ("language", "Brazil", "Portuguese"),
             ("continent", "Kenya", "Africa"), ("antonym", '"hot"', "cold")}
    found = set()
    for (task, instruction, input_text), output in facts.items():
        for family, key, answer in known:
            if task == family and (key in instruction or key == input_text):
                assert output == answer
                found.add((family, key, answer))
    assert found == known


# ---------------------------------------------------------------------------
# held out
# ---------------------------------------------------------------------------

def test_no_held_out_pair_in_train(parts):
    train_keys = {(e["instruction"], e["input"]) for e in parts["train"]}
    for part in ("test", "val"):
        assert not any((e["instruction"], e["input"]) in train_keys for e in parts[part])
    test_keys = {(e["instruction"], e["input"]) for e in parts["test"]}
    assert not any((e["instruction"], e["input"]) in test_keys for e in parts["val"])


def test_each_family_has_a_template_used_only_outside_train(script, parts):
    for family, entries in by_family(parts["train"]).items():
        used_in_train = {match(script, e)[0] for e in entries}
        held = [match(script, e)[0] for e in by_family(parts["test"])[family]]
        assert set(held) - used_in_train, family
        assert not set(script.TEMPLATES[family][1]) & used_in_train, family


def test_lookup_facts_are_in_train_under_other_phrasings(script, parts):
    train = collections.Counter(
        (e["task"], match(script, e)[1]["x"], e["output"])
        for e in parts["train"] if e["task"] in LOOKUP_FAMILIES
    )
    for part in ("test", "val"):
        for e in parts[part]:
            if e["task"] in LOOKUP_FAMILIES:
                template, fields = match(script, e)
                assert template in script.TEMPLATES[e["task"]][1]  # a held-out phrasing
                assert train[(e["task"], fields["x"], e["output"])] >= 4


def test_held_out_lists_are_new_combinations(script, parts):
    def word_set(e):
        return frozenset(e["input"].split(", "))

    train_lists = [e for e in parts["train"] if e["task"] in LIST_FAMILIES]
    train_sets = {word_set(e) for e in train_lists}
    train_inputs = {e["input"] for e in parts["train"]}
    train_words = set().union(*train_sets)
    for part in ("test", "val"):
        for e in parts[part]:
            if e["task"] in LIST_FAMILIES:
                assert e["input"] not in train_inputs
                assert word_set(e) not in train_sets
                assert word_set(e) <= train_words


def test_held_out_combinations_of_repeat_and_units(script, parts):
    train = by_family(parts["train"])
    repeat_train = {(f["x"], f["times"]) for f in (match(script, e)[1] for e in train["repeat_word"])}
    unit_train = {(f["n"], f["frm"]) for f in (match(script, e)[1] for e in train["unit_conversion"])}
    for part in ("test", "val"):
        held = by_family(parts[part])
        for e in held["repeat_word"]:
            f = match(script, e)[1]
            assert (f["x"], f["times"]) not in repeat_train
            assert any(w == f["x"] for w, _ in repeat_train)
            assert any(t == f["times"] for _, t in repeat_train)
        for e in held["unit_conversion"]:
            f = match(script, e)[1]
            assert (f["n"], f["frm"]) not in unit_train
            assert sum(n == f["n"] for n, _ in unit_train) >= 2
            assert any(u == f["frm"] for _, u in unit_train)


def test_tokenization_the_design_relies_on(script):
    """List words are one token with and without a leading space; a converted
    number is the number's token plus "00" or "000"."""
    tokenizer = get_gpt2_tokenizer()
    for word in script.LIST_WORDS:
        assert len(tokenizer.encode(word)) == 1 and len(tokenizer.encode(" " + word)) == 1, word
    for _, _, factor in script.UNITS:
        for n in script.UNIT_NUMBERS:
            zeros = tokenizer.encode(str(factor)[1:])
            assert tokenizer.encode(str(n * factor)) == tokenizer.encode(str(n)) + zeros
