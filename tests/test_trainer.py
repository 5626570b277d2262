"""train_model: learns what the book's loop learns; divergence caught; checkpoints that resume."""

import pytest
import torch
from torch.utils.data import DataLoader

from ftlib.data.batching import EpochSampler
from ftlib.model.files import load_checkpoint, read_torch_file, save_checkpoint
from ftlib.data.collate import instruction_collate_fn
from ftlib.plumbing.errors import FtlibError
from ftlib.model.gpt import GPTModel
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.book import train_model_simple
from ftlib.training.loop import Checkpoints, TrainingDiverged, train_model, warmup_cosine_schedule
from helpers import toy_items


def toy_loader(items, batch_size=4, seed=123, shuffle=True):
    return DataLoader(items, batch_size=batch_size, collate_fn=instruction_collate_fn,
                      sampler=EpochSampler(len(items), seed=seed, shuffle=shuffle), drop_last=True)


def new_model(seed=123):
    torch.manual_seed(seed)
    return GPTModel(TOY_CONFIG)


def test_train_model_reaches_the_weights_and_losses_of_train_model_simple(capsys):
    train, val = toy_loader(toy_items(16), shuffle=False), toy_loader(toy_items(8, seed=1))
    book, fast = new_model(), new_model()
    book_losses, book_val, book_tokens = train_model_simple(
        book, train, val, torch.optim.AdamW(book.parameters(), lr=3e-3), "cpu", num_epochs=2,
        eval_freq=2, eval_iter=2, start_context="Hi", tokenizer=get_gpt2_tokenizer())
    history = train_model(fast, train, val, torch.optim.AdamW(fast.parameters(), lr=3e-3), "cpu", 2,
                          eval_freq=2, eval_iter=2, progress=False, log=lambda *a: None)
    for a, b in zip(book.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert history.train_losses == pytest.approx(book_losses, abs=1e-4)
    assert history.val_losses == pytest.approx(book_val, abs=1e-4)
    assert history.tokens_seen == book_tokens
    assert history.steps == 8 and history.step == 7


def _train(model, steps=None, epochs=3, checkpoint_path=None, resume=False, log=None):
    loader = toy_loader(toy_items(24))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=len(loader) * epochs)
    resume = read_torch_file(checkpoint_path, "checkpoint") if resume else None
    return train_model(
        model, loader, toy_loader(toy_items(8, seed=1)), optimizer, "cpu", epochs,
        eval_freq=2, eval_iter=2, scheduler=scheduler, max_steps=steps, progress=False,
        checkpoints=Checkpoints(checkpoint_path, every=1, resume=resume), log=log or (lambda *a: None))


def test_training_lowers_the_loss_tracks_tokens_and_logs_without_a_bar():
    lines = []
    history = _train(new_model(), log=lines.append)
    assert len(history.train_losses) == len(history.val_losses) == len(history.tokens_seen) == 9
    assert history.train_losses[-1] < history.train_losses[0] - 1.0
    assert history.tokens_seen == sorted(history.tokens_seen) and history.tokens_seen[0] > 0
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ") and len(lines) == 9
    assert 0 < history.padding_fraction < 1


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
    history = _train(resumed, checkpoint_path=ckpt, resume=True)
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len(history.train_losses) == 9  # the history before the stop came back with the checkpoint
    assert history.steps == 18 - 7


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = new_model()
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, optimizer, step=5, extra={"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    other = new_model(seed=1)
    state = load_checkpoint(tmp_path / "c.pt", other, torch.optim.AdamW(other.parameters()))
    assert state["step"] == 5 and state["extra"] == {"note": "x"}
    torch.testing.assert_close(other.tok_emb.weight, model.tok_emb.weight)

    with pytest.raises(FtlibError, match="missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt", other)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FtlibError, match="broken.pt is not a readable ftlib checkpoint"):
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
