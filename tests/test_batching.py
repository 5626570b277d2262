"""Samplers: reproducible per epoch, every example once, and length grouping that pads less."""

import random

import pytest
from torch.utils.data import DataLoader

from ftlib.data.batching import EpochSampler, LengthGroupedBatchSampler, item_lengths, make_loader
from ftlib.data.collate import custom_collate_fn, padding_stats
from ftlib.plumbing.errors import ConfigError


def lengths_of(n=200, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def test_epoch_sampler_is_a_permutation_that_depends_on_seed_and_epoch():
    s = EpochSampler(50, seed=1)
    first = list(s)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert list(EpochSampler(50, seed=1)) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(50))
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_item_lengths_reads_both_kinds_of_items():
    assert item_lengths([[1, 2, 3], ([1, 2], 1), [4]]) == [3, 2, 1]


def test_length_grouped_batches_cover_every_example_once():
    lengths = lengths_of(203)
    keep_all = LengthGroupedBatchSampler(lengths, batch_size=8, drop_last=False, bucket_size=40)
    batches = list(keep_all)
    assert len(batches) == len(keep_all) == 26  # ceil(203 / 8)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert sum(len(b) < 8 for b in batches) == 1  # only the last bucket leaves a short batch

    drop = LengthGroupedBatchSampler(lengths, batch_size=8, drop_last=True, bucket_size=40)
    batches = list(drop)
    assert len(batches) == len(drop) == 25 and all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 200


def test_bucket_size_is_rounded_up_to_whole_batches():
    assert LengthGroupedBatchSampler([1] * 10, batch_size=8, bucket_size=20).bucket_size == 24
    assert LengthGroupedBatchSampler([1] * 10, batch_size=8).bucket_size == 128
    with pytest.raises(ConfigError, match="batch_size"):
        LengthGroupedBatchSampler([1] * 10, batch_size=0)


def test_length_grouping_is_reproducible_and_reshuffles_each_epoch():
    lengths = lengths_of()
    a = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5)
    b = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=6)) != first


def test_batches_hold_similar_lengths_but_come_in_random_order():
    lengths = lengths_of(400)
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=8, bucket_size=64))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 15  # random batches of 8 spread ~90 tokens here
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_length_grouping_pads_far_less_than_random_batches():
    items = [[7] * n for n in lengths_of(256, seed=2)]

    def padding(loader):
        stats = [padding_stats(batch) for batch in loader]
        return sum(s["padding"] for s in stats) / sum(s["rows"] * s["length"] for s in stats)

    random_batches = DataLoader(items, batch_size=8, sampler=EpochSampler(len(items)),
                                collate_fn=list, drop_last=True)
    def grouped(bucket_size):
        sampler = LengthGroupedBatchSampler(item_lengths(items), 8, bucket_size=bucket_size)
        return DataLoader(items, collate_fn=list, batch_sampler=sampler)

    assert padding(random_batches) > 0.3
    # larger buckets, less padding (and less random batches): all 256 in one bucket
    assert padding(grouped(256)) < 0.05 < padding(grouped(64)) < 0.12
    # and a grouped batch collates like any other
    inputs, targets = custom_collate_fn(next(iter(grouped(64))))
    assert inputs.shape[0] == 8 and targets.shape == inputs.shape


def test_make_loader_builds_each_strategy_from_the_same_items():
    items = [([7] * n, 3) for n in lengths_of(64, seed=3)]
    total = sum(len(ids) for ids, _ in items)
    seen = {}
    for batching in ("random", "length", "packed"):
        loader = make_loader(items, 8, batching=batching, allowed_max_length=256)
        assert len(loader) == 8
        batches = list(loader)
        seen[batching] = sum(b[0].numel() for b in batches)
        targets = sum(int((b[1] != -100).sum()) for b in batches)
        assert targets == sum(len(ids) - 2 for ids, _ in items)  # response + end-of-text
    assert seen["packed"] < 1.1 * total < seen["random"]
    assert seen["length"] < seen["random"]
    # validation: unshuffled, nothing dropped, "packed" keeps the batches of "random"
    val_random = make_loader(items[:10], 4, batching="random", shuffle=False)
    val_packed = make_loader(items[:10], 4, batching="packed", shuffle=False)
    assert len(val_random) == len(val_packed) == 3
    with pytest.raises(ConfigError, match="unknown batching 'sorted'"):
        make_loader(items, 8, batching="sorted")
