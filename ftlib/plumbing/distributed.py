"""Training on several processes at once, with PyTorch's DistributedDataParallel (DDP).

One process trains on one device. To use N devices (N GPUs, or N groups of CPU
cores), `torchrun` starts N copies of the same command:

    torchrun --nproc_per_node N -m ftlib finetune ...

and tells each copy who it is through environment variables:

    RANK        0 .. WORLD_SIZE-1, this process's number among all of them
    WORLD_SIZE  how many processes train together
    LOCAL_RANK  this process's number on this machine: which GPU it takes
    MASTER_ADDR, MASTER_PORT  where the processes meet to connect to each other

What each process then does (ftlib/pipeline.py puts the pieces together):

1. `init_distributed`: join the others (a "process group"). On GPUs the processes
   talk through NCCL and process LOCAL_RANK uses cuda:LOCAL_RANK; on the CPU they
   talk through Gloo.
2. Build the same model. `wrap_model` hands it to DDP, which copies rank 0's
   weights to every process, so all replicas start equal.
3. Data: every process computes the same order of global batches (same seed, same
   epoch) and takes its share of each batch (`ShardedBatchSampler` in
   ftlib/data/batching.py). A global batch of 16 on 4 processes: 4 examples each.
4. Backward: DDP averages the gradients across processes (an "all-reduce") while
   the backward pass runs. Every process then holds the same gradients, takes the
   same optimizer step, and the replicas stay equal, step after step.
5. The loss: ftlib weights every target token equally across the whole batch
   (see `accumulate_gradients` in ftlib/training/loop.py). Each process divides its summed
   token losses by the number of targets of the global batch (summed over all
   processes), times WORLD_SIZE to undo DDP's average; the result is exactly the
   gradient one process would compute on the whole global batch.
6. Only rank 0 prints, writes checkpoints and the run folder, and generates the
   held-out responses; the others wait for it (`main_process_first`).

Checkpoints hold the plain model (no DDP wrapper inside), and the order of the
global batches depends only on the seed and the epoch; so a run may resume with
a different number of processes and still sees the same batches.

The same command spans several machines: run it on each of them, naming one of
them (HOST) as the meeting point,

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m ftlib finetune ...

here 2 machines x 4 GPUs: 8 processes, RANK 0..7, LOCAL_RANK 0..3 on each.
The run folder (--out) should be on storage all machines share, for --resume.

Not in a notebook: notebooks train in one process; the README's "Multi-process
training" shows the torchrun command that uses this module.
"""

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ftlib.plumbing.device import get_device
from ftlib.plumbing.errors import ConfigError, FtlibError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# How long a process waits for the others at a meeting point (a barrier, an
# all-reduce) before giving up. Generous: rank 0 generates the held-out responses
# alone while the others wait, and a large model takes minutes for that.
TIMEOUT = datetime.timedelta(minutes=30)


class MainProcessFailed(FtlibError):
    """Raised on the other processes when rank 0 failed in `main_process_first`.

    Rank 0 prints the error; the others stop quietly with the same exit status.
    """


def launched_by_torchrun(environ=None):
    """True when torchrun started this process (RANK, WORLD_SIZE and LOCAL_RANK are set).
    """
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARS)


def _env_int(name):
    value = os.environ.get(name, "")
    if not value.isdigit():
        raise ConfigError(f"environment variable {name}={value!r}: expected a number (set by torchrun)")
    return int(value)


def init_distributed(prefer=None):
    """Join the process group that torchrun set up; return this process's device.

    - `prefer=None`: CUDA if available (process LOCAL_RANK takes cuda:LOCAL_RANK,
      the processes talk through NCCL), else the CPU (Gloo);
    - `prefer="cuda"` or `"cpu"`: that one. A fixed GPU ("cuda:1") is refused when
      several processes share a machine: each takes its own; choose which GPUs are
      visible with CUDA_VISIBLE_DEVICES instead. Apple's MPS has no DDP backend.
    """
    local_rank = _env_int("LOCAL_RANK")
    if prefer is None:
        prefer = "cuda" if torch.cuda.is_available() else "cpu"
    device = get_device(prefer)  # ConfigError for an unknown or missing device
    if device.type == "mps":
        raise ConfigError("multi-process training runs on CUDA GPUs (NCCL) or the CPU (Gloo), "
                          "not on mps; use --device cpu")
    if device.type == "cuda":
        if device.index is not None and _env_int("WORLD_SIZE") > 1:
            raise ConfigError(f"--device {prefer}: under torchrun each process uses cuda:LOCAL_RANK; "
                              "give --device cuda and choose GPUs with CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {local_rank}, but this machine has {count} CUDA device(s): "
                              f"use --nproc_per_node {count} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # device_id binds the process group to this GPU (barriers then use it)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return device


def cleanup_distributed():
    """Leave the process group (if this process is in one). Safe to call twice.
    """
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def processes(device=None):
    """Around a job: yields this process's device (`get_device(device)`); under torchrun
    the process group is joined first (`init_distributed`) and left afterwards.

    Not in a notebook: the `with` around `finetune`.
    """
    if not launched_by_torchrun():
        yield get_device(device)
        return
    joined = init_distributed(device)
    try:
        yield joined
    finally:
        cleanup_distributed()


def is_distributed():
    """True inside a process group (after `init_distributed`).
    """
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's number, 0 .. world_size()-1; 0 without a process group.
    """
    return dist.get_rank() if is_distributed() else 0


def world_size():
    """How many processes train together; 1 without a process group.
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on rank 0, the one process that prints and writes files (and in a
    single process).
    """
    return rank() == 0


def all_reduce_sum(values, device):
    """Sum a list of numbers over all processes; every process gets the sums (floats).

    The tensor goes on `device` because NCCL reduces GPU tensors only; float64
    keeps counts exact (to 2**53).
    """
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first; the others run it once rank 0 has finished.

    For work that must happen once, or once before the others start: a download
    that all processes then read, generating and writing the run folder
    (`if is_main_process(): ...` inside the block). If rank 0 fails in the block,
    the others raise `MainProcessFailed` instead of waiting forever. Without a
    process group the block simply runs.
    """
    if not is_distributed():
        yield
        return
    if is_main_process():
        try:
            yield
        except BaseException as exc:
            _tell_the_others(f"{type(exc).__name__}: {exc}")
            raise
        _tell_the_others(None)
    else:
        failure = _tell_the_others(None)  # waits for rank 0's word
        if failure is not None:
            raise MainProcessFailed(f"rank 0 failed: {failure}")
        yield


def _tell_the_others(failure):
    """Broadcast rank 0's outcome (None, or its error as text); returns it everywhere."""
    message = [failure]
    dist.broadcast_object_list(message, src=0)
    return message[0]


def wrap_model(model, device):
    """Wrap `model` in DistributedDataParallel, for this process's device.

    DDP copies rank 0's parameters to every process when it is created, then, in
    each backward pass, averages the gradients across processes. It synchronises
    what runs inside its `forward()`, so the loss is computed there:
    `wrapped(inputs, targets)` is `GPTModel.forward(inputs, targets)`, the loss at
    the targets only.

    Optimizers built on `model.parameters()` before wrapping stay valid: DDP
    trains the same parameter tensors. The wrapped module is `wrapped.module`.
    """
    if not is_distributed():
        raise ConfigError("wrap_model needs a process group: call init_distributed first")
    device = torch.device(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
