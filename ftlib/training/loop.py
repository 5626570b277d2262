"""`train_model`: the chapter's loop (ftlib/training/book.py), made fast and safe for real runs.

What it learns is what `train_model_simple` learns (a test checks); how it gets
there differs:
- the loss comes from `model(inputs, targets)`, which runs the output layer only
  where a target exists (for a small model that layer is most of the work);
- batches may be packed (ftlib/data/packing.py): `(inputs, targets, extras)`, where
  `extras` carries the position ids and the attention mask;
- gradient accumulation with a token-weighted loss, exact across processes;
- a learning-rate schedule, gradient clipping, `max_steps`, fused AdamW, bf16
  autocast (mixed precision) on a GPU or a CPU with bfloat16 units;
- a progress bar with the loss and a padding meter;
- a loss that becomes NaN or infinite stops training, naming the step;
- checkpoints written atomically; training resumes from one; the first Ctrl-C
  finishes the current step and saves one;
- a training log: every evaluation appended to `history.jsonl` as it happens (a
  stopped run keeps what it had; a resumed one continues it), and optionally
  TensorBoard event files (`TrainingLog`).

Several processes (DistributedDataParallel, see ftlib/plumbing/distributed.py): pass the
plain model; `train_model` wraps it, and only rank 0 prints, evaluates and saves.
"""

import contextlib
import importlib.util
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ftlib.data.collate import IGNORE_INDEX
from ftlib.plumbing.distributed import (all_reduce_sum, is_distributed, is_main_process, world_size,
                                        wrap_model)
from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.plumbing.fileio import atomic_write_text, json_number
from ftlib.model.files import restore_checkpoint, save_checkpoint
from ftlib.training.precision import autocast


class TrainingDiverged(FtlibError):
    """The loss became NaN or infinite.

    Not in a notebook: raised by `train_model` when the loss becomes NaN or infinite.
    """


def split_batch(batch):
    """`(inputs, targets, extras)` from a batch of `(inputs, targets)` or
    `(inputs, targets, extras)`; `extras` is a dict ({} when there is none).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    if len(batch) == 2:
        return batch[0], batch[1], {}
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise FtlibError(f"a batch is (inputs, targets) or (inputs, targets, extras); got {len(batch)} items")


def batch_loss(model, batch, device, reduction="mean"):
    """The loss of a padded or packed batch, from `model(inputs, targets)`: the output
    layer runs only at targets. Same value as `calc_loss_batch`, less work.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    inputs, targets, extras = split_batch(batch)
    kwargs = {k: extras[k].to(device) for k in ("position_ids", "attn_mask") if k in extras}
    return model(inputs.to(device), targets.to(device), reduction=reduction, **kwargs)


def loss_loader(data_loader, model, device, num_batches=None):
    """`calc_loss_loader` through `batch_loss`: padded or packed batches, without
    gradients, the model's mode restored afterwards. Returns a float.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [batch_loss(model, batch, device).item()
                  for batch in itertools.islice(data_loader, num_batches)]
    model.train(was_training)
    return sum(losses) / num_batches


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
    uses it; `fused=True` insists. Frozen parameters (LoRA) are left out.

    Introduced in: notebooks/08_faster_training.ipynb
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


def compile_model(model, **compile_kwargs):
    """Compile each transformer block with `torch.compile`, in place; returns the model.

    Blocks rather than the whole model: they hold the repeated work, and nothing in
    them depends on data values, so they compile without graph breaks. Shapes vary
    from batch to batch, hence `dynamic=True` by default. Compiling takes time up
    front (a minute for GPT-2 medium on a GPU); measure before turning it on.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    compile_kwargs.setdefault("dynamic", True)
    for block in model.trf_blocks:
        block.compile(**compile_kwargs)
    return model


def padding_tokens(target_batch, ignore_index=IGNORE_INDEX):
    """Input positions that are padding: those after each row's last target.

    Works for padded and packed batches alike (a row's real tokens end where its
    last example's end-of-text target is). Returns an int.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    rows, length = target_batch.shape
    has_target = target_batch != ignore_index                            # (rows, length)
    position = torch.arange(1, length + 1, device=target_batch.device)   # (length,)
    real = (has_target * position).amax(dim=1)                           # (rows,) 0 if none
    return int(rows * length - real.sum())


def _no_sync(model, skip):
    """DDP's `no_sync()` when `skip` (gradients then only add up locally), else nothing."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _micro_batch_loss(model, batch, device, n_targets, token_weighted, n_batches):
    """(the loss to backpropagate, its value summed over processes) for one micro-batch."""
    ddp = isinstance(model, DistributedDataParallel)
    if token_weighted:
        loss_sum = batch_loss(model, batch, device, "sum")
        loss, value = loss_sum / max(n_targets, 1), loss_sum.item()
    else:
        loss = batch_loss(model, batch, device, "mean") / n_batches
        value = loss.item()
    if ddp:
        loss = loss * world_size()  # DDP's average over processes divides it out
        value = all_reduce_sum([value], device)[0]
        if not token_weighted:
            value /= world_size()
    return loss, value


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

    `model` may be a GPTModel or a DDP-wrapped one: each process then holds its
    share of every micro-batch; the target count is summed over all processes and
    each loss multiplied by their number, which DDP's average divides out again,
    so the gradient is that of one process holding the whole batch.

    Returns the loss of the whole step (a float). Raises `TrainingDiverged` when a
    micro-batch's loss is NaN or infinite, before its backward pass.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    batches = [split_batch(batch) for batch in micro_batches]
    n_targets = sum(int((targets != IGNORE_INDEX).sum()) for _, targets, _ in batches)
    if isinstance(model, DistributedDataParallel):
        n_targets = int(all_reduce_sum([n_targets], device)[0])  # targets on all processes
    total = 0.0
    for i, batch in enumerate(batches):
        with _no_sync(model, skip=i < len(batches) - 1):
            with autocast(device, autocast_dtype):
                loss, value = _micro_batch_loss(model, batch, device, n_targets,
                                                token_weighted, len(batches))
            if not math.isfinite(value):
                raise TrainingDiverged(f"the training loss became {value}")
            loss.backward()
        total += value
    return total / max(n_targets, 1) if token_weighted else total


def _set_epoch(loader, epoch):
    """Let a sampler that supports it reshuffle reproducibly for this epoch."""
    for obj in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


class _StopAtStepEnd:
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP during training: finish the current step, then
    stop (the run keeps its checkpoint, so `--resume` continues).

    The first signal only sets `requested`; the loop checks it between steps, so a
    checkpoint never holds a half-done update. A second one stops at once. After a
    hang-up (the terminal closed, ssh dropped) output to that terminal goes nowhere
    instead of failing. Active only in the main thread (where Python delivers signals).
    """

    SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if signum == getattr(signal, "SIGHUP", None):
            _silence_dead_terminal()
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False


def _silence_dead_terminal():
    """Point standard output and error at the null device where they were the terminal
    that hung up: writing there would fail (EIO) and lose the run."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            if os.isatty(fd):
                os.dup2(null, fd)
        os.close(null)


@dataclass
class TrainHistory:
    """What `train_model` records: the losses every `eval_freq` steps, the tokens seen
    then, and the counts of the padding meter. Saved inside every checkpoint.

    Not in a notebook: what `train_model` returns; notebook 06 reads its fields.
    """

    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    tokens_seen: list = field(default_factory=list)  # input tokens processed at each evaluation
    records: list = field(default_factory=list)      # each evaluation's line of history.jsonl
    step: int = -1                  # the last optimizer step done (-1: none yet)
    steps: int = 0                  # optimizer steps done in this call
    processed_tokens: int = 0       # every input position the model computed on
    padding_tokens: int = 0         # of those, padding
    target_tokens: int = 0          # targets in the loss (not -100)

    @property
    def padding_fraction(self):
        return self.padding_tokens / max(1, self.processed_tokens)

    def count(self, batch, device, ddp):
        """Add one step's batch to the padding meter (all processes' shares)."""
        inputs, targets, _ = split_batch(batch)
        counts = [inputs.numel(), padding_tokens(targets), int((targets != IGNORE_INDEX).sum())]
        if ddp:
            counts = [int(c) for c in all_reduce_sum(counts, device)]
        self.processed_tokens += counts[0]
        self.padding_tokens += counts[1]
        self.target_tokens += counts[2]

    @classmethod
    def resumed(cls, resume_state):
        """The history saved in a checkpoint (from `load_checkpoint`), or a new one."""
        if resume_state is None:
            return cls()
        saved = {k: v for k, v in resume_state["extra"].get("history", {}).items()
                 if k in cls.__dataclass_fields__}
        return cls(**{**saved, "step": resume_state["step"], "steps": 0})


@dataclass
class Checkpoints:
    """Where `train_model` saves its checkpoints, how often, and what it resumes from.

    Not in a notebook: how `finetune` asks for checkpoints and --resume.
    """

    path: object = None    # the checkpoint file (rank 0 writes it)
    every: int = None      # steps between checkpoints; None: only at the end and on Ctrl-C
    resume: dict = None    # a checkpoint read back (`read_torch_file`) to continue from
    extra: dict = None     # saved in every checkpoint's "extra" beside the history


HISTORY_FILE = "history.jsonl"  # in every run folder: one line of JSON per evaluation


def check_tensorboard():
    """ConfigError (one line, before any work) unless the `tensorboard` package is installed.

    Not in a notebook: what `finetune` and `dpo` check first when --tensorboard is on.
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")


class TrainingLog:
    """A run's training log: each evaluation's record (a dict of numbers) appended as one
    line of JSON to `path` (history.jsonl) the moment it is made, and, with
    `tensorboard_dir`, written as TensorBoard scalars there too ("train_loss" is the tag
    "loss/train", "lr" stays "lr"). `records`: what an earlier, resumed part of the run
    logged; the file is rewritten with exactly those, so no step appears twice.

    Not in a notebook: `train_model` and `train_dpo` write it; notebook 08 reads the files.
    """

    def __init__(self, path=None, tensorboard_dir=None, records=()):
        self.path, self.writer = path, None
        if tensorboard_dir is not None:
            check_tensorboard()
            # tensorboard imports TensorFlow where it is installed (make setup installs it
            # to read OpenAI's checkpoints): seconds and a screen of log lines, for event
            # files its own stand-in writes the same. This module present -> the stand-in.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir))
        if path is not None:
            atomic_write_text(path, "".join(_json_line(r) for r in records))
        for record in records:
            self._scalars(record)

    def write(self, record):
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:  # append-only: a line is all there or cut at its end
                f.write(_json_line(record))
        if self.writer is not None:
            self._scalars(record)
            self.writer.flush()

    def _scalars(self, record):
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and value is not None:
                split, _, name = key.partition("_")
                tag = f"{name}/{split}" if split in ("train", "val") and name else key
                self.writer.add_scalar(tag, value, record["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()


def _json_line(record):
    return json.dumps(record, allow_nan=False) + "\n"


class _Throughput:
    """Input tokens per second of training since the last `rate()` (evaluations excluded:
    call `restart()` after one). Starts at the first step trained, not while a resumed
    run skips the batches it already did."""

    def __init__(self):
        self.since = None

    def restart(self, tokens):
        self.since = (time.perf_counter(), tokens)

    def rate(self, tokens):
        if self.since is None:
            return None
        seconds = time.perf_counter() - self.since[0]
        return round((tokens - self.since[1]) / seconds, 1) if seconds > 0 else None


def train_model(model, train_loader, val_loader, optimizer, device, num_epochs,
                eval_freq, eval_iter, *, scheduler=None, grad_clip=None, max_steps=None,
                autocast_dtype=None, checkpoints=None, log=print, progress=True,
                history_file=None, tensorboard_dir=None):
    """`train_model_simple` (ftlib/training/book.py) with additions; returns a `TrainHistory`.

    As the book's: one optimizer step per batch, and every `eval_freq` steps the loss
    on `eval_iter` batches of each loader is recorded. Added: a `scheduler` stepped
    every step, `grad_clip` (max gradient norm), `max_steps`, bf16 `autocast_dtype`,
    `checkpoints` (a `Checkpoints`: save every so many steps, resume from one), a
    progress bar (`progress=False`: a log line per evaluation instead), a padding
    meter, a stop at the end of the step on Ctrl-C, and several processes: under
    torchrun each loader yields this process's share of every batch, `train_model`
    wraps the model in DDP, and the losses are summed over the processes.

    `history_file` (a run folder's history.jsonl): each evaluation appended as a line,
    `{"step", "epoch", "tokens_seen", "lr", "train_loss", "val_loss", "tokens_per_s"}`
    (step: the optimizer step just done, from 0, as in the log line; epoch: epochs done,
    a fraction; lr: that step's learning rate; tokens per second of training since the
    last evaluation). The same records are `history.records`, and in every checkpoint:
    a resumed run rewrites the file with the checkpoint's and goes on from there.
    `tensorboard_dir`: the records as TensorBoard scalars too (see `TrainingLog`).

    Introduced in: notebooks/06_finetuning.ipynb
    """
    checkpoints = checkpoints or Checkpoints()
    history = TrainHistory.resumed(checkpoints.resume)
    if checkpoints.resume is not None:  # resuming happens here, and only here
        restore_checkpoint(checkpoints.resume, model, optimizer, scheduler)
        log(f"Resuming after step {history.step}")
    main, ddp = is_main_process(), is_distributed()
    step_model = wrap_model(model, device) if ddp else model
    total_steps = len(train_loader) * num_epochs
    total_steps = total_steps if max_steps is None else min(total_steps, max_steps)
    bar = tqdm(total=total_steps, initial=history.step + 1, disable=not (progress and main),
               desc="training", unit="step", dynamic_ncols=True)
    training_log = TrainingLog(history_file, tensorboard_dir, history.records) if main else TrainingLog()
    throughput = _Throughput()
    updating = False  # between optimizer.step() and the step's end: a checkpoint would be half-made

    def save():
        if main and checkpoints.path and not updating:
            save_checkpoint(checkpoints.path, model, optimizer, history.step, scheduler,
                            extra={**(checkpoints.extra or {}), "history": asdict(history)})

    model.train()
    with _StopAtStepEnd() as stop, contextlib.closing(bar), contextlib.closing(training_log):
        try:
            step = -1
            for epoch in range(num_epochs):
                _set_epoch(train_loader, epoch)       # samplers reshuffle per epoch, reproducibly
                for batch in train_loader:
                    step += 1
                    if step >= total_steps:
                        break
                    if step <= history.step:          # done before the checkpoint resumed from
                        continue
                    if throughput.since is None:
                        throughput.restart(history.processed_tokens)
                    history.count(batch, device, ddp)
                    lr = optimizer.param_groups[0]["lr"]  # this step's (the scheduler steps after it)
                    optimizer.zero_grad(set_to_none=True)
                    loss = _gradients(step_model, batch, device, autocast_dtype, step, epoch)
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    updating = True
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    history.step, history.steps, updating = step, history.steps + 1, False
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", pad=f"{history.padding_fraction:.1%}", refresh=False)
                    if step % eval_freq == 0:
                        record = {"step": step, "epoch": round((step + 1) / len(train_loader), 4),
                                  "tokens_seen": history.processed_tokens, "lr": float(f"{lr:.6g}")}
                        tokens_per_s = throughput.rate(history.processed_tokens)
                        _evaluate(model, train_loader, val_loader, device, eval_iter, history,
                                  log if main and not progress else None, epoch)
                        record.update(train_loss=json_number(history.train_losses[-1], 5),
                                      val_loss=json_number(history.val_losses[-1], 5), tokens_per_s=tokens_per_s)
                        history.records.append(record)
                        training_log.write(record)
                        throughput.restart(history.processed_tokens)
                    if checkpoints.every and (step + 1) % checkpoints.every == 0:
                        save()
                        throughput.restart(history.processed_tokens)  # saving is not training
                    if _stop_requested(stop, device):
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            save()
            if checkpoints.path and main:
                saved = (f"in the middle of an update; the last checkpoint, {checkpoints.path}, is kept"
                         if updating else f"at step {history.step}; checkpoint saved to {checkpoints.path}")
                with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                    log(f"\nInterrupted {saved}. Run the same command with --resume to continue.")
            raise
    save()
    return history


def _gradients(step_model, batch, device, autocast_dtype, step, epoch):
    """`accumulate_gradients` of one batch; a NaN or infinite loss names the step."""
    try:
        return accumulate_gradients([batch], step_model, device, autocast_dtype=autocast_dtype)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc} at step {step} (epoch {epoch + 1}); "
                               "try a lower learning rate (--lr) or gradient clipping") from None


def _evaluate(model, train_loader, val_loader, device, eval_iter, history, log, epoch):
    """Record the training and validation loss (and log them when `log` is given)."""
    train_loss = _loss_all_processes(train_loader, model, device, eval_iter)
    val_loss = loss_loader(val_loader, model, device, eval_iter)
    history.train_losses.append(train_loss)
    history.val_losses.append(val_loss)
    history.tokens_seen.append(history.processed_tokens)
    if log is not None:
        log(f"Ep {epoch + 1} (Step {history.step:06d}): "
            f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")


def _loss_all_processes(loader, model, device, num_batches):
    """`loss_loader`; under torchrun, of the whole batches whose shares the processes
    hold: each batch's summed token losses and target counts are added over processes."""
    if not is_distributed():
        return loss_loader(loader, model, device, num_batches)
    was_training = model.training
    model.eval()
    sums = []
    with torch.no_grad():
        for batch in itertools.islice(loader, min(num_batches, len(loader))):
            targets = split_batch(batch)[1]
            sums += [batch_loss(model, batch, device, "sum").item(), int((targets != IGNORE_INDEX).sum())]
    model.train(was_training)
    sums = all_reduce_sum(sums, device)
    losses = [total / max(count, 1) for total, count in zip(sums[::2], sums[1::2])]
    return sum(losses) / len(losses) if losses else float("nan")


def _stop_requested(stop, device):
    """Ctrl-C seen here or, under torchrun, on any process: all stop after the same step."""
    if is_distributed():
        return all_reduce_sum([stop.requested], device)[0] > 0
    return stop.requested
