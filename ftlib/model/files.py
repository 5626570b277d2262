"""Model files: save and load a model's weights, a run folder's model, and training
checkpoints (weights, optimizer, schedule, step, random states and history, so a
run continues exactly where it stopped).

Every file is written atomically (a temporary file, then a rename). Every PyTorch file ftlib reads goes through `read_torch_file`: only tensors and
plain containers are read, never code (`torch.load(..., weights_only=True)`), and a
file that is missing, unreadable or not a dict stops with one message naming it.
"""

import errno
import json
import random
import re
from pathlib import Path

import torch

from ftlib.plumbing.distributed import is_distributed
from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.plumbing.fileio import atomic_path
from ftlib.model.lora import add_lora, merge_lora
from ftlib.model.gpt import GPTModel, check_model_config


def read_torch_file(path, what="PyTorch state_dict", map_location="cpu", missing_hint=None):
    """The dict saved in the PyTorch file `path` (`torch.load(..., weights_only=True)`).

    `what` names what the file should hold ("PyTorch state_dict", "ftlib checkpoint")
    in the error messages, which all start with the file's path:

        runs/latest/model.pth not found: the run did not finish saving its model
        runs/latest/model.pth is not a readable PyTorch state_dict (...)
        runs/latest/model.pth holds a list, not a PyTorch state_dict

    `missing_hint` (optional) says why a missing file may be missing.

    Not in a notebook: the one reader under every load below.
    """
    path = Path(path)
    if not path.is_file():
        raise FtlibError(f"{path} not found" + (f": {missing_hint}" if missing_hint else ""))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle of something else: the errors vary
        lines = str(exc).strip().splitlines()
        raise FtlibError(f"{path} is not a readable {what} "
                         f"({lines[0] if lines else type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise FtlibError(f"{path} holds a {type(obj).__name__}, not a {what}")
    return obj


def sft_file_name(model_name):
    """The book's file name for a fine-tuned model.

    >>> sft_file_name("gpt2-medium (355M)")
    'gpt2-medium355M-sft.pth'

    Introduced in: notebooks/06_finetuning.ipynb
    """
    return re.sub(r"[ ()]", "", model_name) + "-sft.pth"


def save_model(model, path):
    """Save `model.state_dict()` to `path` with `torch.save`, atomically.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    _torch_save(model.state_dict(), path)


def _torch_save(obj, path):
    """`torch.save(obj, path)` atomically; a failed write (a full disk: torch says only
    "enforce fail ... unexpected pos") is an OSError naming the file."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "write failed"
            raise OSError(errno.EIO, f"could not write {path} (is the disk full? {reason})") from None


def load_model_state(model, path, map_location=None):
    """Load a state dict saved by `save_model` into `model`; return `model`.

    `map_location` defaults to the device of the model's parameters. A missing or
    unreadable file raises an `FtlibError` naming it (`read_torch_file`); a state
    dict of another model size or config, a `ConfigError`.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if map_location is None:
        first = next(model.parameters(), None)
        map_location = first.device if first is not None else "cpu"
    state = read_torch_file(path, map_location=map_location)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"the weights in {path} do not fit this model (was it saved from another "
            f"model size or config?): {first_line}"
        ) from exc
    return model


def read_run_config(run_dir):
    """A run folder's config.json as a dict, without its model: FtlibError naming the
    file when it is missing or not JSON, ConfigError naming the file and the key when
    its "model_config" is not one GPTModel can be built from (`check_model_config`):

        runs/latest/config.json: model_config: 'n_heads' must be a positive whole number, got 0

    Not in a notebook: what `load_run_model` reads first (and `preference_tune`, to
    check the preference data against the model before loading it).
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise FtlibError(f"{path} not found: is {run_dir} a run folder of `python -m ftlib finetune`?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FtlibError(f"{path} is not readable JSON: {reason}") from None
    cfg = config.get("model_config") if isinstance(config, dict) else None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the field 'model_config' (the GPTModel config dict) is missing")
    check_model_config(cfg, f"{path}: model_config")
    return config


def _check_config_fits_weights(cfg, state, path, weights):
    """ConfigError naming the key of `cfg` (read from `path`) that the state dict of
    `weights` contradicts: vocab_size, context_length, emb_dim or n_layers. Checked
    before the model is built, so a mistyped size allocates nothing."""
    found = {}
    if getattr(state.get("tok_emb.weight"), "ndim", 0) == 2:
        found["vocab_size"], found["emb_dim"] = state["tok_emb.weight"].shape
    if getattr(state.get("pos_emb.weight"), "ndim", 0) == 2:
        found["context_length"] = state["pos_emb.weight"].shape[0]
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"trf_blocks\.(\d+)\.", key))}
    if blocks:
        found["n_layers"] = max(blocks) + 1
    for key, value in found.items():
        if cfg[key] != value:
            raise ConfigError(f"{weights} does not fit the model_config of {path}: its {key!r} "
                              f"is {cfg[key]}, the weights have {value}")


def _load_error_reason(exc):
    """The line of a load_state_dict RuntimeError that says what does not fit."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return (lines[0] if lines else type(exc).__name__)[:300]


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
    config = read_run_config(run_dir)
    weights = run_dir / "model.pth"
    state = read_torch_file(weights, missing_hint="the run did not finish saving its model")
    # A model saved after torch.compile has every key prefixed "_orig_mod.".
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}

    _check_config_fits_weights(config["model_config"], state, run_dir / "config.json", weights)
    model = GPTModel(config["model_config"])
    lora_keys = [k for k in state if k.endswith(".lora.A")]
    if lora_keys:
        rank, alpha = _lora_settings(config, state[lora_keys[0]], run_dir / "config.json")
        add_lora(model, rank, alpha)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{weights} does not fit the model_config of {run_dir / 'config.json'}: "
                          f"{_load_error_reason(exc)}") from None
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


def _rng_states():
    """Python's and PyTorch's RNG states, to put into a checkpoint."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # one process per GPU (DDP): only its own, so it does not start up the others
        states["cuda"] = [torch.cuda.get_rng_state()] if is_distributed() else torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states):
    """Restore what `_rng_states` returned."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        if is_distributed():
            torch.cuda.set_rng_state(states["cuda"][0])  # this process's GPU only
        else:
            torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, step, scheduler=None, extra=None):
    """Write model, optimizer, scheduler, step and RNG states atomically.

    Not in a notebook: `train_model` writes checkpoints; `--resume` reads them back.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "rng": _rng_states(),
        "extra": extra or {},
    }
    _torch_save(state, path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, map_location="cpu"):
    """Restore what `save_checkpoint` wrote; returns the checkpoint dict (step, extra).

    Not in a notebook: `train_model` writes checkpoints; `--resume` reads them back.
    """
    state = read_torch_file(path, what="ftlib checkpoint", map_location=map_location)
    return restore_checkpoint(state, model, optimizer, scheduler, path)


def restore_checkpoint(state, model, optimizer=None, scheduler=None, path="the checkpoint"):
    """Put a checkpoint read with `read_torch_file` back into model, optimizer,
    scheduler and the RNGs; returns `state`. A checkpoint of another model (another
    width, LoRA added or removed) raises ConfigError naming `path`.

    Not in a notebook: `load_checkpoint` in two steps, so the pipeline reads a
    checkpoint once, checks its settings, then restores it.
    """
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} does not fit this run's model (was it made with another "
                          f"--model or --lora-rank?): {first}") from None
    return state
