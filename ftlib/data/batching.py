"""Which examples go into which batch, in which order.

`EpochSampler` shuffles like `DataLoader(shuffle=True)`, but from a seed and the
epoch number alone, so a run that resumes from a checkpoint mid-epoch sees the
same order as one that never stopped.

`LengthGroupedBatchSampler` puts examples of similar length together, so a batch
padded to its longest example holds little padding, while the order of the
batches stays random; it is reproducible per epoch in the same way.

`make_loader` builds the DataLoader for one of three strategies: random batches
(the chapter's), length-grouped batches, or packed batches (ftlib/data/packing.py).
It is the one place that knows collate and packing; the samplers know only
lengths and indices.

`ShardedBatchSampler` serves multi-process training (ftlib/plumbing/distributed.py): each
process takes its share of every batch of any of the above, so the batches, and
their length grouping, are those of a single process.
"""

import functools

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from ftlib.config import BATCHING_STRATEGIES  # noqa: F401 (the loaders make_loader can build)
from ftlib.data.collate import instruction_collate_fn, split_item
from ftlib.plumbing.errors import ConfigError
from ftlib.data.packing import pack_collate_fn


class EpochSampler(Sampler):
    """A reproducible permutation of range(n) per epoch (call `set_epoch` each epoch).

    Introduced in: notebooks/08_faster_training.ipynb
    """

    def __init__(self, n, seed=123, shuffle=True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def item_lengths(items):
    """Token count of each item: an id list, or an `(ids, prompt_length)` tuple.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    return [len(split_item(item)[0]) for item in items]


class LengthGroupedBatchSampler(Sampler):
    """Batches of examples of similar length, in random order (call `set_epoch` each epoch).

    Per epoch: shuffle all indices (from `seed` and the epoch), cut them into
    buckets of `bucket_size`, sort each bucket by length and cut it into batches,
    then shuffle the batches. Examples in a batch have similar lengths, so little
    of it is padding; which examples meet, and the order of the batches, stay random.

    - `lengths`: token count per example (see `item_lengths`);
    - `bucket_size`: examples per bucket, rounded up to a multiple of `batch_size`
      (default 16 batches: larger buckets pad less but make batches less random);
    - `drop_last`: drop the one batch that would be smaller than `batch_size`.

    Use as `DataLoader(items, batch_sampler=LengthGroupedBatchSampler(...), collate_fn=...)`.

    Introduced in: notebooks/08_faster_training.ipynb
    """

    def __init__(self, lengths, batch_size, seed=123, drop_last=True, bucket_size=None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, seed, drop_last, 0
        bucket_size = 16 * batch_size if bucket_size is None else bucket_size
        # a multiple of batch_size, so only the last bucket can leave a short batch
        self.bucket_size = max(1, -(-bucket_size // batch_size)) * batch_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        batches = []
        for start in range(0, len(order), self.bucket_size):
            # sorted() is stable: equal lengths keep their shuffled order
            bucket = sorted(order[start:start + self.bucket_size], key=self.lengths.__getitem__)
            for b in range(0, len(bucket), self.batch_size):
                batch = bucket[b:b + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]

    def __len__(self):
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return -(-len(self.lengths) // self.batch_size)


class ShardedBatchSampler(Sampler):
    """This process's share of every batch of `batch_sampler`, for multi-process training.

    Every process builds the same `batch_sampler` (same seed; `set_epoch` passes
    the epoch on), so all of them walk through the same global batches; process
    `rank` of `world_size` takes examples rank, rank + world_size, ... of each.
    Together the processes train on exactly the batches of a single process, with
    its length grouping; the order depends only on the seed and the epoch, so a
    checkpoint resumes with any number of processes.

    A stride rather than contiguous slices: a length-grouped batch is sorted by
    length, and contiguous slices would give the last process all the longest
    examples (the others would wait for it at every step).

    The batch size must be a multiple of `world_size`, so every process gets the
    same number of examples. Use as `DataLoader(items, batch_sampler=...)`.

    Not in a notebook: used only under torchrun (several processes), which a notebook does not run.
    """

    def __init__(self, batch_sampler, rank, world_size):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
        batch_size = batch_sampler.batch_size
        if batch_size % world_size:
            raise ConfigError(f"a batch of {batch_size} examples cannot be shared evenly by "
                              f"{world_size} processes; choose a batch size that is a multiple "
                              f"of {world_size}")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def set_epoch(self, epoch):
        # a BatchSampler has no epoch of its own: its index sampler has one
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __iter__(self):
        for batch in self.batch_sampler:
            shard = batch[self.rank::self.world_size]
            if not shard:  # only a short last batch (drop_last=False) can do this
                raise ConfigError(f"a last batch of {len(batch)} examples cannot give each of "
                                  f"{self.world_size} processes one; use drop_last")
            yield shard

    def __len__(self):
        return len(self.batch_sampler)




def make_loader(items, batch_size, batching="random", shuffle=True, seed=123,
                allowed_max_length=None, row_length=None, bucket_size=None,
                drop_last=None, device="cpu", rank=0, world_size=1):
    """A DataLoader over instruction items with one of three batching strategies.

    - `"random"`: the chapter's: shuffled (`EpochSampler`), each batch padded to its
      longest example by `instruction_collate_fn`;
    - `"length"`: `LengthGroupedBatchSampler` + `instruction_collate_fn`: batches of
      similar lengths, little padding;
    - `"packed"`: shuffled like "random", each batch packed by `pack_collate_fn`
      into rows of at most `row_length` tokens (default: `allowed_max_length`, or
      the whole batch in one row): the same batches, almost no padding.

    `shuffle=False` (for validation) keeps the data's order for every strategy, so
    "random" and "length" give the same batches and "packed" the same losses.
    `drop_last` defaults to `shuffle`, as in the chapter (train drops, val keeps).

    Multi-process training: with `world_size` > 1 the loader yields process
    `rank`'s share of each of the same batches (`ShardedBatchSampler`); the batch
    size is the global one and must be a multiple of `world_size`.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    if batching not in BATCHING_STRATEGIES:
        raise ConfigError(f"unknown batching {batching!r}; choose one of: {', '.join(BATCHING_STRATEGIES)}")
    drop_last = shuffle if drop_last is None else drop_last
    if batching == "packed":
        collate = functools.partial(pack_collate_fn, row_length=row_length or allowed_max_length,
                                    allowed_max_length=allowed_max_length, device=device)
    else:
        collate = functools.partial(instruction_collate_fn, allowed_max_length=allowed_max_length,
                                    device=device)
    if batching == "length" and shuffle:
        batches = LengthGroupedBatchSampler(item_lengths(items), batch_size, seed=seed,
                                            drop_last=drop_last, bucket_size=bucket_size)
    elif world_size > 1:  # the batches DataLoader(batch_size=..., sampler=EpochSampler) makes
        batches = BatchSampler(EpochSampler(len(items), seed, shuffle), batch_size, drop_last)
    else:  # the chapter's loader
        return DataLoader(items, batch_size=batch_size, sampler=EpochSampler(len(items), seed, shuffle),
                          collate_fn=collate, drop_last=drop_last, num_workers=0)
    if world_size > 1:
        batches = ShardedBatchSampler(batches, rank, world_size)
    return DataLoader(items, batch_sampler=batches, collate_fn=collate, num_workers=0)
