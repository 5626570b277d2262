"""GPT-2's pretrained weights: download OpenAI's checkpoints, load them into GPTModel.

Two sources give the same numbers:
- OpenAI's original TensorFlow checkpoints (what the chapter downloads), read with
  TensorFlow into a nested dict of numpy arrays, `params`;
- Hugging Face's `model.safetensors` (openai-community/gpt2, -medium, -large, -xl),
  read without TensorFlow into the same `params` dict.

`load_weights_into_gpt(model, params)` then copies `params` onto the book's
parameter names. Both sources store each linear layer's weight as (in, out), the
transpose of `nn.Linear.weight` (out, in), and keep query, key and value in one
(in, 3 * out) matrix, `c_attn`.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from ftlib.download import download_first_available
from ftlib.errors import ConfigError, DownloadError

GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
# The book's mirror of the same files, for when OpenAI's storage is unreachable.
GPT2_BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
# An instructor's mirror (e.g. `python -m ftlib.serve gpt2/` on a classroom machine).
BASE_URL_ENV = "FTLIB_GPT2_BASE_URL"

ALLOWED_SIZES = ("124M", "355M", "774M", "1558M")
GPT2_FILENAMES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# The files TensorFlow reads the weights from; a corrupt one is deleted so the
# next call downloads it again.
CHECKPOINT_DATA_FILES = ("model.ckpt.data-00000-of-00001", "model.ckpt.index")
HPARAMS_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


def _check_model_size(model_size, allowed_sizes):
    """Raise ConfigError unless `model_size` is an allowed name that is safe as a folder."""
    unsafe = (
        not isinstance(model_size, str) or not model_size or "/" in model_size
        or "\\" in model_size or ".." in model_size
    )
    if unsafe or model_size not in allowed_sizes:
        raise ConfigError(
            f"unknown GPT-2 model size {model_size!r}; choose one of: "
            + ", ".join(repr(s) for s in allowed_sizes)
        )


def _base_urls(base_url):
    """The mirrors to try, in order: an explicit URL, the environment's, or OpenAI's + the book's."""
    if base_url:
        return [base_url.rstrip("/")]
    if os.environ.get(BASE_URL_ENV):
        return [os.environ[BASE_URL_ENV].rstrip("/")]
    return [GPT2_URL, GPT2_BACKUP_URL]


def import_tensorflow_quietly():
    """Import TensorFlow without its start-up log lines; ConfigError if it is missing.

    Imported only when a checkpoint is read or written: it takes seconds to load.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info lines
    # TF 2.21 prints a "oneDNN custom operations are on" line whatever the level;
    # we only read and write checkpoints, no TF math, so turning oneDNN off costs nothing.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ConfigError(
            "Reading OpenAI's GPT-2 checkpoints needs TensorFlow: pip install tensorflow-cpu "
            "(or load Hugging Face's model.safetensors with load_hf_safetensors_into_gpt)"
        ) from exc
    return tf


def download_and_load_gpt2(model_size, models_dir, base_url=None, progress=True,
                           allowed_sizes=ALLOWED_SIZES):
    """Download OpenAI's GPT-2 `model_size` into `models_dir/model_size/`; return (settings, params).

    `settings` is hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer); `params` the
    nested dict of numpy arrays that `load_weights_into_gpt` expects.

    - Files already complete on disk are not fetched again; an interrupted download
      resumes. Each file is fetched from `{base}/{model_size}/{name}`, where base is
      `base_url`, else `$FTLIB_GPT2_BASE_URL`, else OpenAI's URL then the book's backup.
    - `allowed_sizes`: the names accepted for `model_size` (tests add a tiny "toy").
    - A checkpoint TensorFlow cannot read raises DownloadError and its files are
      deleted, so the next call downloads them again.

    >>> settings, params = download_and_load_gpt2("355M", "gpt2")

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    _check_model_size(model_size, allowed_sizes)
    model_dir = Path(models_dir) / model_size
    model_dir.mkdir(parents=True, exist_ok=True)
    bases = _base_urls(base_url)
    for name in GPT2_FILENAMES:
        download_first_available(
            [f"{base}/{model_size}/{name}" for base in bases], model_dir / name,
            progress=progress, desc=f"{model_size}/{name}",
        )

    hparams_path = model_dir / "hparams.json"
    try:
        settings = json.loads(hparams_path.read_text(encoding="utf-8"))
        missing = [key for key in HPARAMS_KEYS if key not in settings]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
    except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, not a dict, keys missing
        hparams_path.unlink(missing_ok=True)
        raise DownloadError(
            f"{hparams_path} is not GPT-2's hparams.json ({exc}); it was deleted, "
            "run again to download it anew"
        ) from exc

    tf = import_tensorflow_quietly()
    try:
        ckpt_path = tf.train.latest_checkpoint(str(model_dir))
        if ckpt_path is None:
            raise ValueError(f"the file {model_dir / 'checkpoint'} names no checkpoint")
        params = load_gpt2_params_from_tf_ckpt(ckpt_path, settings)
    except MemoryError:
        raise  # a model too big for this machine: the files are fine, keep them
    except Exception as exc:  # TF's DataLossError, a protobuf ParseError, a bad index, ...
        # TensorFlow could not read the files: most likely a download that was cut
        # short or damaged. Remove them so that the next call fetches them again.
        for name in (*CHECKPOINT_DATA_FILES, "checkpoint"):
            (model_dir / name).unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(
            f"The GPT-2 checkpoint in {model_dir} could not be read ({reason}). "
            f"Its files {', '.join((*CHECKPOINT_DATA_FILES, 'checkpoint'))} were deleted; "
            "run again to download them anew."
        ) from exc
    return settings, params


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings):
    """Read every variable of an OpenAI GPT-2 checkpoint into a nested dict.

    OpenAI's names look like `model/h3/attn/c_attn/w` (shape (1, d, 3d)); the result is
    `{"wte", "wpe", "g", "b", "blocks": [{"attn": {"c_attn": {"w", "b"}, "c_proj": ...},
    "mlp": {"c_fc", "c_proj"}, "ln_1": {"g", "b"}, "ln_2": ...}, ...]}` with the
    size-1 axes squeezed away: (1, d, 3d) -> (d, 3d).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    tf = import_tensorflow_quietly()
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    for name, _ in tf.train.list_variables(ckpt_path):
        array = np.squeeze(tf.train.load_variable(ckpt_path, name))
        parts = name.split("/")[1:]  # drop the leading "model/" scope

        target = params
        if parts[0].startswith("h"):  # "h3" -> the fourth transformer block
            layer = int(parts[0][1:])
            if layer >= settings["n_layer"]:
                raise ValueError(f"{name} is past n_layer={settings['n_layer']} of hparams.json")
            target = params["blocks"][layer]
        # parts[0] ("h3", or "ln_f" for the final norm, whose g and b go to the top
        # level) is done; the parts between it and the last are nested dicts.
        for key in parts[1:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = array
    return params


def config_from_settings(settings, base=None):
    """A GPTModel config from OpenAI's hparams.json `settings` (drop_rate 0, qkv_bias on).

    `base` (optional) supplies other keys; the sizes always come from `settings`.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    cfg = {"drop_rate": 0.0, **(base or {})}
    cfg.update(
        vocab_size=settings["n_vocab"], context_length=settings["n_ctx"],
        emb_dim=settings["n_embd"], n_heads=settings["n_head"], n_layers=settings["n_layer"],
        qkv_bias=True,  # OpenAI's c_attn has a bias for query, key and value
    )
    return cfg


def assign(left, right, name):
    """Copy `right` (numpy array or tensor) into the parameter `left`, in place.

    `name` is the parameter's name in GPTModel (e.g. "trf_blocks.3.att.W_query.weight");
    a shape mismatch raises ConfigError naming it and both shapes. The parameter keeps
    its dtype and device (the copy converts), so an optimizer holding it still works.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    if left is None:
        raise ConfigError(
            f"GPTModel has no parameter {name} to receive pretrained weights "
            "(OpenAI's GPT-2 needs qkv_bias=True in the config)"
        )
    right = torch.as_tensor(right)
    if tuple(left.shape) != tuple(right.shape):
        raise ConfigError(
            f"shape mismatch for {name}: the model has {tuple(left.shape)}, the "
            f"pretrained weights have {tuple(right.shape)}; does the config match the "
            "checkpoint's size?"
        )
    with torch.no_grad():
        left.copy_(right)
    return left


def _split3(array, name):
    """Split c_attn's last axis into query, key and value: (..., 3d) -> 3 x (..., d)."""
    if array.shape[-1] % 3:
        raise ConfigError(f"{name}: last axis {array.shape[-1]} is not divisible by 3")
    return torch.chunk(torch.as_tensor(array), 3, dim=-1)


def load_weights_into_gpt(model, params):
    """Copy GPT-2 `params` (from `download_and_load_gpt2` or safetensors) into `model`.

    Linear weights are transposed from (in, out) to PyTorch's (out, in); c_attn is
    split into W_query, W_key and W_value; the output head gets a copy of the token
    embedding (GPT-2 ties the two). A missing entry or a shape that does not fit the
    model's config raises ConfigError naming the tensor.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    n_blocks = len(params.get("blocks", []))
    if n_blocks != len(model.trf_blocks):
        raise ConfigError(
            f"the pretrained weights have {n_blocks} transformer blocks, the model has "
            f"{len(model.trf_blocks)} (n_layers); does the config match the checkpoint's size?"
        )
    try:
        assign(model.pos_emb.weight, params["wpe"], "pos_emb.weight")
        assign(model.tok_emb.weight, params["wte"], "tok_emb.weight")

        for b, block in enumerate(params["blocks"]):
            att = model.trf_blocks[b].att
            ff = model.trf_blocks[b].ff
            prefix = f"trf_blocks.{b}"

            q_w, k_w, v_w = _split3(block["attn"]["c_attn"]["w"], f"blocks.{b}.attn.c_attn.w")
            assign(att.W_query.weight, q_w.T, f"{prefix}.att.W_query.weight")
            assign(att.W_key.weight, k_w.T, f"{prefix}.att.W_key.weight")
            assign(att.W_value.weight, v_w.T, f"{prefix}.att.W_value.weight")
            q_b, k_b, v_b = _split3(block["attn"]["c_attn"]["b"], f"blocks.{b}.attn.c_attn.b")
            assign(att.W_query.bias, q_b, f"{prefix}.att.W_query.bias")
            assign(att.W_key.bias, k_b, f"{prefix}.att.W_key.bias")
            assign(att.W_value.bias, v_b, f"{prefix}.att.W_value.bias")

            c_proj = block["attn"]["c_proj"]
            assign(att.out_proj.weight, torch.as_tensor(c_proj["w"]).T, f"{prefix}.att.out_proj.weight")
            assign(att.out_proj.bias, c_proj["b"], f"{prefix}.att.out_proj.bias")

            c_fc, mlp_proj = block["mlp"]["c_fc"], block["mlp"]["c_proj"]
            assign(ff.layers[0].weight, torch.as_tensor(c_fc["w"]).T, f"{prefix}.ff.layers.0.weight")
            assign(ff.layers[0].bias, c_fc["b"], f"{prefix}.ff.layers.0.bias")
            assign(ff.layers[2].weight, torch.as_tensor(mlp_proj["w"]).T, f"{prefix}.ff.layers.2.weight")
            assign(ff.layers[2].bias, mlp_proj["b"], f"{prefix}.ff.layers.2.bias")

            norm1, norm2 = model.trf_blocks[b].norm1, model.trf_blocks[b].norm2
            assign(norm1.scale, block["ln_1"]["g"], f"{prefix}.norm1.scale")
            assign(norm1.shift, block["ln_1"]["b"], f"{prefix}.norm1.shift")
            assign(norm2.scale, block["ln_2"]["g"], f"{prefix}.norm2.scale")
            assign(norm2.shift, block["ln_2"]["b"], f"{prefix}.norm2.shift")

        assign(model.final_norm.scale, params["g"], "final_norm.scale")
        assign(model.final_norm.shift, params["b"], "final_norm.shift")
        # GPT-2 reuses the token embedding as the output layer ("weight tying").
        assign(model.out_head.weight, params["wte"], "out_head.weight")
    except KeyError as exc:
        raise ConfigError(f"the pretrained weights lack the entry {exc.args[0]!r}") from exc
    return model


def hf_state_dict_to_params(state_dict):
    """Turn a Hugging Face GPT-2 state dict into the `params` dict of OpenAI's layout.

    Keys look like `h.0.attn.c_attn.weight` (optionally prefixed `transformer.`);
    Hugging Face's Conv1D stores weights as (in, out), as OpenAI does, so no transpose
    is needed here. `lm_head.weight` (a copy of `wte`) and the attention-mask buffers
    `h.N.attn.bias` / `h.N.attn.masked_bias` of older files are skipped.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    names = {"weight": "w", "bias": "b"}        # linear layers
    norm_names = {"weight": "g", "bias": "b"}  # layer norms
    params = {}
    blocks = {}
    for key, tensor in state_dict.items():
        parts = key.removeprefix("transformer.").split(".")
        if parts[0] in ("wte", "wpe") and parts[1:] == ["weight"]:
            params[parts[0]] = tensor
        elif parts[0] == "ln_f":
            params[norm_names[parts[1]]] = tensor
        elif parts[0] == "h":
            block = blocks.setdefault(int(parts[1]), {})
            rest = parts[2:]  # e.g. ["attn", "c_attn", "weight"] or ["ln_1", "bias"]
            if rest[0].startswith("ln_"):
                block.setdefault(rest[0], {})[norm_names[rest[1]]] = tensor
            elif len(rest) == 3:  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
                block.setdefault(rest[0], {}).setdefault(rest[1], {})[names[rest[2]]] = tensor
            # else: attn.bias / attn.masked_bias, the causal-mask buffers: not weights
        # else: lm_head.weight (tied to wte) or something not part of GPT-2
    params["blocks"] = [blocks[i] for i in sorted(blocks)]
    if sorted(blocks) != list(range(len(blocks))):
        raise ConfigError(f"the safetensors file has blocks {sorted(blocks)}: some are missing")
    return params


def load_hf_safetensors_into_gpt(model, path):
    """Load Hugging Face's GPT-2 `model.safetensors` (openai-community/gpt2*) into `model`.

    No TensorFlow needed. The config must match the file's size, as with OpenAI's
    checkpoints (e.g. `get_config("gpt2-small (124M)")` for openai-community/gpt2).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"safetensors file not found: {path}")
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from exc
    return load_weights_into_gpt(model, hf_state_dict_to_params(state_dict))
