"""Padding waste: which fraction of the tokens the model computes on is padding?

    python benchmarks/bench_padding.py                       # the bundled data
    python benchmarks/bench_padding.py --data instruction-data.json   # + the chapter's file
    python benchmarks/bench_padding.py --batch-size 16 --row-length 128

For each data set (train split, as training sees it) and batching strategy,
`--epochs` epochs of training batches are built with `make_loader`, exactly as
the training loop gets them, and every input position is counted: real tokens
(the examples' own) and padding. Strategies:

- random: the chapter's: shuffled batches, each padded to its longest example;
- length: `LengthGroupedBatchSampler`: batches of similar length, in random order;
- packed: the random batches, packed into rows of at most `--row-length` tokens.

No timing here: counting is exact, so one run is the answer.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, load_items  # noqa: E402

from ftlib.data.batching import BATCHING_STRATEGIES, item_lengths, make_loader  # noqa: E402
from ftlib.training.loop import split_batch  # noqa: E402


def padding_rows(name, items, batch_size, row_length, epochs, allowed_max_length=1024, seed=123):
    """One table row per strategy: batches, processed and padding tokens over `epochs`."""
    rows = []
    for batching in BATCHING_STRATEGIES:
        loader = make_loader(items, batch_size, batching=batching, seed=seed,
                             allowed_max_length=allowed_max_length, row_length=row_length)
        processed = real = batches = 0
        for epoch in range(epochs):
            for obj in (loader.batch_sampler, loader.sampler):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            for batch in loader:
                inputs, targets, extras = split_batch(batch)
                processed += inputs.numel()
                batches += 1
                if "example_ids" in extras:  # packed: positions that belong to an example
                    real += int((extras["example_ids"] >= 0).sum())
                else:
                    # padded: the real tokens are the examples' own, the rest padding;
                    # every row is one example, and the loader drops none of a batch
                    real += _real_tokens(inputs, targets)
        rows.append({"data": name, "strategy": batching, "batches": batches,
                     "processed": processed, "padding": processed - real,
                     "fraction": (processed - real) / processed})
    base = rows[0]["processed"]
    for row in rows:
        row["vs_random"] = row["processed"] / base
    return rows


def _real_tokens(inputs, targets):
    """Real positions of a padded batch: up to each row's last target (its end-of-text)."""
    from ftlib.training.loop import padding_tokens

    return inputs.numel() - padding_tokens(targets)


COLUMNS = [
    ("data", "data", "{}"), ("strategy", "strategy", "{}"), ("batches", "batches", "{}"),
    ("input tokens", "processed", "{:,}"), ("padding", "padding", "{:,}"),
    ("padding %", "fraction", "{:.1%}"), ("tokens vs random", "vs_random", "{:.2f}x"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="also measure this JSON file (e.g. the chapter's)")
    parser.add_argument("--batch-size", type=int, default=8, help="the chapter's 8 by default")
    parser.add_argument("--row-length", type=int, default=256, help="packed rows' most tokens")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    sets = [load_items(mask_prompt=True)]
    if args.data:
        sets.append(load_items(mask_prompt=True, data_path=args.data))
    print(f"Padding waste: batch size {args.batch_size}, packed rows of at most {args.row_length} "
          f"tokens, {args.epochs} epochs of the train split, prompt masked (padding does not depend on it)")
    rows = []
    for description, train_items, _ in sets:
        lengths = item_lengths(train_items)
        print(f"  {description}: {min(lengths)}-{max(lengths)} tokens per example, "
              f"mean {sum(lengths) / len(lengths):.1f}")
        name = description.split(" (")[0]
        rows += padding_rows(name, train_items, args.batch_size, args.row_length, args.epochs)
    print(format_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
