"""Gradient accumulation weighted per token, and the training step's speed switches."""

import pytest
import torch
from torch.utils.data import DataLoader

from ftlib.data.batching import EpochSampler
from ftlib.data.collate import instruction_collate_fn
from ftlib.model.gpt import GPTModel
from ftlib.data.packing import pack_collate_fn
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.loop import (TrainHistory, TrainingDiverged, accumulate_gradients, batch_loss, compile_model, make_optimizer, padding_tokens)
from helpers import varied_items


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# A small vocabulary keeps these float64 tests fast; its last id plays end-of-text.
SMALL_CONFIG = {**TOY_CONFIG, "vocab_size": 512}
EOT = 511


def collate(batch):
    return instruction_collate_fn(batch, pad_token_id=EOT)


def pack(batch, row_length):
    return pack_collate_fn(batch, row_length, pad_token_id=EOT)


def new_model(seed=123, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPTModel(SMALL_CONFIG).to(dtype)


def grads_after(model, micro_batches, **kwargs):
    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(micro_batches, model, "cpu", **kwargs)
    return loss, [p.grad.clone() for p in model.parameters()]


def test_batch_8_equals_8_micro_batches_of_1():
    items = varied_items(8)
    model = new_model()
    big_loss, big = grads_after(model, [collate(items)])
    small_loss, small = grads_after(model, [collate([item]) for item in items])
    assert small_loss == pytest.approx(big_loss, abs=1e-10)
    assert big_loss == pytest.approx(batch_loss(model, collate(items), "cpu").item())
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # packed micro-batches too: 2 x 4 examples, each packed into rows
    packed_loss, packed = grads_after(model, [pack(items[:4], 24), pack(items[4:], 24)])
    assert packed_loss == pytest.approx(big_loss, abs=1e-10)
    for a, b in zip(big, packed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_micro_batch_without_targets_adds_nothing_and_no_nan():
    items = varied_items(4)
    ids, _ = items[0]
    no_targets = collate([(ids, len(ids) + 1)])  # the whole item is "prompt"
    assert (no_targets[1] == -100).all()
    model = new_model()
    ref_loss, ref = grads_after(model, [collate(items)])
    loss, got = grads_after(model, [collate(items[:2]), no_targets, collate(items[2:])])
    assert loss == pytest.approx(ref_loss, abs=1e-10)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # a step with no target at all: zero loss, zero gradients, nothing NaN
    loss, zero = grads_after(model, [no_targets])
    assert loss == 0.0 and all((g == 0).all() for g in zero)


def test_the_mean_of_micro_batch_means_is_off():
    items = varied_items(8)
    model = new_model()
    right_loss, right = grads_after(model, [collate(items)])
    micro = [collate([item]) for item in items]
    wrong_loss, wrong = grads_after(model, micro, token_weighted=False)
    assert abs(wrong_loss - right_loss) > 1e-3
    largest = max((a - b).abs().max().item() for a, b in zip(right, wrong))
    assert largest > 1e-4
    # the bug gives the right answer only when every micro-batch has as many targets
    same_size = [collate([(ids, len(ids) - 2)]) for ids, _ in [([1, 2, 3, 4], 0), ([5, 6, 7, 8], 0)]]
    a, _ = grads_after(model, same_size, token_weighted=False)
    b, _ = grads_after(model, same_size)
    assert a == pytest.approx(b, abs=1e-10)
    # ... and a micro-batch without targets makes it NaN: training stops
    ids, _ = items[0]
    with pytest.raises(TrainingDiverged):
        grads_after(model, [collate(items), collate([(ids, len(ids) + 1)])],
                    token_weighted=False)


def _train(batch_size, accumulation_steps, items, epochs=2):
    """Steps of `accumulation_steps` micro-batches of `batch_size` (`train_model` itself
    takes one batch per step); returns the model and the padding meter."""
    model = new_model()
    sampler = EpochSampler(len(items), seed=7)
    loader = DataLoader(items, batch_size=batch_size, collate_fn=collate, sampler=sampler, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meter, steps = TrainHistory(), 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(loader)
        for start in range(0, len(batches), accumulation_steps):
            micro_batches = batches[start:start + accumulation_steps]
            for batch in micro_batches:
                meter.count(batch, "cpu", ddp=False)
            optimizer.zero_grad()
            accumulate_gradients(micro_batches, model, "cpu")
            optimizer.step()
            steps += 1
    return model, meter, steps


def test_training_with_accumulation_reaches_the_same_weights():
    items = varied_items(16, seed=4)
    big, big_stats, big_steps = _train(8, 1, items)
    small, small_stats, small_steps = _train(2, 4, items)
    assert big_steps == small_steps == 4
    assert big_stats.target_tokens == small_stats.target_tokens
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # smaller batches pad less; the meter sees it
    assert 0 < small_stats.padding_fraction < big_stats.padding_fraction


def test_padding_tokens_counts_positions_after_the_last_target():
    _, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert padding_tokens(targets) == 3 + 2  # rows 2 and 3 of the chapter's batch
    _, targets, _ = pack([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], row_length=6)
    assert padding_tokens(targets) == 0


def test_make_optimizer_is_fused_when_possible_and_updates_like_adamw():
    model = new_model()
    fused = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    reference_model = new_model()
    plain = make_optimizer(reference_model, lr=1e-3, weight_decay=0.1, fused=False)
    assert not plain.defaults["fused"]
    batch = collate(varied_items(4))
    for m, opt in ((model, fused), (reference_model, plain)):
        for _ in range(3):
            opt.zero_grad()
            batch_loss(m, batch, "cpu").backward()
            opt.step()
    for a, b in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_make_optimizer_falls_back_where_fused_is_missing(monkeypatch):
    real_adamw = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors "
                               "of supported devices")
        return real_adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    model = new_model(dtype=torch.float32)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, real_adamw) and not optimizer.defaults["fused"]
    with pytest.raises(RuntimeError, match="fused"):
        make_optimizer(model, lr=1e-3, weight_decay=0.1, fused=True)


def test_compile_model_keeps_the_loss():
    model = new_model(dtype=torch.float32)
    batch = collate(varied_items(4))
    before = batch_loss(model, batch, "cpu").item()
    compile_model(model, backend="eager")  # the eager backend: no C++ build in a unit test
    assert batch_loss(model, batch, "cpu").item() == pytest.approx(before, abs=1e-6)
