"""The training step: same loss as the chapter's, divergence caught, checkpoints that resume."""


import pytest
import torch
from torch.utils.data import DataLoader

from ftlib.batching import EpochSampler
from ftlib.collate import custom_collate_fn
from ftlib.model import GPTModel
from ftlib.toy_checkpoint import TOY_CONFIG
from ftlib.train import (TrainingDiverged, calc_loss_batch, calc_loss_loader, load_checkpoint,
                         plot_losses, save_checkpoint, train_model_simple,
                         warmup_cosine_schedule)
from ftlib.errors import FtlibError
from helpers import toy_items


def toy_loader(items, batch_size=4, seed=123):
    return DataLoader(items, batch_size=batch_size, collate_fn=custom_collate_fn,
                      sampler=EpochSampler(len(items), seed=seed), drop_last=True)


def new_model(seed=123):
    torch.manual_seed(seed)
    return GPTModel(TOY_CONFIG)


def test_loss_at_targets_equals_the_chapters_full_logits_loss_and_gradients():
    model = new_model()
    inputs, targets = custom_collate_fn(toy_items(6))
    fast = calc_loss_batch(inputs, targets, model, "cpu")
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = calc_loss_batch(inputs, targets, model, "cpu", full_logits=True)
    full.backward()
    assert fast.item() == pytest.approx(full.item(), abs=1e-5)
    for g_fast, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(g_fast, p.grad, atol=1e-5, rtol=1e-5)


def test_calc_loss_loader_averages_batches():
    model = new_model()
    loader = toy_loader(toy_items(12))
    losses = [calc_loss_batch(x, y, model, "cpu").item() for x, y in loader]
    assert calc_loss_loader(loader, model, "cpu") == pytest.approx(sum(losses) / len(losses))
    assert calc_loss_loader(loader, model, "cpu", num_batches=1) == pytest.approx(losses[0])


def _train(model, steps=None, epochs=3, checkpoint_path=None, resume_state=None, progress=False):
    loader = toy_loader(toy_items(24))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=len(loader) * epochs)
    if resume_state is not None:
        resume_state = load_checkpoint(checkpoint_path, model, optimizer, scheduler)
    return train_model_simple(
        model, loader, toy_loader(toy_items(8, seed=1)), optimizer, "cpu", num_epochs=epochs,
        eval_freq=2, eval_iter=2, start_context="", tokenizer=None, scheduler=scheduler,
        max_steps=steps, progress=progress, print_samples=False,
        checkpoint_path=checkpoint_path, checkpoint_every=1, resume_state=resume_state,
        log=lambda *a: None)


def test_training_lowers_the_loss_and_tracks_tokens():
    train_losses, val_losses, tokens_seen = _train(new_model())
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == 9  # 18 steps, every 2nd
    assert train_losses[-1] < train_losses[0] - 1.0
    assert tokens_seen == sorted(tokens_seen) and tokens_seen[0] > 0


def test_a_nan_loss_stops_training_and_names_the_step():
    model = new_model()
    with torch.no_grad():
        model.out_head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="at step 0 "):
        _train(model)


def test_resuming_from_a_checkpoint_reaches_the_same_weights(tmp_path):
    uninterrupted = new_model()
    _train(uninterrupted)

    ckpt = tmp_path / "checkpoint.pt"
    stopped = new_model()
    _train(stopped, steps=7, checkpoint_path=ckpt)   # stops mid-epoch 2
    resumed = new_model(seed=999)                     # different weights, overwritten by the checkpoint
    losses, _, _ = _train(resumed, checkpoint_path=ckpt, resume_state=True)
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len(losses) == 9  # the history before the stop came back with the checkpoint


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = new_model()
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, optimizer, step=5, extra={"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    other = new_model(seed=1)
    state = load_checkpoint(tmp_path / "c.pt", other, torch.optim.AdamW(other.parameters()))
    assert state["step"] == 5 and state["extra"] == {"note": "x"}
    torch.testing.assert_close(other.tok_emb.weight, model.tok_emb.weight)

    with pytest.raises(FtlibError, match="no checkpoint there"):
        load_checkpoint(tmp_path / "missing.pt", other)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FtlibError, match="broken.pt: not a readable ftlib checkpoint"):
        load_checkpoint(tmp_path / "broken.pt", other)


def test_warmup_cosine_schedule_rises_then_decays():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_plot_losses_writes_a_png(tmp_path):
    fig = plot_losses([0, 1, 2], [0, 10, 20], [3.0, 2.0, 1.5], [3.1, 2.2, 1.9], path=tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_xlabel() == "Epochs"
