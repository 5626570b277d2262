"""Export a fine-tuned GPTModel as a Hugging Face GPT-2 folder (`GPT2LMHeadModel`).

`python -m ftlib export-hf runs/latest hf-model/` writes a folder that
`transformers` loads with `GPT2LMHeadModel.from_pretrained("hf-model")` and
`GPT2Tokenizer.from_pretrained("hf-model")`, offline, with the same logits as
our model. This module writes the files itself; it never imports transformers.

Two differences between the layouts matter:
- Hugging Face's GPT-2 uses "Conv1D" layers whose weights are (in, out), the
  transpose of nn.Linear's (out, in), and keeps query, key and value in one
  (in, 3 * out) matrix `c_attn` (as OpenAI's checkpoints do, see ftlib/weights.py).
- GPT-2 ties the output layer to the token embedding; GPTModel has a separate
  `out_head`, which fine-tuning moves away from `tok_emb`. When the two differ
  the export writes `lm_head.weight` and `tie_word_embeddings: false`, otherwise
  transformers would silently reuse `wte` as the output layer.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ftlib.errors import ConfigError, FtlibError
from ftlib.lora import add_lora, has_lora, merge_lora
from ftlib.model import GPTModel
from ftlib.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, GPT2_N_VOCAB, bundled_gpt2_files

# A file in every export folder: it marks the folder as ours, so a later export may
# replace it, while any other non-empty folder is never overwritten.
EXPORT_MARKER = "ftlib-export.json"
MODEL_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                     "drop_rate", "qkv_bias")


def _t(tensor):
    """A detached, contiguous CPU tensor with its own storage (safetensors refuses shared ones)."""
    return tensor.detach().to("cpu").contiguous().clone()


def gpt_to_hf_state_dict(model):
    """GPTModel -> a state dict in `GPT2LMHeadModel`'s layout (torch tensors).

    Keys `transformer.wte.weight`, `transformer.h.{i}.attn.c_attn.weight` (in, 3*out),
    ... as `save_pretrained` writes them. A model without query/key/value biases
    (qkv_bias False) gets zero biases: Hugging Face's c_attn always has one.
    `lm_head.weight` is included only when `out_head` differs from `tok_emb`
    (see `ties_embeddings`). A model with LoRA layers must be merged first.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    if has_lora(model):
        raise ConfigError("the model has LoRA layers: call merge_lora(model) before exporting")

    def bias(layer):
        return layer.bias if layer.bias is not None else torch.zeros(
            layer.out_features, dtype=layer.weight.dtype, device=layer.weight.device)

    state = {
        "transformer.wte.weight": _t(model.tok_emb.weight),  # (vocab, d)
        "transformer.wpe.weight": _t(model.pos_emb.weight),  # (context, d)
    }
    for i, block in enumerate(model.trf_blocks):
        h = f"transformer.h.{i}"
        att, ff = block.att, block.ff
        qkv = (att.W_query, att.W_key, att.W_value)
        state[f"{h}.ln_1.weight"] = _t(block.norm1.scale)
        state[f"{h}.ln_1.bias"] = _t(block.norm1.shift)
        # nn.Linear's (out, in) -> Conv1D's (in, out); q, k, v side by side: (d, 3d)
        state[f"{h}.attn.c_attn.weight"] = _t(torch.cat([l.weight.T for l in qkv], dim=1))
        state[f"{h}.attn.c_attn.bias"] = _t(torch.cat([bias(l) for l in qkv]))  # (3d,)
        state[f"{h}.attn.c_proj.weight"] = _t(att.out_proj.weight.T)
        state[f"{h}.attn.c_proj.bias"] = _t(bias(att.out_proj))
        state[f"{h}.ln_2.weight"] = _t(block.norm2.scale)
        state[f"{h}.ln_2.bias"] = _t(block.norm2.shift)
        state[f"{h}.mlp.c_fc.weight"] = _t(ff.layers[0].weight.T)    # (d, 4d)
        state[f"{h}.mlp.c_fc.bias"] = _t(bias(ff.layers[0]))
        state[f"{h}.mlp.c_proj.weight"] = _t(ff.layers[2].weight.T)  # (4d, d)
        state[f"{h}.mlp.c_proj.bias"] = _t(bias(ff.layers[2]))
    state["transformer.ln_f.weight"] = _t(model.final_norm.scale)
    state["transformer.ln_f.bias"] = _t(model.final_norm.shift)
    if not ties_embeddings(model):
        state["lm_head.weight"] = _t(model.out_head.weight)  # (vocab, d), its own copy
    return state


def ties_embeddings(model):
    """True if `out_head.weight` equals `tok_emb.weight` exactly (GPT-2's weight tying).

    Pretrained GPT-2 loaded by `load_weights_into_gpt` starts tied; fine-tuning
    updates the two separately, so they differ afterwards.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    return torch.equal(model.out_head.weight.detach(), model.tok_emb.weight.detach())


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_config(cfg, tie_word_embeddings, dtype=torch.float32):
    """The `config.json` of a `GPT2LMHeadModel` with GPTModel config `cfg`, as a dict.

    Introduced in: notebooks/07_evaluation.ipynb
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

    Introduced in: notebooks/07_evaluation.ipynb
    """
    from safetensors.torch import save_file

    cfg = model.cfg
    if cfg["vocab_size"] < GPT2_N_VOCAB:
        raise ConfigError(
            f"vocab_size {cfg['vocab_size']} is smaller than GPT-2's tokenizer "
            f"({GPT2_N_VOCAB} tokens): the exported tokenizer would produce ids the model lacks")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    tied = ties_embeddings(model)
    state = gpt_to_hf_state_dict(model)
    dtype = model.tok_emb.weight.dtype

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
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
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out_dir(out_dir):
    """Refuse a path that is a file, or a non-empty folder that is not an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FtlibError(f"export folder {out_dir} is a file; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file():
        raise FtlibError(
            f"export folder {out_dir} is not empty and is not an earlier export "
            f"(no {EXPORT_MARKER}); choose a new or empty folder")


def _replace_dir(new, target):
    """Move the folder `new` to `target`, replacing an empty folder or an earlier export."""
    if not target.exists():
        os.replace(new, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(new, target)
        return
    # An earlier export: move it aside first, so a failure here can put it back.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_run_config(run_dir):
    path = run_dir / "config.json"
    if not path.is_file():
        raise FtlibError(f"{path} not found: is {run_dir} a run folder of `python -m ftlib finetune`?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FtlibError(f"{path} is not readable JSON: {exc}") from exc
    cfg = config.get("model_config") if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the field 'model_config' (the GPTModel config dict) is missing")
    missing = [key for key in MODEL_CONFIG_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"{path}: 'model_config' lacks {', '.join(missing)}")
    return config


def load_run_model(run_dir):
    """The fine-tuned GPTModel of a run folder (config.json + model.pth), on the CPU, in eval mode.

    A model.pth saved with LoRA layers (keys `...lora.A`) is rebuilt with the rank
    and alpha of config.json's "lora_rank" and "lora_alpha", loaded, and merged,
    so the result is always a plain GPTModel. Returns (model, run_config).

    Introduced in: notebooks/07_evaluation.ipynb
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FtlibError(f"run folder {run_dir} not found")
    config = _read_run_config(run_dir)
    weights = run_dir / "model.pth"
    if not weights.is_file():
        raise FtlibError(f"{weights} not found: the run did not finish saving its model")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle of something else, ...
        raise FtlibError(f"{weights} is not a readable PyTorch state_dict: {exc}") from exc
    if not isinstance(state, dict):
        raise FtlibError(f"{weights} holds a {type(state).__name__}, not a state_dict")
    # A model saved after torch.compile has every key prefixed "_orig_mod.".
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}

    model = GPTModel(config["model_config"])
    lora_keys = [k for k in state if k.endswith(".lora.A")]
    if lora_keys:
        rank, alpha = _lora_settings(config, state[lora_keys[0]], run_dir / "config.json")
        add_lora(model, rank, alpha)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{weights} does not fit the model_config of {run_dir / 'config.json'}: {exc}") from exc
    if lora_keys:
        merge_lora(model)
    model.eval()
    return model, config


def _lora_settings(config, a_matrix, path):
    """(rank, alpha) for a LoRA state dict; rank is also read off A's shape (in, rank)."""
    rank = int(a_matrix.shape[1])
    if config.get("lora_rank") not in (None, rank):
        raise ConfigError(f"{path}: lora_rank is {config['lora_rank']}, but model.pth has rank {rank}")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise ConfigError(
            f"{path}: model.pth has LoRA layers but the field 'lora_alpha' is missing; "
            "it is needed to merge them")
    return rank, config["lora_alpha"]


def export_hf(run_dir, out_dir):
    """Export the model of a run folder to a Hugging Face GPT-2 folder `out_dir`; return it.

    >>> export_hf("runs/latest", "hf-model")
    >>> # then: GPT2LMHeadModel.from_pretrained("hf-model")

    Introduced in: notebooks/07_evaluation.ipynb
    """
    model, _ = load_run_model(run_dir)
    return save_hf_model(model, out_dir, source=run_dir)


def main_export(run_dir, out_dir, log=print):
    """The CLI's `python -m ftlib export-hf RUN_DIR OUT_DIR`: export and say what was written.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    model, _ = load_run_model(run_dir)
    tied = ties_embeddings(model)
    out = save_hf_model(model, out_dir, source=run_dir)
    log(f"Exported {run_dir} to {out}: GPT-2 with {model.cfg['n_layers']} layers, "
        f"output layer {'tied to' if tied else 'separate from'} the token embedding")
    log(f"Load it with transformers: GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return out
