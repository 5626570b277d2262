"""The training log (issue 28): history.jsonl in every run folder of `finetune` and `dpo`,
written as training goes, continued (not restarted, not duplicated) by --resume;
`plot_losses` and `read_history` read it; --tensorboard writes the same as event files."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest
import torch

from ftlib.cli import main
from ftlib.data.batching import make_loader
from ftlib.model.files import read_torch_file
from ftlib.model.gpt import GPTModel
from ftlib.training.book import plot_losses, read_history
from ftlib.training.loop import Checkpoints, TrainingLog, make_optimizer, train_model
from helpers import quick_args, toy_items

matplotlib.use("Agg")

KEYS = ["step", "epoch", "tokens_seen", "lr", "train_loss", "val_loss", "tokens_per_s"]
TINY = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": False}


@pytest.fixture(scope="module")
def finetuned(small_data, tmp_path_factory):
    """A quick finished run, a loss recorded at each of its 6 steps."""
    out = tmp_path_factory.mktemp("history") / "run"
    assert main(quick_args(small_data, out, "--max-steps", "6", "--eval-points", "6")) == 0
    return out


def test_a_finetune_run_logs_every_evaluation(finetuned):
    records = read_history(finetuned / "history.jsonl")
    assert [list(r) for r in records] == [KEYS] * 6
    assert [r["step"] for r in records] == list(range(6))
    tokens = [r["tokens_seen"] for r in records]
    assert tokens == sorted(set(tokens)) and tokens[0] > 0
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert records[-1]["val_loss"] == pytest.approx(metrics["final_val_loss"], abs=1e-5)
    assert records[-1]["epoch"] == pytest.approx(6 / 12, abs=1e-4)  # 51 entries: 12 batches of 4
    assert all(r["lr"] > 0 and r["tokens_per_s"] > 0 for r in records)
    assert read_history(finetuned) == records  # the run folder names its log too


def test_plot_losses_reads_a_log_and_keeps_its_old_arguments(finetuned):
    records = read_history(finetuned)
    fig = plot_losses(finetuned)
    train, val = fig.axes[0].lines[:2]
    assert list(train.get_xdata()) == [r["epoch"] for r in records]
    assert list(val.get_ydata()) == [r["val_loss"] for r in records]
    again = plot_losses(finetuned / "history.jsonl")
    assert list(again.axes[0].lines[1].get_ydata()) == list(val.get_ydata())
    old = plot_losses([0, 1], [10, 20], [3.0, 2.0], [3.5, 2.5])  # the book's call
    assert list(old.axes[0].lines[1].get_ydata()) == [3.5, 2.5]


def test_read_history_leaves_out_a_last_line_cut_short(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"step": 0, "val_loss": 2.0}\n{"step": 1, "val_\n{"step": 2, "val_')
    with pytest.raises(ValueError, match="line 2"):  # only the last line may be cut short
        read_history(path)
    path.write_text('{"step": 0, "val_loss": 2.0}\n{"step": 1, "val_loss": null}\n{"step": 2, "val_')
    assert read_history(path) == [{"step": 0, "val_loss": 2.0}, {"step": 1, "val_loss": None}]


def test_resumed_training_continues_the_log_it_had(tmp_path):
    """Resumed from a checkpoint at step 3, the log holds steps 0-5 once each, whatever
    the stopped run logged after its checkpoint, with the losses of a run never stopped."""
    items = toy_items(48, seed=1)
    loaders = make_loader(items, 4, shuffle=True, seed=7), make_loader(items[:8], 4)

    def run(max_steps, log, resume=None):
        torch.manual_seed(0)
        model = GPTModel(TINY)
        optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
        checkpoints = Checkpoints(tmp_path / f"{log.stem}.pt", resume=resume)
        return train_model(model, *loaders, optimizer, "cpu", 1, 1, 1, max_steps=max_steps,
                           checkpoints=checkpoints, progress=False, log=lambda *a: None,
                           history_file=log)

    straight = run(6, tmp_path / "straight.jsonl")
    stopped = tmp_path / "stopped.jsonl"
    run(4, stopped)  # checkpoint after step 3
    with open(stopped, "a") as f:  # a step the killed run logged after its last checkpoint
        f.write(json.dumps({**straight.records[4], "val_loss": 99.0}) + "\n")
    resumed = run(6, stopped, resume=read_torch_file(tmp_path / "stopped.pt"))
    records = read_history(stopped)
    assert [r["step"] for r in records] == list(range(6)) and records == resumed.records
    for key in ("step", "epoch", "tokens_seen", "lr", "train_loss", "val_loss"):
        assert [r[key] for r in records] == pytest.approx([r[key] for r in straight.records], rel=1e-4)


ROOT = Path(__file__).resolve().parents[1]


def _start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ftlib", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _tmp_log(out):
    found = list(out.parent.glob(f".{out.name}.run-*.tmp/history.jsonl"))
    return found[0] if found else None


def test_killed_then_resumed_run_has_every_step_once(small_data, tmp_path):
    out = tmp_path / "run"
    proc = _start(quick_args(small_data, out, "--max-steps", "80", "--eval-points", "80"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        log = _tmp_log(out)
        if log and log.read_text().count("\n") >= 10:  # past the first checkpoint (after step 7)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    kept = _tmp_log(out).parent
    step = torch.load(kept / "checkpoint.pt", weights_only=False)["step"]
    logged = [r["step"] for r in read_history(kept)]
    assert logged == list(range(len(logged))) and logged[-1] >= step  # it may have logged past its checkpoint

    proc = _start(quick_args(small_data, out, "--resume", "--max-steps", str(step + 4), "--eval-points", "80"))
    stdout, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout + err
    assert f"Resuming after step {step}" in stdout
    assert [r["step"] for r in read_history(out)] == list(range(step + 4))


def test_tensorboard_writes_event_files(small_data, tmp_path):
    pytest.importorskip("tensorboard", reason="--tensorboard needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(quick_args(small_data, out, "--max-steps", "3", "--eval-points", "3", "--tensorboard")) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "lr", "tokens_per_s"} <= set(events.Tags()["scalars"])
    val = [(e.step, e.value) for e in events.Scalars("loss/val")]
    logged = [(r["step"], r["val_loss"]) for r in read_history(out)]
    assert [s for s, _ in val] == [s for s, _ in logged] == [0, 1, 2]
    assert [v for _, v in val] == pytest.approx([v for _, v in logged], rel=1e-5)


def test_tensorboard_without_the_package_is_one_line_before_any_work(small_data, tmp_path, capsys,
                                                                      monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    out = tmp_path / "run"
    assert main(quick_args(small_data, out, "--tensorboard")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboard" in err
    assert not out.exists()
    assert main(["dpo", "--run", str(tmp_path), "--out", str(tmp_path / "dpo"), "--tensorboard"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def test_training_log_writes_null_for_a_loss_that_is_not_finite(tmp_path):
    log = TrainingLog(tmp_path / "h.jsonl", records=[{"step": 0, "val_loss": 1.0}])
    log.write({"step": 1, "val_loss": None})
    log.close()
    assert read_history(tmp_path / "h.jsonl") == [{"step": 0, "val_loss": 1.0}, {"step": 1, "val_loss": None}]
