"""Export a fine-tuned GPTModel as a Hugging Face GPT-2 folder (`GPT2LMHeadModel`).

`python -m ftlib export-hf runs/latest hf-model/` writes a folder that
`transformers` loads with `GPT2LMHeadModel.from_pretrained("hf-model")` and
`GPT2Tokenizer.from_pretrained("hf-model")`, offline, with the same logits as
our model. This module writes the files itself; it never imports transformers.

The tensors are renamed and reshaped by the one table of ftlib/model/gpt2_names.py
(Hugging Face's linear layers are (in, out), with query, key and value in one).
One difference needs care here: GPT-2 ties the output layer to the token
embedding; GPTModel has a separate `out_head`, which fine-tuning moves away from
`tok_emb`. When the two differ the export writes the head too and
`tie_word_embeddings: false`, otherwise transformers would silently reuse the
token embedding as the output layer.

Not in a notebook: the CLI's `python -m ftlib export-hf RUN OUT` (README: "LoRA and
export to Hugging Face").
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.plumbing.fileio import current_umask, replace_folder
from ftlib.model.gpt2_names import gpt_to_params, params_to_hf_state_dict
from ftlib.model.lora import has_lora
from ftlib.model.files import load_run_model
from ftlib.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, GPT2_N_VOCAB, bundled_gpt2_files

# A file in every export folder: it marks the folder as ours, so a later export may
# replace it, while any other non-empty folder is never overwritten.
EXPORT_MARKER = "ftlib-export.json"
# Everything an export writes (a test checks it is the whole folder): an earlier export
# holding anything else is not replaced.
EXPORT_FILES = {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt",
                "tokenizer_config.json", "special_tokens_map.json", EXPORT_MARKER}


def gpt_to_hf_state_dict(model):
    """GPTModel -> a state dict in `GPT2LMHeadModel`'s layout (CPU torch tensors).

    Keys as `save_pretrained` writes them (the table of ftlib/model/gpt2_names.py). A
    model without query/key/value biases (qkv_bias False) gets zero biases: Hugging
    Face's GPT-2 always has them. `lm_head.weight` is included only when `out_head`
    differs from `tok_emb` (see `ties_embeddings`). A model with LoRA layers must be
    merged first.
    """
    if has_lora(model):
        raise ConfigError("the model has LoRA layers: call merge_lora(model) before exporting")
    out_head = None if ties_embeddings(model) else model.out_head.weight  # (vocab, d)
    return params_to_hf_state_dict(gpt_to_params(model), out_head=out_head)


def ties_embeddings(model):
    """True if `out_head.weight` equals `tok_emb.weight` exactly (GPT-2's weight tying).

    Pretrained GPT-2 loaded by `load_weights_into_gpt` starts tied; fine-tuning
    updates the two separately, so they differ afterwards.
    """
    return torch.equal(model.out_head.weight.detach(), model.tok_emb.weight.detach())


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_config(cfg, tie_word_embeddings, dtype=torch.float32):
    """The `config.json` of a `GPT2LMHeadModel` with GPTModel config `cfg`, as a dict.
    """
    dtype_name = _DTYPE_NAMES.get(dtype, "float32")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["context_length"],
        "n_ctx": cfg["context_length"],  # read by old transformers versions
        "n_embd": cfg["emb_dim"],
        "n_layer": cfg["n_layers"],
        "n_head": cfg["n_heads"],
        "n_inner": None,  # None means 4 * n_embd, as in FeedForward
        "activation_function": "gelu_new",  # GELU's tanh approximation, as in model.GELU
        "resid_pdrop": cfg["drop_rate"],
        "embd_pdrop": cfg["drop_rate"],
        "attn_pdrop": cfg["drop_rate"],
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # divide scores by sqrt(head_dim), as SDPA does
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": END_OF_TEXT_ID,
        "tie_word_embeddings": tie_word_embeddings,
        "dtype": dtype_name,        # transformers >= 4.56
        "torch_dtype": dtype_name,  # older transformers
    }


def _tokenizer_files(context_length):
    """{file name: bytes} for the GPT-2 tokenizer, from the bundled encoder.json and vocab.bpe."""
    encoder_json, vocab_bpe = bundled_gpt2_files()
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "add_prefix_space": False,  # "Hello" and " Hello" stay different tokens, as in tiktoken
        "add_bos_token": False,
        "errors": "replace",
        **special,
    }
    try:
        return {
            # Hugging Face's names for the same two files OpenAI ships.
            "vocab.json": Path(encoder_json).read_bytes(),
            "merges.txt": Path(vocab_bpe).read_bytes(),
            "tokenizer_config.json": _json_bytes(tokenizer_config),
            "special_tokens_map.json": _json_bytes(special),
        }
    except OSError as exc:
        raise FtlibError(f"cannot read the bundled GPT-2 tokenizer files: {exc}") from exc


def _json_bytes(obj):
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def save_hf_model(model, out_dir, source=None):
    """Write `model` (a GPTModel, LoRA merged) as a Hugging Face GPT-2 folder; return it.

    Files: config.json, model.safetensors, generation_config.json, vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json and our marker
    ftlib-export.json. The folder is built beside `out_dir` and renamed into place,
    so an interrupted export leaves no half-written folder. An existing `out_dir`
    is replaced only if it is empty or an earlier export; otherwise FtlibError.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    cfg = model.cfg
    if cfg["vocab_size"] < GPT2_N_VOCAB:
        raise ConfigError(
            f"vocab_size {cfg['vocab_size']} is smaller than GPT-2's tokenizer "
            f"({GPT2_N_VOCAB} tokens): the exported tokenizer would produce ids the model lacks")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, source)
    tied = ties_embeddings(model)
    state = gpt_to_hf_state_dict(model)
    dtype = model.tok_emb.weight.dtype

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as exc:  # a read-only or missing place, a file in the way
        raise FtlibError(f"cannot write the export folder {out_dir}: {exc.strerror or exc}") from None
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {
            "config.json": _json_bytes(hf_config(cfg, tied, dtype)),
            "generation_config.json": _json_bytes({
                "bos_token_id": END_OF_TEXT_ID,
                "eos_token_id": END_OF_TEXT_ID,
                # GPT-2 has no padding token; the chapter pads with <|endoftext|> too.
                "pad_token_id": END_OF_TEXT_ID,
            }),
            **_tokenizer_files(cfg["context_length"]),
            EXPORT_MARKER: _json_bytes({
                "source": None if source is None else str(source),
                "gptmodel_config": cfg,
                "tie_word_embeddings": tied,
            }),
        }
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the usual permissions
        replace_folder(tmp, out_dir)
    except (OSError, SafetensorError) as exc:  # e.g. the disk is full
        shutil.rmtree(tmp, ignore_errors=True)
        raise FtlibError(f"cannot write the export folder {out_dir}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir



def _check_out_dir(out_dir, source=None):
    """Refuse what `check_out_path` refuses ('.', a folder holding the run exported, the
    repository or home), a file, or a non-empty folder that is not an earlier export."""
    from ftlib.plumbing.runfolder import check_out_path

    check_out_path(out_dir, [("the run it exports", source)] if source is not None else [],
                   option="export folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise FtlibError(f"export folder {out_dir} is a file; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file():
        raise FtlibError(
            f"export folder {out_dir} is not empty and is not an earlier export "
            f"(no {EXPORT_MARKER}); choose a new or empty folder")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            raise FtlibError(
                f"export folder {out_dir} holds {', '.join(map(repr, foreign[:3]))}, which an export "
                "did not write; it is replaced whole, so move those files or choose another folder")


def export_hf(run_dir, out_dir):
    """Export the model of a run folder to a Hugging Face GPT-2 folder `out_dir`; return it.

    >>> export_hf("runs/latest", "hf-model")
    >>> # then: GPT2LMHeadModel.from_pretrained("hf-model")
    """
    model, _ = load_run_model(run_dir)
    return save_hf_model(model, out_dir, source=run_dir)


def main_export(run_dir, out_dir, log=print):
    """The CLI's `python -m ftlib export-hf RUN_DIR OUT_DIR`: export and say what was written.
    """
    _check_out_dir(Path(out_dir), run_dir)  # before the model is read
    model, _ = load_run_model(run_dir)
    tied = ties_embeddings(model)
    out = save_hf_model(model, out_dir, source=run_dir)
    log(f"Exported {run_dir} to {out}: GPT-2 with {model.cfg['n_layers']} layers, "
        f"output layer {'tied to' if tied else 'separate from'} the token embedding")
    log(f"Load it with transformers: GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return out
