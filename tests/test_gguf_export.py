import os
import stat

import numpy as np
import pytest
import torch

from ftlib.plumbing.errors import FtlibError
from ftlib.data.instructions import ALPACA_PREAMBLE, format_input
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.model.export import chat_template
from ftlib.model.generate import generate
from ftlib.model.gguf_export import GGUF_FILES, export_gguf, main_export_gguf
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from tests.test_export import TINY_LIKE_CONFIG, fine_tuned_model, write_run

gguf = pytest.importorskip("gguf")


def read_back(path):
    """{name: numpy array in PyTorch's (out, in) order}, {key: value} of a GGUF file."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.asarray(t.data).reshape(list(reversed(t.shape.tolist()))) for t in reader.tensors}
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        fields[name] = field.contents()
    return tensors, fields


@pytest.mark.parametrize("cfg", [TOY_CONFIG, TINY_LIKE_CONFIG], ids=["qkv_bias", "no_qkv_bias"])
def test_gguf_tensors_and_metadata(tmp_path, cfg):
    model = fine_tuned_model(cfg)
    out = export_gguf(write_run(tmp_path / "run", model), tmp_path / "gguf")
    assert {p.name for p in out.iterdir()} == GGUF_FILES
    tensors, fields = read_back(out / "model.gguf")
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.context_length"], fields["gpt2.embedding_length"], fields["gpt2.block_count"],
            fields["gpt2.feed_forward_length"], fields["gpt2.attention.head_count"]) == (64, 32, 2, 128, 2)
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == 50256
    tokens = fields["tokenizer.ggml.tokens"]
    tok = get_gpt2_tokenizer()
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>" and tokens[15496] == "Hello"
    assert tokens[995] == "\u0120world" and tok.decode([995]) == " world"  # byte-level: Ġ is the space
    assert fields["tokenizer.ggml.token_type"][50256] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.merges"][0] == "\u0120 t"
    assert len(fields["tokenizer.ggml.merges"]) == 50000

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    expected = {"token_embd.weight": sd["tok_emb.weight"], "position_embd.weight": sd["pos_emb.weight"],
                "output_norm.weight": sd["final_norm.scale"], "output_norm.bias": sd["final_norm.shift"],
                "output.weight": sd["out_head.weight"]}
    for i in range(cfg["n_layers"]):
        p = f"trf_blocks.{i}."
        att = [sd[p + f"att.W_{n}.weight"] for n in ("query", "key", "value")]
        bias = [sd.get(p + f"att.W_{n}.bias", np.zeros(cfg["emb_dim"], np.float32)) for n in ("query", "key", "value")]
        expected.update({
            f"blk.{i}.attn_norm.weight": sd[p + "norm1.scale"], f"blk.{i}.attn_norm.bias": sd[p + "norm1.shift"],
            f"blk.{i}.attn_qkv.weight": np.concatenate(att), f"blk.{i}.attn_qkv.bias": np.concatenate(bias),
            f"blk.{i}.attn_output.weight": sd[p + "att.out_proj.weight"],
            f"blk.{i}.attn_output.bias": sd[p + "att.out_proj.bias"],
            f"blk.{i}.ffn_norm.weight": sd[p + "norm2.scale"], f"blk.{i}.ffn_norm.bias": sd[p + "norm2.shift"],
            f"blk.{i}.ffn_up.weight": sd[p + "ff.layers.0.weight"], f"blk.{i}.ffn_up.bias": sd[p + "ff.layers.0.bias"],
            f"blk.{i}.ffn_down.weight": sd[p + "ff.layers.2.weight"], f"blk.{i}.ffn_down.bias": sd[p + "ff.layers.2.bias"],
        })
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    # GGUF's shape is fastest dimension first: a (out, in) weight is [in, out]
    reader = gguf.GGUFReader(out / "model.gguf")
    shapes = {t.name: t.shape.tolist() for t in reader.tensors}
    assert shapes["blk.0.attn_qkv.weight"] == [32, 96] and shapes["token_embd.weight"] == [32, 50257]


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_modelfile_template_and_chat_template(tmp_path, style):
    run = write_run(tmp_path / "run", fine_tuned_model(TOY_CONFIG), prompt_style=style)
    lines = []
    out = main_export_gguf(run, tmp_path / "gguf", log=lines.append)
    assert "float32" in lines[0]
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # render the Go template by hand (no system message): the prompt ftlib trained on
    rendered = template.replace("{{ .Prompt }}", "Name a color.")
    if style == "alpaca":
        rendered = rendered.replace("{{ if .System }}{{ .System }}{{ else }}" + ALPACA_PREAMBLE + "{{ end }}",
                                    ALPACA_PREAMBLE)
        assert 'PARAMETER stop "### Instruction:"' in text
    header = "\n\n### Response:\n" if style == "alpaca" else "\n<|assistant|>:\n"
    assert rendered == format_input({"instruction": "Name a color.", "input": ""}, style) + header
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER temperature 0" in text
    _, fields = read_back(out / "model.gguf")
    assert fields["tokenizer.chat_template"] == chat_template(style)  # the export-hf one


def test_gguf_export_refuses_other_folders_and_uses_umask(tmp_path):
    run = write_run(tmp_path / "run", fine_tuned_model(TOY_CONFIG))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FtlibError, match="not empty"):
        export_gguf(run, mine)
    with pytest.raises(FtlibError, match="would hold the run"):
        export_gguf(run, tmp_path)
    old = os.umask(0o022)
    try:
        out = export_gguf(run, tmp_path / "gguf")
        out = export_gguf(run, out)  # an earlier export is replaced
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf", "mine", "run"]


@pytest.mark.parametrize("cfg", [TOY_CONFIG, TINY_LIKE_CONFIG], ids=["qkv_bias", "no_qkv_bias"])
def test_llama_cpp_greedy_tokens_equal_ftlib(tmp_path, cfg):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (not a dependency)")
    model = fine_tuned_model(cfg)
    out = export_gguf(write_run(tmp_path / "run", model), tmp_path / "gguf")
    tokenizer = get_gpt2_tokenizer()
    prompt = format_input({"instruction": "Name a color.", "input": ""}) + "\n\n### Response:\n"
    ids = tokenizer.encode(prompt)
    ours = generate(model, torch.tensor([ids]), max_new_tokens=10, context_size=64)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=64, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
    theirs = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        theirs.append(token)
        if len(theirs) == 10:
            break
    assert theirs == ours
