"""Install PyTorch into this Python (make setup runs it before the rest of ftlib).

    python scripts/install_torch.py torch==2.13.0            # the build this machine needs
    python scripts/install_torch.py torch==2.13.0 --index URL # exactly the build at URL

Without --index: on Linux without an NVIDIA GPU (no `nvidia-smi`), the CPU build from
PyTorch's CPU index (about 0.2 GB, where the default index's Linux wheel is the CUDA
build with several GB of NVIDIA libraries); where that index cannot be reached (offline,
behind a mirror) the default index. On Linux with an NVIDIA GPU, on macOS (the Apple
GPU's build is the only one) and on Windows (the default wheel is the CPU build), the
default index. A GPU build elsewhere is one setting away:
`make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128`.
"""

import argparse
import platform
import shutil
import subprocess
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def wants_cpu_build():
    return platform.system() == "Linux" and shutil.which("nvidia-smi") is None


def reachable(url, timeout=5.0):
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout):
            return True
    except OSError:
        return False


def choose_index(index):
    """(the index URL to install from or None for pip's default, why, in words)."""
    if index:
        return index, f"from {index} (TORCH_INDEX)"
    if not wants_cpu_build():
        return None, "from the default index (" + (
            "an NVIDIA GPU is present" if platform.system() == "Linux" else platform.system()) + ")"
    if reachable(CPU_INDEX):
        return CPU_INDEX, f"the CPU build from {CPU_INDEX} (Linux, no NVIDIA GPU)"
    return None, f"from the default index ({CPU_INDEX} cannot be reached)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a pip requirement, e.g. torch==2.13.0")
    parser.add_argument("--index", default="", help="install from this index only (e.g. a CUDA one)")
    args = parser.parse_args(argv)
    index, why = choose_index(args.index)
    print(f"install_torch: {args.spec}, {why}", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", args.spec]
    status = subprocess.call(cmd + (["--index-url", index] if index else []))
    if status and index == CPU_INDEX:  # reachable but failed part-way: the default index
        print(f"install_torch: {CPU_INDEX} failed; trying the default index", flush=True)
        status = subprocess.call(cmd)
    return status


if __name__ == "__main__":
    sys.exit(main())
