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
   model FLOPs are counted from the shapes (`ftlib.classroom.roofline.step_flops`: forward +
   backward, the output layer at targets only, attention's full square).
   MFU = those FLOPs per second / the peak of the same precision.
3. With `--profile`: where a step of the largest model spends its time, from
   torch.profiler over three steps (after two warm-up steps, so AdamW's state already exists): self CPU
   time grouped by what the operators do (matrix products, attention, casts between
   precisions, softmax + loss, LayerNorm + GELU, AdamW, zeroing), float32 against bf16
   autocast; then the top operators of the bf16 step.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, ftlib_loader, load_items, machine_line  # noqa: E402

from ftlib.model.gpt import GPTModel, get_config  # noqa: E402
from ftlib.classroom.roofline import matmul_peak, time_training_steps  # noqa: E402
from ftlib.training.loop import accumulate_gradients, make_optimizer  # noqa: E402

PLANS = {  # batch size as make finetune (tiny) and the chapter (gpt2-small); steps timed
    "tiny": dict(batch_size=16, steps=10, warmup=2),
    "gpt2-small (124M)": dict(batch_size=8, steps=3, warmup=1),
}
PRECISIONS = {"float32": None, "bf16 autocast": torch.bfloat16}


def _new_run(name, train_items, batch_size, n_batches):
    """(model with seeded random weights, its fused AdamW, the first `n_batches` packed batches)."""
    cfg = get_config(name)
    torch.manual_seed(123)
    model = GPTModel(cfg)
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.1)
    batches = iter(ftlib_loader(train_items, batch_size, "cpu", cfg["context_length"]))
    return model, optimizer, [next(batches) for _ in range(n_batches)]


def time_steps(name, dtype, train_items, plan):
    """(median seconds per step, model FLOPs per step) of `plan["steps"]` training steps."""
    model, optimizer, steps = _new_run(name, train_items, plan["batch_size"], plan["warmup"] + plan["steps"])
    return time_training_steps(model, optimizer, steps, autocast_dtype=dtype, warmup=plan["warmup"])


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


# Where the time goes: operators grouped by what they do (self CPU time, torch.profiler).
GROUPS = [
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("casts between precisions", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("softmax + loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("LayerNorm + GELU", ("layer_norm", "gelu")),
    ("optimizer (AdamW)", ("adamw", "Optimizer.step")),
    ("zeroing gradients", ("aten::fill_", "aten::zero_", "zero_grad")),
]


def _group(op_name):
    for group, keys in GROUPS:
        if any(key.lower() in op_name.lower() for key in keys):
            return group
    return "everything else"


def profile_step(name, train_items, dtype=torch.bfloat16, steps=3):
    """torch.profiler on `steps` training steps (after two warm-up steps, so AdamW's
    state exists): (self CPU seconds per step and group of operators, the top
    operators' table, summed over the steps)."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, (batch,) = _new_run(name, train_items, PLANS[name]["batch_size"], 1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients([batch], model, "cpu", autocast_dtype=dtype)
        optimizer.step()

    step(), step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    groups = {}
    for event in events:
        group = _group(event.key)
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return groups, events.table(sort_by="self_cpu_time_total", row_limit=12)


def breakdown(profiles):
    """One row per group of operators: seconds and share of one step, per precision.
    `profiles`: {precision: the groups of `profile_step`}."""
    totals = {precision: sum(groups.values()) for precision, groups in profiles.items()}
    rows = []
    for group in [g for g, _ in GROUPS] + ["everything else", "total"]:
        row = {"group": group}
        for precision, groups in profiles.items():
            seconds = totals[precision] if group == "total" else groups.get(group, 0.0)
            row[precision] = f"{seconds * 1000:,.0f} ms ({seconds / totals[precision]:.0%})"
        rows.append(row)
    return rows


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
        name = names[-1]
        print(f"\nWhere a training step of {name} spends its time (torch.profiler, self CPU time per step, "
              "mean of 3 steps)")
        profiles = {p: profile_step(name, train_items, dtype) for p, dtype in PRECISIONS.items()}
        columns = [("operators", "group", "{}")] + [(p, p, "{}") for p in PRECISIONS]
        print(format_table(breakdown({p: groups for p, (groups, _) in profiles.items()}), columns))
        print(f"\nTop operators, bf16 autocast, {name} (3 steps):")
        print(profiles["bf16 autocast"][1])
    return rows


if __name__ == "__main__":
    main()
