"""Online GPT-2 from Hugging Face's model.safetensors, and the model names' aliases,
against a real HTTP server on 127.0.0.1 serving a toy GPT-2 under a real size's name."""

import json

import pytest
import torch

from ftlib.classroom.serve import serve_directory
from ftlib.classroom.toy_checkpoint import TOY_CONFIG, write_hf_safetensors
from ftlib.cli import main
from ftlib.config import GPT2_DEFAULTS, MODEL_ALIASES, MODELS, ModelEntry, RunConfig, resolve_config
from ftlib.model.gpt import GPTModel
from ftlib.model.weights import download_and_load_hf_gpt2, gpt2_safetensors_url
from ftlib.plumbing.errors import ConfigError, DownloadError

from helpers import quick_args


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A toy GPT-2 served as 124M/model.safetensors; "gpt2-small (124M)" made that toy
    size. Yields (server, the served model)."""
    torch.manual_seed(0)
    model = GPTModel(TOY_CONFIG)
    write_hf_safetensors(tmp_path / "mirror" / "124M" / "model.safetensors", model)
    monkeypatch.setitem(MODELS, "gpt2-small (124M)",
                        ModelEntry("gpt2", dict(TOY_CONFIG), GPT2_DEFAULTS, download="124M"))
    with serve_directory(tmp_path / "mirror") as server:
        monkeypatch.setenv("FTLIB_GPT2_BASE_URL", server.url)
        yield server, model


def _equal(loaded, served):
    """The loaded weights are the served ones (GPT-2's output head: its token embedding)."""
    want = {**served.state_dict(), "out_head.weight": served.tok_emb.weight}
    return all(torch.equal(tensor, want[name]) for name, tensor in loaded.state_dict().items())


def test_urls_of_hugging_face_and_of_a_mirror(monkeypatch):
    monkeypatch.delenv("FTLIB_GPT2_BASE_URL", raising=False)
    assert gpt2_safetensors_url("355M") == \
        "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors"
    assert gpt2_safetensors_url("124M", "http://m:8000/gpt2/") == "http://m:8000/gpt2/124M/model.safetensors"


def test_cli_loads_the_served_weights(served, small_data, tmp_path, capsys):
    from ftlib.pipeline import build_model

    server, model = served
    out, weights = tmp_path / "run", tmp_path / "gpt2"
    weights.mkdir()
    assert main(quick_args(small_data, out, "--model", "gpt2", "--max-steps", "1",
                           "--weights-dir", str(weights))) == 0
    assert "Loaded OpenAI's pretrained gpt2-small (124M) from" in capsys.readouterr().out
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["model"], recorded["weights_source"]) == ("gpt2-small (124M)", "safetensors")
    assert (weights / "124M" / "model.safetensors").read_bytes() == \
        (server.root / "124M" / "model.safetensors").read_bytes()
    loaded = build_model(resolve_config(RunConfig(model="openai-community/gpt2", weights_dir=weights)),
                         log=lambda *a: None)
    assert _equal(loaded, model)


def test_interrupted_download_resumes(served, tmp_path):
    server, model = served
    server.fail_after_bytes = 3_000_000  # the file is ~6.5 MB
    with pytest.raises(DownloadError, match="interrupted") as err:
        download_and_load_hf_gpt2(GPTModel(TOY_CONFIG), "124M", tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "124M" / "model.safetensors").exists()
    server.fail_after_bytes = None
    loaded = GPTModel(TOY_CONFIG)
    download_and_load_hf_gpt2(loaded, "124M", tmp_path, progress=False)
    assert [r for r in server.requests if r[0] == "GET"][-1] == ("GET", "/124M/model.safetensors",
                                                                 "bytes=3000000-")
    assert _equal(loaded, model)


@pytest.mark.parametrize("body,reason", [(b"<!doctype html><html>Sign in</html>", "not a safetensors"),
                                         (None, "not a safetensors"), ("other size", "shape mismatch")])
def test_a_wrong_file_is_a_clear_error_and_deleted(served, tmp_path, body, reason):
    server, _ = served
    path = server.root / "124M" / "model.safetensors"
    if body is None:  # cut short, served whole
        path.write_bytes(path.read_bytes()[:100_000])
    elif body == "other size":
        write_hf_safetensors(path, GPTModel({**TOY_CONFIG, "emb_dim": 16}))
    else:
        path.write_bytes(body)
    with pytest.raises(DownloadError, match=reason) as err:
        download_and_load_hf_gpt2(GPTModel(TOY_CONFIG), "124M", tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message and "deleted" in message and server.url in message
    assert not (tmp_path / "124M" / "model.safetensors").exists()


@pytest.mark.parametrize("alias,name", list(MODEL_ALIASES.items()))
def test_each_alias_resolves_and_print_config_shows_the_name(alias, name, capsys):
    assert resolve_config(RunConfig(model=alias)).model == name
    assert main(["finetune", "--print-config", "--model", alias]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == name


def test_unknown_name_lists_names_and_aliases(capsys):
    with pytest.raises(ConfigError, match="openai-community/gpt2-xl"):
        resolve_config(RunConfig(model="gpt3"))
    assert main(["finetune", "--print-config", "--model", "gpt3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gpt3'" in err and "gpt2-medium (355M)" in err and "355M," in err
