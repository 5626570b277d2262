"""The roofline: how fast this machine multiplies matrices, and how much of that a
training step uses.

A matrix product (m x k) @ (k x n) costs 2·m·k·n floating-point operations (FLOPs).
Timed at the shapes the models use, it gives the machine's *peak* in each precision:
the roof no training step can go through. A training step's *model FLOPs* are counted
from the shapes alone (forward + backward = 3x the forward); divided by its time and
by the peak, they give its model FLOPs utilisation (MFU): the share of the roof it
reaches. What stays below the roof is work that is not a matrix product (the
optimizer, casts between precisions, softmax, layer norm) or matrix products too small
to run at full speed.

Not in the book. benchmarks/bench_roofline.py prints the table for the tiny and the
gpt2-small shapes; notebook 08 draws it.
"""

import statistics
import time

import torch

from ftlib.data.collate import IGNORE_INDEX


def matmul_peak(d, dtype=torch.float32, tokens=2048, reps=10, min_seconds=0.02):
    """FLOP/s of a (tokens x d) @ (d x 4d) product in `dtype` (a feed-forward layer's
    shape, the largest products of a block): the best of `reps` timings after a
    warm-up, each of enough products to take at least `min_seconds` (a single small
    product is over before the clock's noise is).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    a, b = torch.randn(tokens, d, dtype=dtype), torch.randn(d, 4 * d, dtype=dtype)
    start = time.perf_counter()
    a @ b  # warm-up, and a first estimate of the time one product takes
    inner = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * tokens * d * 4 * d / best


def step_flops(cfg, block_params, inputs, targets):
    """Model FLOPs of one training step of `GPTModel(cfg)` on `(inputs, targets)`,
    with the output layer at targets only (`model(inputs, targets)`):
    2 x block parameters per input token, 2 x emb_dim x vocab per target, and
    4 x emb_dim x length² per row and layer for the attention scores and their
    weighted sum (a packed row's block-diagonal mask is applied after they are
    computed, so the full square counts); x 3 for forward + backward.

    Not in a notebook: `time_training_steps` counts each step with it (notebook 08).
    """
    tokens, n_targets = inputs.numel(), int((targets != IGNORE_INDEX).sum())
    d, rows, length = cfg["emb_dim"], inputs.shape[0], inputs.shape[1]
    forward = (2 * block_params * tokens + 2 * d * cfg["vocab_size"] * n_targets
               + 4 * d * length * length * rows * cfg["n_layers"])
    return 3 * forward


def time_training_steps(model, optimizer, batches, autocast_dtype=None, warmup=1):
    """(median seconds per step, median model FLOPs per step) of training `model` on
    `batches` as `train_model` does (`accumulate_gradients`, then `optimizer.step()`),
    in float32 or under `autocast_dtype`; the first `warmup` steps are not timed.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    from ftlib.training.loop import accumulate_gradients, split_batch

    block_params = sum(p.numel() for p in model.trf_blocks.parameters())
    times, flops = [], []
    for step, batch in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients([batch], model, "cpu", autocast_dtype=autocast_dtype)
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
            inputs, targets, _ = split_batch(batch)
            flops.append(step_flops(model.cfg, block_params, inputs, targets))
    return statistics.median(times), statistics.median(flops)


def plot_roofline(rows, title="Matrix-product peak and what a training step reaches"):
    """Bars per precision: the measured matmul peak (the roof, light) and the training
    step's model FLOP/s (dark), labelled with its MFU. `rows`: dicts with
    "precision", "peak" and "achieved" (GFLOP/s). Returns the figure.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = [row["precision"] for row in rows]
    x = range(len(rows))
    ax.bar(x, [row["peak"] for row in rows], width=0.6, color="#c6dbef", label="matmul peak (the roof)")
    ax.bar(x, [row["achieved"] for row in rows], width=0.35, color="#2171b5", label="training step")
    for i, row in enumerate(rows):
        ax.text(i, row["achieved"], f"MFU {row['achieved'] / row['peak']:.0%}", ha="center", va="bottom")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("GFLOP/s")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
