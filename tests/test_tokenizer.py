"""The offline GPT-2 tokenizer: same ids as the book, built with no network."""

import hashlib
import shutil
import socket

import pytest

from ftlib.plumbing.errors import FtlibError
from ftlib.data.tokenizer import (
    END_OF_TEXT,
    END_OF_TEXT_ID,
    ENCODER_JSON_SHA256,
    bundled_gpt2_files,
    get_gpt2_tokenizer,
    load_gpt2_encoding,
)

BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
BOOK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]


def test_book_example_ids_and_round_trip():
    tokenizer = get_gpt2_tokenizer()
    ids = tokenizer.encode(BOOK_TEXT, allowed_special={END_OF_TEXT})
    assert ids == BOOK_IDS
    assert tokenizer.decode(ids) == BOOK_TEXT


def test_vocab_and_end_of_text():
    tokenizer = get_gpt2_tokenizer()
    assert tokenizer.name == "gpt2"
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == END_OF_TEXT_ID == 50256
    assert tokenizer.decode([END_OF_TEXT_ID]) == END_OF_TEXT
    # Without allowed_special, tiktoken refuses the special token in text.
    with pytest.raises(ValueError):
        tokenizer.encode(END_OF_TEXT)


def test_cached():
    assert get_gpt2_tokenizer() is get_gpt2_tokenizer()


def test_unicode_round_trip():
    tokenizer = get_gpt2_tokenizer()
    text = "Größe: 3.5 km²  —  naïve café\n\n### Response:\n日本語 🙂"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_matches_tiktoken_split_pattern():
    # tiktoken_ext is the plugin that defines "gpt2"; importing it fetches nothing.
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert get_gpt2_tokenizer()._pat_str == openai_public.r50k_pat_str


def test_builds_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files themselves, no cache
    encoding = load_gpt2_encoding(*bundled_gpt2_files())
    assert encoding.encode("Hello, world") == [15496, 11, 995]


def test_tampered_file_is_refused(tmp_path):
    encoder_json, vocab_bpe = bundled_gpt2_files()
    tampered = tmp_path / "encoder.json"
    shutil.copyfile(encoder_json, tampered)
    with open(tampered, "ab") as f:
        f.write(b" ")
    with pytest.raises(FtlibError) as excinfo:
        load_gpt2_encoding(tampered, vocab_bpe)
    message = str(excinfo.value)
    assert str(tampered) in message
    assert ENCODER_JSON_SHA256 in message  # what tiktoken expects
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() in message  # what we found


def test_missing_file_is_refused(tmp_path):
    encoder_json, _ = bundled_gpt2_files()
    missing = tmp_path / "vocab.bpe"
    with pytest.raises(FtlibError, match="vocab.bpe"):
        load_gpt2_encoding(encoder_json, missing)
