"""Mixed precision (notebook 08): whether this CPU has bfloat16 units, whether bf16 pays
on a device, the autocast dtype, TF32 on CUDA.

Under bf16 autocast the matrix products run in bfloat16 while weights, gradients, the
optimizer and the loss stay float32.
"""

import contextlib
import os

import torch

from ftlib.plumbing.errors import ConfigError


def cpu_has_bf16_units(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU multiplies bfloat16 matrices natively (x86 `avx512_bf16` or
    `amx_bf16` in /proc/cpuinfo's flags). False where that cannot be read (macOS,
    Windows): there, `--mixed-precision` turns it on by hand.

    Without such units torch still runs bf16 on the CPU, by converting, which is
    slower than float32. With them a bf16 matrix product runs at several times
    the float32 rate (benchmarks/bench_roofline.py measures both).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _onednn_may_use_bf16_units():
    """False when ONEDNN_MAX_CPU_ISA holds oneDNN below AVX-512 (`make` sets it to run
    another CPU's kernels, e.g. ATEN_CPU_CAPABILITY=avx2): then bf16 is emulated here,
    as on that CPU."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return not isa or "AVX512" in isa or "AMX" in isa or isa in ("ALL", "DEFAULT")


def mixed_precision_default(device):
    """Whether mixed precision pays on `device`: on a CUDA GPU, and on a CPU with
    bfloat16 units (`cpu_has_bf16_units`, unless oneDNN is held below them); off
    elsewhere (MPS, older CPUs). The environment variable FTLIB_MIXED_PRECISION=1 or 0
    overrides the choice (the tests run the notebooks both ways).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    forced = os.environ.get("FTLIB_MIXED_PRECISION", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"FTLIB_MIXED_PRECISION={forced!r}: use 1 (bf16 autocast) or 0 (float32)")
        return forced == "1"
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_bf16_units() and _onednn_may_use_bf16_units()


def autocast_dtype_for(device, bf16=True):
    """`torch.bfloat16` when `bf16` is asked for and `device` can run it (a CUDA GPU
    that supports it, or the CPU), else None: the dtype for `torch.autocast`.

    Under bf16 autocast the matrix products run in bfloat16 (on a GPU's tensor cores,
    on a CPU's AVX-512 BF16 or AMX units) at a fraction of the float32 cost, while
    weights, gradients, the optimizer and the loss stay float32. Whether it *pays*
    is `mixed_precision_default`'s question; this one only says what is possible.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    device = torch.device(device)
    if not bf16:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" else None


def enable_tf32(device, enabled=True):
    """Let float32 matrix products use TF32 tensor cores on CUDA (or turn that off).

    A process-wide setting (`torch.set_float32_matmul_precision`); nothing changes
    on other devices. Returns whether TF32 is now on.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    if torch.device(device).type != "cuda":
        return False
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return enabled


def autocast(device, dtype):
    """bf16 autocast when `dtype` is given, else a context that does nothing.

    Not in a notebook: the context `accumulate_gradients` runs the forward pass in.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def training_precision(device, mixed_precision=None):
    """The autocast dtype of a run on `device` (None: float32), TF32 set to match:
    `mixed_precision` True or False, or None for `mixed_precision_default`'s choice.

    Not in a notebook: how `finetune` applies `--mixed-precision`.
    """
    mixed = mixed_precision_default(device) if mixed_precision is None else mixed_precision
    enable_tf32(device, mixed)
    return autocast_dtype_for(device, bf16=mixed)
