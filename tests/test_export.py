import json
import os
import stat

import pytest
import torch

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.model.export import EXPORT_FILES, EXPORT_MARKER, export_hf, gpt_to_hf_state_dict, main_export
from ftlib.model.generate import generate
from ftlib.model.lora import add_lora
from ftlib.model.gpt import GPTModel, TINY_CONFIG
from ftlib.model.files import load_run_model
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.classroom.toy_checkpoint import TOY_CONFIG

# Like the tiny config (no query/key/value biases) but as small as the toy model.
TINY_LIKE_CONFIG = {**TOY_CONFIG, "qkv_bias": TINY_CONFIG["qkv_bias"]}
assert TINY_LIKE_CONFIG["qkv_bias"] is False

TEXTS = [
    "Below is an instruction that describes a task.\n\n### Instruction:\nRewrite it.",
    "Hello, world! It's 2024 — héllo   wörld\t\ttabs\n\n\n",
    "  leading spaces, <|endoftext|> and a trailing space ",
]


@pytest.fixture
def hf(monkeypatch):
    """transformers, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return pytest.importorskip("transformers")


def fine_tuned_model(cfg, seed=123, untie=True):
    """A GPTModel whose output head is tied to tok_emb (as loaded), then moved away from it."""
    torch.manual_seed(seed)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        model.out_head.weight.copy_(model.tok_emb.weight)
        if untie:  # what fine-tuning does: the two matrices drift apart
            model.out_head.weight.add_(0.05 * torch.randn_like(model.out_head.weight))
        for p in model.parameters():  # larger weights: clearer argmax, stronger check
            p.mul_(3)
    return model


def write_run(run_dir, model, **extra):
    """A run folder as `python -m ftlib finetune` writes it (config.json + model.pth)."""
    run_dir.mkdir(parents=True)
    torch.save(model.state_dict(), run_dir / "model.pth")
    config = {"model": "toy", "model_config": model.cfg, "seed": 123, **extra}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def hf_logits(hf, out_dir, ids):
    model, info = hf.GPT2LMHeadModel.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    with torch.no_grad():
        return model, model(ids).logits


@pytest.mark.parametrize("cfg", [TOY_CONFIG, TINY_LIKE_CONFIG], ids=["qkv_bias", "no_qkv_bias"])
def test_export_gives_same_logits_and_untied_head(hf, tmp_path, cfg):
    model = fine_tuned_model(cfg)
    run = write_run(tmp_path / "run", model)
    out = export_hf(run, tmp_path / "hf")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["tie_word_embeddings"] is False
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 2, 32, 64)

    ids = torch.randint(0, cfg["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    hf_model, logits = hf_logits(hf, out, ids)
    with torch.no_grad():
        ours = model(ids)
    assert (logits - ours).abs().max() < 1e-5
    # transformers kept our separate output layer rather than tying it to wte
    assert hf_model.lm_head.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(hf_model.lm_head.weight, model.out_head.weight, rtol=0, atol=0)


def test_tied_model_is_exported_tied(hf, tmp_path):
    model = fine_tuned_model(TOY_CONFIG, untie=False)  # e.g. pretrained GPT-2, not fine-tuned
    run = write_run(tmp_path / "run", model)
    out = export_hf(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in gpt_to_hf_state_dict(model)
    ids = torch.arange(10).unsqueeze(0)
    _, logits = hf_logits(hf, out, ids)
    with torch.no_grad():
        assert (logits - model(ids)).abs().max() < 1e-5


def test_greedy_text_and_tokenizer_match(hf, tmp_path):
    model = fine_tuned_model(TOY_CONFIG)
    out = export_hf(write_run(tmp_path / "run", model), tmp_path / "hf")
    tokenizer = get_gpt2_tokenizer()
    hf_model = hf.GPT2LMHeadModel.from_pretrained(out).eval()

    for cls in (hf.GPT2Tokenizer, hf.AutoTokenizer):
        hf_tok = cls.from_pretrained(out)
        assert hf_tok.eos_token_id == 50256 and hf_tok.model_max_length == 64
        for text in TEXTS:
            ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
            assert hf_tok.encode(text) == ids, text
            assert hf_tok.decode(ids) == tokenizer.decode(ids) == text

    prompt = "### Instruction:\nName a color.\n\n### Response:\n"
    idx = torch.tensor([tokenizer.encode(prompt)])
    ours = generate(model, idx, max_new_tokens=15, context_size=TOY_CONFIG["context_length"])
    with torch.no_grad():
        theirs = hf_model.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                   max_new_tokens=15, eos_token_id=None)
    assert theirs.tolist() == ours.tolist()
    assert ours.shape[1] == idx.shape[1] + 15
    assert hf_tok.decode(theirs[0]) == tokenizer.decode(ours[0].tolist())


def test_lora_run_is_exported_merged(hf, tmp_path):
    torch.manual_seed(123)
    model = GPTModel(TOY_CONFIG).eval()
    with torch.no_grad():
        model.out_head.weight.copy_(model.tok_emb.weight)  # tied, as pretrained GPT-2 loads
    add_lora(model, rank=4, alpha=8)
    ids = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(ids)  # B = 0: the model before LoRA training
        for name, p in model.named_parameters():
            if name.endswith(".lora.B"):
                p.normal_(std=0.005)  # as if trained
    run = write_run(tmp_path / "run", model, lora_rank=4, lora_alpha=8)
    assert any(k.endswith(".lora.A") for k in torch.load(run / "model.pth", weights_only=True))

    merged, _ = load_run_model(run)
    assert list(merged.state_dict()) == list(GPTModel(TOY_CONFIG).state_dict())
    out = export_hf(run, tmp_path / "hf")
    _, logits = hf_logits(hf, out, ids)
    with torch.no_grad():
        assert (logits - merged(ids)).abs().max() < 1e-5
        # merging changes only float rounding: W x + alpha (x A) B == (W + alpha (A B).T) x
        torch.testing.assert_close(logits, model(ids), rtol=1e-4, atol=1e-4)
        assert (logits - base).abs().max() > 1e-2  # the LoRA update made it into the export
    # LoRA trains out_head too (as in the book), so the merged head is no longer tied
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def test_lora_run_without_alpha_is_refused(tmp_path):
    model = GPTModel(TOY_CONFIG)
    add_lora(model, rank=2, alpha=2)
    run = write_run(tmp_path / "run", model, lora_rank=2)
    with pytest.raises(ConfigError, match="lora_alpha"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    (run / "config.json").write_text(json.dumps(
        {"model_config": TOY_CONFIG, "lora_rank": 3, "lora_alpha": 2}))
    with pytest.raises(ConfigError, match="rank 2"):
        export_hf(run, tmp_path / "hf")


def test_export_files_and_reexport(tmp_path):
    model = fine_tuned_model(TOY_CONFIG)
    run = write_run(tmp_path / "run", model)
    lines = []
    out = main_export(run, tmp_path / "hf", log=lines.append)
    names = {p.name for p in out.iterdir()}
    assert names == EXPORT_FILES == {"config.json", "model.safetensors", "generation_config.json", "vocab.json",
                                     "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                                     "chat_template.jinja", "README.md", EXPORT_MARKER}
    assert "separate from" in lines[0]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == 64 and tok_cfg["eos_token"] == "<|endoftext|>"
    assert (out / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert len(json.loads((out / "vocab.json").read_text(encoding="utf-8"))) == 50257

    # An earlier export is replaced (a file of someone else's in it is refused: see below);
    # nothing is left beside it.
    (out / "config.json").write_text("from an older export")
    export_hf(run, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    # An empty folder is fine too.
    (tmp_path / "empty").mkdir()
    export_hf(run, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_export_refuses_to_overwrite_other_folders(tmp_path):
    run = write_run(tmp_path / "run", fine_tuned_model(TOY_CONFIG))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FtlibError, match="not empty"):
        export_hf(run, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(FtlibError, match="would hold the run it exports"):
        export_hf(run, run)  # the run folder itself
    with pytest.raises(FtlibError, match="would hold the run it exports"):
        export_hf(run, tmp_path)  # a folder holding it
    export_hf(run, tmp_path / "hf")  # an earlier export, and a file of the user's put in it
    (tmp_path / "hf" / "mine.txt").write_text("mine")
    with pytest.raises(FtlibError, match="'mine.txt', which an export did not write"):
        export_hf(run, tmp_path / "hf")
    assert (tmp_path / "hf" / "mine.txt").read_text() == "mine"
    assert {p.name for p in (tmp_path / "hf").iterdir()} == EXPORT_FILES | {"mine.txt"}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FtlibError, match="is a file"):
        export_hf(run, tmp_path / "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "hf", "mine", "run"]


def test_bad_run_folders_raise_ftlib_errors(tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(FtlibError, match="not found"):
        export_hf(tmp_path / "nope", out)

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FtlibError, match="config.json not found"):
        export_hf(run, out)
    (run / "config.json").write_text("{not json")
    with pytest.raises(FtlibError, match="not readable JSON"):
        export_hf(run, out)
    (run / "config.json").write_text(json.dumps({"model": "toy"}))
    with pytest.raises(ConfigError, match="model_config"):
        export_hf(run, out)
    (run / "config.json").write_text(json.dumps({"model_config": TOY_CONFIG}))
    with pytest.raises(FtlibError, match="model.pth not found"):
        export_hf(run, out)
    (run / "model.pth").write_bytes(b"not a zip file")
    with pytest.raises(FtlibError, match="not a readable PyTorch state_dict"):
        export_hf(run, out)
    torch.save(GPTModel({**TOY_CONFIG, "n_layers": 1}).state_dict(), run / "model.pth")
    with pytest.raises(ConfigError, match="does not fit the model_config"):
        export_hf(run, out)
    assert not out.exists()


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_chat_template_gives_ftlib_prompt(hf, tmp_path, style):
    from ftlib.data.instructions import format_input, format_response
    run = write_run(tmp_path / "run", fine_tuned_model(TOY_CONFIG), prompt_style=style)
    out = export_hf(run, tmp_path / "hf")
    tok = hf.AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id == tok.eos_token_id == 50256
    entry = {"instruction": "Name a color.\nAny one.", "input": "", "output": "Red."}
    user = [{"role": "user", "content": entry["instruction"]}]
    prompt = format_input(entry, style) + format_response({"output": ""}, style)
    assert tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == prompt
    assert tok.apply_chat_template(user, tokenize=False) == format_input(entry, style)
    example = user + [{"role": "assistant", "content": entry["output"]}]  # a training example
    assert (tok.apply_chat_template(example, tokenize=False)
            == format_input(entry, style) + format_response(entry, style) + "<|endoftext|>")
    # the same ids as ftlib's tokenizer gives the prompt
    ids = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == get_gpt2_tokenizer().encode(prompt)
    # the template file and tokenizer_config.json hold the same template
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == (
        out / "chat_template.jinja").read_text()
    system = [{"role": "system", "content": "You answer in one word."}] + user
    if style == "alpaca":
        assert tok.apply_chat_template(system, add_generation_prompt=True, tokenize=False) == (
            prompt.replace(prompt.split("\n\n")[0], "You answer in one word.", 1))
    else:
        with pytest.raises(Exception, match="no system message"):
            tok.apply_chat_template(system, add_generation_prompt=True, tokenize=False)


def test_pipeline_with_messages_gives_ftlib_greedy_answer(hf, tmp_path):
    from ftlib.data.instructions import format_input
    model = fine_tuned_model(TOY_CONFIG)
    tokenizer = get_gpt2_tokenizer()
    first = format_input({"instruction": "Name a color.", "input": ""}) + "\n\n### Response:\n"
    idx = torch.tensor([tokenizer.encode(first)])
    fourth = generate(model, idx, max_new_tokens=4, context_size=64)[0, -1]
    with torch.no_grad():  # a strong <|endoftext|>: the answer stops after a few tokens
        model.out_head.weight[50256] = 2 * model.out_head.weight[fourth]
    out = export_hf(write_run(tmp_path / "run", model), tmp_path / "hf")
    lengths = []
    for question in ["Name a color.", "What is 2 + 3?"]:
        prompt = format_input({"instruction": question, "input": ""}) + "\n\n### Response:\n"
        idx = torch.tensor([tokenizer.encode(prompt)])
        ours = generate(model, idx, max_new_tokens=20, context_size=64, eos_id=50256)[0, idx.shape[1]:]
        chat = hf.pipeline("text-generation", model=str(out), device="cpu")
        reply = chat([{"role": "user", "content": question}], max_new_tokens=20, do_sample=False)
        answer = reply[0]["generated_text"][-1]
        assert answer["role"] == "assistant"
        assert answer["content"] == tokenizer.decode(ours.tolist()), question
        lengths.append(len(ours))
    assert lengths[0] < 20  # stopped at <|endoftext|>, as ftlib's generation does


def test_export_files_have_the_umask_mode(tmp_path):
    run = write_run(tmp_path / "run", fine_tuned_model(TOY_CONFIG))
    old = os.umask(0o027)
    try:
        out = export_hf(run, tmp_path / "hf")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(EXPORT_FILES, 0o640)
    os.umask(0o022)
    try:
        out = export_hf(run, tmp_path / "hf")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
