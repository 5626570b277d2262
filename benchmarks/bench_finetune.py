"""Fine-tuning speed: the chapter's training loop against ftlib's, on the CPU.

    python benchmarks/bench_finetune.py             # tiny config and gpt2-small (124M) shape
    python benchmarks/bench_finetune.py --quick     # tiny config, few steps (a smoke run)
    python benchmarks/bench_finetune.py --threads 1 --models tiny

Both loops train the same model (same random initial weights), on the same
batches of the bundled data (train split, prompt masked), with the same
learning rate and AdamW settings, in the same run:

- baseline: the chapter's loop (benchmarks/common.py): batches padded per batch,
  logits at every position, `torch.optim.AdamW` with its default implementation;
- ftlib: `train_model` on the pipeline's packed loader (`item_loaders`): the same
  batches packed into rows (no padding), logits only where a target is,
  fused AdamW (`make_optimizer`), in float32;
- ftlib bf16: the same with mixed precision (bf16 autocast: matrix products in
  bfloat16, weights, gradients and optimizer in float32), as `make finetune` runs
  on a CPU with bfloat16 units. "vs float32" compares its final validation loss
  with the float32 ftlib row's.

Table 1, throughput: supervised (non-ignored) target tokens per second, the
median of several timed runs (the "runs" column: runs x steps), each over the
same first batches, after warm-up steps. Table 2, learning: both loops train the
same number of steps (tiny: 2 epochs); every few steps the clock stops and the
validation loss (mean over every target token of the validation split; a subset
for gpt2-small) is measured. "time to target" is the training time until
the validation loss first reached the target (tiny: 1.5; gpt2-small: what the
baseline reached two thirds of the way through its short run; `--target` sets
it); "final val loss" is after the same examples for both.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Clock, chapter_loader, chapter_optimizer, chapter_train,  # noqa: E402
                    count_targets, format_table, ftlib_loader, load_items, machine_line,
                    median, run_train_model, token_loss)

from ftlib.model.gpt import GPTModel, get_config  # noqa: E402
from ftlib.training.loop import make_optimizer  # noqa: E402

# Per model: the settings both loops share, and the benchmark's sizes.
# - tiny: `make finetune`'s batch size and learning rate (random init learns at 1e-3);
# - gpt2-small: the chapter's batch size 8; a random-weight 124M model on 2 CPU cores
#   takes seconds per step, so fewer steps, and the validation loss on a subset.
PLANS = {
    "tiny": dict(batch_size=16, lr=1e-3, steps=12, reps=5, warmup=2, epochs=2, eval_every=8,
                 target=1.5, val_items=None),
    "gpt2-small (124M)": dict(batch_size=8, lr=1e-4, steps=2, reps=3, warmup=1, epochs=None,
                              max_steps=8, eval_every=2, target=None, val_items=8),
}
QUICK = {"tiny": dict(steps=3, reps=2, warmup=1, epochs=None, max_steps=8, eval_every=4)}


def new_model(cfg, seed=123):
    torch.manual_seed(seed)
    return GPTModel(cfg)


def loaders(train_items, plan, cfg, device, seed=123):
    allowed = cfg["context_length"]
    base = chapter_loader(train_items, plan["batch_size"], device, allowed_max_length=allowed, seed=seed)
    fast = ftlib_loader(train_items, plan["batch_size"], device, allowed, seed=seed)
    return base, fast


def run_ftlib(model, loader, optimizer, device, clock, steps, epochs=1, eval_every=None, on_eval=None,
              autocast_dtype=None):
    """ftlib's loop for `steps` steps (or `epochs`); returns the counts."""
    history = run_train_model(model, loader, optimizer, device, clock, steps, epochs, eval_every, on_eval,
                              autocast_dtype=autocast_dtype)
    return {"target_tokens": history.target_tokens, "processed_tokens": history.processed_tokens,
            "steps": history.steps}


def run_baseline(model, loader, optimizer, device, clock, steps, epochs=1, eval_every=None, on_eval=None):
    """The chapter's loop for `steps` steps (or `epochs`); returns the same counts."""
    stats = {"target_tokens": 0, "processed_tokens": 0, "steps": 0}

    def on_step(step, inputs, targets):
        stats["target_tokens"] += count_targets(targets)
        stats["processed_tokens"] += inputs.numel()
        stats["steps"] = step
        if eval_every and (step - 1) % eval_every == 0 and on_eval is not None:
            with clock.paused():
                on_eval()

    clock.start()
    chapter_train(model, loader, optimizer, device, num_epochs=epochs, max_steps=steps, on_step=on_step)
    clock.stop()
    return stats


def run_ftlib_bf16(*args, **kwargs):
    """ftlib's loop with mixed precision: matrix products in bfloat16 (autocast)."""
    return run_ftlib(*args, **kwargs, autocast_dtype=torch.bfloat16)


RUNNERS = {"baseline": (run_baseline, chapter_optimizer, 0), "ftlib": (run_ftlib, make_optimizer, 1),
           "ftlib bf16": (run_ftlib_bf16, make_optimizer, 1)}


def throughput(name, cfg, plan, train_items, device):
    rows = []
    for loop in RUNNERS:
        run, make_opt, which = RUNNERS[loop]
        model = new_model(cfg).to(device)
        optimizer = make_opt(model, lr=plan["lr"], weight_decay=0.1)
        loader = loaders(train_items, plan, cfg, device)[which]
        run(model, loader, optimizer, device, Clock(device), plan["warmup"])
        rates, per_step, stats = [], [], None
        for _ in range(plan["reps"]):
            clock = Clock(device)
            stats = run(model, loader, optimizer, device, clock, plan["steps"])
            rates.append(stats["target_tokens"] / clock.elapsed)
            per_step.append(clock.elapsed / stats["steps"])
        rows.append({"model": name, "loop": loop, "sup_tps": median(rates),
                     "s_step": median(per_step), "targets": stats["target_tokens"],
                     "processed": stats["processed_tokens"],
                     "runs": f"{plan['reps']}x{plan['steps']}"})
    for row in rows[1:]:
        row["ratio"] = row["sup_tps"] / rows[0]["sup_tps"]
    return rows


def learning(name, cfg, plan, train_items, val_items, device, target):
    if plan.get("val_items"):
        val_items = val_items[:plan["val_items"]]
    curves, rows = {}, []
    for loop in RUNNERS:
        run, make_opt, which = RUNNERS[loop]
        model = new_model(cfg).to(device)
        optimizer = make_opt(model, lr=plan["lr"], weight_decay=0.1)
        loader = loaders(train_items, plan, cfg, device)[which]
        clock, curve = Clock(device), []
        on_eval = lambda: curve.append((clock.elapsed, token_loss(model, val_items, device)))  # noqa: E731
        stats = run(model, loader, optimizer, device, clock, plan.get("max_steps"),
                    epochs=plan.get("epochs") or 1, eval_every=plan["eval_every"], on_eval=on_eval)
        final = token_loss(model, val_items, device)
        curve.append((clock.elapsed, final))
        curves[loop] = curve
        rows.append({"model": name, "loop": loop, "steps": stats["steps"],
                     "examples": stats["steps"] * plan["batch_size"], "final": final,
                     "train_s": clock.elapsed})
    if target is None:
        # the loss the baseline has reached two thirds of the way through its run
        base = curves["baseline"]
        target = math.ceil(base[max(0, (2 * len(base)) // 3 - 1)][1] * 100) / 100
    for row in rows:
        hit = next((t for t, loss in curves[row["loop"]] if loss <= target), None)
        row["to_target"] = hit
        row["target"] = target
    base = rows[0]
    for fast in rows[1:]:
        fast["delta"] = 100 * (fast["final"] - base["final"]) / base["final"]
        if base["to_target"] and fast["to_target"]:
            fast["ratio"] = base["to_target"] / fast["to_target"]
    float32, bf16 = rows[1], rows[2]
    bf16["vs_fp32"] = 100 * (bf16["final"] - float32["final"]) / float32["final"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, a few steps (a smoke run)")
    parser.add_argument("--models", nargs="+", choices=list(PLANS), help="which configs (default: all)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--target", type=float, help="validation loss to reach (default: per model)")
    parser.add_argument("--skip-learning", action="store_true", help="throughput table only")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or (["tiny"] if args.quick else list(PLANS))

    description, train_items, val_items = load_items(mask_prompt=True)
    print(f"Fine-tuning benchmark: {description}, prompt masked, device {args.device}")
    print(machine_line())
    tables = []
    for name in names:
        plan = dict(PLANS[name], **(QUICK.get(name, {}) if args.quick else {}))
        cfg = get_config(name)
        print(f"\n{name}: batch {plan['batch_size']}, lr {plan['lr']}, AdamW weight decay 0.1 ...", flush=True)
        rows = throughput(name, cfg, plan, train_items, args.device)
        tables.append(("throughput", rows))
        print(format_table(rows, THROUGHPUT_COLUMNS), flush=True)
        if not args.skip_learning:
            rows = learning(name, cfg, plan, train_items, val_items, args.device,
                            args.target if args.target is not None else plan["target"])
            tables.append(("learning", rows))
            print(format_table(rows, LEARNING_COLUMNS), flush=True)
    return tables


THROUGHPUT_COLUMNS = [
    ("model", "model", "{}"), ("loop", "loop", "{}"), ("supervised tok/s", "sup_tps", "{:,.0f}"),
    ("s/step", "s_step", "{:.3f}"), ("targets/run", "targets", "{:,}"),
    ("input tokens/run", "processed", "{:,}"), ("runs", "runs", "{}"), ("ratio", "ratio", "{:.1f}x"),
]
LEARNING_COLUMNS = [
    ("model", "model", "{}"), ("loop", "loop", "{}"), ("steps", "steps", "{}"),
    ("examples", "examples", "{}"), ("final val loss", "final", "{:.4f}"),
    ("vs baseline", "delta", "{:+.2f} %"), ("vs float32", "vs_fp32", "{:+.2f} %"), ("target", "target", "{:.2f}"),
    ("time to target s", "to_target", "{:.1f}"), ("train s", "train_s", "{:.1f}"),
    ("ratio", "ratio", "{:.1f}x"),
]

if __name__ == "__main__":
    main()
