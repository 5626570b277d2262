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

Speed-ups that leave what the model learns unchanged, each switchable:
- batches may be packed (ftlib/packing.py): a batch is then `(inputs, targets,
  extras)` and `extras` carries the position ids and attention mask;
- gradient accumulation with a token-weighted loss (`accumulation_steps`);
- fused AdamW (`make_optimizer`), bf16 autocast and TF32 on CUDA
  (`autocast_dtype_for`, `enable_tf32`), `torch.compile` (`compile_model`, off
  by default);
- a padding meter: how much of what the model computed on was padding.

Multi-process training (DistributedDataParallel, see ftlib/distributed.py): the
loop takes a model wrapped as `wrap_model(ModelWithLoss(model), device)`, keeps
the token-weighted loss exact across processes, and lets only rank 0 print,
evaluate and write checkpoints. With a plain model nothing changes.
"""

import contextlib
import itertools
import math
import random
import signal
import threading

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ftlib.collate import IGNORE_INDEX
from ftlib.distributed import all_reduce_sum, is_distributed, is_main_process, world_size
from ftlib.errors import FtlibError
from ftlib.fileio import atomic_path
from ftlib.generate import generate_and_print_sample


class TrainingDiverged(FtlibError):
    """The loss became NaN or infinite."""


def calc_loss_batch(input_batch, target_batch, model, device, full_logits=False, *,
                    position_ids=None, attn_mask=None, reduction="mean"):
    """Mean cross-entropy over the targets that are not `ignore_index` (-100).

    By default the output head runs only at positions that have a target: with
    the prompt masked that is a fraction of the batch, and for a small model the
    50257-way output layer is most of the compute. `full_logits=True` is the
    chapter's version (logits everywhere, `cross_entropy` skips -100): same loss,
    same gradients, more work.

    Optional: `position_ids` and `attn_mask` for packed rows (see
    `pack_collate_fn`); `reduction="sum"` returns the summed token losses instead
    of their mean (0, not NaN, when there is no target), for gradient accumulation.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    input_batch = input_batch.to(device)
    target_batch = target_batch.to(device)
    if position_ids is not None:
        position_ids = position_ids.to(device)
    if attn_mask is not None:
        attn_mask = attn_mask.to(device)
    if full_logits:
        # (batch, num_tokens, vocab_size)
        logits = model(input_batch, position_ids=position_ids, attn_mask=attn_mask)
        return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten(), reduction=reduction)
    # (batch, num_tokens, emb_dim)
    hidden = model.hidden_states(input_batch, position_ids=position_ids, attn_mask=attn_mask)
    keep = target_batch != IGNORE_INDEX         # (batch, num_tokens)
    logits = model.out_head(hidden[keep])       # (num_targets, vocab_size)
    return F.cross_entropy(logits, target_batch[keep], reduction=reduction)


class ModelWithLoss(torch.nn.Module):
    """A model and `calc_loss_batch` as one module: `forward(inputs, targets, device)`
    returns the loss.

    For DistributedDataParallel, which synchronises the gradients of what runs
    inside its `forward()`. `calc_loss_batch` calls the model's `hidden_states` and
    `out_head` (the output head only where there is a target), never `model(...)`,
    so DDP wraps this module instead of the GPTModel: `wrap_model(ModelWithLoss(model),
    device)`. `unwrap_model` gives the GPTModel back.

    Introduced in: notebooks/06_finetuning.ipynb
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_batch, target_batch, device, reduction="mean",
                position_ids=None, attn_mask=None):
        return calc_loss_batch(input_batch, target_batch, self.model, device, reduction=reduction,
                               position_ids=position_ids, attn_mask=attn_mask)


def unwrap_model(model):
    """The plain model inside a DDP wrapper and/or `ModelWithLoss`; else `model` itself.

    What to evaluate, generate with and save: its state_dict has the model's own
    keys (no "module." prefix), so a checkpoint loads with any number of processes.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, ModelWithLoss):
        model = model.model
    return model


def _batch_loss(model, inputs, targets, extras, device, reduction):
    """`calc_loss_batch`, through `forward()` when the model is a (DDP-wrapped) `ModelWithLoss`."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if isinstance(inner, ModelWithLoss):
        return model(inputs, targets, device, reduction=reduction, **_model_kwargs(extras))
    if inner is not model:
        raise FtlibError("DistributedDataParallel must wrap ModelWithLoss(model), not the model "
                         "itself: DDP synchronises only what runs in its forward()")
    return calc_loss_batch(inputs, targets, model, device, reduction=reduction, **_model_kwargs(extras))


def _no_sync(model, skip):
    """DDP's `no_sync()` when `skip` (gradients then only add up locally), else nothing."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def split_batch(batch):
    """`(inputs, targets, extras)` from a batch of `(inputs, targets)` or
    `(inputs, targets, extras)`; `extras` is a dict ({} when there is none).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if len(batch) == 2:
        return batch[0], batch[1], {}
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise FtlibError(f"a batch is (inputs, targets) or (inputs, targets, extras); got {len(batch)} items")


def _model_kwargs(extras):
    """The entries of a batch's extras that the model takes."""
    return {"position_ids": extras.get("position_ids"), "attn_mask": extras.get("attn_mask")}


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Average of `calc_loss_batch` over the first `num_batches` batches (all if None).

    Batches may be `(inputs, targets)` or packed `(inputs, targets, extras)`.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, batch in enumerate(data_loader):
        if i >= num_batches:
            break
        input_batch, target_batch, extras = split_batch(batch)
        loss = calc_loss_batch(input_batch, target_batch, model, device, **_model_kwargs(extras))
        total += loss.item()
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


def make_optimizer(model, lr, weight_decay, fused=None):
    """`torch.optim.AdamW(model.parameters(), lr, weight_decay)`, fused when possible.

    The fused AdamW updates all parameters in a few kernels instead of a loop over
    tensors; the updates are the same. `fused=None` tries it and falls back to the
    default implementation where this torch or device lacks it; `fused=False` never
    uses it; `fused=True` insists.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if fused is False:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        if fused:
            raise
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def autocast_dtype_for(device, bf16=True):
    """`torch.bfloat16` on a CUDA GPU that supports it (when `bf16`), else None.

    Under bf16 autocast the matrix products run on the GPU's tensor cores at a
    fraction of the float32 cost, while weights, gradients and the loss stay
    float32. On the CPU it is off: there it is rarely faster and only less exact.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    device = torch.device(device)
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def enable_tf32(device, enabled=True):
    """Let float32 matrix products use TF32 tensor cores on CUDA (or turn that off).

    A process-wide setting (`torch.set_float32_matmul_precision`); nothing changes
    on other devices. Returns whether TF32 is now on.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if torch.device(device).type != "cuda":
        return False
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return enabled


def _autocast(device, dtype):
    """bf16 autocast when `dtype` is given, else a context that does nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def compile_model(model, **compile_kwargs):
    """Compile each transformer block with `torch.compile`, in place; returns the model.

    Blocks rather than the whole model: they hold the repeated work, and nothing in
    them depends on data values, so they compile without graph breaks. Shapes vary
    from batch to batch, hence `dynamic=True` by default. Compiling takes time up
    front (a minute for GPT-2 medium on a GPU); measure before turning it on.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    compile_kwargs.setdefault("dynamic", True)
    for block in model.trf_blocks:
        block.compile(**compile_kwargs)
    return model


def padding_tokens(target_batch, ignore_index=IGNORE_INDEX):
    """Input positions that are padding: those after each row's last target.

    Works for padded and packed batches alike (a row's real tokens end where its
    last example's end-of-text target is). Returns an int.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    rows, length = target_batch.shape
    has_target = target_batch != ignore_index                            # (rows, length)
    position = torch.arange(1, length + 1, device=target_batch.device)   # (length,)
    real = (has_target * position).amax(dim=1)                           # (rows,) 0 if none
    return int(rows * length - real.sum())


def accumulate_gradients(micro_batches, model, device, token_weighted=True, autocast_dtype=None):
    """Forward and backward over micro-batches; gradients add up in `.grad`.

    `token_weighted=True`: each micro-batch contributes its summed token losses
    divided by the number of targets in all the micro-batches together, so the
    gradient is exactly that of one batch holding them all, and a micro-batch
    with no target contributes zero.

    `token_weighted=False` reproduces the bug many libraries had until late 2024:
    each micro-batch's mean loss divided by the number of micro-batches. A token
    in a short micro-batch then weighs more than one in a long micro-batch, so the
    result depends on how a batch was split (and a micro-batch without targets
    makes it NaN).

    Returns the loss of the whole step (a float). Raises `TrainingDiverged` when a
    micro-batch's loss is NaN or infinite, before its backward pass.

    Several processes (`model` wrapped by DDP, see ftlib/distributed.py): each holds
    its share of every micro-batch, and DDP averages the processes' gradients. So
    `n_targets` is summed over all processes, and each process's loss is multiplied
    by their number, which the average divides out again: the gradient is exactly
    that of one process holding the whole batch. Gradients are synchronised only
    after the last micro-batch (`no_sync()` before). The returned loss, and the
    check for NaN, use the sum over all processes, so every process stops together.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    batches = [split_batch(batch) for batch in micro_batches]
    n_targets = sum(int((targets != IGNORE_INDEX).sum()) for _, targets, _ in batches)
    ddp = isinstance(model, DistributedDataParallel)
    if ddp:
        n_targets = int(all_reduce_sum([n_targets], device)[0])  # targets on all processes
    total = 0.0
    for i, (inputs, targets, extras) in enumerate(batches):
        with _no_sync(model, skip=i < len(batches) - 1):
            with _autocast(device, autocast_dtype):
                if token_weighted:
                    loss_sum = _batch_loss(model, inputs, targets, extras, device, "sum")
                    loss = loss_sum / max(n_targets, 1)
                    value = loss_sum.item()
                else:
                    mean = _batch_loss(model, inputs, targets, extras, device, "mean")
                    loss = mean / len(batches)
                    value = loss.item()
                if ddp:
                    loss = loss * world_size()  # DDP's average over processes divides it out
                    value = all_reduce_sum([value], device)[0]
                    if not token_weighted:
                        value /= world_size()
            if not math.isfinite(value):
                raise TrainingDiverged(f"the training loss became {value}")
            loss.backward()
        total += value
    return total / max(n_targets, 1) if token_weighted else total


def rng_states():
    """Python's and PyTorch's RNG states, to put into a checkpoint."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # one process per GPU (DDP): only its own, so it does not start up the others
        states["cuda"] = [torch.cuda.get_rng_state()] if is_distributed() else torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        if is_distributed():
            torch.cuda.set_rng_state(states["cuda"][0])  # this process's GPU only
        else:
            torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model, optimizer, step, scheduler=None, extra=None):
    """Write model, optimizer, scheduler, step and RNG states atomically.

    A DDP-wrapped model is saved unwrapped (`unwrap_model`), with its plain keys.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    state = {
        "model": unwrap_model(model).state_dict(),
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


class _StopAtStepEnd:
    """Ctrl-C (SIGINT) during training: finish the current step, then stop.

    The first Ctrl-C only sets `requested`; the loop checks it between steps, so a
    checkpoint never holds a half-done update. A second Ctrl-C stops at once.
    Active only in the main thread (where Python delivers signals).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, *,
                       scheduler=None, max_steps=None, grad_clip=None, progress=True,
                       print_samples=True, checkpoint_path=None, checkpoint_every=None,
                       resume_state=None, log=print, accumulation_steps=1,
                       autocast_dtype=None, stats=None, eval_train_loader=None):
    """The chapter's training loop. Returns (train_losses, val_losses, tokens_seen).

    Every `eval_freq` steps the loss on `eval_iter` batches of each loader is
    recorded; after each epoch a sample from `start_context` is printed. Optional:
    `scheduler` (stepped every step), `max_steps`, `grad_clip` (max gradient norm),
    `checkpoint_path` + `checkpoint_every` (steps), and `resume_state` (the dict
    returned by `load_checkpoint`) to continue where a run stopped.

    Speed options (what is learned stays the same):
    - batches may be `(inputs, targets)` or packed `(inputs, targets, extras)`;
    - `accumulation_steps`: one optimizer step per this many batches, with the loss
      weighted per token across them (see `accumulate_gradients`);
    - `autocast_dtype`: e.g. `torch.bfloat16` on CUDA (see `autocast_dtype_for`).

    The padding meter: the progress bar shows which fraction of the input tokens
    were padding (without a bar, `log` gets one line at the end); pass a dict as
    `stats` to get the counts (`processed_tokens`, `padding_tokens`,
    `padding_fraction`, `target_tokens`, `steps`).

    Several processes (`model` = `wrap_model(ModelWithLoss(model), device)`, each
    `train_loader` yielding this process's share of the batches): every process
    trains; only rank 0 shows progress, calls `log`, evaluates (on the unwrapped
    model, with `eval_train_loader`, the unsharded training loader, so it measures
    what a single process would) and writes checkpoints. The padding meter and
    `tokens_seen` count all processes. The returned lists are empty elsewhere.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if accumulation_steps < 1:
        raise FtlibError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
    ddp = isinstance(model, DistributedDataParallel)
    main = is_main_process()  # True in a single process
    if not main:
        def log(*args, **kwargs):
            pass
    plain_model = unwrap_model(model)
    if eval_train_loader is None:
        eval_train_loader = train_loader
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    if resume_state is not None:
        extra = resume_state["extra"]
        global_step = resume_state["step"]
        tokens_seen = extra.get("tokens_seen", 0)
        train_losses = list(extra.get("train_losses", []))
        val_losses = list(extra.get("val_losses", []))
        track_tokens_seen = list(extra.get("track_tokens_seen", []))
    steps_per_epoch = math.ceil(len(train_loader) / accumulation_steps)
    total_steps = steps_per_epoch * num_epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    meter = stats if stats is not None else {}
    meter.update(processed_tokens=0, padding_tokens=0, padding_fraction=0.0,
                 target_tokens=0, steps=0)

    def checkpoint():
        if not main:
            return  # rank 0 writes the one checkpoint; the replicas are equal
        save_checkpoint(checkpoint_path, plain_model, optimizer, global_step, scheduler, extra={
            "tokens_seen": tokens_seen, "train_losses": train_losses, "val_losses": val_losses,
            "track_tokens_seen": track_tokens_seen})

    bar = tqdm(total=total_steps, initial=global_step + 1, disable=not (progress and main),
               desc="training", unit="step", dynamic_ncols=True)
    model.train()
    updating = False  # True between optimizer.step() and recording the step
    with _StopAtStepEnd() as stop:
        try:
            for epoch in range(num_epochs):
                _set_epoch(train_loader, epoch)
                if eval_train_loader is not train_loader:
                    _set_epoch(eval_train_loader, epoch)
                batches = iter(train_loader)
                for step_in_epoch in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + step_in_epoch
                    micro_batches = list(itertools.islice(batches, accumulation_steps))
                    if step <= global_step:
                        continue  # resuming: these batches were trained on before the stop
                    if step >= total_steps:
                        break
                    counts = [0, 0, 0]  # the padding meter, from the batches alone
                    for batch in micro_batches:
                        input_batch, target_batch, _ = split_batch(batch)
                        counts[0] += input_batch.numel()
                        counts[1] += padding_tokens(target_batch)
                        counts[2] += int((target_batch != IGNORE_INDEX).sum())
                    if ddp:  # every process's share of the step
                        counts = [int(c) for c in all_reduce_sum(counts, device)]
                    tokens_seen += counts[0]
                    meter["processed_tokens"] += counts[0]
                    meter["padding_tokens"] += counts[1]
                    meter["target_tokens"] += counts[2]
                    meter["padding_fraction"] = meter["padding_tokens"] / max(1, meter["processed_tokens"])
                    optimizer.zero_grad(set_to_none=True)
                    try:
                        loss = accumulate_gradients(micro_batches, model, device,
                                                    autocast_dtype=autocast_dtype)
                    except TrainingDiverged as exc:
                        raise TrainingDiverged(
                            f"{exc} at step {step} (epoch {epoch + 1}); "
                            "try a lower learning rate (--lr) or gradient clipping") from None
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    updating = True
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    meter["steps"] += 1
                    global_step = step
                    updating = False
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", pad=f"{meter['padding_fraction']:.1%}", refresh=False)

                    if main and global_step % eval_freq == 0:
                        train_loss, val_loss = evaluate_model(plain_model, eval_train_loader, val_loader,
                                                              device, eval_iter)
                        train_losses.append(train_loss)
                        val_losses.append(val_loss)
                        track_tokens_seen.append(tokens_seen)
                        if not progress:
                            log(f"Ep {epoch + 1} (Step {global_step:06d}): "
                                f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                    if checkpoint_path and checkpoint_every and (global_step + 1) % checkpoint_every == 0:
                        checkpoint()
                    stop_now = stop.requested
                    if ddp:  # Ctrl-C reached some processes: all stop after the same step
                        stop_now = all_reduce_sum([stop_now], device)[0] > 0
                    if stop_now:
                        raise KeyboardInterrupt
                if global_step + 1 >= total_steps and epoch < num_epochs - 1 and max_steps is not None:
                    break
                if print_samples and main:
                    generate_and_print_sample(plain_model, tokenizer, device, start_context)
        except KeyboardInterrupt:
            if checkpoint_path and updating:
                log(f"\nInterrupted in the middle of an update; the last checkpoint, {checkpoint_path}, "
                    "is kept. Run the same command with --resume to continue from it.")
            elif checkpoint_path:
                checkpoint()
                log(f"\nInterrupted at step {global_step}; checkpoint saved to {checkpoint_path}. "
                    "Run the same command with --resume to continue.")
            raise
        finally:
            bar.close()
    if checkpoint_path:
        checkpoint()
    if not progress and meter["processed_tokens"]:
        log(f"Padding: {meter['padding_fraction']:.1%} of the {meter['processed_tokens']:,} "
            f"input tokens trained on were padding")
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
