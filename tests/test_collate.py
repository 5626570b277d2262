"""The chapter's collate drafts on its own example batch, then instruction_collate_fn's prompt masking."""

import pytest
import torch

from ftlib.data.collate import (
    custom_collate_draft_1, custom_collate_draft_2, custom_collate_fn, instruction_collate_fn,
    padding_stats,
)
from helpers import toy_items
from ftlib.plumbing.errors import ConfigError, DataError

# The seed's example batch: three token-id lists of different lengths.
BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_draft_1_pads_inputs_like_the_chapter():
    inputs = custom_collate_draft_1(BATCH)
    assert inputs.tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 50256, 50256, 50256],
        [7, 8, 9, 50256, 50256],
    ]


def test_draft_2_adds_shifted_targets():
    inputs, targets = custom_collate_draft_2(BATCH)
    assert inputs.tolist() == custom_collate_draft_1(BATCH).tolist()
    assert targets.tolist() == [
        [1, 2, 3, 4, 50256],
        [6, 50256, 50256, 50256, 50256],
        [8, 9, 50256, 50256, 50256],
    ]


def test_final_keeps_one_end_of_text_and_ignores_the_rest():
    inputs, targets = custom_collate_fn(BATCH)
    assert inputs.tolist() == custom_collate_draft_1(BATCH).tolist()
    assert targets.tolist() == [
        [1, 2, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [8, 9, 50256, -100, -100],
    ]
    assert inputs.dtype == targets.dtype == torch.int64


def test_the_collate_does_not_modify_the_dataset_items():
    batch = [list(item) for item in BATCH]
    custom_collate_fn(batch)
    assert batch == BATCH


def test_allowed_max_length_truncates_inputs_and_targets():
    inputs, targets = custom_collate_fn(BATCH, allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 50256], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 50256, -100], [8, 9, 50256]]


def test_custom_ignore_index_and_device():
    _, targets = custom_collate_fn(BATCH, ignore_index=-1, device="cpu")
    assert targets[1].tolist() == [6, 50256, -1, -1, -1]
    assert targets.device.type == "cpu"


def test_prompt_masking_keeps_response_and_one_end_of_text():
    # prompt = first 3 tokens of each item; the response is the rest
    batch = [([0, 1, 2, 3, 4], 3), ([5, 6, 7], 2)]
    inputs, targets = instruction_collate_fn(batch)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 50256, 50256]]
    # row 0: targets 1, 2 predict prompt tokens -> ignored; 3, 4, <eot> stay
    assert targets[0].tolist() == [-100, -100, 3, 4, 50256]
    # row 1: target 6 predicts the prompt -> ignored; 7 and the first <eot> stay
    assert targets[1].tolist() == [-100, 7, 50256, -100, -100]


def test_prompt_masking_with_plain_lists_changes_nothing():
    plain = custom_collate_fn(BATCH)[1]
    as_tuples = instruction_collate_fn([(item, 0) for item in BATCH])[1]
    assert torch.equal(plain, as_tuples)


@pytest.mark.parametrize("allowed", [None, 3, 7])
def test_instruction_collate_is_the_books_collate_plus_the_prompt_mask(allowed):
    items = toy_items(8, seed=1)
    inputs, targets = custom_collate_fn([ids for ids, _ in items], allowed_max_length=allowed)
    # the book's batch, then every target before the response ignored by hand
    for row, (_, prompt_length) in enumerate(items):
        targets[row, :prompt_length - 1] = -100
    got_inputs, got_targets = instruction_collate_fn(items, allowed_max_length=allowed)
    assert torch.equal(got_inputs, inputs) and torch.equal(got_targets, targets)
    plain = instruction_collate_fn([ids for ids, _ in items], allowed_max_length=allowed)
    ref = custom_collate_fn([ids for ids, _ in items], allowed_max_length=allowed)
    assert all(torch.equal(a, b) for a, b in zip(plain, ref))


def test_empty_batch_is_a_clear_error():
    for fn in (custom_collate_draft_1, custom_collate_draft_2, custom_collate_fn,
               instruction_collate_fn):
        with pytest.raises(DataError, match="batch is empty"):
            fn([])


@pytest.mark.parametrize("bad", [0, -3])
def test_allowed_max_length_below_one_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="allowed_max_length must be at least 1"):
        instruction_collate_fn(BATCH, allowed_max_length=bad)


def test_padding_stats_counts_padding_of_the_seed_batch():
    stats = padding_stats(BATCH)
    # rows are 5 long; 5 + 2 + 3 = 10 real tokens of 15
    assert stats == {"rows": 3, "length": 5, "real": 10, "padding": 5,
                     "padding_fraction": pytest.approx(5 / 15)}
