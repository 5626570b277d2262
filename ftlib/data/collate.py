"""Batching for instruction fine-tuning: the chapter's collate function in three drafts.

draft 1 pads the inputs of a batch to one length; draft 2 adds the targets (the
inputs shifted by one token); the final `custom_collate_fn` replaces every padding
target but the first end-of-text with `ignore_index` (-100, which
`torch.nn.functional.cross_entropy` skips) and can truncate to `allowed_max_length`.
These three are the chapter's functions, as the chapter writes them.

`instruction_collate_fn` is the fuller one ftlib trains with: the same batches,
and for items that carry their prompt length (exercise 7.2's prompt masking) the
targets inside the prompt are ignored too. A batch item is then a tuple
`(token_ids, prompt_length)`, as `InstructionDataset.with_prompt_lengths()` yields.

Collate knows nothing of the model.
"""

import torch

from ftlib.plumbing.errors import ConfigError, DataError
from ftlib.data.tokenizer import END_OF_TEXT_ID

IGNORE_INDEX = -100  # cross_entropy's default ignore_index


def _check_batch(batch):
    if len(batch) == 0:
        raise DataError("collate: the batch is empty (a DataLoader with no items?)")


def custom_collate_draft_1(batch, pad_token_id=END_OF_TEXT_ID, device="cpu"):
    """Draft 1: pad every item to the batch's longest (+1) and return the inputs.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    _check_batch(batch)
    # +1: every item gets one end-of-text token appended, then all are padded
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst = []
    for item in batch:
        new_item = list(item) + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs_lst.append(torch.tensor(padded[:-1]))  # drop the extra last token
    return torch.stack(inputs_lst).to(device)  # (batch, batch_max_length - 1)


def custom_collate_draft_2(batch, pad_token_id=END_OF_TEXT_ID, device="cpu"):
    """Draft 2: inputs as in draft 1, plus targets = the same row shifted left by one.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    _check_batch(batch)
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = list(item) + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs_lst.append(torch.tensor(padded[:-1]))
        targets_lst.append(torch.tensor(padded[1:]))  # position i predicts token i+1
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def custom_collate_fn(batch, pad_token_id=END_OF_TEXT_ID, ignore_index=IGNORE_INDEX,
                      allowed_max_length=None, device="cpu"):
    """The chapter's final collate function: (inputs, targets), each (batch, length) int64.

    Targets that are padding become `ignore_index`, except the first end-of-text of
    each row, so the model learns to end its response; `allowed_max_length`
    truncates inputs and targets.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    _check_batch(batch)
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        new_item = list(item) + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs = torch.tensor(padded[:-1])
        targets = torch.tensor(padded[1:])

        mask = targets == pad_token_id  # keep the first end-of-text target, ignore the rest
        indices = torch.nonzero(mask).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index

        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def split_item(item):
    """(token_ids, prompt_length or None) for either kind of batch item.

    Not in a notebook: a helper inside the collate functions; learners pass items, not call it.
    """
    if isinstance(item, tuple):
        ids, prompt_length = item
        return list(ids), prompt_length
    return list(item), None


def instruction_collate_fn(batch, pad_token_id=END_OF_TEXT_ID, ignore_index=IGNORE_INDEX,
                           allowed_max_length=None, device="cpu"):
    """`custom_collate_fn`, plus prompt masking for items `(token_ids, prompt_length)`.

    Plain id lists give exactly `custom_collate_fn`'s batch. For a pair, every
    target that predicts a prompt token becomes `ignore_index` as well, so the loss
    covers only the response (exercise 7.2). `allowed_max_length` must be at least 1.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    _check_batch(batch)
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ConfigError(f"allowed_max_length must be at least 1, got {allowed_max_length}")
    items = [split_item(item) for item in batch]
    inputs, targets = custom_collate_fn([ids for ids, _ in items], pad_token_id, ignore_index,
                                        allowed_max_length, device)
    for row, (_, prompt_length) in enumerate(items):
        if prompt_length is not None:
            # target i predicts token i+1: targets 0 .. prompt_length-2 predict the
            # prompt; target prompt_length-1 predicts the first response token.
            targets[row, : max(prompt_length - 1, 0)] = ignore_index
    return inputs, targets


def padding_stats(batch, allowed_max_length=None):
    """How much of a collated batch is padding, from the items' lengths alone.

    Returns a dict: rows, length (of each padded row), real tokens, padding
    tokens and the padding fraction, counted on the inputs.

    Introduced in: notebooks/04_dataloaders.ipynb
    """
    _check_batch(batch)
    lengths = [len(split_item(item)[0]) for item in batch]
    length = max(lengths)  # inputs are (max length + 1) - 1 long
    if allowed_max_length is not None:
        length = min(length, allowed_max_length)
        lengths = [min(n, allowed_max_length) for n in lengths]
    real = sum(lengths)
    total = length * len(lengths)
    return {"rows": len(lengths), "length": length, "real": real,
            "padding": total - real, "padding_fraction": (total - real) / total}
