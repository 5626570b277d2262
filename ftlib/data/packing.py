"""Sequence packing: several examples share one row, and none of them sees another.

`custom_collate_fn` pads every example of a batch to the longest one; the model
then computes on padding. Packing lays the batch's examples end to end instead,
in rows of at most `row_length` tokens, so almost every position is a real token.
Three things keep each example exactly as it was alone:

- position ids restart at 0 for each example, so it sees the positions it would
  see in a row of its own;
- a block-diagonal causal mask (True = may attend, the convention of
  `torch.nn.functional.scaled_dot_product_attention`) lets a token attend only to
  earlier tokens of its own example;
- each example's targets are the ones `custom_collate_fn` makes for it (response
  targets, one end-of-text, the prompt masked when the item carries its prompt
  length, `ignore_index` on padding).

A packed batch holds the same examples as the unpacked one and gives the same
loss, per example and in total (tests/test_packing.py checks this to 1e-5); only
the padding is gone. Packing happens inside one batch, so the examples of a
training step, and what the model learns from them, do not change.
"""

import torch

from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn
from ftlib.data.tokenizer import END_OF_TEXT_ID
from ftlib.plumbing.errors import ConfigError, DataError


def pack_rows(lengths, row_length):
    """Group items into as few rows of at most `row_length` tokens as the greedy
    packer finds, with the rows as even as possible.

    The greedy packer: for n rows (starting at total tokens / `row_length`), put
    each item, longest first, into the row holding the fewest tokens so far; if a
    row ends up longer than `row_length`, try again with one row more. Even rows
    matter because a batch is padded to its longest row. Returns a list of rows,
    each a list of indices into `lengths`.

    >>> pack_rows([5, 2, 3, 4], row_length=7)
    [[0, 1], [3, 2]]

    Introduced in: notebooks/08_faster_training.ipynb
    """
    too_long = [n for n in lengths if n > row_length]
    if too_long:
        raise DataError(f"pack_rows: an item of {max(too_long)} tokens does not fit a row "
                        f"of {row_length}; raise row_length or set allowed_max_length")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    n_rows = max(1, -(-sum(lengths) // row_length))
    while True:  # ends: with one row per item, every row fits
        rows, used = [[] for _ in range(n_rows)], [0] * n_rows
        for i in order:
            r = used.index(min(used))
            rows[r].append(i)
            used[r] += lengths[i]
        if max(used) <= row_length:
            return rows
        n_rows += 1


def block_causal_mask(segment_lengths, length):
    """(length, length) bool mask: position i may attend to j when both lie in the
    same segment and j <= i.

    Positions after the last segment (row padding) form one more segment, so every
    position can attend to at least itself (a fully masked query row would make
    attention NaN).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    used = sum(segment_lengths)
    if used > length:
        raise ConfigError(f"segments of {used} tokens do not fit a row of {length}")
    sizes = list(segment_lengths) + ([length - used] if used < length else [])
    segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # (length,)
    same = segment[:, None] == segment[None, :]                 # (length, length)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return same & causal


def pack_collate_fn(batch, row_length=None, pad_token_id=END_OF_TEXT_ID,
                    ignore_index=IGNORE_INDEX, allowed_max_length=None, device="cpu"):
    """Collate a batch into packed rows: `instruction_collate_fn`'s targets, without padding.

    - `batch`: items as for `instruction_collate_fn` (id lists, or `(ids, prompt_length)`);
    - `row_length`: the most tokens in a row (see `pack_rows`); None puts the whole
      batch in one row. Every example (after `allowed_max_length`) must fit in a row.
      Longer rows pad less but spend more attention on pairs the mask then hides.

    Returns `(inputs, targets, extras)`: inputs and targets are (rows, length)
    int64, where length is the longest row (shorter rows are padded with
    `pad_token_id` inputs and `ignore_index` targets), and `extras` holds what the
    model needs to keep examples apart, plus where each example went:

        position_ids  (rows, length) int64   0, 1, ... restarting per example
        attn_mask     (rows, 1, length, length) bool, block-diagonal causal
        example_ids   (rows, length) int64   index of the example in `batch`, -1 on padding

    Pass `position_ids` and `attn_mask` to `GPTModel` (or `calc_loss_batch`).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    if len(batch) == 0:
        raise DataError("pack_collate_fn: the batch is empty (a DataLoader with no items?)")
    # Each example on its own, exactly as instruction_collate_fn makes it: a batch of one
    # has no padding, so its inputs and targets are the example's and nothing else.
    examples = [instruction_collate_fn([item], pad_token_id=pad_token_id, ignore_index=ignore_index,
                                       allowed_max_length=allowed_max_length) for item in batch]
    lengths = [inputs.shape[1] for inputs, _ in examples]
    if row_length is None:
        row_length = sum(lengths)
    rows = pack_rows(lengths, row_length)
    length = max(sum(lengths[i] for i in row) for row in rows)

    n = len(rows)
    inputs = torch.full((n, length), pad_token_id, dtype=torch.long)
    targets = torch.full((n, length), ignore_index, dtype=torch.long)
    position_ids = torch.zeros(n, length, dtype=torch.long)
    example_ids = torch.full((n, length), -1, dtype=torch.long)
    masks = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            x, y = examples[i]
            end = start + lengths[i]
            inputs[r, start:end] = x[0]
            targets[r, start:end] = y[0]
            position_ids[r, start:end] = torch.arange(lengths[i])
            example_ids[r, start:end] = i
            start = end
        # padding positions form their own segment, counted from 0 like an example
        position_ids[r, start:] = torch.arange(length - start)
        masks.append(block_causal_mask([lengths[i] for i in row], length))
    attn_mask = torch.stack(masks).unsqueeze(1)  # (rows, 1, length, length): same for every head
    extras = {"position_ids": position_ids.to(device), "attn_mask": attn_mask.to(device),
              "example_ids": example_ids.to(device)}
    return inputs.to(device), targets.to(device), extras
