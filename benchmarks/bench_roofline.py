"""The roofline: this CPU's matmul peak in float32 and bfloat16, and how much of it a
training step uses (model FLOPs utilisation, MFU).

    python benchmarks/bench_roofline.py            # tiny and gpt2-small (124M) shapes
    python benchmarks/bench_roofline.py --quick    # tiny only, few repetitions (a smoke run)
    python benchmarks/bench_roofline.py --profile  # and torch.profiler's top operators

1. Peak: FLOP/s of a (tokens x d) @ (d x 4d) matmul at each model's width (the
   feed-forward's shape, the largest matmuls of a block), float32 and bfloat16;
   the best of several repetitions after a warm-up.
2. A training step as `train_model` takes it (packed batches of the bundled data,
   the loss at targets only, fused AdamW), in float32 and under bf16 autocast. Its
   model FLOPs are counted from the shapes, forward + backward (3x the forward):
   2 x block parameters per input token, 2 x emb_dim x vocab per target (the output
   layer runs only there), and 4 x emb_dim x length^2 per row and layer for the
   attention scores and their weighted sum (the block-diagonal mask is applied
   after they are computed, so the full square is counted).
   MFU = those FLOPs per second / the peak of the same precision.
3. With `--profile`: torch.profiler's top operators in one bf16-autocast step of the
   largest model (after two warm-up steps, so AdamW's state already exists).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, ftlib_loader, load_items, machine_line  # noqa: E402

from ftlib.model import GPTModel, get_config  # noqa: E402
from ftlib.trainer import accumulate_gradients, make_optimizer, split_batch  # noqa: E402

PLANS = {  # batch size as make finetune (tiny) and the chapter (gpt2-small); steps timed
    "tiny": dict(batch_size=16, steps=10, warmup=2),
    "gpt2-small (124M)": dict(batch_size=8, steps=3, warmup=1),
}
PRECISIONS = {"float32": None, "bf16 autocast": torch.bfloat16}


def matmul_peak(d, dtype, tokens=2048, reps=10):
    """FLOP/s of (tokens x d) @ (d x 4d) in `dtype`: the best of `reps` after a warm-up."""
    a, b = torch.randn(tokens, d, dtype=dtype), torch.randn(d, 4 * d, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * tokens * d * 4 * d / best


def step_flops(cfg, block_params, batch):
    """Model FLOPs of one training step on a packed batch (see the module docstring)."""
    inputs, targets, _ = split_batch(batch)
    tokens, n_targets = inputs.numel(), int((targets != -100).sum())
    d, rows, length = cfg["emb_dim"], inputs.shape[0], inputs.shape[1]
    forward = (2 * block_params * tokens + 2 * d * cfg["vocab_size"] * n_targets
               + 4 * d * length * length * rows * cfg["n_layers"])
    return 3 * forward


def time_steps(name, dtype, train_items, plan):
    """(median seconds per step, model FLOPs per step) of `plan["steps"]` training steps."""
    cfg = get_config(name)
    torch.manual_seed(123)
    model = GPTModel(cfg)
    block_params = sum(p.numel() for p in model.trf_blocks.parameters())
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.1)
    batches = iter(ftlib_loader(train_items, plan["batch_size"], "cpu", cfg["context_length"]))
    times, flops = [], []
    for step in range(plan["warmup"] + plan["steps"]):
        batch = next(batches)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients([batch], model, "cpu", autocast_dtype=dtype)
        optimizer.step()
        if step >= plan["warmup"]:
            times.append(time.perf_counter() - start)
            flops.append(step_flops(cfg, block_params, batch))
    return statistics.median(times), statistics.median(flops)


def roofline(names, train_items, quick=False):
    """One row per model and precision: peak, achieved FLOP/s and MFU."""
    rows = []
    for name in names:
        plan = dict(PLANS[name], **({"steps": 3, "warmup": 1} if quick else {}))
        d = get_config(name)["emb_dim"]
        for precision, dtype in PRECISIONS.items():
            peak = matmul_peak(d, dtype or torch.float32, reps=3 if quick else 10)
            seconds, flops = time_steps(name, dtype, train_items, plan)
            rows.append({"model": name, "precision": precision, "peak": peak / 1e9,
                         "s_step": seconds, "achieved": flops / seconds / 1e9,
                         "mfu": flops / seconds / peak})
    return rows


def profile_step(name, train_items, dtype=torch.bfloat16, top=12):
    """torch.profiler's table of the operators that take the most CPU time in one step."""
    from torch.profiler import ProfilerActivity, profile

    cfg = get_config(name)
    model = GPTModel(cfg)
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.1)
    batch = next(iter(ftlib_loader(train_items, PLANS[name]["batch_size"], "cpu", cfg["context_length"])))
    for _ in range(2):  # warm-up: AdamW creates its state on its first step
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients([batch], model, "cpu", autocast_dtype=dtype)
        optimizer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients([batch], model, "cpu", autocast_dtype=dtype)
        optimizer.step()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=top)


COLUMNS = [("model", "model", "{}"), ("precision", "precision", "{}"),
           ("matmul peak GFLOP/s", "peak", "{:,.0f}"), ("s/step", "s_step", "{:.3f}"),
           ("step GFLOP/s", "achieved", "{:,.1f}"), ("MFU", "mfu", "{:.1%}")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, few repetitions")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny"] if args.quick else list(PLANS)
    _, train_items, _ = load_items(mask_prompt=True)
    print("Roofline: matmul peak and training-step FLOP/s (packed batches, loss at targets)")
    print(machine_line())
    rows = roofline(names, train_items, quick=args.quick)
    print(format_table(rows, COLUMNS))
    if args.profile:
        print(profile_step(names[-1], train_items))
    return rows


if __name__ == "__main__":
    main()
