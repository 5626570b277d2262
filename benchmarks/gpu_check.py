"""The chapter's GPU run, baseline loop against ftlib's loop, back to back on one GPU.

    bash benchmarks/gpu_check.sh                 # what the lead runs on a lent GPU
    python benchmarks/gpu_check.py --device cpu --quick    # a dry run of the script itself

The chapter's shape: `gpt2-medium (355M)` (random weights: the machine has no
network), the 935 training examples of the bundled data, batch 8, 2 epochs, lr
5e-5, weight decay 0.1, prompt not masked (the chapter does not mask it). The
book reports 0.86 minutes for this on an A100 with its loop (its time includes an
evaluation every 5 steps; the times here are training steps alone).

- baseline: the chapter's loop (benchmarks/common.py): padded random batches,
  logits at every position, `torch.optim.AdamW` defaults, float32, no TF32;
- ftlib: `train_model` on the same batches packed (the pipeline's `item_loaders`),
  logits only at targets, fused AdamW, bf16 autocast and TF32;
- ftlib + compile: the same with `compile_model` (each transformer block through
  `torch.compile`); its compile time is reported apart, and it is skipped when the
  time left is too short.

Each loop first takes `--warmup` steps (CUDA and cuBLAS start-up, compilation),
then starts again from the same initial weights and is timed. A loop whose
projected time does not fit the time left is measured for a fixed number of steps
and extrapolated to 2 epochs; the table says so. The table is printed and, when
$OUT is set, written to $OUT/gpu_check.txt.
"""

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Clock, chapter_loader, chapter_train, format_table,  # noqa: E402
                    ftlib_loader, load_items, run_train_model, token_loss)

from ftlib.data.collate import IGNORE_INDEX  # noqa: E402
from ftlib.model.gpt import GPTModel, get_config  # noqa: E402
from ftlib.training.loop import compile_model, make_optimizer  # noqa: E402
from ftlib.training.precision import autocast_dtype_for, enable_tf32  # noqa: E402


def padding_positions(target_batch):
    """Padded positions of a (rows, t) target batch, as a 0-dim tensor (no sync):
    those after each row's last target (see ftlib.training.loop.padding_tokens)."""
    rows, length = target_batch.shape
    position = torch.arange(1, length + 1, device=target_batch.device)
    real = ((target_batch != IGNORE_INDEX) * position).amax(dim=1)
    return rows * length - real.sum()


def left(budget):
    return budget - (time.perf_counter() - START)


def run_variant(name, cfg, init_state, train_items, val_items, args, budget_s):
    """Warm up, then time one loop for 2 epochs (or extrapolate). Returns a table row."""
    device = torch.device(args.device)
    fast = name != "baseline"
    enable_tf32(device, fast)
    autocast = autocast_dtype_for(device) if fast else None
    with torch.device(device):  # allocate on the GPU directly; the weights come next
        model = GPTModel(cfg)
    model.load_state_dict(init_state)
    row = {"loop": name, "precision": f"{'bf16 autocast + TF32' if autocast else 'float32'}"}

    if fast:
        loader = ftlib_loader(train_items, args.batch_size, device, cfg["context_length"], seed=args.seed)
    else:
        loader = chapter_loader(train_items, args.batch_size, device,
                                allowed_max_length=cfg["context_length"], seed=args.seed)
    steps_2_epochs = len(loader) * args.epochs

    def new_optimizer():
        if fast:
            return make_optimizer(model, lr=args.lr, weight_decay=0.1)
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)

    counts = {"targets": 0, "inputs": 0, "steps": 0}

    def train(steps, clock):
        """`steps` steps of this loop from epoch 0; counts what it processed."""
        optimizer = new_optimizer()
        if fast:
            history = run_train_model(model, loader, optimizer, device, clock, steps,
                                      epochs=args.epochs, autocast_dtype=autocast)
            counts.update(targets=history.target_tokens, inputs=history.processed_tokens,
                          padding=history.padding_tokens, steps=history.steps)
        else:
            # counted on the GPU and read once at the end: no extra sync in the timed loop
            targets_seen = torch.zeros((), dtype=torch.long, device=device)
            padding_seen = torch.zeros((), dtype=torch.long, device=device)
            counts.update(inputs=0, steps=0)

            def on_step(step, inputs, targets):
                nonlocal targets_seen, padding_seen
                targets_seen += (targets != IGNORE_INDEX).sum()
                padding_seen += padding_positions(targets)
                counts["inputs"] += inputs.numel()
                counts["steps"] = step

            clock.start()
            chapter_train(model, loader, optimizer, device, num_epochs=args.epochs,
                          max_steps=steps, on_step=on_step)
            clock.stop()
            counts.update(targets=int(targets_seen), padding=int(padding_seen))

    if fast and name.endswith("compile"):
        compile_model(model)
    warm = Clock(device)
    train(args.warmup, warm)
    row["warmup_s"] = warm.elapsed
    model.load_state_dict(init_state)  # start again from the same weights

    # probe: a few steps tell how long 2 epochs would take
    probe_steps = min(args.probe_steps, steps_2_epochs)
    probe = Clock(device)
    train(probe_steps, probe)
    projected = probe.elapsed / probe_steps * steps_2_epochs
    model.load_state_dict(init_state)
    if projected < budget_s:
        steps = steps_2_epochs
    else:  # measure what fits, extrapolate
        steps = max(probe_steps, int(budget_s / max(probe.elapsed / probe_steps, 1e-9)))
        steps = min(steps, steps_2_epochs)
    clock = Clock(device)
    train(steps, clock)
    per_step = clock.elapsed / counts["steps"]
    row.update(steps=f"{counts['steps']}/{steps_2_epochs}", seconds=clock.elapsed,
               minutes=per_step * steps_2_epochs / 60,
               how="measured" if counts["steps"] == steps_2_epochs else f"extrapolated from {counts['steps']} steps",
               tok_s=counts["targets"] / clock.elapsed,
               padding=counts["padding"] / max(1, counts["inputs"]))
    enable_tf32(device, False)  # the same float32 measurement for every loop
    row["val_loss"] = token_loss(model, val_items, device)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
        torch.cuda.reset_peak_memory_stats(device)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


NOTES = [
    "2 epochs, min: training steps only (no evaluation), measured or extrapolated as stated;",
    "  the book reports 0.86 min on an A100 for its loop (with evaluation every 5 steps).",
    "target tok/s: non-ignored target tokens per second; padding: share of input tokens after",
    "  each row's last target; warm-up s: the untimed first steps (compilation included);",
    "  val loss after: mean over every validation target token after the timed steps,",
    "  measured the same way (float32) for every loop.",
]

COLUMNS = [
    ("loop", "loop", "{}"), ("precision", "precision", "{}"), ("steps", "steps", "{}"),
    ("2 epochs, min", "minutes", "{:.3f}"), ("how", "how", "{}"),
    ("target tok/s", "tok_s", "{:,.0f}"), ("padding", "padding", "{:.1%}"),
    ("warm-up s", "warmup_s", "{:.1f}"), ("peak GiB", "peak_gib", "{:.1f}"),
    ("val loss after", "val_loss", "{:.3f}"),
    ("speed-up", "ratio", "{:.2f}x"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="gpt2-medium (355M)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each loop")
    parser.add_argument("--probe-steps", type=int, default=10, help="steps timed to project 2 epochs")
    parser.add_argument("--budget", type=float, default=240, help="seconds for the whole script")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--compile", action="store_true", help="keep the torch.compile row in --quick")
    parser.add_argument("--mask-prompt", action="store_true", help="mask the prompt (the chapter does not)")
    parser.add_argument("--quick", action="store_true",
                        help="a dry run: a tiny model (width 32, 1 layer), 24 examples, 2 epochs, to check the script on a CPU")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: CUDA is not available here (use --device cpu --quick for a dry run)")
        return 1
    if args.quick:
        args.model, args.warmup, args.probe_steps = "tiny", 1, 2
        args.no_compile = not args.compile

    device = torch.device(args.device)
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"GPU check: {args.model}, random weights, batch {args.batch_size}, {args.epochs} epochs, "
        f"lr {args.lr}, prompt {'masked' if args.mask_prompt else 'not masked (as in the chapter)'}")
    say(f"device: {gpu}; torch {torch.__version__}; python {sys.version.split()[0]}")
    if "tensorflow" in sys.modules:
        say("note: tensorflow was imported (it should not be)")

    description, train_items, val_items = load_items(mask_prompt=args.mask_prompt)
    if args.quick:
        train_items, val_items = train_items[:24], val_items[:8]
    say(f"data: {description}")
    cfg = get_config(args.model)
    if args.quick:  # smaller still: the dry run checks the script, not the speed
        cfg.update(emb_dim=32, n_heads=2, n_layers=1)
    torch.manual_seed(args.seed)
    with torch.device(device):
        init_state = {k: v.clone() for k, v in GPTModel(cfg).state_dict().items()}

    rows = []
    variants = ["baseline", "ftlib"] + ([] if args.no_compile else ["ftlib + compile"])
    out = os.environ.get("OUT")

    def report(final):
        base = next((r for r in rows if r["loop"] == "baseline"), None)
        for row in rows:
            if base is not None:
                row["ratio"] = base["minutes"] / row["minutes"]
        table = [format_table(rows, COLUMNS), ""]
        table += NOTES if final else ["(not finished)"]
        table.append(f"total wall time {time.perf_counter() - START:.0f} s")
        if out:  # written after every loop, so a stopped run still leaves its rows
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "gpu_check.txt").write_text("\n".join(lines + [""] + table) + "\n")
        return table

    try:
        for i, name in enumerate(variants):
            remaining = left(args.budget)
            if name.endswith("compile") and remaining < 100:
                say(f"{name}: skipped, {remaining:.0f} s left of the {args.budget:.0f} s budget")
                continue
            # the time this loop may take once warm: its share of what is left
            share = max(10.0, remaining / (len(variants) - i) - 20)
            say(f"running {name} ...")
            try:
                rows.append(run_variant(name, cfg, init_state, train_items, val_items, args, share))
                say(f"  {name}: {rows[-1]['minutes']:.3f} min for {args.epochs} epochs ({rows[-1]['how']})")
            except Exception as exc:  # report and go on: the other rows still count
                traceback.print_exc()
                first_line = (str(exc).splitlines() or [""])[0][:200]
                say(f"{name}: failed: {type(exc).__name__}: {first_line}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            report(final=False)
    except KeyboardInterrupt:  # the shell script's time limit: print what there is
        say("stopped by the time limit")
    enable_tf32(device, False)
    print()
    for line in report(final=True):
        print(line)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
