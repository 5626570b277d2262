"""Fixtures shared by several test modules."""

import json
import random

import pytest
import torch

from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data


@pytest.fixture
def one_thread():
    """One thread: on a shared 2-core machine, two threads of tiny work can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """60 entries of the bundled data: 51 train, 3 validation, 6 test (the chapter's split)."""
    entries = random.Random(0).sample(load_instruction_data(BUNDLED_DATA_PATH), 60)
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path
