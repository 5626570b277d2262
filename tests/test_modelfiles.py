"""ftlib.model.files: saving and loading a model's weights, one error style for every file."""

import re

import pytest
import torch

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.model.gpt import GPTModel
from ftlib.model.files import load_model_state, read_torch_file, save_model, sft_file_name

TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 32, "n_layers": 2,
        "n_heads": 2, "drop_rate": 0.0, "qkv_bias": False}


class Note:
    """Something that is not a tensor, to save with pickle."""


def _tiny_model(seed=123, cfg=TINY):
    torch.manual_seed(seed)
    return GPTModel(cfg)


def test_save_and_load_model_round_trip(tmp_path):
    path = tmp_path / "models" / sft_file_name("gpt2-medium (355M)")
    assert path.name == "gpt2-medium355M-sft.pth"
    saved = _tiny_model(seed=1)
    save_model(saved, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left

    loaded = load_model_state(_tiny_model(seed=2), path)
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name

    with pytest.raises(ConfigError, match="do not fit this model"):
        load_model_state(_tiny_model(cfg={**TINY, "emb_dim": 64}), path)
    with pytest.raises(FtlibError, match="not found"):
        load_model_state(_tiny_model(), tmp_path / "missing.pth")


def test_read_torch_file_names_the_file_in_every_error(tmp_path):
    path = tmp_path / "model.pth"
    where = re.escape(str(path))
    with pytest.raises(FtlibError, match=f"^{where} not found: rerun it$"):
        read_torch_file(path, missing_hint="rerun it")

    torch.save({"w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:40])  # cut short, as by a full disk
    with pytest.raises(FtlibError, match=f"^{where} is not a readable ftlib checkpoint \\("):
        read_torch_file(path, what="ftlib checkpoint")

    torch.save([torch.ones(3)], path)
    with pytest.raises(FtlibError, match=f"^{where} holds a list, not a PyTorch state_dict$"):
        read_torch_file(path)

    torch.save({"obj": Note()}, path)  # a class of ours: weights_only refuses to build it
    with pytest.raises(FtlibError, match="is not a readable PyTorch state_dict"):
        read_torch_file(path)

    torch.save({"w": torch.arange(3)}, path)
    assert torch.equal(read_torch_file(path)["w"], torch.arange(3))


def test_a_state_dict_saved_with_the_books_code_loads(tmp_path):
    """The book's MultiHeadAttention registers its causal mask as a buffer, so the
    model.pth its code saves holds `trf_blocks.N.att.mask` too; GPTModel makes the mask
    when needed and takes such a file as it is (strict loading, the same weights)."""
    saved = _tiny_model(seed=1)
    books = dict(saved.state_dict())
    n = TINY["context_length"]
    for i in range(TINY["n_layers"]):  # as the book's register_buffer("mask", ...) saves it
        books[f"trf_blocks.{i}.att.mask"] = torch.triu(torch.ones(n, n), diagonal=1)
    torch.save(books, tmp_path / "books-model.pth")

    loaded = load_model_state(_tiny_model(seed=2), tmp_path / "books-model.pth")
    assert loaded.state_dict().keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    torch.save({**books, "trf_blocks.0.att.extra": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="do not fit"):  # any other extra key still fails
        load_model_state(_tiny_model(), tmp_path / "other.pth")
