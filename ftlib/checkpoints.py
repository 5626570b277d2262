"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model's weights, the optimizer's state (AdamW's moments),
the schedule, the last step done, the random generators' states and the
training history. It is written atomically (a temporary file, then a rename), so
an interrupted save leaves the previous checkpoint whole.
"""

import random

import torch

from ftlib.distributed import is_distributed
from ftlib.errors import FtlibError
from ftlib.fileio import atomic_path


def rng_states():
    """Python's and PyTorch's RNG states, to put into a checkpoint."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # one process per GPU (DDP): only its own, so it does not start up the others
        states["cuda"] = [torch.cuda.get_rng_state()] if is_distributed() else torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what `rng_states` returned."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        if is_distributed():
            torch.cuda.set_rng_state(states["cuda"][0])  # this process's GPU only
        else:
            torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, step, scheduler=None, extra=None):
    """Write model, optimizer, scheduler, step and RNG states atomically.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "rng": rng_states(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, model, optimizer=None, scheduler=None, map_location="cpu"):
    """Restore what `save_checkpoint` wrote; returns the checkpoint dict (step, extra).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FtlibError(f"{path}: no checkpoint there") from None
    except Exception as exc:  # a truncated or foreign file
        raise FtlibError(f"{path}: not a readable ftlib checkpoint ({exc})") from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    return state
