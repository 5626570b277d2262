"""get_device: CUDA, then MPS (torch >= 2.9 only), then CPU; explicit choices are checked."""

import pytest
import torch

from ftlib.plumbing.device import get_device
from ftlib.plumbing.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Pretend hardware: set `.cuda` (device count), `.mps` (bool), `.torch` (version)."""

    class Machine:
        cuda = 0
        mps = False

    m = Machine()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: m.cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: m.cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: m.mps)
    monkeypatch.setattr(torch, "__version__", "2.9.0")
    m.set_torch = lambda version: monkeypatch.setattr(torch, "__version__", version)
    return m


def test_cpu_when_nothing_else(machine):
    assert get_device() == torch.device("cpu")


def test_cuda_first(machine):
    machine.cuda, machine.mps = 1, True
    assert get_device() == torch.device("cuda")


def test_mps_only_with_torch_2_9_or_newer(machine):
    machine.mps = True
    assert get_device() == torch.device("mps")
    machine.set_torch("2.10.1")
    assert get_device() == torch.device("mps")
    machine.set_torch("2.8.0+cpu")
    assert get_device() == torch.device("cpu")


def test_explicit_choices(machine):
    machine.cuda, machine.mps = 2, True
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("cuda") == torch.device("cuda")
    assert get_device("cuda:1") == torch.device("cuda", 1)
    assert get_device("mps") == torch.device("mps")


@pytest.mark.parametrize(
    "prefer, message",
    [
        ("banana", "unknown device 'banana'"),
        ("cuda", "CUDA is not available"),
        ("cuda:0", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("meta", "not supported"),
    ],
)
def test_unknown_or_missing_device_is_a_config_error(machine, prefer, message):
    with pytest.raises(ConfigError, match=message):
        get_device(prefer)


def test_cuda_index_past_the_devices_and_old_torch_on_mps(machine):
    machine.cuda, machine.mps = 2, True
    with pytest.raises(ConfigError, match="2 CUDA device"):
        get_device("cuda:2")
    machine.set_torch("2.8.0")
    with pytest.raises(ConfigError, match="torch >= 2.9"):
        get_device("mps")
