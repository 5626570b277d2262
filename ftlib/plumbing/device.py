"""Pick the device to compute on: a CUDA GPU, an Apple GPU (MPS), or the CPU.

The chapter uses CUDA when it is there and the CPU otherwise, and mentions Apple
silicon as an option. We use MPS only with torch >= 2.9: older releases compute
wrong losses for this chapter's models on MPS, which a learner would not notice.

Not in a notebook: notebooks run on the CPU, so their outputs are the same on every
machine; `make finetune` picks the best device (`--device`).
"""

import re

import torch

from ftlib.plumbing.errors import ConfigError

MIN_TORCH_FOR_MPS = (2, 9)
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _torch_version():
    """(major, minor) of the installed torch, e.g. (2, 9) for "2.9.1+cpu"."""
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _mps_available():
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(prefer=None):
    """Return the `torch.device` to train and generate on.

    - `prefer=None`: CUDA if available; else Apple MPS if available and torch >= 2.9;
      else the CPU.
    - `prefer="cpu"`, `"cuda"`, `"cuda:1"` or `"mps"`: that device, checked first; a
      name torch does not know, or a device this machine lacks, raises `ConfigError`.

    >>> get_device()           # on a laptop without a GPU
    device(type='cpu')
    """
    if prefer is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available() and _torch_version() >= MIN_TORCH_FOR_MPS:
            return torch.device("mps")
        return torch.device("cpu")

    try:
        device = torch.device(prefer)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {prefer!r}; use one of {', '.join(DEVICE_TYPES)} (or 'cuda:N')"
        ) from exc
    if device.type not in DEVICE_TYPES:
        raise ConfigError(
            f"device {prefer!r} is not supported here; use one of {', '.join(DEVICE_TYPES)}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {prefer!r} requested, but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device {prefer!r} requested, but this machine has {count} CUDA "
                f"device(s): cuda:0 to cuda:{count - 1}"
            )
    if device.type == "mps":
        if not _mps_available():
            raise ConfigError(f"device {prefer!r} requested, but Apple MPS is not available")
        if _torch_version() < MIN_TORCH_FOR_MPS:
            need = ".".join(map(str, MIN_TORCH_FOR_MPS))
            raise ConfigError(
                f"device 'mps' needs torch >= {need} (torch {torch.__version__} computes "
                "wrong losses on MPS); upgrade torch or use 'cpu'"
            )
    return device
