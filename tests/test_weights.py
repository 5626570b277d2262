"""Loading GPT-2 weights: OpenAI's TensorFlow checkpoints and Hugging Face safetensors.

The reference is Hugging Face's `GPT2LMHeadModel`: for the same (random) weights,
GPTModel must give the same logits, whichever path the weights took. The OpenAI
files are served by a real HTTP server on 127.0.0.1, so the download code runs too.
"""

import json

import numpy as np
import pytest
import torch

from ftlib.plumbing.errors import ConfigError, DownloadError
from ftlib.model.gpt2_names import gpt_to_params, hf_state_dict_to_params
from ftlib.model.gpt import GPTModel
from ftlib.classroom.serve import serve_directory
from ftlib.classroom.toy_checkpoint import TOY_CONFIG, TOY_SIZE, write_hf_safetensors, write_openai_checkpoint
from ftlib.model.weights import (
    ALLOWED_SIZES,
    GPT2_BACKUP_URL,
    GPT2_FILENAMES,
    GPT2_URL,
    assign,
    config_from_settings,
    download_and_load_gpt2,
    load_gpt2_params,
    load_hf_safetensors_into_gpt,
    load_weights_into_gpt,
)

transformers = pytest.importorskip("transformers")

SIZES = (*ALLOWED_SIZES, TOY_SIZE)  # the real sizes plus the test's tiny one
LOADERS = pytest.mark.parametrize("load", [load_weights_into_gpt, load_gpt2_params],
                                  ids=["book", "table"])
DATA_FILE = "model.ckpt.data-00000-of-00001"


def _hf_config():
    return transformers.GPT2Config(
        vocab_size=TOY_CONFIG["vocab_size"], n_positions=TOY_CONFIG["context_length"],
        n_embd=TOY_CONFIG["emb_dim"], n_layer=TOY_CONFIG["n_layers"],
        n_head=TOY_CONFIG["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Hugging Face's GPT-2 with random weights, saved by Hugging Face itself.

    Every tensor is random (layer-norm scales around 1, biases non-zero), so a
    swapped bias, an untransposed weight or a mixed-up g/b changes the logits.
    """
    torch.manual_seed(123)
    hf = transformers.GPT2LMHeadModel(_hf_config()).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    hf_dir = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(hf_dir)
    ids = torch.randint(0, TOY_CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = hf(ids).logits
    return {"dir": hf_dir, "ids": ids, "logits": logits}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, reference):
    """A folder laid out like OpenAI's storage: `toy/` with the seven files.

    Written once per session from the Hugging Face reference weights, renamed to
    OpenAI's variables without passing through GPTModel (both store (in, out)
    weights), so the TensorFlow path is checked against Hugging Face on its own.
    """
    from safetensors.torch import load_file

    params = hf_state_dict_to_params(load_file(str(reference["dir"] / "model.safetensors")))
    root = tmp_path_factory.mktemp("mirror")
    write_openai_checkpoint(root / TOY_SIZE, cfg=TOY_CONFIG, params=params)
    return root


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids)


def _load_toy(models_dir, url, **kwargs):
    return download_and_load_gpt2(
        TOY_SIZE, models_dir, base_url=url, progress=False, allowed_sizes=SIZES, **kwargs
    )


def _gets(server):
    return [path for method, path, _ in server.requests if method == "GET"]


# --- conformance with Hugging Face ------------------------------------------------

def test_safetensors_path_matches_transformers(reference):
    model = GPTModel(TOY_CONFIG)
    load_hf_safetensors_into_gpt(model, reference["dir"] / "model.safetensors")
    torch.testing.assert_close(_logits(model, reference["ids"]), reference["logits"], atol=1e-5, rtol=0)


def test_openai_checkpoint_downloaded_and_loaded_matches_transformers(mirror, reference, tmp_path):
    with serve_directory(mirror) as server:
        settings, params = _load_toy(tmp_path / "gpt2", server.url)
    assert settings == {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 2, "n_layer": 2}
    assert params["blocks"][0]["attn"]["c_attn"]["w"].shape == (32, 96)  # squeezed (1, d, 3d)
    assert sorted(p.name for p in (tmp_path / "gpt2" / TOY_SIZE).iterdir()) == sorted(GPT2_FILENAMES)

    model = GPTModel(config_from_settings(settings))
    load_weights_into_gpt(model, params)
    torch.testing.assert_close(_logits(model, reference["ids"]), reference["logits"], atol=1e-5, rtol=0)


def test_written_safetensors_load_in_transformers(reference, tmp_path):
    model = GPTModel(TOY_CONFIG)
    load_hf_safetensors_into_gpt(model, reference["dir"] / "model.safetensors")
    write_hf_safetensors(tmp_path / "model.safetensors", model)
    _hf_config().save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = hf(reference["ids"]).logits
    torch.testing.assert_close(logits, reference["logits"], atol=1e-5, rtol=0)


def test_old_style_safetensors_keys_are_understood(reference):
    """Older files keep causal-mask buffers (`h.N.attn.bias`) and an `lm_head.weight`."""
    from safetensors.torch import load_file

    state = load_file(str(reference["dir"] / "model.safetensors"))
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    state["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = state["wte.weight"]
    model = load_gpt2_params(GPTModel(TOY_CONFIG), hf_state_dict_to_params(state))
    torch.testing.assert_close(_logits(model, reference["ids"]), reference["logits"], atol=1e-5, rtol=0)


# --- model sizes and mirrors ----------------------------------------------------

def test_unknown_size_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        download_and_load_gpt2("125M", tmp_path)
    assert "'125M'" in str(err.value)
    for size in ALLOWED_SIZES:
        assert size in str(err.value)


@pytest.mark.parametrize("size", ["../x", "..", "a/b", "a\\b"])
def test_size_that_is_a_path_is_rejected_even_if_allowed(tmp_path, size):
    with pytest.raises(ConfigError, match="unknown GPT-2 model size"):
        download_and_load_gpt2(size, tmp_path / "models", allowed_sizes=(size,))
    assert not (tmp_path / "models").exists()  # nothing created outside or inside


def test_default_mirrors_are_openai_then_the_books_backup(tmp_path, monkeypatch):
    tried = []

    def fake_download(urls, dest, **kwargs):
        tried.append(list(urls))
        raise DownloadError("offline")

    monkeypatch.delenv("FTLIB_GPT2_BASE_URL", raising=False)
    monkeypatch.setattr("ftlib.model.weights.download_first_available", fake_download)
    with pytest.raises(DownloadError):
        download_and_load_gpt2("124M", tmp_path)
    assert tried == [[f"{GPT2_URL}/124M/checkpoint", f"{GPT2_BACKUP_URL}/124M/checkpoint"]]

    monkeypatch.setenv("FTLIB_GPT2_BASE_URL", "http://mirror.local:8000/gpt2/")
    with pytest.raises(DownloadError):
        download_and_load_gpt2("355M", tmp_path)
    assert tried[-1] == ["http://mirror.local:8000/gpt2/355M/checkpoint"]


# --- downloads: skip, resume, corruption ----------------------------------------

def test_second_call_fetches_nothing_and_env_mirror_is_used(mirror, tmp_path, monkeypatch):
    with serve_directory(mirror) as server:
        monkeypatch.setenv("FTLIB_GPT2_BASE_URL", server.url)
        download_and_load_gpt2(TOY_SIZE, tmp_path, progress=False, allowed_sizes=SIZES)
        assert len(_gets(server)) == len(GPT2_FILENAMES)
        server.requests.clear()
        settings, params = download_and_load_gpt2(TOY_SIZE, tmp_path, progress=False, allowed_sizes=SIZES)
    assert _gets(server) == []  # only HEAD requests asking for sizes
    assert settings["n_layer"] == 2 and len(params["blocks"]) == 2


def test_interrupted_download_leaves_no_partial_file_and_resumes(mirror, reference, tmp_path):
    dest = tmp_path / TOY_SIZE / DATA_FILE
    with serve_directory(mirror, fail_after_bytes=3_000_000) as server:  # only the 6.5 MB file is cut
        with pytest.raises(DownloadError, match="interrupted"):
            _load_toy(tmp_path, server.url)
        assert not dest.exists()
        assert dest.with_name(DATA_FILE + ".part").stat().st_size == 3_000_000

        server.fail_after_bytes = None
        server.requests.clear()
        settings, params = _load_toy(tmp_path, server.url)
    assert ("GET", f"/{TOY_SIZE}/{DATA_FILE}", "bytes=3000000-") in server.requests
    # The files before the data file were complete; the data file resumed; the three
    # after it were never reached by the first call.
    assert _gets(server) == [
        f"/{TOY_SIZE}/{name}" for name in (DATA_FILE, "model.ckpt.index", "model.ckpt.meta", "vocab.bpe")
    ]
    model = load_weights_into_gpt(GPTModel(config_from_settings(settings)), params)
    torch.testing.assert_close(_logits(model, reference["ids"]), reference["logits"], atol=1e-5, rtol=0)


def test_truncated_checkpoint_on_disk_is_fetched_again(mirror, tmp_path):
    with serve_directory(mirror) as server:
        _load_toy(tmp_path, server.url)
        data = tmp_path / TOY_SIZE / DATA_FILE
        data.write_bytes(data.read_bytes()[:1000])  # the size no longer matches the server's
        server.requests.clear()
        settings, params = _load_toy(tmp_path, server.url)
    assert _gets(server) == [f"/{TOY_SIZE}/{DATA_FILE}"]
    assert data.stat().st_size == (mirror / TOY_SIZE / DATA_FILE).stat().st_size


def test_corrupt_checkpoint_gives_clear_error_then_is_fetched_again(mirror, reference, tmp_path):
    model_dir = tmp_path / TOY_SIZE
    with serve_directory(mirror) as server:
        _load_toy(tmp_path, server.url)
        data = model_dir / DATA_FILE
        damaged = bytearray(data.read_bytes())
        damaged[3_000_000:3_000_100] = bytes(100)  # same size: only TF's checksum can tell
        data.write_bytes(bytes(damaged))

        with pytest.raises(DownloadError) as err:
            _load_toy(tmp_path, server.url)
        message = str(err.value)
        assert str(model_dir) in message and "run again" in message
        assert not data.exists() and not (model_dir / "model.ckpt.index").exists()

        server.requests.clear()
        settings, params = _load_toy(tmp_path, server.url)
    assert sorted(_gets(server)) == sorted(
        f"/{TOY_SIZE}/{name}" for name in ("checkpoint", DATA_FILE, "model.ckpt.index")
    )
    model = load_weights_into_gpt(GPTModel(config_from_settings(settings)), params)
    torch.testing.assert_close(_logits(model, reference["ids"]), reference["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("text", ["{not json", '{"n_vocab": 50257}', "[]"])
def test_corrupt_hparams_json_is_deleted_with_a_clear_error(mirror, tmp_path, text):
    with serve_directory(mirror) as server:
        _load_toy(tmp_path, server.url)
    hparams = tmp_path / TOY_SIZE / "hparams.json"
    hparams.write_text(text)
    # The server is gone: download_file warns and keeps the files on disk.
    with pytest.warns(UserWarning), pytest.raises(DownloadError, match="hparams.json"):
        _load_toy(tmp_path, server.url)
    assert not hparams.exists()
    assert json.loads((mirror / TOY_SIZE / "hparams.json").read_text())["n_layer"] == 2


# --- the two loaders: the book's and the table's ----------------------------------

@pytest.fixture(scope="module")
def toy_params():
    torch.manual_seed(0)
    return gpt_to_params(GPTModel(TOY_CONFIG))


def _same_state_dicts(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert list(a) == list(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


def test_book_and_table_loaders_give_identical_state_dicts(mirror, toy_params, tmp_path):
    """The same `params`, downloaded from OpenAI's layout (numpy) or made by
    gpt_to_params (tensors): the book's load_weights_into_gpt and load_gpt2_params
    give the same tensors, contiguous and in float32."""
    with serve_directory(mirror) as server:
        settings, downloaded = _load_toy(tmp_path / "gpt2", server.url)
    for params in (downloaded, toy_params):
        book = load_weights_into_gpt(GPTModel(config_from_settings(settings)), params)
        table = load_gpt2_params(GPTModel(config_from_settings(settings)), params)
        _same_state_dicts(book, table)
        assert all(p.is_contiguous() and p.dtype == torch.float32 for p in book.parameters())
        # the head is a copy of the token embedding, not the same memory
        assert book.out_head.weight.data_ptr() != book.tok_emb.weight.data_ptr()
        assert book.tok_emb.weight.data_ptr() != torch.as_tensor(params["wte"]).data_ptr()


def test_books_assign_refuses_a_shape_mismatch():
    left = torch.nn.Parameter(torch.zeros(64, 32))
    with pytest.raises(ConfigError) as err:
        assign(left, np.ones((10, 32), dtype=np.float32))
    assert isinstance(err.value, ValueError)  # the book raises ValueError
    assert "(64, 32)" in str(err.value) and "(10, 32)" in str(err.value)
    with pytest.raises(ConfigError, match="qkv_bias=True"):
        assign(None, np.ones(32, dtype=np.float32))  # a bias the model was built without

    new = assign(left, np.ones((64, 32), dtype=np.float32))
    assert isinstance(new, torch.nn.Parameter) and new is not left and torch.equal(new, torch.ones(64, 32))


@LOADERS
def test_shape_mismatch_names_the_tensor_and_both_shapes(toy_params, load):
    with pytest.raises(ConfigError) as err:
        load(GPTModel({**TOY_CONFIG, "context_length": 32}), toy_params)
    assert "pos_emb.weight" in str(err.value)
    assert "(32, 32)" in str(err.value) and "(64, 32)" in str(err.value)

    bad = {**toy_params, "blocks": [dict(b) for b in toy_params["blocks"]]}
    narrow_fc = {"w": torch.zeros(32, 64), "b": torch.zeros(64)}  # 2x instead of 4x wide
    bad["blocks"][1]["mlp"] = {**bad["blocks"][1]["mlp"], "c_fc": narrow_fc}
    with pytest.raises(ConfigError) as err:
        load(GPTModel(TOY_CONFIG), bad)
    assert "trf_blocks.1.ff.layers.0.weight" in str(err.value)
    assert "(128, 32)" in str(err.value) and "(64, 32)" in str(err.value)


@LOADERS
def test_wrong_number_of_layers_missing_bias_or_entry_is_a_config_error(toy_params, load):
    with pytest.raises(ConfigError, match="2 transformer blocks.*3"):
        load(GPTModel({**TOY_CONFIG, "n_layers": 3}), toy_params)
    with pytest.raises(ConfigError, match="qkv_bias=True"):
        load(GPTModel({**TOY_CONFIG, "qkv_bias": False}), toy_params)
    without_ln_f = {key: value for key, value in toy_params.items() if key != "g"}
    with pytest.raises(ConfigError, match="lack the entry"):
        load(GPTModel(TOY_CONFIG), without_ln_f)


@LOADERS
def test_params_round_trip_and_tied_output_head(toy_params, load):
    model = load(GPTModel(TOY_CONFIG), toy_params)
    torch.testing.assert_close(model.out_head.weight, model.tok_emb.weight, atol=0, rtol=0)
    again = gpt_to_params(model)
    for key in ("wte", "wpe", "g", "b"):
        assert (again[key] == toy_params[key]).all()
    assert (again["blocks"][1]["attn"]["c_attn"]["w"] == toy_params["blocks"][1]["attn"]["c_attn"]["w"]).all()


def test_missing_safetensors_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_hf_safetensors_into_gpt(GPTModel(TOY_CONFIG), tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_hf_safetensors_into_gpt(GPTModel(TOY_CONFIG), tmp_path / "model.safetensors")
