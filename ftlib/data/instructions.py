"""The instruction data: load and validate, format as prompts, split, tokenize.

An entry is the chapter's dict: `instruction`, `input` (may be empty) and
`output`. Extra keys, such as the bundled data's `task` family label, are kept.
Everything a learner can get wrong in a data file raises `DataError` with a
message that names the file, the entry index and the field.
"""

import json
from pathlib import Path

from torch.utils.data import Dataset

from ftlib.config import PROMPT_STYLES  # noqa: F401 (re-exported for the pipeline and tests)
from ftlib.plumbing.download import download_file
from ftlib.plumbing.errors import ConfigError, DataError

# The 1100 entries the chapter fine-tunes on (downloaded on request only).
CHAPTER_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
    "ch07/01_main-chapter-code/instruction-data.json"
)
# The offline default: 1100 small tasks with exact answers, made by
# scripts/make_instruction_data.py.
BUNDLED_DATA_PATH = Path(__file__).resolve().parents[2] / "data" / "instruction-data.json"
# A second held-out set for the bundled data: questions, worded like the held-out
# split, about facts that only the pretraining corpus states (no instruction entry
# has them). Made by scripts/make_pretraining_corpus.py.
PRETRAINING_ONLY_TEST_PATH = BUNDLED_DATA_PATH.parent / "pretraining-only-test.json"


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def _type_name(value):
    """JSON's name for what was found: object, list, string, int, float, bool, null."""
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def load_instruction_data(path):
    """Read a JSON file of entries and check it has the chapter's format.

    Returns a list of dicts, each with string `instruction`, `input` and
    `output` (an absent `input` becomes ""), plus any extra keys. The file may
    start with a UTF-8 byte-order mark. Anything else raises `DataError`, also
    text that later code could not write (a lone surrogate such as "\\udfff"):

    >>> load_instruction_data("data/x.json")
    DataError: data/x.json: entry 12: field 'output' must be a string, got int

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a JSON file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level must be a list of entries, got {_type_name(data)}")
    if not data:
        raise DataError(f"{path}: the list of entries is empty: there is nothing to train on")

    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(
                f"{path}: entry {i}: must be an object with 'instruction' and 'output', "
                f"got {_type_name(item)}"
            )
        for field in ("instruction", "output"):
            if field not in item:
                found = ", ".join(repr(k) for k in item) or "no fields"
                raise DataError(f"{path}: entry {i}: missing field {field!r} (found {found})")
        for field in ("instruction", "input", "output"):
            if field in item and not isinstance(item[field], str):
                raise DataError(
                    f"{path}: entry {i}: field {field!r} must be a string, "
                    f"got {_type_name(item[field])}"
                )
        for field in ("instruction", "output"):
            if not item[field].strip():
                raise DataError(f"{path}: entry {i}: field {field!r} is empty or only whitespace")
        for field, value in item.items():
            bad = _not_utf8(field) or _not_utf8(value)
            if bad:
                raise DataError(
                    f"{path}: entry {i}: field {field!r} holds {ascii(bad)}, half of a UTF-16 "
                    "surrogate pair on its own: not text, it cannot be written as UTF-8; remove it"
                )
        extras = {k: v for k, v in item.items() if k not in ("instruction", "input", "output")}
        entries.append({
            "instruction": item["instruction"],
            "input": item.get("input", ""),
            "output": item["output"],
            **extras,
        })
    return entries


def _not_utf8(value):
    """A character of `value` (a string, or one inside its lists and dicts, keys
    included) that UTF-8 cannot encode, or None. JSON can spell such a character, a
    lone surrogate like "\\udfff"; it is not text, and writing it (the run's
    responses, a report) would fail at the end of a run."""
    stack = [value]
    while stack:  # a loop, not recursion: JSON nested hundreds deep is allowed
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return exc.object[exc.start]
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def _read_json(path):
    """The JSON value in the file `path` (UTF-8, a byte-order mark allowed); DataError
    naming the file if it cannot be read, is not UTF-8, or is not JSON Python can hold
    (nested too deep, or a number of thousands of digits)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: JSON that cannot be read: {exc}") from None


def download_and_load_file(file_path, url):
    """Download `url` to `file_path` unless the file is already there, then load it.

    The download is atomic (a failed one leaves no half-written file) and raises
    `DownloadError`; the file is then checked by `load_instruction_data`.

    >>> data = download_and_load_file("data/downloads/instruction-data.json", CHAPTER_DATA_URL)

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    file_path = Path(file_path)
    if not file_path.exists():
        download_file(url, file_path, timeout=30.0, progress=True)
    return load_instruction_data(file_path)


def _check_style(style):
    if style not in PROMPT_STYLES:
        choices = ", ".join(repr(s) for s in PROMPT_STYLES)
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {choices}")


def format_input(entry, style="alpaca"):
    """The prompt for an entry: instruction and input, without the response.

    "alpaca" is the chapter's template; "phi3" is the shorter one of exercise 7.1:

    >>> print(format_input({"instruction": "Name a color.", "input": ""}, style="phi3"))
    <|user|>
    Name a color.

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    _check_style(style)
    input_text = entry.get("input") or ""
    if style == "alpaca":
        text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
        return text + (f"\n\n### Input:\n{input_text}" if input_text else "")
    return f"<|user|>\n{entry['instruction']}" + (f"\n{input_text}" if input_text else "")


def format_response(entry, style="alpaca"):
    """The response part that follows `format_input(entry, style)` in training text.

    "\\n\\n### Response:\\n{output}" (alpaca) or "\\n<|assistant|>:\\n{output}" (phi3).
    The dataset, prompt masking and evaluation all use this one definition.

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    _check_style(style)
    if style == "alpaca":
        return f"\n\n### Response:\n{entry['output']}"
    return f"\n<|assistant|>:\n{entry['output']}"


def split_data(data, train_frac=0.85, test_frac=0.10):
    """Split by position, as the chapter does: (train, test, validation).

    The first 85 % train, the next 10 % test, the rest validation; for 1100
    entries that is 935 / 110 / 55.

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    if not (0 < train_frac <= 1 and 0 <= test_frac and train_frac + test_frac <= 1):
        raise ConfigError(
            f"train_frac={train_frac} and test_frac={test_frac}: each must be in [0, 1], "
            f"train_frac above 0, and together at most 1"
        )
    train_end = int(len(data) * train_frac)
    test_end = train_end + int(len(data) * test_frac)
    return data[:train_end], data[train_end:test_end], data[test_end:]


class InstructionDataset(Dataset):
    """Entries pre-tokenized as prompt + response; item i is a list of token ids.

    `prompt_lengths[i]` is the number of prompt tokens of item i (what exercise
    7.2 masks); `with_prompt_lengths()` gives a view whose items are
    `(token_ids, prompt_length)` for a collate function that masks the prompt.

    Prompt and response are encoded separately and joined, so the first
    `prompt_lengths[i]` ids are exactly the prompt that generation starts from.
    (The response starts with a newline, so this equals the chapter's
    `tokenizer.encode(full_text)` unless a prompt ends in whitespace.) Text that
    contains "<|endoftext|>" is encoded as plain text, never as token 50256.

    Introduced in: notebooks/04_dataloaders.ipynb
    """

    def __init__(self, data, tokenizer, style="alpaca"):
        _check_style(style)
        self.data = data
        self.style = style
        self.encoded_texts = []
        self.prompt_lengths = []
        for entry in data:
            prompt_ids = tokenizer.encode(format_input(entry, style), disallowed_special=())
            response_ids = tokenizer.encode(format_response(entry, style), disallowed_special=())
            self.encoded_texts.append(prompt_ids + response_ids)
            self.prompt_lengths.append(len(prompt_ids))

    def __getitem__(self, index):
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)

    def with_prompt_lengths(self):
        """A view of this dataset whose items are `(token_ids, prompt_length)`.

        Introduced in: notebooks/03_ignore_index_masking.ipynb
        """
        return _WithPromptLengths(self)


class _WithPromptLengths(Dataset):
    """Items `(token_ids, prompt_length)` of an InstructionDataset (shares its lists)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, index):
        return self.dataset.encoded_texts[index], self.dataset.prompt_lengths[index]

    def __len__(self):
        return len(self.dataset)
