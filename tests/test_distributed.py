"""Multi-process training (DDP on the CPU, Gloo): the same batches, the same weights.

Two processes are started with torchrun (`python -m torch.distributed.run`); for
the training test this file is itself the script each process runs (see
`_worker` at the bottom). Each launch takes a few seconds on two cores.
"""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler

from ftlib.data.batching import (EpochSampler, LengthGroupedBatchSampler, ShardedBatchSampler,
                            item_lengths, make_loader)
from ftlib.cli import main
from ftlib.plumbing.distributed import launched_by_torchrun
from ftlib.plumbing.errors import ConfigError
from ftlib.model.gpt import GPTModel
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.loop import Checkpoints, train_model, warmup_cosine_schedule
from helpers import RUN_FILES, quick_args, varied_items

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "length", "packed")
# GPT-2's vocabulary (the collate functions pad with its end-of-text id), little else
SMALL_CONFIG = {**TOY_CONFIG, "emb_dim": 16, "n_layers": 1}


# ---------------------------------------------------------------- the sampler


@pytest.mark.parametrize("make_global", [
    lambda n: BatchSampler(EpochSampler(n, seed=5), 8, drop_last=True),
    lambda n: LengthGroupedBatchSampler(item_lengths(varied_items(n)), 8, seed=5, bucket_size=24),
], ids=["random", "length"])
def test_the_shards_of_each_step_make_up_the_single_process_batch(make_global):
    n = 70
    single = ShardedBatchSampler(make_global(n), 0, 1)  # one process: the whole batches
    shards = [ShardedBatchSampler(make_global(n), rank, 4) for rank in range(4)]
    assert all(len(s) == len(single) == 8 for s in shards)
    epochs = []
    for epoch in (0, 1):  # set_epoch reaches the sampler inside
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        epochs.append(list(single))
        for batch, parts in zip(epochs[-1], zip(*shards), strict=True):
            assert all(len(p) == 2 for p in parts)
            assert [i for pair in zip(*parts) for i in pair] == batch  # strided: 0, 4 | 1, 5 | ...
    assert epochs[0] != epochs[1]
    with pytest.raises(ConfigError, match="multiple of 3"):
        ShardedBatchSampler(make_global(n), 0, 3)


def _targets(batch):
    return int((batch[1] != -100).sum())


def test_make_loader_shards_every_strategy_and_checks_the_batch_size():
    items = varied_items(40)
    for batching in STRATEGIES:
        whole = make_loader(items, 8, batching=batching, seed=3)
        halves = [make_loader(items, 8, batching=batching, seed=3, rank=r, world_size=2)
                  for r in range(2)]
        assert len(halves[0]) == len(halves[1]) == len(whole) == 5
        for batch, a, b in zip(whole, *halves, strict=True):
            assert _targets(a) + _targets(b) == _targets(batch)
    with pytest.raises(ConfigError, match="multiple of 2"):
        make_loader(items, 5, rank=0, world_size=2)


# ------------------------------------------------------- training, 2 vs 1 process


def _run(batching, checkpoint_path=None):
    """6 optimizer steps (gradient clipping, crossing into the
    second epoch) of a small float64 GPT; in a single process, or in each process
    of a torchrun launch. Returns (model, train_losses, val_losses)."""
    from ftlib.plumbing.distributed import rank, world_size

    torch.manual_seed(123)
    model = GPTModel(SMALL_CONFIG).double()
    items = varied_items(40)
    kwargs = dict(batching=batching, seed=7, row_length=32)
    loader = make_loader(items, 8, rank=rank(), world_size=world_size(), **kwargs)
    val_loader = make_loader(varied_items(8, seed=1), 4, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=6)
    # train_model wraps the model in DDP itself when a process group is up
    history = train_model(
        model, loader, val_loader, optimizer, "cpu", 2, eval_freq=1, eval_iter=2,
        scheduler=scheduler, max_steps=6, grad_clip=1.0, progress=False,
        checkpoints=Checkpoints(checkpoint_path), log=lambda *a: None)
    return model, history.train_losses, history.val_losses


def _first_step(batching):
    """Loss and gradients of one step of 2 micro-batches (before any update)."""
    from ftlib.plumbing.distributed import is_distributed, rank, world_size, wrap_model
    from ftlib.training.loop import accumulate_gradients

    torch.manual_seed(123)
    model = GPTModel(SMALL_CONFIG).double()
    loader = make_loader(varied_items(40), 8, batching=batching, seed=7, row_length=32,
                         rank=rank(), world_size=world_size())
    micro_batches = list(itertools.islice(loader, 2))
    step_model = wrap_model(model, "cpu") if is_distributed() else model  # DDP wraps GPTModel itself
    loss = accumulate_gradients(micro_batches, step_model, "cpu")
    return loss, {name: p.grad for name, p in model.named_parameters()}


def _torchrun(*args, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args], cwd=ROOT, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_two_processes_train_exactly_like_one(tmp_path):
    proc = _torchrun(str(Path(__file__)), str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    for batching in STRATEGIES:
        # one step: the gradients DDP leaves on each process are those of the whole batch
        loss, grads = _first_step(batching)
        for r in range(2):
            ddp_loss, ddp_grads = torch.load(tmp_path / f"{batching}-grads-rank{r}.pt", weights_only=True)
            assert ddp_loss == pytest.approx(loss, rel=1e-12)
            for name, grad in grads.items():
                torch.testing.assert_close(ddp_grads[name], grad, rtol=0, atol=1e-12,
                                           msg=f"{batching}: {name}")
        # six steps of AdamW with warm-up and clipping, into the second epoch
        model, train_losses, val_losses = _run(batching)
        expected = model.state_dict()
        checkpoint = torch.load(tmp_path / f"{batching}-rank0.pt", weights_only=False)
        assert not (tmp_path / f"{batching}-rank1.pt").exists()  # only rank 0 writes
        assert checkpoint["step"] == 5
        assert checkpoint["model"].keys() == expected.keys()  # no "module." prefix
        for key, value in expected.items():
            torch.testing.assert_close(checkpoint["model"][key], value, rtol=0, atol=1e-9,
                                       msg=f"{batching}: {key}")
        # rank 0 evaluated on whole batches: the same losses a single process logs
        assert checkpoint["extra"]["history"]["train_losses"] == pytest.approx(train_losses, rel=1e-9)
        assert checkpoint["extra"]["history"]["val_losses"] == pytest.approx(val_losses, rel=1e-9)
        # and the replicas stayed identical
        rank1 = torch.load(tmp_path / f"{batching}-final-rank1.pt", weights_only=True)
        assert all(torch.equal(rank1[k], checkpoint["model"][k]) for k in expected)


# ---------------------------------------------------------------- the CLI


def _logged_losses(output):
    """[(step, [train loss, val loss]), ...] from the "Ep 1 (Step 000001): ..." lines."""
    found = re.findall(r"^Ep \d+ \(Step (\d+)\): Train loss ([\d.]+), Val loss ([\d.]+)$",
                       output, flags=re.MULTILINE)
    return [(int(step), [float(train), float(val)]) for step, train, val in found]


def test_cli_under_torchrun_writes_one_run_folder_that_resumes_in_one_process(
        small_data, tmp_path, capsys):
    two, one, resumed = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
    # the tiny model: the base's query/key/value biases include the key bias, whose gradient
    # is zero up to rounding, and Adam turns rounding noise into whole steps there.
    # float32 (--no-mixed-precision): this compares DDP's arithmetic, not bf16 rounding,
    # which differs with each process's share of a batch.
    fp32 = "--no-mixed-precision"
    proc = _torchrun("-m", "ftlib", *quick_args(small_data, two, "--max-steps", "2", "--model", "tiny",
                                                fp32, max_new_tokens=2))
    assert proc.returncode == 0, proc.stdout
    output = proc.stdout
    assert {p.name for p in two.iterdir()} == RUN_FILES  # and no leftover temporary files
    for line in ("Fine-tuning tiny on 2 processes (cpu)", "Held-out exact match", "Data: "):
        assert output.count(line) == 1, output  # rank 0 alone prints
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    checkpoint = torch.load(two / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 1 and not any(k.startswith("module.") for k in checkpoint["model"])

    # One process on the same batches: the same logged losses and (up to float32
    # rounding, which Adam's first steps magnify in a few weights) the same model.
    assert main(quick_args(small_data, one, "--max-steps", "2", "--model", "tiny", fp32, max_new_tokens=2)) == 0
    single_output = capsys.readouterr().out
    logged, single_logged = _logged_losses(output), _logged_losses(single_output)
    assert len(logged) == 2 and [step for step, _ in logged] == [step for step, _ in single_logged]
    for (_, losses), (_, single_losses) in zip(logged, single_logged):
        assert losses == pytest.approx(single_losses, abs=2e-3)  # printed to 3 decimals
    a = torch.load(one / "model.pth", weights_only=True)
    b = torch.load(two / "model.pth", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4, msg=key)

    # The 2-process checkpoint resumes in 1 process.
    shutil.copytree(two, resumed)
    assert main(quick_args(small_data, resumed, "--max-steps", "4", "--model", "tiny", "--resume",
                           fp32, max_new_tokens=2)) == 0
    assert "Resuming after step 1" in capsys.readouterr().out
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["step"] == 3


def test_an_uneven_batch_size_under_torchrun_is_one_clear_error(small_data, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun("-m", "ftlib", *quick_args(small_data, out, "--batch-size", "5", max_new_tokens=2))
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if "error:" in line]
    assert errors == ["error: batch size 5 cannot be shared evenly by 2 processes; "
                      "choose a multiple of 2 (--batch-size)"], proc.stdout
    assert not out.exists()


# ---------------------------------------------------------------- the worker


def _worker(out):
    """What each process of `test_two_processes_train_exactly_like_one` runs."""
    from ftlib.plumbing.distributed import cleanup_distributed, init_distributed, is_main_process, rank

    init_distributed("cpu")
    try:
        torch.set_num_threads(1)
        for batching in STRATEGIES:
            torch.save(_first_step(batching), out / f"{batching}-grads-rank{rank()}.pt")
            model, _, _ = _run(batching, checkpoint_path=out / f"{batching}-rank{rank()}.pt")
            if not is_main_process():  # to check the replicas stayed equal
                torch.save(model.state_dict(), out / f"{batching}-final-rank{rank()}.pt")
    finally:
        cleanup_distributed()


if __name__ == "__main__" and launched_by_torchrun():
    _worker(Path(sys.argv[1]))
