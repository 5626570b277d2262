"""The model's responses to test entries: generate them, extract the answer, save them.

The chapter's last section, first step: `generate_responses` asks the model for a
response to every test entry (greedy, with the KV cache, stopping at
`<|endoftext|>`) and keeps it under `"model_response"`; `save_responses` writes them
as JSON, ready for ftlib/evaluation/scores.py's offline scores or ftlib/evaluation/judge.py's LLM judge.
"""

import json
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ftlib.data.instructions import ALPACA_PREAMBLE, format_input
from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.plumbing.fileio import atomic_write_json
from ftlib.model.generate import MAX_NEW_TOKENS, generate, text_to_token_ids, token_ids_to_text
from ftlib.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID

# Headers the model writes before its answer (`format_response` of the chapter's
# Alpaca style, and of the Phi-3 style of exercise 7.1).
RESPONSE_HEADERS = ("### Response:", "<|assistant|>:", "<|assistant|>")

# Where a model's answer has ended even if it did not write <|endoftext|>: it began
# a new prompt or a new section of one. Our answers are one paragraph, so text after
# these markers is never part of the answer.
STOP_MARKERS = (
    "### Instruction:",
    "### Input:",
    "### Response:",
    "<|user|>",
    "<|assistant|>",
    END_OF_TEXT,
    ALPACA_PREAMBLE[:45],  # "Below is an instruction that describes a task"
)



def extract_response(generated_text, input_text):
    """The model's answer inside `generated_text` (the prompt plus what the model wrote).

    The chapter's way, made robust:
    - remove the prompt: `generated_text[len(input_text):]` (only if `generated_text`
      starts with `input_text`; otherwise the whole text is taken as the continuation);
    - remove the "### Response:" header the model writes first (the chapter removes
      every "### Response:"; we remove the leading one, and a later one ends the answer);
    - cut at the first "### Instruction:", "### Input:", a second "### Response:",
      "<|endoftext|>" or a new "Below is an instruction ..." preamble (for the Phi-3
      style: "<|user|>", a second "<|assistant|>"): a model that keeps going after
      its answer starts a new prompt, which is not its answer;
    - strip surrounding whitespace.

    >>> extract_response("PROMPT\\n\\n### Response:\\nParis.\\n\\n### Instruction:\\n", "PROMPT")
    'Paris.'

    Introduced in: notebooks/07_evaluation.ipynb
    """
    text = generated_text
    if text.startswith(input_text):
        text = text[len(input_text):]
    text = text.lstrip()
    for header in RESPONSE_HEADERS:
        if text.startswith(header):
            text = text[len(header):]
            break
    for marker in STOP_MARKERS:
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    return text.strip()


def _length_groups(lengths, batch_size):
    """Indices grouped into batches of at most `batch_size` with equal prompt length.

    Equal lengths need no padding, so each row computes exactly what it would alone.
    Longest prompts first, ties in entry order: the order is fixed by the data alone.
    """
    by_length = defaultdict(list)
    for i, n in enumerate(lengths):
        by_length[n].append(i)
    groups = []
    for n in sorted(by_length, reverse=True):
        idx = by_length[n]
        groups.extend(idx[k:k + batch_size] for k in range(0, len(idx), batch_size))
    return groups


def generate_responses(model, entries, tokenizer, device, max_new_tokens=MAX_NEW_TOKENS,
                       style="alpaca", progress=True, batch_size=32, eos_id=END_OF_TEXT_ID):
    """Copies of `entries`, each with the model's answer under `"model_response"`.

    Greedy decoding with the KV cache, stopping at `<|endoftext|>` (id 50256), as in
    the chapter. The input entries are not changed. A tqdm bar counts entries
    (`progress=False` hides it).

    `batch_size`: entries whose prompts have the same number of tokens are generated
    together, up to this many at a time. No padding is needed, so each row computes
    what it would alone, only faster; a row that ends early is cut at its first end
    token. On the CPU the answers equal the one-by-one loop token for token (the
    tests check this); on a GPU, kernels picked per batch size may round differently,
    which can flip a rare near-tie. `batch_size=1` is the chapter's one-by-one loop.

    Switches the model to eval mode (no dropout) and restores its mode afterwards.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    input_texts = []
    for i, entry in enumerate(entries):
        try:
            input_texts.append(format_input(entry, style))
        except KeyError as exc:
            raise DataError(
                f"entry {i} has no field {exc.args[0]!r} to build a prompt from"
            ) from exc
    prompt_ids = [text_to_token_ids(text, tokenizer) for text in input_texts]  # each (1, n_i)
    responses = [None] * len(entries)
    context_size = model.cfg["context_length"]  # the number of positions the model knows

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(entries), desc="Generating responses", disable=not progress)
    try:
        for group in _length_groups([ids.shape[1] for ids in prompt_ids], batch_size):
            batch = torch.cat([prompt_ids[i] for i in group]).to(device)  # (b, n)
            n = batch.shape[1]
            out = generate(model, batch, max_new_tokens=max_new_tokens,
                           context_size=context_size, temperature=0.0, eos_id=eos_id)
            for row, i in zip(out.tolist(), group):
                new = row[n:]
                if eos_id is not None and eos_id in new:
                    # In a batch, a row that ended is padded with eos_id until all end.
                    new = new[:new.index(eos_id)]
                generated_text = token_ids_to_text(torch.tensor(row[:n] + new), tokenizer)
                responses[i] = extract_response(generated_text, input_texts[i])
            bar.update(len(group))
    finally:
        bar.close()
        model.train(was_training)
    return [{**entry, "model_response": response} for entry, response in zip(entries, responses)]


def _find_unserialisable(entries):
    """(index, field, value) of the first value json cannot write, or None."""
    for i, entry in enumerate(entries):
        items = entry.items() if isinstance(entry, dict) else [(None, entry)]
        for key, value in items:
            try:
                json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError):
                return i, key, value
    return None


def save_responses(entries, path):
    """Write `entries` (with their responses) to `path` as JSON, atomically.

    Indented by 4 like the book's `instruction-data-with-response.json`, non-ASCII
    kept readable. The file is written to a temporary name and renamed, so a failure
    leaves the previous file as it was. A value JSON cannot hold raises `DataError`
    naming the entry and the field.

    Not in a notebook: the pipeline writes a run folder's responses with it; notebook 07
    reads them.
    """
    entries = list(entries)
    bad = _find_unserialisable(entries)
    if bad is not None:
        i, key, value = bad
        where = f"entry {i}" + (f", field {key!r}" if key is not None else "")
        raise DataError(
            f"cannot save responses to {path}: {where} holds a {type(value).__name__}, "
            "which JSON cannot store (convert it to str, int, float, list or dict)"
        )
    atomic_write_json(path, entries, indent=4)
