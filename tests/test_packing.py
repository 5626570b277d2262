"""Packing: the same examples, the same targets and the same losses, without the padding."""


import pytest
import torch
import torch.nn.functional as F

from ftlib.data.collate import instruction_collate_fn
from ftlib.plumbing.errors import DataError
from ftlib.model.gpt import GPTModel
from ftlib.data.packing import block_causal_mask, pack_collate_fn, pack_rows
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.book import calc_loss_batch
from ftlib.training.loop import batch_loss, loss_loader, split_batch
from helpers import toy_items

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# The seed's example batch.
BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def new_model(seed=123):
    torch.manual_seed(seed)
    return GPTModel(TOY_CONFIG).eval()


def test_pack_rows_makes_few_even_rows():
    assert pack_rows([5, 2, 3, 4], row_length=7) == [[0, 1], [3, 2]]
    assert pack_rows([3, 3, 3], row_length=9) == [[0, 1, 2]]
    assert pack_rows([4, 4], row_length=4) == [[0], [1]]
    # 7 items of 10: 70 tokens need 3 rows of 30, and get rows of 30, 20, 20 rather than 30, 30, 10
    rows = pack_rows([10] * 7, row_length=30)
    assert sorted(len(r) for r in rows) == [2, 2, 3]
    assert sorted(i for r in rows for i in r) == list(range(7))
    with pytest.raises(DataError, match="an item of 6 tokens does not fit a row of 5"):
        pack_rows([2, 6], row_length=5)


def test_block_causal_mask_keeps_attention_inside_each_segment():
    mask = block_causal_mask([2, 3], length=6)
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding attends to itself only: no all-False row
    ]
    assert mask.dtype == torch.bool


def test_packing_the_chapters_batch():
    inputs, targets, extras = pack_collate_fn(BATCH, row_length=6)
    # [0,1,2,3,4] alone, then [7,8,9] and [5,6] share a row
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [7, 8, 9, 5, 6]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [8, 9, 50256, 6, 50256]]
    assert extras["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert extras["example_ids"].tolist() == [[0, 0, 0, 0, 0], [2, 2, 2, 1, 1]]
    assert extras["attn_mask"].shape == (2, 1, 5, 5)
    # row_length=None: the whole batch in one row of 5 + 2 + 3 tokens, no padding at all
    inputs, targets, _ = pack_collate_fn(BATCH)
    assert inputs.shape == (1, 10) and (targets != -100).all()


def test_each_examples_targets_are_instruction_collate_fns():
    items = toy_items(7)
    for allowed in (None, 8):
        inputs, targets, extras = pack_collate_fn(items, row_length=20, allowed_max_length=allowed)
        ref_inputs, ref_targets = instruction_collate_fn(items, allowed_max_length=allowed)
        lengths = [len(ids) if allowed is None else min(len(ids), allowed) for ids, _ in items]
        for i, n in enumerate(lengths):
            where = extras["example_ids"] == i
            assert inputs[where].tolist() == ref_inputs[i, :n].tolist()
            assert targets[where].tolist() == ref_targets[i, :n].tolist()
        # padding positions have no target and no example
        assert (targets[extras["example_ids"] == -1] == -100).all()
        assert (extras["example_ids"] >= 0).sum() == sum(lengths)


def test_rows_are_padded_to_the_longest_row_and_counted_once():
    inputs, targets, extras = pack_collate_fn([[1] * 9, [2] * 3, [3] * 3], row_length=9)
    assert inputs.shape == (2, 9)
    assert inputs[1, 6:].tolist() == [50256] * 3 and targets[1, 6:].tolist() == [-100] * 3
    assert extras["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def test_an_example_longer_than_a_row_is_a_clear_error():
    with pytest.raises(DataError, match="does not fit a row of 4"):
        pack_collate_fn(BATCH, row_length=4)
    with pytest.raises(DataError, match="empty"):
        pack_collate_fn([], row_length=4)


def _per_example_losses(logits, targets, example_ids, n):
    """Mean loss per example from (rows, t, vocab) logits, (rows, t) targets and example ids."""
    token_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    token_loss = token_loss.view_as(targets)
    losses = []
    for i in range(n):
        where = (example_ids == i) & (targets != -100)
        losses.append(token_loss[where].sum() / where.sum())
    return torch.stack(losses)


def test_packed_and_unpacked_examples_have_the_same_losses():
    model = new_model()
    items = toy_items(8)
    inputs, targets = instruction_collate_fn(items)
    rows = torch.arange(len(items))[:, None].expand_as(targets)  # example i is row i
    with torch.no_grad():
        unpacked = _per_example_losses(model(inputs), targets, rows, len(items))

        p_inputs, p_targets, extras = pack_collate_fn(items, row_length=24)
        assert p_inputs.shape[0] < len(items)  # several examples did share a row
        logits = model(p_inputs, position_ids=extras["position_ids"], attn_mask=extras["attn_mask"])
        packed = _per_example_losses(logits, p_targets, extras["example_ids"], len(items))
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=0)

    # and so the batch loss: the book's on the padded batch, batch_loss on the packed one
    ref = calc_loss_batch(inputs, targets, model, "cpu")
    got = batch_loss(model, (p_inputs, p_targets, extras), "cpu")
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)


def test_without_the_mask_examples_would_see_each_other():
    model = new_model()
    p_inputs, p_targets, extras = pack_collate_fn(toy_items(8), row_length=24)
    masked = batch_loss(model, (p_inputs, p_targets, extras), "cpu")
    causal_only = batch_loss(model, (p_inputs, p_targets, {"position_ids": extras["position_ids"]}), "cpu")
    assert abs(masked.item() - causal_only.item()) > 1e-4


def test_packed_gradients_equal_unpacked_gradients():
    items = toy_items(6, seed=3)
    model = new_model()
    inputs, targets = instruction_collate_fn(items)
    calc_loss_batch(inputs, targets, model, "cpu").backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    batch_loss(model, pack_collate_fn(items, row_length=20), "cpu").backward()
    for g, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_loss_loader_on_packed_batches_equals_the_books_calc_loss_loader():
    from torch.utils.data import DataLoader

    from ftlib.training.book import calc_loss_loader

    model = new_model()
    items = toy_items(12)
    plain = DataLoader(items, batch_size=4, collate_fn=instruction_collate_fn)
    packed = DataLoader(items, batch_size=4, collate_fn=lambda b: pack_collate_fn(b, row_length=24))
    assert len(split_batch(next(iter(packed)))) == 3
    assert loss_loader(packed, model, "cpu") == pytest.approx(calc_loss_loader(plain, model, "cpu"), abs=1e-5)
