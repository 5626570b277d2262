"""Command line: `python -m ftlib finetune [options]`, `python -m ftlib dpo [options]`
and `python -m ftlib export-hf RUN OUT`.

The CLI only parses arguments into a `RunConfig` (ftlib/pipeline.py, where every
default lives) and calls `finetune(config)`, or into a `DPOConfig` (ftlib/dpo.py)
for `preference_tune(config)`. An error a user can cause exits with
status 2 and one line, without a traceback.

Not in a notebook: the command line itself; notebooks call ftlib.pipeline directly.
"""

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from ftlib.errors import FtlibError

# torch (through ftlib.pipeline) is imported only to run a command: `--help` is instant.


def add_finetune_options(ft):
    """The options of `finetune`: one per `RunConfig` field, defaults left to RunConfig."""
    data = ft.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, help="a JSON file in the chapter's format")
    data.add_argument("--dataset", choices=["bundled", "chapter"],
                      help="bundled (offline, default) or the chapter's 1100 entries (downloads)")
    ft.add_argument("--model", help='"gpt2-tiny-base" (default: the committed pretrained base, offline), '
                                     '"tiny" (random weights) or e.g. "gpt2-medium (355M)" (downloads)')
    ft.add_argument("--weights-dir", type=Path,
                    help="folder with downloaded GPT-2 checkpoints (default: gpt2/, downloads)")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--lr", type=float)
    ft.add_argument("--allowed-max-length", type=int)
    ft.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction,
                    help="ignore targets inside the prompt (default: on for the tiny models, off for GPT-2)")
    ft.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    ft.add_argument("--seed", type=int)
    ft.add_argument("--out", type=Path, help="run folder (default: runs/latest)")
    ft.add_argument("--max-new-tokens", type=int, help="longest response generated when evaluating")
    ft.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                    help="no progress bars")
    ft.add_argument("--resume", action="store_true", default=None,
                    help="continue from OUT/checkpoint.pt")
    ft.add_argument("--batching", choices=["random", "length", "packed"],
                    help="random: the chapter's padded batches; length: length-grouped batches; "
                         "packed (default): the same batches as random, packed without padding")
    ft.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                    help="bf16 autocast (and TF32 on CUDA); default: on with CUDA or a CPU "
                         "with bfloat16 units (avx512_bf16, amx_bf16), off elsewhere")
    ft.add_argument("--prompt-style", choices=["alpaca", "phi3"],
                    help="the chapter's Alpaca prompt (default), or Phi-3's (exercise 7.1)")
    ft.add_argument("--max-train-entries", type=int,
                    help="train on only the first N training entries (exercise 7.3)")
    ft.add_argument("--lora-rank", type=int,
                    help="train LoRA adapters of this rank instead of all weights (exercise 7.4)")
    ft.add_argument("--lora-alpha", type=float, help="LoRA scaling alpha (default 16, as in the book)")


def add_dpo_options(dpo):
    """The options of `dpo`: one per `DPOConfig` field, defaults left to DPOConfig."""
    dpo.add_argument("--run", type=Path, help="the fine-tuned run folder to start from (default runs/latest)")
    dpo.add_argument("--out", type=Path, help="run folder to write (default runs/dpo)")
    dpo.add_argument("--data", type=Path,
                     help="preference pairs: the chapter's fields plus 'chosen' and 'rejected' "
                          "(default: data/preference-data.json)")
    dpo.add_argument("--beta", type=float, help="how far the model may move from the reference")
    dpo.add_argument("--lr", type=float)
    dpo.add_argument("--epochs", type=int)
    dpo.add_argument("--batch-size", type=int, help="pairs per batch")
    dpo.add_argument("--max-train-pairs", type=int, help="train on the first N training pairs only")
    dpo.add_argument("--max-new-tokens", type=int, help="longest response generated when evaluating")
    dpo.add_argument("--seed", type=int)
    dpo.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    dpo.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="no progress bars")
    dpo.add_argument("--strict-pairs", dest="skip_unusable_pairs", action="store_false", default=None,
                     help="refuse a preference file with an unusable pair (chosen and rejected "
                          "identical, one empty, longer than the model's context) instead of "
                          "skipping such pairs")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ftlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_finetune_options(sub.add_parser("finetune", help="instruction fine-tuning, end to end"))
    add_dpo_options(sub.add_parser("dpo", help="preference tuning (DPO) of a fine-tuned run"))
    ex = sub.add_parser("export-hf", help="export a run folder to a Hugging Face GPT-2 folder")
    ex.add_argument("run_dir", type=Path, help="a run folder of `finetune` (config.json, model.pth)")
    ex.add_argument("out_dir", type=Path, help="the folder to write (replaced if it exists)")
    return parser


def config_from_args(args, config_class=None):
    """The `RunConfig` (or `DPOConfig`) of parsed arguments: what was given, the rest default."""
    if config_class is None:
        from ftlib.pipeline import RunConfig as config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{key: value for key, value in vars(args).items()
                           if key in fields and value is not None})


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

    process = _torchrun_rank()
    if process == 0:
        print(f"error: {exc}", file=sys.stderr)
    elif not isinstance(exc, MainProcessFailed):
        print(f"[rank {process}] error: {exc}", file=sys.stderr)


def _import_torch_whole():
    """Import torch with Ctrl-C (SIGINT) held back: an import cut in the middle leaves
    torch half-made (a crash or a traceback instead of "Stopped."); a Ctrl-C pressed
    meanwhile arrives right after. Unix only (elsewhere it is a plain import)."""
    hold = getattr(signal, "pthread_sigmask", None)
    if hold is not None:
        hold(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
    finally:
        if hold is not None:
            hold(signal.SIG_UNBLOCK, {signal.SIGINT})


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _import_torch_whole()
        if args.command == "finetune":
            from ftlib.pipeline import finetune

            finetune(config_from_args(args))
        elif args.command == "dpo":
            from ftlib.dpo import DPOConfig, preference_tune

            preference_tune(config_from_args(args, DPOConfig))
        elif args.command == "export-hf":
            from ftlib.export import main_export

            main_export(args.run_dir, args.out_dir)
    except FtlibError as exc:
        _report_error(exc)
        return 2
    except KeyboardInterrupt:
        if _torchrun_rank() == 0:
            with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                print("\nStopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
