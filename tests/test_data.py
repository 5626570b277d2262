"""ftlib.data.instructions: loading and validating, prompt formats, the split, InstructionDataset,
and download_and_load_file against a real HTTP server on 127.0.0.1."""

import json

import pytest

from ftlib.data.instructions import (
    InstructionDataset,
    download_and_load_file,
    format_input,
    format_response,
    load_instruction_data,
    split_data,
)
from ftlib.plumbing.errors import ConfigError, DataError, DownloadError, FtlibError
from ftlib.classroom.serve import serve_directory
from ftlib.data.tokenizer import get_gpt2_tokenizer

ENTRY = {"instruction": "Name a color.", "input": "", "output": "Blue."}
ENTRY_WITH_INPUT = {
    "instruction": "Identify the correct spelling of the following word.",
    "input": "Ocassion",
    "output": "The correct spelling is 'Occasion.'",
}


def write(tmp_path, content, name="x.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def load_error(path):
    with pytest.raises(DataError) as info:
        load_instruction_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every message names the file
    return message


# ---------------------------------------------------------------------------
# load_instruction_data
# ---------------------------------------------------------------------------

def test_loads_entries_and_keeps_extra_keys(tmp_path):
    path = write(tmp_path, [ENTRY_WITH_INPUT, {**ENTRY, "task": "color"}])
    data = load_instruction_data(path)
    assert data == [ENTRY_WITH_INPUT, {**ENTRY, "task": "color"}]


def test_absent_input_becomes_empty_string(tmp_path):
    path = write(tmp_path, [{"instruction": "Say hi.", "output": "Hi."}])
    assert load_instruction_data(path) == [{"instruction": "Say hi.", "input": "", "output": "Hi."}]


def test_file_with_byte_order_mark_loads(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps([ENTRY]).encode("utf-8"))
    assert load_instruction_data(path) == [ENTRY]


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.json")
    assert "no such file" in message


def test_folder_instead_of_file(tmp_path):
    assert "is a folder" in load_error(tmp_path)


def test_not_utf8(tmp_path):
    path = write(tmp_path, b'[{"instruction": "caf\xe9", "output": "x"}]')
    assert "not UTF-8" in load_error(path)


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path, '[\n  {"instruction": "a",\n   "output": }\n]')
    message = load_error(path)
    assert "not valid JSON" in message
    assert "line 3, column 14" in message


def test_error_is_an_ftlib_error_without_a_chained_traceback(tmp_path):
    path = write(tmp_path, "[1, 2")
    with pytest.raises(FtlibError) as info:
        load_instruction_data(path)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_top_level_must_be_a_list(tmp_path):
    message = load_error(write(tmp_path, ENTRY))
    assert "top level must be a list" in message and "got object" in message


def test_empty_list_is_an_error(tmp_path):
    assert "empty" in load_error(write(tmp_path, []))


def test_entry_must_be_an_object(tmp_path):
    message = load_error(write(tmp_path, [ENTRY, ["a", "b"]]))
    assert "entry 1: must be an object" in message and "got list" in message


@pytest.mark.parametrize("field", ["instruction", "output"])
def test_missing_required_field(tmp_path, field):
    entry = {k: v for k, v in ENTRY.items() if k != field}
    message = load_error(write(tmp_path, [ENTRY, ENTRY, entry]))
    assert f"entry 2: missing field '{field}'" in message


@pytest.mark.parametrize(
    "field, value, found",
    [("output", 12, "int"), ("instruction", ["a"], "list"), ("input", None, "null"),
     ("output", 1.5, "float"), ("input", {"a": 1}, "object")],
)
def test_non_string_field(tmp_path, field, value, found):
    data = [ENTRY] * 12 + [{**ENTRY, field: value}]
    message = load_error(write(tmp_path, data))
    assert message == f"{tmp_path / 'x.json'}: entry 12: field '{field}' must be a string, got {found}"


# ---------------------------------------------------------------------------
# format_input / format_response
# ---------------------------------------------------------------------------

def test_format_input_alpaca_with_input():
    assert format_input(ENTRY_WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n"
        "### Instruction:\nIdentify the correct spelling of the following word.\n\n"
        "### Input:\nOcassion"
    )


def test_format_input_alpaca_without_input():
    expected = (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nName a color."
    )
    assert format_input(ENTRY) == expected
    # an entry with no "input" key at all formats the same way
    assert format_input({"instruction": "Name a color.", "output": "Blue."}) == expected


def test_format_input_phi3():
    # exercise 7.1's template
    assert format_input(ENTRY_WITH_INPUT, style="phi3") == (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
    )
    assert format_input(ENTRY, style="phi3") == "<|user|>\nName a color."


def test_format_response():
    assert format_response(ENTRY) == "\n\n### Response:\nBlue."
    assert format_response(ENTRY, style="phi3") == "\n<|assistant|>:\nBlue."


def test_unknown_style_lists_the_styles():
    for func in (format_input, format_response):
        with pytest.raises(ConfigError, match="'alpaca', 'phi3'"):
            func(ENTRY, style="chatml")


# ---------------------------------------------------------------------------
# split_data
# ---------------------------------------------------------------------------

def test_split_data_like_the_chapter():
    data = list(range(1100))
    train, test, val = split_data(data)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert train == data[:935] and test == data[935:1045] and val == data[1045:]


def test_split_data_custom_fractions_and_bad_ones():
    train, test, val = split_data(list(range(10)), train_frac=0.5, test_frac=0.2)
    assert (train, test, val) == ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])
    with pytest.raises(ConfigError):
        split_data([1, 2, 3], train_frac=0.9, test_frac=0.2)


# ---------------------------------------------------------------------------
# InstructionDataset
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


def test_dataset_tokenizes_prompt_plus_response(tokenizer):
    data = [ENTRY, ENTRY_WITH_INPUT]
    dataset = InstructionDataset(data, tokenizer)
    assert len(dataset) == 2
    for i, entry in enumerate(data):
        prompt = format_input(entry)
        # the same ids as the chapter's tokenizer.encode(full_text)
        assert dataset[i] == tokenizer.encode(prompt + format_response(entry))
        assert dataset.prompt_lengths[i] == len(tokenizer.encode(prompt))
        assert dataset[i][: dataset.prompt_lengths[i]] == tokenizer.encode(prompt)
        assert tokenizer.decode(dataset[i][dataset.prompt_lengths[i]:]) == format_response(entry)


def test_with_prompt_lengths_view(tokenizer):
    dataset = InstructionDataset([ENTRY, ENTRY_WITH_INPUT], tokenizer)
    view = dataset.with_prompt_lengths()
    assert len(view) == 2
    ids, prompt_length = view[1]
    assert ids == dataset[1] and prompt_length == dataset.prompt_lengths[1]
    assert 0 < prompt_length < len(ids)


def test_phi3_dataset_is_shorter(tokenizer):
    alpaca = InstructionDataset([ENTRY_WITH_INPUT], tokenizer)
    phi3 = InstructionDataset([ENTRY_WITH_INPUT], tokenizer, style="phi3")
    assert tokenizer.decode(phi3[0]) == (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
        "\n<|assistant|>:\nThe correct spelling is 'Occasion.'"
    )
    assert len(phi3[0]) < len(alpaca[0])


def test_endoftext_in_text_is_plain_text(tokenizer):
    entry = {"instruction": "Repeat: <|endoftext|>", "input": "", "output": "<|endoftext|> done"}
    dataset = InstructionDataset([entry], tokenizer)  # must not raise
    assert 50256 not in dataset[0]
    assert tokenizer.decode(dataset[0]) == format_input(entry) + format_response(entry)


# ---------------------------------------------------------------------------
# download_and_load_file, against a local server
# ---------------------------------------------------------------------------

def test_download_and_load_file(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    write(served, [ENTRY, ENTRY_WITH_INPUT], name="instruction-data.json")
    dest = tmp_path / "downloads" / "instruction-data.json"
    with serve_directory(served) as server:
        data = download_and_load_file(dest, f"{server.url}/instruction-data.json")
        assert data == [ENTRY, ENTRY_WITH_INPUT]
        assert dest.is_file()
        n_requests = len(server.requests)
        # the file is there now: nothing more is fetched
        assert download_and_load_file(dest, f"{server.url}/instruction-data.json") == data
        assert len(server.requests) == n_requests
    # and it loads with the server gone, offline
    assert download_and_load_file(dest, "http://127.0.0.1:9/instruction-data.json") == data


def test_download_failure_leaves_no_file(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    dest = tmp_path / "instruction-data.json"
    with serve_directory(served) as server:
        with pytest.raises(DownloadError):
            download_and_load_file(dest, f"{server.url}/missing.json")
    assert not dest.exists()


def test_downloaded_file_is_validated(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    write(served, {"not": "a list"}, name="bad.json")
    dest = tmp_path / "bad.json"
    with serve_directory(served) as server:
        with pytest.raises(DataError, match="top level must be a list"):
            download_and_load_file(dest, f"{server.url}/bad.json")
