"""The chapter's training code as the book writes it: its loss, its loop, its plot."""

import re

import pytest
import torch
from torch.utils.data import DataLoader

from ftlib.data.batching import EpochSampler
from ftlib.data.collate import custom_collate_fn
from ftlib.model.gpt import GPTModel
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.book import (calc_loss_batch, calc_loss_loader, evaluate_model, plot_losses,
                         train_model_simple)
from helpers import toy_items


def toy_loader(items, batch_size=4, seed=123, shuffle=True):
    return DataLoader([ids for ids, _ in items], batch_size=batch_size, collate_fn=custom_collate_fn,
                      sampler=EpochSampler(len(items), seed=seed, shuffle=shuffle), drop_last=True)


def new_model(seed=123):
    torch.manual_seed(seed)
    return GPTModel(TOY_CONFIG)


def test_calc_loss_batch_is_cross_entropy_over_all_logits_skipping_minus_100():
    model = new_model()
    inputs, targets = custom_collate_fn([ids for ids, _ in toy_items(6)])
    logits = model(inputs)
    keep = targets != -100
    by_hand = -torch.log_softmax(logits[keep], dim=-1).gather(1, targets[keep][:, None]).mean()
    assert calc_loss_batch(inputs, targets, model, "cpu").item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_the_models_loss_at_targets_equals_calc_loss_batch_with_the_same_gradients():
    model = new_model()
    inputs, targets = custom_collate_fn([ids for ids, _ in toy_items(6)])
    fast = model(inputs, targets)  # the output layer only where a target exists
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = calc_loss_batch(inputs, targets, model, "cpu")
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
    assert calc_loss_loader([], model, "cpu") != calc_loss_loader([], model, "cpu")  # NaN


def test_evaluate_model_leaves_the_model_training():
    model = new_model()
    loader = toy_loader(toy_items(8))
    train_loss, val_loss = evaluate_model(model, loader, loader, "cpu", eval_iter=1)
    assert train_loss == pytest.approx(val_loss) and model.training


def test_train_model_simple_lowers_the_loss_logs_and_prints_samples(capsys):
    model = new_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, toy_loader(toy_items(24)), toy_loader(toy_items(8, seed=1)), optimizer, "cpu",
        num_epochs=3, eval_freq=2, eval_iter=2, start_context="Hello", tokenizer=get_gpt2_tokenizer())
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == 9  # 18 steps, every 2nd
    assert train_losses[-1] < train_losses[0] - 1.0
    assert tokens_seen == sorted(tokens_seen) and tokens_seen[0] > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert sum(line.startswith("Hello") for line in printed) == 3  # one sample per epoch


def test_plot_losses_writes_a_png_with_readable_token_counts(tmp_path):
    fig = plot_losses([0, 1, 2], [0, 100_000, 200_000], [3.0, 2.0, 1.5], [3.1, 2.2, 1.9],
                      path=tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_xlabel() == "Epochs"
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"-?\d+(\.\d+)?[kM]?", text) for text in labels), labels
    assert any(text.endswith("k") for text in labels)  # 200000 reads "200k", not "200000"
