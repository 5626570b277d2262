"""The chapter's training code, as the book writes it.

`calc_loss_batch`, `calc_loss_loader`, `evaluate_model` and `train_model_simple`
have the book's names, signatures and bodies: logits at every position, a
cross-entropy that skips the `-100` targets, one optimizer step per batch, the
losses logged every `eval_freq` steps and a sample printed after each epoch.
Read these first; `ftlib/training/loop.py` has `train_model`, the faster and fuller
loop that `make finetune` uses, with a test that both learn the same.
"""

import math

import torch

from ftlib.plumbing.fileio import atomic_path
from ftlib.model.generate import generate_and_print_sample


def calc_loss_batch(input_batch, target_batch, model, device):
    """Mean cross-entropy of one batch: logits at every position, -100 targets skipped.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, num_tokens, vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())
    return loss


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average of `calc_loss_batch` over the first `num_batches` batches (all if None).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    total_loss = 0.0
    if len(data_loader) == 0:
        return float("nan")
    elif num_batches is None:
        num_batches = len(data_loader)
    else:
        num_batches = min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i < num_batches:
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            total_loss += loss.item()
        else:
            break
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss on `eval_iter` batches each, without gradients.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    """The chapter's training loop. Returns (train_losses, val_losses, tokens_seen).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1

    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # reset the gradients of the previous batch
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()        # gradients of the loss
            optimizer.step()       # update the weights with them
            tokens_seen += input_batch.numel()
            global_step += 1

            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(
                    model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")

        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def _thousands(value, _position=None):
    """Axis labels for token counts: 950, 12k, 1.2M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def read_history(path):
    """The records of a training log, history.jsonl (`path`: the file, or the run folder
    holding it): a list of dicts, one per evaluation. A last line cut short (a run
    killed while writing it) is left out; None stands for a loss that was not finite.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    import json
    from pathlib import Path

    path = Path(path)
    path = path / "history.jsonl" if path.is_dir() else path
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON") from None
    return records


def plot_losses(epochs_seen, tokens_seen=None, train_losses=None, val_losses=None, path=None):
    """Training and validation loss against epochs (bottom) and tokens seen (top).

    Or of a run's training log: `plot_losses("runs/latest")` (a history.jsonl, or the
    run folder holding it). Saved as PNG when `path` is given. Returns the figure.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if tokens_seen is None and train_losses is None and val_losses is None:
        records = read_history(epochs_seen)
        epochs_seen, tokens_seen, train_losses, val_losses = (
            [math.nan if r[key] is None else r[key] for r in records]
            for key in ("epoch", "tokens_seen", "train_loss", "val_loss"))

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()  # a second x-axis with the same losses against tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.xaxis.set_major_locator(MaxNLocator(6))
    ax2.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    return fig
