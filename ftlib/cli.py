"""Command line: `python -m ftlib finetune [options]`, the project's main job.

On the embedded defaults (bundled data, tiny model, CPU, no network) it
fine-tunes end to end and writes a run folder:

    runs/latest/
        config.json          the settings of the run (model config included)
        loss-plot.png        training and validation loss
        test-responses.json  held-out entries with the model's responses before and after
        metrics.json         held-out scores per task family, before and after, timings
        model.pth            the fine-tuned model's state_dict
        checkpoint.pt        model + optimizer + step, for --resume

Every error a user can cause (a malformed data file, an unknown model, a missing
weights folder) exits with status 2 and one message, before anything is written.

Several processes (GPUs, or CPU cores): `torchrun --nproc_per_node N -m ftlib
finetune ...` runs the same job with DistributedDataParallel (ftlib/distributed.py);
rank 0 alone prints and writes the run folder.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ftlib.errors import ConfigError, FtlibError

# Settings that differ between a model trained from scratch and pretrained GPT-2.
# - tiny: random weights learn fast with lr 1e-3, warm-up and cosine decay, and
#   need the prompt masked so every update teaches the response;
# - GPT-2: the chapter's lr 5e-5 and weight decay 0.1 keep pretrained weights close
#   to where they were; the chapter does not mask the prompt.
MODEL_DEFAULTS = {
    "tiny": {"lr": 1e-3, "epochs": 20, "batch_size": 16, "mask_prompt": True,
             "weight_decay": 0.1, "warmup_cosine": True, "allowed_max_length": 256},
    "gpt2": {"lr": 5e-5, "epochs": 2, "batch_size": 8, "mask_prompt": False,
             "weight_decay": 0.1, "warmup_cosine": False, "allowed_max_length": 1024},
}

LEARNING_GOAL = 0.75  # held-out exact match the default offline run must reach


def add_finetune_options(ft):
    """The options of `finetune` (on an argparse parser)."""
    data = ft.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, help="a JSON file in the chapter's format")
    data.add_argument("--dataset", choices=["bundled", "chapter"], default="bundled",
                      help="bundled (offline, default) or the chapter's 1100 entries (downloads)")
    ft.add_argument("--model", default="tiny",
                    help='"tiny" (random init, offline) or e.g. "gpt2-medium (355M)"')
    ft.add_argument("--weights-dir", type=Path,
                    help="folder with downloaded GPT-2 checkpoints (default: gpt2/, downloads)")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--lr", type=float)
    ft.add_argument("--allowed-max-length", type=int)
    ft.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                    help="ignore targets inside the prompt (default: on for tiny, off for GPT-2)")
    ft.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    ft.add_argument("--seed", type=int, default=123)
    ft.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder")
    ft.add_argument("--max-new-tokens", type=int, default=48,
                    help="longest response generated when evaluating")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")
    ft.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ft.add_argument("--batching", choices=["random", "length", "packed"], default="packed",
                    help="random: the chapter's padded batches; length: length-grouped batches; "
                         "packed (default): the same batches as random, packed without padding")
    ft.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast and TF32 matmuls (default: on with CUDA, off elsewhere)")
    ft.add_argument("--prompt-style", choices=["alpaca", "phi3"], default="alpaca",
                    help="how entries become prompts: the chapter's Alpaca style, or Phi-3's (exercise 7.1)")
    ft.add_argument("--max-train-entries", type=int,
                    help="train on only the first N training entries (exercise 7.3: what does data buy?)")
    ft.add_argument("--lora-rank", type=int,
                    help="train LoRA adapters of this rank instead of all weights (exercise 7.4)")
    ft.add_argument("--lora-alpha", type=float, default=16.0,
                    help="LoRA scaling alpha (default 16, as in the book)")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ftlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="instruction fine-tuning, end to end")
    add_finetune_options(ft)

    ex = sub.add_parser("export-hf", help="export a run folder to a Hugging Face GPT-2 folder")
    ex.add_argument("run_dir", type=Path, help="a run folder of `finetune` (config.json, model.pth)")
    ex.add_argument("out_dir", type=Path, help="the folder to write (replaced if it exists)")
    return parser


def _check_positive(args):
    for name in ("epochs", "max_steps", "batch_size", "allowed_max_length", "max_new_tokens",
                 "lora_rank", "max_train_entries"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if not args.lora_alpha > 0:
        raise ConfigError(f"--lora-alpha must be positive, got {args.lora_alpha}")


def resolve_settings(args):
    """Merge the per-model defaults with what the user gave; validate early."""
    from ftlib.model import TINY_NAME, get_config

    _check_positive(args)
    cfg = get_config(args.model)  # ConfigError lists the known models
    kind = "tiny" if args.model == TINY_NAME else "gpt2"
    settings = dict(MODEL_DEFAULTS[kind])
    settings["prompt_style"] = args.prompt_style
    for key in ("lr", "epochs", "batch_size", "mask_prompt", "allowed_max_length"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["allowed_max_length"] = min(settings["allowed_max_length"], cfg["context_length"])
    if args.weights_dir is not None and kind == "gpt2" and not args.weights_dir.is_dir():
        raise ConfigError(f"--weights-dir {args.weights_dir}: no such folder")
    return cfg, kind, settings


def load_data(args, log):
    from ftlib.data import (BUNDLED_DATA_PATH, CHAPTER_DATA_URL, download_and_load_file,
                            load_instruction_data)

    if args.data is not None:
        return str(args.data), load_instruction_data(args.data)
    if args.dataset == "chapter":
        path = Path("data/downloads/instruction-data.json")
        log(f"Chapter dataset: {CHAPTER_DATA_URL} -> {path}")
        return "chapter", download_and_load_file(path, CHAPTER_DATA_URL)
    return "bundled", load_instruction_data(BUNDLED_DATA_PATH)


def build_model(args, cfg, kind, device, log):
    from ftlib.model import GPTModel

    model = GPTModel(cfg)
    if kind == "gpt2":
        from ftlib.weights import download_and_load_gpt2, load_weights_into_gpt

        size = args.model.split(" ")[-1].strip("()")
        models_dir = args.weights_dir or Path("gpt2")
        _, params = download_and_load_gpt2(model_size=size, models_dir=models_dir)
        load_weights_into_gpt(model, params)
        log(f"Loaded OpenAI's pretrained {args.model} from {models_dir}")
    else:
        log("Model: tiny GPT, random initial weights (trained from scratch here)")
    if args.lora_rank is not None:
        from ftlib.lora import add_lora

        total = sum(p.numel() for p in model.parameters())
        trainable = add_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
        log(f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g}: {trainable:,} trainable "
            f"parameters (the {total:,} of the model are frozen)")
    return model.to(device)


def make_loaders(train, val, tokenizer, settings, device, seed, batching="packed", rank=0,
                 world_size=1):
    """Training and validation loaders; with `world_size` > 1 the training loader
    yields this process's share of each batch (the validation loader stays whole)."""
    from ftlib.batching import make_loader
    from ftlib.data import InstructionDataset

    def loader(entries, shuffle, **shards):
        dataset = InstructionDataset(entries, tokenizer, style=settings["prompt_style"])
        items = dataset.with_prompt_lengths() if settings["mask_prompt"] else dataset
        return make_loader(items, settings["batch_size"], batching=batching, shuffle=shuffle,
                           seed=seed, allowed_max_length=settings["allowed_max_length"],
                           device=device, **shards)

    return loader(train, True, rank=rank, world_size=world_size), loader(val, False)


def _quiet(*args, **kwargs):
    """The `log` of processes other than rank 0: they print nothing."""


def run_finetune(args, log=print):
    """The main job. Returns the metrics dict that it also writes to metrics.json.

    Under torchrun (`torchrun --nproc_per_node N -m ftlib finetune ...`, see
    ftlib/distributed.py) each process trains on its share of every batch; rank 0
    alone logs, generates the held-out responses, writes the run folder and
    returns the metrics (the others return None). The process group is left at
    the end, also after an error.
    """
    from ftlib.distributed import (cleanup_distributed, init_distributed, is_main_process,
                                   launched_by_torchrun)

    if not launched_by_torchrun():
        return _finetune(args, log)
    device = init_distributed(args.device)
    try:
        return _finetune(args, log if is_main_process() else _quiet, device)
    finally:
        cleanup_distributed()


def _finetune(args, log, device=None):
    """`run_finetune` in this process; `device` is given under torchrun."""
    from ftlib import set_seed
    from ftlib.data import format_input, split_data
    from ftlib.device import get_device
    from ftlib.distributed import (is_distributed, is_main_process, main_process_first, rank,
                                   world_size, wrap_model)
    from ftlib.evaluate import (format_scores, generate_responses, save_model,
                                save_responses, score_responses)
    from ftlib.fileio import atomic_write_json
    from ftlib.tokenizer import get_gpt2_tokenizer
    from ftlib.train import (ModelWithLoss, autocast_dtype_for, enable_tf32, load_checkpoint,
                             make_optimizer, plot_losses, train_model_simple,
                             warmup_cosine_schedule)

    main = is_main_process()  # True in a single process
    n_proc = world_size()
    # Rank 0 checks the settings and downloads (data, weights) first; the others
    # then read what it fetched, or stop quietly if it failed.
    with main_process_first():
        cfg, kind, settings = resolve_settings(args)
        if device is None:
            device = get_device(args.device)
        dataset_name, data = load_data(args, log)
        set_seed(args.seed)
        train, test, val = split_data(data)
        if args.max_train_entries is not None:
            train = train[:args.max_train_entries]
        log(f"Data: {dataset_name}: {len(train)} train, {len(val)} validation, {len(test)} test entries")
        if len(train) < settings["batch_size"]:
            raise ConfigError(f"only {len(train)} training entries for batch size {settings['batch_size']}")
        if settings["batch_size"] % n_proc:
            raise ConfigError(f"batch size {settings['batch_size']} cannot be shared evenly by {n_proc} "
                              f"processes; choose a multiple of {n_proc} (--batch-size)")
        checkpoint_path = args.out / "checkpoint.pt"
        if args.resume and not checkpoint_path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {checkpoint_path}")

        tokenizer = get_gpt2_tokenizer()
        model = build_model(args, cfg, kind, device, log)
    train_loader, val_loader = make_loaders(train, val, tokenizer, settings, device, args.seed,
                                            batching=args.batching, rank=rank(), world_size=n_proc)
    eval_train_loader = None
    if n_proc > 1:  # whole batches, so rank 0 measures the training loss as one process would
        eval_train_loader, _ = make_loaders(train, val, tokenizer, settings, device, args.seed,
                                            batching=args.batching)
    progress = not args.no_progress and main
    gen = dict(tokenizer=tokenizer, device=device, max_new_tokens=args.max_new_tokens, progress=progress,
               style=settings["prompt_style"])

    before_responses = before = None
    with main_process_first():  # rank 0 generates; the others wait for it
        if main:
            log("Responses on the held-out test entries before fine-tuning ...")
            before_responses = generate_responses(model, test, **gen)
            before = score_responses(before_responses)

    optimizer = make_optimizer(model, lr=settings["lr"], weight_decay=settings["weight_decay"])
    mixed = device.type == "cuda" if args.mixed_precision is None else args.mixed_precision
    enable_tf32(device, mixed)
    autocast_dtype = autocast_dtype_for(device, bf16=mixed)
    total_steps = len(train_loader) * settings["epochs"]
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    scheduler = warmup_cosine_schedule(optimizer, total_steps) if settings["warmup_cosine"] else None
    resume_state = None
    if args.resume:
        resume_state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, map_location=device)
        log(f"Resuming after step {resume_state['step']}")
    # Under torchrun: DDP around the model and its loss (the optimizer keeps the same parameters).
    train_model = wrap_model(ModelWithLoss(model), device) if is_distributed() else model
    where = f"{n_proc} processes ({device.type})" if n_proc > 1 else f"{device}"

    log(f"Fine-tuning {args.model} on {where}: {settings['epochs']} epochs, "
        f"batch {settings['batch_size']}, lr {settings['lr']}, mask prompt {settings['mask_prompt']}")
    start = time.perf_counter()
    train_losses, val_losses, tokens_seen = train_model_simple(
        train_model, train_loader, val_loader, optimizer, device,
        num_epochs=settings["epochs"], eval_freq=max(1, total_steps // 20), eval_iter=5,
        start_context=format_input(val[0], settings["prompt_style"]), tokenizer=tokenizer, scheduler=scheduler,
        max_steps=args.max_steps, grad_clip=1.0, progress=progress, print_samples=False,
        checkpoint_path=checkpoint_path, checkpoint_every=max(1, total_steps // 10),
        resume_state=resume_state, log=log, autocast_dtype=autocast_dtype,
        eval_train_loader=eval_train_loader)
    train_time = time.perf_counter() - start

    # Rank 0 generates, scores and writes the run folder; the others wait for it.
    with main_process_first():
        if not main:
            return None
        log("Responses on the held-out test entries after fine-tuning ...")
        responses = generate_responses(model, test, **gen)
        after = score_responses(responses)
        for entry, old in zip(responses, before_responses):
            entry["model_response_before"] = old["model_response"]

        args.out.mkdir(parents=True, exist_ok=True)
        steps_done = len(train_loader) * settings["epochs"] if args.max_steps is None else total_steps
        epochs_seen = ([settings["epochs"] * t / max(1, tokens_seen[-1]) for t in tokens_seen]
                       if tokens_seen else [])
        if train_losses:
            import matplotlib.pyplot as plt

            figure = plot_losses(epochs_seen, tokens_seen, train_losses, val_losses,
                                 path=args.out / "loss-plot.png")
            plt.close(figure)  # saved; in Jupyter, do not show it under the cell too
        save_responses(responses, args.out / "test-responses.json")
        if args.lora_rank is not None:
            from ftlib.lora import merge_lora

            merge_lora(model)  # model.pth is a plain GPTModel state_dict either way
        save_model(model, args.out / "model.pth")
        processes = {"world_size": n_proc} if n_proc > 1 else {}
        atomic_write_json(args.out / "config.json", {
            "model": args.model, "model_config": cfg, "dataset": dataset_name, "seed": args.seed,
            **settings, "max_steps": args.max_steps, "device": str(device), **processes,
            "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha if args.lora_rank else None})
        metrics = {
            "model": args.model,
            "dataset": dataset_name,
            "device": str(device),
            **processes,
            "n_train": len(train), "n_val": len(val), "n_test": len(test),
            "steps": steps_done,
            "train_time_s": round(train_time, 2),
            "tokens_per_s": round((tokens_seen[-1] if tokens_seen else 0) / max(train_time, 1e-9), 1),
            "final_train_loss": train_losses[-1] if train_losses else None,
            "final_val_loss": val_losses[-1] if val_losses else None,
            "held_out_exact_match_before": before["overall"]["exact_match"],
            "held_out_exact_match_after": after["overall"]["exact_match"],
            "before": before,
            "after": after,
        }
        if kind == "tiny" and dataset_name == "bundled":
            metrics["learning_goal"] = {"held_out_exact_match_at_least": LEARNING_GOAL,
                                        "met": after["overall"]["exact_match"] >= LEARNING_GOAL}
        atomic_write_json(args.out / "metrics.json", metrics)
        log(format_scores(after))
        log(f"Held-out exact match: {before['overall']['exact_match']:.1%} before, "
            f"{after['overall']['exact_match']:.1%} after fine-tuning "
            f"({train_time:.0f} s of training). Run folder: {args.out}")
        return metrics


def _torchrun_rank():
    """RANK when torchrun started this process, else 0 (read from the environment:
    the process group may be gone by the time an error is reported)."""
    from ftlib.distributed import launched_by_torchrun

    value = os.environ.get("RANK", "0") if launched_by_torchrun() else "0"
    return int(value) if value.isdigit() else 0


def _report_error(exc):
    """One line on stderr. Under torchrun rank 0 speaks for all; another process
    prints only an error of its own (prefixed with its rank), not rank 0's echo."""
    from ftlib.distributed import MainProcessFailed

    rank = _torchrun_rank()
    if rank == 0:
        print(f"error: {exc}", file=sys.stderr)
    elif not isinstance(exc, MainProcessFailed):
        print(f"[rank {rank}] error: {exc}", file=sys.stderr)


def finetune(log=print, **options):
    """The main job from Python: `finetune(epochs=6, prompt_style="phi3")` -> metrics dict.

    Keywords are the command line's options with underscores (`mask_prompt=False`
    for `--no-mask-prompt`, `out="runs/x"` for `--out runs/x`); None leaves an
    option at its default. `log=None` runs quietly. Errors are raised (FtlibError),
    not turned into an exit status.

    >>> metrics = finetune(epochs=6, out="runs/short", no_progress=True, log=None)
    >>> metrics["held_out_exact_match_after"]

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    parser = argparse.ArgumentParser(prog="finetune()", exit_on_error=False)
    add_finetune_options(parser)
    known = {action.dest: action for action in parser._actions}
    argv = []
    for key, value in options.items():
        if key not in known or key == "help":
            raise ConfigError(f"finetune() has no option {key!r}; see `python -m ftlib finetune --help`")
        flag = known[key].option_strings[0]
        if value is None:
            continue
        if isinstance(value, bool):
            if isinstance(known[key], argparse.BooleanOptionalAction):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"finetune(): {exc}") from None
    if unknown:
        raise ConfigError(f"finetune(): cannot pass {' '.join(unknown)}")
    return run_finetune(args, log=log if log is not None else _quiet)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "finetune":
            run_finetune(args)
        elif args.command == "export-hf":
            from ftlib.export import main_export

            main_export(args.run_dir, args.out_dir)
    except FtlibError as exc:
        _report_error(exc)
        return 2
    except KeyboardInterrupt:
        if _torchrun_rank() == 0:
            print("\nStopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
