"""GPT-2's pretrained weights: download OpenAI's checkpoints, load them into GPTModel.

Two sources give the same numbers, and both are downloaded into `gpt2/<size>/`:
- OpenAI's original TensorFlow checkpoints (what the chapter downloads,
  `download_and_load_gpt2`), read with TensorFlow into a nested dict of numpy arrays,
  `params`;
- Hugging Face's `model.safetensors` (openai-community/gpt2, -medium, -large, -xl;
  `download_and_load_hf_gpt2`, what `python -m ftlib finetune` uses by default), read
  without TensorFlow into the same `params` dict.

Two loaders then copy `params` onto the book's parameter names, with the same result
(a test checks): the book's `load_weights_into_gpt`, written out block by block as the
chapter does, and `load_gpt2_params`, driven by the one table of
ftlib/model/gpt2_names.py (which of their tensors goes to which of ours, and how:
transposed, query/key/value split), the table export and Hugging Face loading share.
"""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ftlib.config import GPT2_HF_REPOS
from ftlib.plumbing.download import download_first_available
from ftlib.plumbing.errors import ConfigError, DownloadError
from ftlib.model.gpt2_names import (OPENAI_SCOPE, get_ours, get_param, gpt2_rows, hf_state_dict_to_params,
                              set_param, to_ours)

GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
# The book's mirror of the same files, for when OpenAI's storage is unreachable.
GPT2_BACKUP_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
# An instructor's mirror (e.g. `python -m ftlib.classroom.serve gpt2/` on a classroom machine).
BASE_URL_ENV = "FTLIB_GPT2_BASE_URL"
# Hugging Face's copy of the same weights: {HF_URL}/{repository}/resolve/main/model.safetensors.
HF_URL = "https://huggingface.co"
SAFETENSORS_FILENAME = "model.safetensors"

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

    Not in a notebook: the TensorFlow import behind the checkpoint readers.
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
    nested dict of numpy arrays that `load_weights_into_gpt` (and `load_gpt2_params`) expect.

    - Files already complete on disk are not fetched again; an interrupted download
      resumes. Each file is fetched from `{base}/{model_size}/{name}`, where base is
      `base_url`, else `$FTLIB_GPT2_BASE_URL`, else OpenAI's URL then the book's backup.
    - `allowed_sizes`: the names accepted for `model_size` (tests add a tiny "toy").
    - A file that is bad raises DownloadError and only that file is deleted, so the
      next call downloads it again: hparams.json when it is not JSON, lacks a size or
      disagrees with the checkpoint (wrong `n_layer`); the checkpoint's files when
      TensorFlow cannot read them.
    - A `models_dir` that files must be downloaded into but that cannot be written
      (read-only, not a folder) raises ConfigError naming it; one that already holds
      every file is only read.

    >>> settings, params = download_and_load_gpt2("355M", "gpt2")

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    _check_model_size(model_size, allowed_sizes)
    model_dir = Path(models_dir) / model_size
    bases = _base_urls(base_url)
    _download_into(models_dir, model_size, progress,
                   {name: [f"{base}/{model_size}/{name}" for base in bases] for name in GPT2_FILENAMES})
    settings = _read_hparams(model_dir / "hparams.json")
    variables = _read_tf_checkpoint(model_dir)
    try:
        params = _params_from_variables(variables, settings)
    except ValueError as exc:  # the checkpoint read fine: hparams.json is what is wrong
        raise _corrupt(model_dir, ("hparams.json",), str(exc)) from None
    return settings, params


def _download_into(models_dir, model_size, progress, files):
    """Download `files` ({name: the URLs to try}) into `models_dir/model_size/`, each
    one skipped when complete there. A folder that cannot be written is a ConfigError
    naming it; a download that fails a DownloadError naming its URL."""
    model_dir = Path(models_dir) / model_size
    try:
        if not all((model_dir / name).is_file() for name in files):
            model_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=model_dir):  # can files be written there?
                pass
        for name, urls in files.items():
            download_first_available(urls, model_dir / name, progress=progress,
                                     desc=f"{model_size}/{name}")
    except DownloadError:
        raise  # names the URL (a DownloadError is an OSError too)
    except OSError as exc:  # the weights folder, not the network: say which folder
        raise ConfigError(f"the GPT-2 weights folder {models_dir} cannot be written "
                          f"({exc.strerror or exc}): {model_size}'s files are downloaded into "
                          f"{model_dir}; choose another (--weights-dir) or make it writable") from None


def gpt2_safetensors_url(model_size, base_url=None):
    """Where `download_and_load_hf_gpt2` fetches `model_size`'s model.safetensors from:
    `{base}/{model_size}/model.safetensors` for a mirror (`base_url`, else
    `$FTLIB_GPT2_BASE_URL`: the layout of ftlib's own gpt2/ folder, so an instructor's
    `python -m ftlib.classroom.serve gpt2/` serves both sources), else Hugging Face's
    `https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors`
    (gpt2-medium, -large, -xl for the other sizes).

    Not in a notebook: the URL behind `download_and_load_hf_gpt2`.
    """
    base = base_url or os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{model_size}/{SAFETENSORS_FILENAME}"
    if model_size not in GPT2_HF_REPOS:
        raise ConfigError(f"GPT-2 size {model_size!r} has no Hugging Face repository; "
                          f"give a mirror (base_url or ${BASE_URL_ENV})")
    return f"{HF_URL}/{GPT2_HF_REPOS[model_size]}/resolve/main/{SAFETENSORS_FILENAME}"


def download_and_load_hf_gpt2(model, model_size, models_dir, base_url=None, progress=True,
                              allowed_sizes=ALLOWED_SIZES):
    """Download Hugging Face's model.safetensors of GPT-2 `model_size` into
    `models_dir/model_size/` and load it into `model` (its config must be that size's);
    returns the file's path. No TensorFlow needed.

    - The file comes from `gpt2_safetensors_url` (Hugging Face, or a mirror given by
      `base_url` or `$FTLIB_GPT2_BASE_URL`) through `download_file`, as the chapter's
      files do: skipped when complete on disk, resumed when interrupted, renamed into
      place only when whole, with a progress bar (`progress`).
    - A downloaded file that is no GPT-2 safetensors of this size (an HTML page, a
      file cut short, another size) raises DownloadError and is deleted, so the next
      call downloads it again. A weights folder that cannot be written raises
      ConfigError naming it. `allowed_sizes`: as for `download_and_load_gpt2`.

    >>> path = download_and_load_hf_gpt2(GPTModel(get_config("gpt2")), "124M", "gpt2")

    Not in a notebook: notebook 05 downloads OpenAI's checkpoint as the chapter does;
    `python -m ftlib finetune --model gpt2` calls this (tests/test_online_gpt2.py).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_model_size(model_size, allowed_sizes)
    url = gpt2_safetensors_url(model_size, base_url)
    _download_into(models_dir, model_size, progress, {SAFETENSORS_FILENAME: [url]})
    model_dir = Path(models_dir) / model_size
    path = model_dir / SAFETENSORS_FILENAME
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, ValueError) as exc:  # not safetensors: an HTML page, a file cut short
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _corrupt(model_dir, (SAFETENSORS_FILENAME,), f"not a safetensors file: {reason}",
                       url=url) from None
    try:
        load_gpt2_params(model, hf_state_dict_to_params(state_dict))
    except ConfigError as exc:  # safetensors, but not GPT-2's names, or another size
        raise _corrupt(model_dir, (SAFETENSORS_FILENAME,), str(exc), url=url) from None
    return path


def _corrupt(model_dir, names, reason, url=None):
    """The one place that decides which downloaded files are bad: delete `names` (and
    nothing else) so the next call fetches them again; the DownloadError to raise
    (naming `url`, the one file's source, when given)."""
    which = ", ".join(str(model_dir / name) for name in names)
    for name in names:
        try:
            (model_dir / name).unlink(missing_ok=True)
        except OSError as exc:  # e.g. a read-only weights folder
            return DownloadError(f"{which}: not a valid GPT-2 download ({reason}); they cannot be "
                                 f"deleted ({exc.strerror or exc}): delete them and run again")
    again = f"from {url}" if url else "(the other files are kept)"
    return DownloadError(f"{which}: not a valid GPT-2 download ({reason}); deleted, "
                         f"run again to download it anew {again}")


def _read_hparams(path):
    """hparams.json as a dict of positive whole numbers (HPARAMS_KEYS); a bad one is deleted."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON
        raise _corrupt(path.parent, (path.name,), str(exc).splitlines()[0]) from None
    if not isinstance(settings, dict):
        raise _corrupt(path.parent, (path.name,), f"a {type(settings).__name__}, not an object")
    missing = [key for key in HPARAMS_KEYS if key not in settings]
    if missing:
        raise _corrupt(path.parent, (path.name,), f"it lacks {', '.join(missing)}")
    for key in HPARAMS_KEYS:
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _corrupt(path.parent, (path.name,), f"{key} must be a whole number, got {value!r}")
    return settings


def _read_tf_checkpoint(model_dir):
    """Every variable of the TF checkpoint in `model_dir`: {name: array}. Only what
    TensorFlow cannot read blames the checkpoint's own files (they are deleted)."""
    tf = import_tensorflow_quietly()
    try:
        ckpt_path = tf.train.latest_checkpoint(str(model_dir))
        if ckpt_path is None:
            raise ValueError(f"the file {model_dir / 'checkpoint'} names no checkpoint")
        return _tf_variables(tf, ckpt_path)
    except MemoryError:
        raise  # a model too big for this machine: the files are fine, keep them
    except Exception as exc:  # TF's DataLossError, a protobuf ParseError, a bad index, ...
        # most likely a download that was cut short or damaged
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _corrupt(model_dir, (*CHECKPOINT_DATA_FILES, "checkpoint"), reason) from exc


def _tf_variables(tf, ckpt_path):
    """{OpenAI's variable name: array with size-1 axes squeezed away} of a checkpoint."""
    return {name: np.squeeze(tf.train.load_variable(ckpt_path, name))
            for name, _ in tf.train.list_variables(ckpt_path)}


def _params_from_variables(variables, settings):
    """The nested `params` of checkpoint variables; ValueError if their blocks are not
    hparams.json's `n_layer`."""
    params = {"blocks": [{} for _ in range(settings["n_layer"])]}
    for name, array in variables.items():
        set_param(params, name.removeprefix(OPENAI_SCOPE), array)
    empty = [i for i, block in enumerate(params["blocks"]) if not block]
    if empty:
        raise ValueError(f"n_layer is {settings['n_layer']} but the checkpoint has no block {empty[0]}")
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
        qkv_bias=True,  # OpenAI's GPT-2 has biases for query, key and value
    )
    return cfg


def _shapes(left, right):
    return f"the model has {tuple(left.shape)}, the pretrained weights have {tuple(right.shape)}"


class _ShapeMismatch(ConfigError):
    """`assign`'s shape error; it keeps the parameter, so `load_weights_into_gpt` can name it."""

    def __init__(self, left, right):
        self.parameter, self.shapes = left, _shapes(left, right)
        super().__init__(f"shape mismatch: {self.shapes}")


def _no_parameter_error(name, shape):
    return ConfigError(f"GPTModel has no parameter {name + ' ' if name else ''}to receive pretrained "
                       f"weights of shape {tuple(shape)} (OpenAI's GPT-2 needs qkv_bias=True in the config)")


def _mismatch_error(name, shapes):
    return ConfigError(f"shape mismatch for {name}: {shapes}; does the config match the "
                       "checkpoint's size?")


def assign(left, right):
    """The book's `assign`: check that `right` fits the parameter `left`, return it as a new parameter.

    `right` is an array of `params` (numpy, as `download_and_load_gpt2` gives it, or a
    tensor). A shape mismatch raises ConfigError (a ValueError, as in the book) with
    both shapes. The book returns `torch.nn.Parameter(torch.tensor(right))`; ftlib's
    copy is also contiguous (a `.T` array keeps its transposed layout otherwise, and
    matmuls over it round differently) and keeps `left`'s dtype, device and
    requires_grad. The caller puts the new parameter in the model
    (`gpt.pos_emb.weight = assign(...)`), so make an optimizer after loading.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    if left is None:  # e.g. W_query.bias of a model built with qkv_bias=False
        raise _no_parameter_error(None, right.shape)
    if left.shape != right.shape:
        raise _ShapeMismatch(left, right)
    if torch.is_tensor(right):
        right = right.detach().clone(memory_format=torch.contiguous_format)  # not a view of `params`
    else:
        right = torch.tensor(right)  # the book's copy of a numpy array
    right = right.to(dtype=left.dtype, device=left.device).contiguous()
    return torch.nn.Parameter(right, requires_grad=left.requires_grad)


@contextmanager
def _naming_the_parameter(gpt):
    """Inside: `assign`'s shape error names the parameter of `gpt` it was for; a missing
    entry of `params` is a ConfigError."""
    try:
        yield
    except _ShapeMismatch as exc:
        name = next((n for n, p in gpt.named_parameters() if p is exc.parameter), "a parameter")
        raise _mismatch_error(name, exc.shapes) from None
    except KeyError as exc:
        raise ConfigError(f"the pretrained weights lack the entry {exc}") from None


def _check_blocks(model, params):
    """ConfigError unless `params` has as many transformer blocks as `model`."""
    n_blocks = len(params.get("blocks", []))
    if n_blocks != len(model.trf_blocks):
        raise ConfigError(
            f"the pretrained weights have {n_blocks} transformer blocks, the model has "
            f"{len(model.trf_blocks)} (n_layers); does the config match the checkpoint's size?"
        )


def load_weights_into_gpt(gpt, params):
    """The book's loader: copy GPT-2 `params` (from `download_and_load_gpt2`) into `gpt`.

    As the chapter writes it, block by block: OpenAI's linear weights are (in, out),
    so each is transposed (`.T`) to PyTorch's (out, in); the joined query/key/value
    layer c_attn is split in three (`np.split`); the output head gets a copy of the
    token embedding wte (GPT-2 ties the two). ftlib adds clear errors: a wrong number
    of blocks, a missing entry or a shape that does not fit the config (naming the
    parameter) is a ConfigError. Returns `gpt`. `load_gpt2_params` does the same from
    the one name table.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    _check_blocks(gpt, params)
    with _naming_the_parameter(gpt):
        gpt.pos_emb.weight = assign(gpt.pos_emb.weight, params["wpe"])
        gpt.tok_emb.weight = assign(gpt.tok_emb.weight, params["wte"])

        for b in range(len(params["blocks"])):
            q_w, k_w, v_w = np.split(
                (params["blocks"][b]["attn"]["c_attn"])["w"], 3, axis=-1)
            gpt.trf_blocks[b].att.W_query.weight = assign(
                gpt.trf_blocks[b].att.W_query.weight, q_w.T)
            gpt.trf_blocks[b].att.W_key.weight = assign(
                gpt.trf_blocks[b].att.W_key.weight, k_w.T)
            gpt.trf_blocks[b].att.W_value.weight = assign(
                gpt.trf_blocks[b].att.W_value.weight, v_w.T)

            q_b, k_b, v_b = np.split(
                (params["blocks"][b]["attn"]["c_attn"])["b"], 3, axis=-1)
            gpt.trf_blocks[b].att.W_query.bias = assign(
                gpt.trf_blocks[b].att.W_query.bias, q_b)
            gpt.trf_blocks[b].att.W_key.bias = assign(
                gpt.trf_blocks[b].att.W_key.bias, k_b)
            gpt.trf_blocks[b].att.W_value.bias = assign(
                gpt.trf_blocks[b].att.W_value.bias, v_b)

            gpt.trf_blocks[b].att.out_proj.weight = assign(
                gpt.trf_blocks[b].att.out_proj.weight,
                params["blocks"][b]["attn"]["c_proj"]["w"].T)
            gpt.trf_blocks[b].att.out_proj.bias = assign(
                gpt.trf_blocks[b].att.out_proj.bias,
                params["blocks"][b]["attn"]["c_proj"]["b"])

            gpt.trf_blocks[b].ff.layers[0].weight = assign(
                gpt.trf_blocks[b].ff.layers[0].weight,
                params["blocks"][b]["mlp"]["c_fc"]["w"].T)
            gpt.trf_blocks[b].ff.layers[0].bias = assign(
                gpt.trf_blocks[b].ff.layers[0].bias,
                params["blocks"][b]["mlp"]["c_fc"]["b"])
            gpt.trf_blocks[b].ff.layers[2].weight = assign(
                gpt.trf_blocks[b].ff.layers[2].weight,
                params["blocks"][b]["mlp"]["c_proj"]["w"].T)
            gpt.trf_blocks[b].ff.layers[2].bias = assign(
                gpt.trf_blocks[b].ff.layers[2].bias,
                params["blocks"][b]["mlp"]["c_proj"]["b"])

            gpt.trf_blocks[b].norm1.scale = assign(
                gpt.trf_blocks[b].norm1.scale,
                params["blocks"][b]["ln_1"]["g"])
            gpt.trf_blocks[b].norm1.shift = assign(
                gpt.trf_blocks[b].norm1.shift,
                params["blocks"][b]["ln_1"]["b"])
            gpt.trf_blocks[b].norm2.scale = assign(
                gpt.trf_blocks[b].norm2.scale,
                params["blocks"][b]["ln_2"]["g"])
            gpt.trf_blocks[b].norm2.shift = assign(
                gpt.trf_blocks[b].norm2.shift,
                params["blocks"][b]["ln_2"]["b"])

        gpt.final_norm.scale = assign(gpt.final_norm.scale, params["g"])
        gpt.final_norm.shift = assign(gpt.final_norm.shift, params["b"])
        gpt.out_head.weight = assign(gpt.out_head.weight, params["wte"])
    return gpt


def _copy_into(left, right, name):
    """Copy `right` into the parameter `left` (GPTModel's `name`) in place: it keeps its
    dtype, device and identity, so an optimizer holding it still works."""
    right = torch.as_tensor(right)
    if left is None:
        raise _no_parameter_error(name, right.shape)
    if tuple(left.shape) != tuple(right.shape):
        raise _mismatch_error(name, _shapes(left, right))
    with torch.no_grad():
        left.copy_(right)


def load_gpt2_params(model, params):
    """Copy GPT-2 `params` into `model` from the one name table: the same weights as
    the book's `load_weights_into_gpt`.

    One row of ftlib/model/gpt2_names.py's table at a time (the table export and
    Hugging Face loading share): linear weights are transposed from (in, out) to
    PyTorch's (out, in); the joined query/key/value layer is split into W_query, W_key
    and W_value; the output head gets a copy of the token embedding. Each parameter is
    copied in place (it keeps its dtype and device); `params` may hold numpy arrays or
    tensors (safetensors). A missing entry or a shape that does not fit the model's
    config raises ConfigError naming the tensor. Returns `model`.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    _check_blocks(model, params)
    for row in gpt2_rows(len(model.trf_blocks)):
        try:
            array = get_param(params, row.openai)
        except KeyError:
            raise ConfigError(f"the pretrained weights lack the entry {row.openai!r}") from None
        for name, tensor in zip(row.ours, to_ours(row, array)):
            _copy_into(get_ours(model, name), tensor, name)
    return model


def read_safetensors(path, missing_hint=None):
    """The tensors of a safetensors file, as a dict; ConfigError naming the file when it
    is missing (with `missing_hint`, if given) or unreadable.

    Not in a notebook: the reader under `load_hf_safetensors_into_gpt` and `load_base_model`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"safetensors file not found: {path}" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from None


def load_hf_safetensors_into_gpt(model, path):
    """Load Hugging Face's GPT-2 `model.safetensors` (openai-community/gpt2*) into `model`.

    No TensorFlow needed. The config must match the file's size, as with OpenAI's
    checkpoints (e.g. `get_config("gpt2-small (124M)")` for openai-community/gpt2).

    Not in a notebook: an alternative to the chapter's loader; tests/test_weights.py checks it.
    """
    state_dict = read_safetensors(path)
    try:
        return load_gpt2_params(model, hf_state_dict_to_params(state_dict))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
