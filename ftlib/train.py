"""Training: the chapter's loss functions and loop, with what a real run needs.

`calc_loss_batch`, `calc_loss_loader`, `evaluate_model` and `train_model_simple`
keep the book's names and signatures. Additions, each small:
- the loss is computed from logits only at positions that have a target (the
  output layer is most of the work for a small model; the result is the same);
- a learning-rate schedule, gradient clipping, `max_steps`;
- a progress bar (`tqdm.auto`: a widget in Jupyter), which can be turned off;
- a loss that becomes NaN or infinite stops training with a message naming the step;
- checkpoints (model, optimizer, scheduler, step, RNG states) written atomically,
  and training that resumes from one.
"""

import math
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ftlib.collate import IGNORE_INDEX
from ftlib.errors import FtlibError
from ftlib.fileio import atomic_path
from ftlib.generate import generate_and_print_sample


class TrainingDiverged(FtlibError):
    """The loss became NaN or infinite."""


def calc_loss_batch(input_batch, target_batch, model, device, full_logits=False):
    """Mean cross-entropy over the targets that are not `ignore_index` (-100).

    By default the output head runs only at positions that have a target: with
    the prompt masked that is a fraction of the batch, and for a small model the
    50257-way output layer is most of the compute. `full_logits=True` is the
    chapter's version (logits everywhere, `cross_entropy` skips -100): same loss,
    same gradients, more work.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    input_batch = input_batch.to(device)
    target_batch = target_batch.to(device)
    if full_logits:
        logits = model(input_batch)  # (batch, num_tokens, vocab_size)
        return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())
    hidden = model.hidden_states(input_batch)  # (batch, num_tokens, emb_dim)
    keep = target_batch != IGNORE_INDEX         # (batch, num_tokens)
    logits = model.out_head(hidden[keep])       # (num_targets, vocab_size)
    return F.cross_entropy(logits, target_batch[keep])


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average of `calc_loss_batch` over the first `num_batches` batches (all if None).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss on `eval_iter` batches each, without gradients.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train(was_training)
    return train_loss, val_loss


def warmup_cosine_schedule(optimizer, total_steps, warmup_steps=None, min_lr_ratio=0.1):
    """Linear warm-up, then cosine decay to `min_lr_ratio` x the peak learning rate.

    Warm-up keeps the first, largest updates of a randomly initialised model from
    throwing it far off; the decay lets it settle at the end.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if warmup_steps is None:
        warmup_steps = max(1, total_steps // 20)  # 5 % of the run

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_states():
    """Python's and PyTorch's RNG states, to put into a checkpoint."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, step, scheduler=None, extra=None):
    """Write model, optimizer, scheduler, step and RNG states atomically.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "rng": rng_states(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, model, optimizer=None, scheduler=None, map_location="cpu"):
    """Restore what `save_checkpoint` wrote; returns the checkpoint dict (step, extra).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FtlibError(f"{path}: no checkpoint there") from None
    except Exception as exc:  # a truncated or foreign file
        raise FtlibError(f"{path}: not a readable ftlib checkpoint ({exc})") from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    return state


def _set_epoch(loader, epoch):
    """Let a sampler that supports it reshuffle reproducibly for this epoch."""
    for obj in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, *,
                       scheduler=None, max_steps=None, grad_clip=None, progress=True,
                       print_samples=True, checkpoint_path=None, checkpoint_every=None,
                       resume_state=None, log=print):
    """The chapter's training loop. Returns (train_losses, val_losses, tokens_seen).

    Every `eval_freq` steps the loss on `eval_iter` batches of each loader is
    recorded; after each epoch a sample from `start_context` is printed. Optional:
    `scheduler` (stepped every step), `max_steps`, `grad_clip` (max gradient norm),
    `checkpoint_path` + `checkpoint_every` (steps), and `resume_state` (the dict
    returned by `load_checkpoint`) to continue where a run stopped.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    if resume_state is not None:
        extra = resume_state["extra"]
        global_step = resume_state["step"]
        tokens_seen = extra.get("tokens_seen", 0)
        train_losses = list(extra.get("train_losses", []))
        val_losses = list(extra.get("val_losses", []))
        track_tokens_seen = list(extra.get("track_tokens_seen", []))
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * num_epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    def checkpoint():
        save_checkpoint(checkpoint_path, model, optimizer, global_step, scheduler, extra={
            "tokens_seen": tokens_seen, "train_losses": train_losses, "val_losses": val_losses,
            "track_tokens_seen": track_tokens_seen})

    bar = tqdm(total=total_steps, initial=global_step + 1, disable=not progress,
               desc="training", unit="step", dynamic_ncols=True)
    model.train()
    try:
        for epoch in range(num_epochs):
            _set_epoch(train_loader, epoch)
            for batch_idx, (input_batch, target_batch) in enumerate(train_loader):
                step = epoch * steps_per_epoch + batch_idx
                if step <= global_step:
                    continue  # resuming: these batches were trained on before the stop
                if step >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss.item()} at step {step} (epoch {epoch + 1}); "
                        "try a lower learning rate (--lr) or gradient clipping")
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                tokens_seen += input_batch.numel()
                global_step = step
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)

                if global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                    train_losses.append(train_loss)
                    val_losses.append(val_loss)
                    track_tokens_seen.append(tokens_seen)
                    if not progress:
                        log(f"Ep {epoch + 1} (Step {global_step:06d}): "
                            f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                if checkpoint_path and checkpoint_every and (global_step + 1) % checkpoint_every == 0:
                    checkpoint()
            if global_step + 1 >= total_steps and epoch < num_epochs - 1 and max_steps is not None:
                break
            if print_samples:
                generate_and_print_sample(model, tokenizer, device, start_context)
    except KeyboardInterrupt:
        if checkpoint_path:
            checkpoint()
            log(f"\nInterrupted at step {global_step}; checkpoint saved to {checkpoint_path}. "
                "Run the same command with --resume to continue.")
        raise
    finally:
        bar.close()
    if checkpoint_path:
        checkpoint()
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path=None):
    """Training and validation loss against epochs (bottom) and tokens seen (top).

    Saved as PNG when `path` is given. Returns the figure.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()  # a second x-axis with the same losses against tokens seen
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    return fig
