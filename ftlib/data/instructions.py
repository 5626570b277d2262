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


# The shapes a data file's entry may have, as every shape error lists them.
ENTRY_SHAPES = ("the chapter's 'instruction', 'input' (optional) and 'output'",
                "'messages': one 'user' and one 'assistant' message, a first 'system' one optional",
                "'prompt' and 'completion' (text, or lists of messages)")
# ... and a preference file's (`load_preference_data`).
PREFERENCE_SHAPES = ("the chapter's 'instruction', 'input' (optional) and 'output', with "
                     "'chosen' and 'rejected'",
                     "'prompt', 'chosen' and 'rejected' (TRL's: text, or lists of messages)")


def load_instruction_data(path, preference=False):
    """Read a data file and return its entries in the chapter's format.

    The file is a JSON list of entries or JSON Lines (one entry per line), told apart
    by its content, not its name. An entry has one of the shapes of `ENTRY_SHAPES`:
    the chapter's fields; a single-turn `messages` conversation (its user message
    becomes the instruction, the assistant's the output, a system message the entry's
    `system`, which replaces Alpaca's preamble); or `prompt` and `completion`, as TRL
    names them. With `preference`, those of `PREFERENCE_SHAPES` instead (see
    `load_preference_data`).

    Returns a list of dicts, each with string `instruction`, `input` and `output` (an
    absent `input` becomes ""), plus any extra keys. The file may start with a UTF-8
    byte-order mark. Anything else raises `DataError` naming the file and the entry,
    also text that later code could not write (a lone surrogate such as "\\udfff"):

    >>> load_instruction_data("data/x.json")
    DataError: data/x.json: entry 12: field 'output' must be a string, got int

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a JSON file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data, labels = _read_entries(path)
    if not data:
        raise DataError(f"{path}: the list of entries is empty: there is nothing to train on")
    shapes = PREFERENCE_SHAPES if preference else ENTRY_SHAPES
    entries = []
    for item, label in zip(data, labels):
        where = f"{path}: {label}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with the fields of {_shape_list(shapes)}; "
                            f"got {_type_name(item)}")
        for field, value in item.items():
            bad = _not_utf8(field) or _not_utf8(value)
            if bad:
                raise DataError(
                    f"{where}: field {field!r} holds {ascii(bad)}, half of a UTF-16 "
                    "surrogate pair on its own: not text, it cannot be written as UTF-8; remove it"
                )
        entries.append(_chapter_entry(item, where, shapes, preference))
    return entries


def _shape_list(shapes):
    return "one of these shapes: " + "; ".join(f"({i}) {s}" for i, s in enumerate(shapes, 1))


def _read_entries(path):
    """(items, labels) of a data file: a JSON list's items, or a JSON Lines file's
    (blank lines skipped); a label names each item in errors ("entry 3", with its line
    in JSON Lines: "entry 3 (line 5)")."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # not two or more JSON values in a row: not JSON Lines either
            raise DataError(
                f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
        return _read_json_lines(path, text)
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: JSON that cannot be read: {exc}") from None
    if isinstance(data, dict) and path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_json_lines(path, text)  # JSON Lines of one entry
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level must be a list of entries (or JSON Lines, one "
                        f"entry per line), got {_type_name(data)}")
    return data, [f"entry {i}" for i in range(len(data))]


def _read_json_lines(path, text):
    items, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not valid JSON (the file is read as JSON Lines, "
                            f"one entry per line): {exc.msg} at column {exc.colno}") from None
        except (RecursionError, ValueError) as exc:
            raise DataError(f"{path}: line {number}: JSON that cannot be read: "
                            f"{exc if str(exc) else 'nested too deeply'}") from None
        labels.append(f"entry {len(items)} (line {number})")
        items.append(item)
    return items, labels


def _check_text_fields(item, where, fields, required=()):
    """DataError unless each of `fields` present in `item` is a string, and each of
    `required` is present and not only whitespace."""
    for field in required:
        if field not in item:
            found = ", ".join(repr(k) for k in item) or "no fields"
            raise DataError(f"{where}: missing field {field!r} (found {found})")
    for field in fields:
        if field in item and not isinstance(item[field], str):
            raise DataError(f"{where}: field {field!r} must be a string, got {_type_name(item[field])}")
    for field in required:
        if not item[field].strip():
            raise DataError(f"{where}: field {field!r} is empty or only whitespace")


def _chapter_entry(item, where, shapes, preference):
    """The chapter's entry of one item of a data file, whichever shape it has."""
    if "instruction" in item or "output" in item or not ({"messages", "prompt"} & item.keys()):
        if not ({"instruction", "output", "input"} & item.keys()):
            found = ", ".join(repr(k) for k in item) or "no fields"
            raise DataError(f"{where}: an entry of no known shape (found {found}); "
                            f"an entry has {_shape_list(shapes)}")
        _check_text_fields(item, where, ("instruction", "input", "output"), ("instruction", "output"))
        entry = {"instruction": item["instruction"], "input": item.get("input", ""), "output": item["output"]}
        return {**entry, **{k: v for k, v in item.items() if k not in entry}}
    if "messages" in item:
        if preference:
            raise DataError(f"{where}: 'messages' holds one conversation, a preference pair needs "
                            f"two responses; a pair has {_shape_list(shapes)}")
        system, user, assistant = _single_turn(item["messages"], where, "messages", assistant=True)
        extras = {k: v for k, v in item.items() if k != "messages"}
    else:  # prompt and completion (TRL), or prompt, chosen and rejected
        responses = ("chosen", "rejected") if preference else ("completion",)
        missing = [k for k in responses if k not in item]
        if missing:
            found = ", ".join(repr(k) for k in item)
            raise DataError(f"{where}: 'prompt' without {' and '.join(repr(k) for k in missing)} "
                            f"(found {found}); an entry has {_shape_list(shapes)}")
        system, user, _ = _single_turn(item["prompt"], where, "prompt", assistant=False)
        answers = {key: _response(item[key], where, key) for key in responses}
        assistant = answers["chosen"] if preference else answers["completion"]
        extras = {k: v for k, v in item.items() if k not in ("prompt", "completion")}
        if preference:  # the texts of conversational responses
            extras.update(answers)
    entry = {"instruction": user, "input": "", "output": assistant}
    if system is not None:
        entry["system"] = system
    return {**entry, **{k: v for k, v in extras.items() if k not in entry}}


def _single_turn(value, where, field, assistant):
    """(system or None, user text, assistant text or None) of a text or of a list of
    messages; DataError for more turns than one user message (and, with `assistant`,
    one assistant reply after it), or for a message that is not {'role', 'content'}."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {field!r} is empty or only whitespace")
        return None, value, None
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} must be text or a list of messages, got {_type_name(value)}")
    roles = []
    for j, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"{where}: {field}[{j}] must be an object with string 'role' and "
                            f"'content', got {json.dumps(message, ensure_ascii=False)[:60]}")
        roles.append(message["role"])
    wanted = ["user", "assistant"] if assistant else ["user"]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if body != wanted:
        turns = sum(r == "user" for r in roles)
        if turns > 1 or roles.count("assistant") > (1 if assistant else 0):
            raise DataError(f"{where}: {field} holds {turns} user and {roles.count('assistant')} "
                            "assistant messages: multi-turn conversations are not supported "
                            f"(the chapter's entries are single-turn: {' then '.join(wanted)})")
        unknown = sorted(set(roles) - {"system", "user", "assistant"})
        detail = f"unknown role {unknown[0]!r}" if unknown else f"roles {roles}"
        raise DataError(f"{where}: {field} has {detail}; expected "
                        f"an optional system message, then {' then '.join(wanted)}")
    texts = {}
    for j, message in enumerate(value):
        if not message["content"].strip() and message["role"] != "system":
            raise DataError(f"{where}: {field}[{j}] ({message['role']}) is empty or only whitespace")
        texts[message["role"]] = message["content"]
    return texts.get("system"), texts["user"], texts.get("assistant")


def _response(value, where, field):
    """The text of a response field: text, or a list of one assistant message (TRL's
    conversational completion, chosen or rejected)."""
    if isinstance(value, str):
        if field == "completion" and not value.strip():  # chosen and rejected: load_preference_data
            raise DataError(f"{where}: field {field!r} is empty or only whitespace")
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    if isinstance(value, list) and len(value) > 1:
        raise DataError(f"{where}: field {field!r} holds {len(value)} messages: multi-turn "
                        "conversations are not supported (one assistant message)")
    raise DataError(f"{where}: field {field!r} must be text or a list of one assistant message, "
                    f"got {_type_name(value)}")


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


def _read_text(path):
    """The text of the file `path` (UTF-8, a byte-order mark allowed); DataError naming
    the file if it cannot be read or is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None


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

    "alpaca" is the chapter's template (an entry's `system`, from a chat's system
    message, replaces its preamble); "phi3" is the shorter one of exercise 7.1:

    >>> print(format_input({"instruction": "Name a color.", "input": ""}, style="phi3"))
    <|user|>
    Name a color.

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    _check_style(style)
    input_text = entry.get("input") or ""
    if style == "alpaca":
        preamble = entry.get("system") or ALPACA_PREAMBLE  # a chat's system message replaces it
        text = f"{preamble}\n\n### Instruction:\n{entry['instruction']}"
        return text + (f"\n\n### Input:\n{input_text}" if input_text else "")
    if entry.get("system"):
        raise ConfigError("the phi3 prompt style has no place for a system message "
                          "(an entry's 'system'); use the alpaca style, whose preamble it replaces")
    return f"<|user|>\n{entry['instruction']}" + (f"\n{input_text}" if input_text else "")


def check_style_fits(entries, style, path):
    """DataError naming `path` and the first entry with a system message when `style`
    has no place for one (phi3); `format_input` would refuse it mid-run.

    Not in a notebook: what `finetune` and `dpo` check after loading a data file.
    """
    if style == "phi3":
        for i, entry in enumerate(entries):
            if entry.get("system"):
                raise DataError(f"{path}: entry {i}: a system message, which the phi3 prompt style "
                                "has no place for; use --prompt-style alpaca (the message replaces "
                                "its preamble) or remove it")


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
