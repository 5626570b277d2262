"""GPT-2's pretrained weights: download OpenAI's checkpoints, load them into GPTModel.

Two sources give the same numbers:
- OpenAI's original TensorFlow checkpoints (what the chapter downloads), read with
  TensorFlow into a nested dict of numpy arrays, `params`;
- Hugging Face's `model.safetensors` (openai-community/gpt2, -medium, -large, -xl),
  read without TensorFlow into the same `params` dict.

`load_weights_into_gpt(model, params)` then copies `params` onto the book's
parameter names. Which of their tensors goes to which of ours, and how (transposed,
query/key/value split), is the one table of ftlib/gpt2_names.py.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ftlib.download import download_first_available
from ftlib.errors import ConfigError, DownloadError
from ftlib.gpt2_names import (OPENAI_SCOPE, get_ours, get_param, gpt2_rows, hf_state_dict_to_params,
                              set_param, to_ours)

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
    nested dict of numpy arrays that `load_weights_into_gpt` expects.

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
    try:
        if not all((model_dir / name).is_file() for name in GPT2_FILENAMES):
            model_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=model_dir):  # can files be written there?
                pass
        for name in GPT2_FILENAMES:
            download_first_available(
                [f"{base}/{model_size}/{name}" for base in bases], model_dir / name,
                progress=progress, desc=f"{model_size}/{name}",
            )
    except DownloadError:
        raise  # names the URL (a DownloadError is an OSError too)
    except OSError as exc:  # the weights folder, not the network: say which folder
        raise ConfigError(f"the GPT-2 weights folder {models_dir} cannot be written "
                          f"({exc.strerror or exc}): {model_size}'s files are downloaded into "
                          f"{model_dir}; choose another (--weights-dir) or make it writable") from None

    settings = _read_hparams(model_dir / "hparams.json")
    variables = _read_tf_checkpoint(model_dir)
    try:
        params = _params_from_variables(variables, settings)
    except ValueError as exc:  # the checkpoint read fine: hparams.json is what is wrong
        raise _corrupt(model_dir, ("hparams.json",), str(exc)) from None
    return settings, params


def _corrupt(model_dir, names, reason):
    """The one place that decides which downloaded files are bad: delete `names` (and
    nothing else) so the next call fetches them again; the DownloadError to raise."""
    which = ", ".join(str(model_dir / name) for name in names)
    for name in names:
        try:
            (model_dir / name).unlink(missing_ok=True)
        except OSError as exc:  # e.g. a read-only weights folder
            return DownloadError(f"{which}: not a valid GPT-2 download ({reason}); they cannot be "
                                 f"deleted ({exc.strerror or exc}): delete them and run again")
    return DownloadError(f"{which}: not a valid GPT-2 download ({reason}); deleted, "
                         "run again to download it anew (the other files are kept)")


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


def load_gpt2_params_from_tf_ckpt(ckpt_path, settings):
    """Read every variable of an OpenAI GPT-2 checkpoint into the nested dict `params`.

    OpenAI's variable names become paths in `params` (see ftlib/gpt2_names.py), and
    the size-1 axes are squeezed away: a conv1d weight (1, in, out) -> (in, out).

    Not in a notebook: the reading step inside `download_and_load_gpt2`.
    """
    tf = import_tensorflow_quietly()
    return _params_from_variables(_tf_variables(tf, ckpt_path), settings)


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


def assign(left, right, name):
    """Copy `right` (numpy array or tensor) into the parameter `left`, in place.

    `name` is the parameter's name in GPTModel (e.g. "trf_blocks.3.att.W_query.weight");
    a shape mismatch raises ConfigError naming it and both shapes. The parameter keeps
    its dtype and device (the copy converts), so an optimizer holding it still works.

    Not in a notebook: the book's copy with a shape check, which `load_weights_into_gpt` calls
    for every row of the table.
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


def load_weights_into_gpt(model, params):
    """Copy GPT-2 `params` (from `download_and_load_gpt2` or safetensors) into `model`.

    One row of ftlib/gpt2_names.py's table at a time: linear weights are transposed
    from (in, out) to PyTorch's (out, in); the joined query/key/value layer is split
    into W_query, W_key and W_value; the output head gets a copy of the token
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
    for row in gpt2_rows(n_blocks):
        try:
            array = get_param(params, row.openai)
        except KeyError:
            raise ConfigError(f"the pretrained weights lack the entry {row.openai!r}") from None
        for name, tensor in zip(row.ours, to_ours(row, array)):
            assign(get_ours(model, name), tensor, name)
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

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    state_dict = read_safetensors(path)
    try:
        return load_weights_into_gpt(model, hf_state_dict_to_params(state_dict))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
