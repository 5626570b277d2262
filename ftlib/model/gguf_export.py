"""Export a fine-tuned GPTModel as a GGUF file (llama.cpp's "gpt2" architecture) and an Ollama Modelfile.

`python -m ftlib export-gguf runs/latest gguf-model/` writes `model.gguf` (float32,
so the numbers are exactly the model's) and `Modelfile` (`ollama create NAME -f
gguf-model/Modelfile`). The tensors start from the Hugging Face layout of
ftlib/model/export.py (one query/key/value matrix, zero biases for a model without
them) and are renamed to GGUF's names. GGUF lists a tensor's dimensions fastest
first, so a numpy array (out, in) is stored as [in, out], the order llama.cpp's
matrix multiplication expects: Hugging Face's (in, out) weights are transposed back.

Not in a notebook: the CLI's `python -m ftlib export-gguf RUN OUT`.
"""

import json
from pathlib import Path

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.model.export import chat_template, gpt_to_hf_state_dict, export_folder, response_header
from ftlib.model.files import load_run_model
from ftlib.data.instructions import ALPACA_PREAMBLE, format_input
from ftlib.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, GPT2_N_VOCAB, bundled_gpt2_files

GGUF_MARKER = "ftlib-gguf-export.json"
GGUF_FILES = {"model.gguf", "Modelfile", GGUF_MARKER}

# Hugging Face name (after "transformer.") -> GGUF name, and whether the (in, out)
# Conv1D weight must be transposed to (out, in).
_BLOCK_NAMES = {
    "ln_1.weight": ("attn_norm.weight", False), "ln_1.bias": ("attn_norm.bias", False),
    "attn.c_attn.weight": ("attn_qkv.weight", True), "attn.c_attn.bias": ("attn_qkv.bias", False),
    "attn.c_proj.weight": ("attn_output.weight", True), "attn.c_proj.bias": ("attn_output.bias", False),
    "ln_2.weight": ("ffn_norm.weight", False), "ln_2.bias": ("ffn_norm.bias", False),
    "mlp.c_fc.weight": ("ffn_up.weight", True), "mlp.c_fc.bias": ("ffn_up.bias", False),
    "mlp.c_proj.weight": ("ffn_down.weight", True), "mlp.c_proj.bias": ("ffn_down.bias", False),
}
_TOP_NAMES = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
              "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}


def gguf_tensors(model):
    """{GGUF name: float32 numpy array} of a GPTModel (LoRA merged), `output.weight` always written.

    Not in a notebook: behind `python -m ftlib export-gguf`.
    """
    state = gpt_to_hf_state_dict(model)
    tensors = {}
    for key, value in state.items():
        array = value.detach().float().cpu().numpy()
        if key == "lm_head.weight":
            tensors["output.weight"] = array
            continue
        name = key.removeprefix("transformer.")
        if name.startswith("h."):
            _, i, rest = name.split(".", 2)
            gguf_name, transpose = _BLOCK_NAMES[rest]
            tensors[f"blk.{i}.{gguf_name}"] = array.T.copy() if transpose else array
        else:
            tensors[_TOP_NAMES[name]] = array
    tensors.setdefault("output.weight", tensors["token_embd.weight"])  # tied: written anyway
    return tensors


def gpt2_vocab():
    """(tokens, merges) of GPT-2 as GGUF stores them: byte-level strings by id, "a b" merge lines.

    Not in a notebook: behind `python -m ftlib export-gguf`.
    """
    encoder_json, vocab_bpe = bundled_gpt2_files()
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise FtlibError(f"cannot read the bundled GPT-2 tokenizer files: {exc}") from exc
    tokens = [None] * len(encoder)
    for token, i in encoder.items():
        tokens[i] = token
    merges = [line for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    return tokens, merges


def modelfile(style, context_length):
    """The Ollama Modelfile: the prompt style in Go template syntax, stops, greedy decoding.

    Not in a notebook: behind `python -m ftlib export-gguf`.
    """
    before, after = format_input({"instruction": "\x00", "input": ""}, style).split("\x00")
    if style == "alpaca":
        before = "{{ if .System }}{{ .System }}{{ else }}" + ALPACA_PREAMBLE + "{{ end }}" + before[len(ALPACA_PREAMBLE):]
        stops = [END_OF_TEXT, "### Instruction:"]
    else:
        stops = [END_OF_TEXT, "<|user|>"]
    template = before + "{{ .Prompt }}" + after + response_header(style)
    lines = ["FROM ./model.gguf", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


def write_gguf(model, path, style="alpaca", name="ftlib-gpt2"):
    """Write `model` (a GPTModel) as a GGUF file of llama.cpp's "gpt2" architecture at `path`.

    Not in a notebook: behind `python -m ftlib export-gguf`.
    """
    import gguf

    cfg = model.cfg
    if cfg["vocab_size"] != GPT2_N_VOCAB:
        raise ConfigError(f"vocab_size {cfg['vocab_size']}: a GGUF export needs GPT-2's {GPT2_N_VOCAB} tokens")
    tokens, merges = gpt2_vocab()
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(name)
    writer.add_context_length(cfg["context_length"])
    writer.add_embedding_length(cfg["emb_dim"])
    writer.add_block_count(cfg["n_layers"])
    writer.add_feed_forward_length(4 * cfg["emb_dim"])
    writer.add_head_count(cfg["n_heads"])
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i == END_OF_TEXT_ID else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(END_OF_TEXT_ID)
    writer.add_eos_token_id(END_OF_TEXT_ID)
    writer.add_pad_token_id(END_OF_TEXT_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template(style))
    for tensor_name, array in gguf_tensors(model).items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_out_dir(out_dir, source):
    from ftlib.plumbing.runfolder import check_out_path

    check_out_path(out_dir, [("the run it exports", source)], option="export folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise FtlibError(f"export folder {out_dir} is a file; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / GGUF_MARKER).is_file():
            raise FtlibError(f"export folder {out_dir} is not empty and is not an earlier GGUF export "
                             f"(no {GGUF_MARKER}); choose a new or empty folder")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in GGUF_FILES)
        if foreign:
            raise FtlibError(f"export folder {out_dir} holds {', '.join(map(repr, foreign[:3]))}, which an "
                             "export did not write; move those files or choose another folder")


def export_gguf(run_dir, out_dir):
    """Export a run folder's model to `out_dir`/model.gguf and `out_dir`/Modelfile; return `out_dir`.

    Written whole or not at all (a temporary folder beside `out_dir`, then renamed);
    an existing `out_dir` is replaced only if empty or an earlier GGUF export.

    Not in a notebook: the CLI's `python -m ftlib export-gguf RUN OUT`.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, run_dir)
    model, run_config = load_run_model(run_dir)
    style = run_config.get("prompt_style", "alpaca")
    with export_folder(out_dir) as tmp:
        write_gguf(model, tmp / "model.gguf", style=style)
        (tmp / "Modelfile").write_text(modelfile(style, model.cfg["context_length"]), encoding="utf-8")
        (tmp / GGUF_MARKER).write_text(json.dumps({"source": str(run_dir), "prompt_style": style}) + "\n")
    return out_dir


def main_export_gguf(run_dir, out_dir, log=print):
    """The CLI's `python -m ftlib export-gguf RUN_DIR OUT_DIR`: export and say what was written.

    Not in a notebook: the CLI's `python -m ftlib export-gguf RUN OUT`.
    """
    out = export_gguf(run_dir, out_dir)
    size = (out / "model.gguf").stat().st_size
    log(f"Exported {run_dir} to {out / 'model.gguf'} (GGUF, gpt2 architecture, float32, {size / 1e6:.1f} MB)")
    log(f"Ollama: cd {out} && ollama create my-model -f Modelfile && ollama run my-model")
    return out
