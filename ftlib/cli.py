"""Command line: `python -m ftlib finetune | dpo | export-hf | export-gguf | chat`.

    python -m ftlib finetune [options]        instruction fine-tuning, end to end
    python -m ftlib dpo [options]             preference tuning (DPO) of a fine-tuned run
    python -m ftlib export-hf RUN OUT         a run folder -> a Hugging Face GPT-2 folder
    python -m ftlib export-gguf RUN OUT       a run folder -> GGUF (llama.cpp, Ollama) + Modelfile
    python -m ftlib chat [RUN]                talk to a run's model in the terminal, answers streamed

The options of `finetune` and `dpo` are made from the fields of `RunConfig` and
`DPOConfig` (ftlib/config.py, where every setting, its help and its default live):
one option per field, so no setting lacks a flag and no flag drifts from its field.
The CLI parses them into a config, optionally on top of an earlier run's
config.json (`--config`), and calls `finetune(config)` or `preference_tune(config)`,
or prints the resolved settings (`--print-config`); a finished run then prints the
commands of its next steps (chat, export, DPO). An error a user can cause, a
mistyped option included, exits with status 2 and one line, without a traceback.

Not in a notebook: the command line itself; notebooks call ftlib.pipeline directly.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

from ftlib.config import (GPT2_DEFAULTS, MAX_NEW_TOKENS, TINY_DEFAULTS, DPOConfig, RunConfig,
                          check_config, config_json, field_type, model_entry, option, resolve_config)
from ftlib.plumbing.envcheck import check_bundled_files
from ftlib.plumbing.errors import ConfigError, FtlibError

# torch (through ftlib.pipeline) is imported only to run a command: `--help` and
# `--print-config` are instant. ftlib.config is plain Python.

# Options of a subcommand that exclude each other (a group of field names).
EXCLUSIVE = {RunConfig: [("data", "dataset")], DPOConfig: []}
# Keys of finetune's config.json that record what the run found, not what it was
# asked: "device" is the device it ran on (the setting None picks the best again),
# "resume" how it started. A re-run (`--config`) leaves them to the command line.
NOT_RERUN = {RunConfig: ("device", "resume"), DPOConfig: ()}
# What the help calls a value of each type (a string's is its field's name).
METAVARS = {int: "N", float: "X", Path: "PATH"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are ftlib's: a mistyped option raises
    ConfigError (one line, exit status 2 in `main`) instead of printing the usage.

    Not in a notebook: the command line's parser.
    """

    def error(self, message):
        raise ConfigError(f"{message} (`{self.prog} --help` lists the options)")


def _shown(value):
    """A default as the help shows it: on/off for a switch, the value otherwise."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def default_text(config_class, f):
    """What the help says of the default of field `f`: "default: 0.1", or, for a
    RunConfig setting the model's table fills in, the tiny models' and GPT-2's
    values; None for another None default (its help says what None means).

    Not in a notebook: the CLI's help.
    """
    if f.default is not None:
        return f"default: {_shown(f.default)}"
    if config_class is RunConfig and f.name in TINY_DEFAULTS:
        tiny, gpt2 = _shown(TINY_DEFAULTS[f.name]), _shown(GPT2_DEFAULTS[f.name])
        return f"default: the model's: {tiny} for the tiny models, {gpt2} for GPT-2"
    return None


def add_config_options(parser, config_class):
    """One option per field of `config_class` (RunConfig or DPOConfig): its name from
    `option` (or the field's "flag"), its type, choices and help from the field, the
    default shown in the help. argparse's default stays None, so only the options
    given override the config's defaults (or the `--config` file's values).

    Not in a notebook: the CLI's options, made from the config's fields.
    """
    groups = {}
    for names in EXCLUSIVE[config_class]:
        group = parser.add_mutually_exclusive_group()
        groups.update(dict.fromkeys(names, group))
    for f in dataclasses.fields(config_class):
        meta, kind = f.metadata, field_type(f)
        help_text = meta["help"]
        settings = {"dest": f.name, "default": None}
        if kind is bool:
            settings["action"] = argparse.BooleanOptionalAction
        else:
            settings["type"] = None if kind is str else kind
            settings["metavar"] = METAVARS.get(kind, f.name.upper())
        if meta.get("choices"):
            settings["choices"] = meta["choices"]
            settings.pop("metavar", None)  # {a,b,c}
            if not all(str(c).replace("-", "").replace("_", "").isalnum() for c in meta["choices"]):
                # names with spaces: listed in the help, not in a {...} metavar
                settings["metavar"] = "NAME"
                help_text += "; one of: " + ", ".join(
                    f'"{c}"' if " " in str(c) else str(c) for c in meta["choices"])
        shown = default_text(config_class, f)
        if shown:  # "(the book's)" -> "(the book's; default: 16.0)"
            help_text = f"{help_text[:-1]}; {shown})" if help_text.endswith(")") else f"{help_text} ({shown})"
        settings["help"] = help_text.replace("%", "%%")  # argparse %-formats help
        groups.get(f.name, parser).add_argument(meta.get("flag") or option(f.name), **settings)


def add_run_options(parser, what):
    """`--config FILE` and `--print-config`, the options of a subcommand beside its
    settings (`what`: the command whose run folder --config reads).

    Not in a notebook: the CLI's options.
    """
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"re-run a run folder of `{what}`: its config.json's settings "
                             "(FILE: the file or its folder) are the defaults, the options given "
                             "override them; give --out to write elsewhere (else the new run "
                             "replaces the old one when it finishes)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit, without training")


def build_parser():
    """The parser of `python -m ftlib`: finetune, dpo, export-hf, export-gguf and chat.

    Not in a notebook: the command line.
    """
    parser = ArgumentParser(prog="python -m ftlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="instruction fine-tuning, end to end",
                        description="Instruction fine-tuning, end to end. Every option is a "
                                    "setting of RunConfig (ftlib/config.py); one not given keeps "
                                    "its default (or the --config file's value).")
    add_config_options(ft, RunConfig)
    add_run_options(ft, "python -m ftlib finetune")
    dpo = sub.add_parser("dpo", help="preference tuning (DPO) of a fine-tuned run",
                         description="Preference tuning (DPO plus the fine-tuning loss of the "
                                     "chosen responses, notebook 09's recipe) of a fine-tuned "
                                     "run. Every option is a setting of DPOConfig "
                                     "(ftlib/config.py); one not given keeps its default (or "
                                     "the --config file's value).")
    add_config_options(dpo, DPOConfig)
    dpo.add_argument("--strict-pairs", dest="skip_unusable_pairs", action="store_false", default=None,
                     help="refuse a preference file with an unusable pair instead of skipping "
                          "such pairs (the same as --no-skip-unusable-pairs)")
    add_run_options(dpo, "python -m ftlib dpo")
    ex = sub.add_parser("export-hf", help="export a run folder to a Hugging Face GPT-2 folder")
    ex.add_argument("run_dir", type=Path, help="a run folder of `finetune` (config.json, model.pth)")
    ex.add_argument("out_dir", type=Path, help="the folder to write (replaced if it exists)")
    eg = sub.add_parser("export-gguf", help="export a run folder to GGUF (llama.cpp, Ollama) with a Modelfile")
    eg.add_argument("run_dir", type=Path, help="a run folder of `finetune` (config.json, model.pth)")
    eg.add_argument("out_dir", type=Path, help="the folder to write: model.gguf and Modelfile (replaced if it exists)")
    ch = sub.add_parser("chat", help="talk to a run folder's model in the terminal",
                        description="Talk to a run folder's model: type a question, the answer "
                                    "streams in as it is generated, in the run's prompt style. "
                                    "Each question is answered on its own (no memory of earlier "
                                    "turns). Lines piped in are answered one per line.")
    ch.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/latest"),
                    help="a run folder of `finetune` or `dpo` (default: runs/latest)")
    ch.add_argument("--temperature", type=_at_least(float, 0.0), default=0.0, metavar="X",
                    help="sampling temperature (default: 0, greedy: the same answer every time)")
    ch.add_argument("--top-k", type=_at_least(int, 1), default=None, metavar="N",
                    help="sample from the N likeliest tokens only (default: all; needs --temperature)")
    ch.add_argument("--max-new-tokens", type=_at_least(int, 1), default=MAX_NEW_TOKENS, metavar="N",
                    help=f"longest answer, in tokens (default: {MAX_NEW_TOKENS})")
    ch.add_argument("--base", action="store_true",
                    help="talk to the pretrained model the run started from, before fine-tuning "
                         "(to compare)")
    return parser


def _at_least(kind, minimum):
    """An argparse type: a value of `kind` not below `minimum` (else the parser's error)."""
    def convert(text):
        try:
            value = kind(text)
            if value != value:  # NaN
                raise ValueError(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is below {minimum:g}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its message
    return convert


def _file_value(path, config_class, f, value):
    """`value` of field `f` read from the config file `path`, as the field's type
    (a path from a string); ConfigError naming the file and the key otherwise."""
    kind = field_type(f)
    if value is None:
        return None
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{path}: {f.name!r} must be a string, got {value!r}")
    if kind is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {f.name!r} must be a path (a string), got {value!r}")
        value = Path(value)
    try:
        check_config(config_class(**{f.name: value}))  # the type and the range, as for a flag
    except ConfigError as exc:
        message, flag = str(exc), option(f.name)
        message = message[len(flag):] if message.startswith(flag) else f": {message}"
        raise ConfigError(f"{path}: {f.name!r}{message}") from None
    return float(value) if kind is float else value


def read_config_file(path, config_class):
    """The settings of a run folder's config.json (`path`: the file or its folder) as
    keyword arguments of `config_class`: the keys that are its fields (DPOConfig's
    under "dpo"), paths as Path. The keys in `NOT_RERUN`, and others that are no
    field (finetune's "model_config", "world_size"), are left out. A missing or
    malformed file, or a value of the wrong type, is a ConfigError naming the file
    (and the key).

    Not in a notebook: what `--config` reads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file (name a run folder or its config.json)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not readable JSON: {reason}") from None
    if config_class is DPOConfig:
        if not isinstance(data, dict) or "dpo" not in data:
            raise ConfigError(f"{path}: no 'dpo' settings: is it the config.json of a run of "
                              "`python -m ftlib dpo`?")
        data = data["dpo"]
        where = f"{path}: dpo"
    else:
        where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the settings must be a JSON object (name: value), "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    data = {key: value for key, value in data.items()
            if key in fields and key not in NOT_RERUN[config_class]}
    if config_class is RunConfig and data.get("data") is not None:
        data.pop("dataset", None)  # finetune writes the data file's name there, not a dataset
    return {key: _file_value(where, config_class, fields[key], value) for key, value in data.items()}


def config_from_args(args, config_class=None):
    """The `RunConfig` (or `DPOConfig`) of parsed arguments: the options given, on top
    of the `--config` file's settings (when given), the rest default. An option given
    drops the file's value of an option it excludes (`--dataset` the file's --data).

    Not in a notebook: the command line's config; notebooks build a RunConfig directly.
    """
    config_class = config_class or RunConfig
    given = {key: value for key, value in vars(args).items()
             if key in {f.name for f in dataclasses.fields(config_class)} and value is not None}
    base = {}
    if getattr(args, "config", None) is not None:
        base = read_config_file(args.config, config_class)
        for names in EXCLUSIVE[config_class]:
            if any(name in given for name in names):
                for name in names:
                    base.pop(name, None)
    return config_class(**{**base, **given})


def resolved_settings(args, config_class):
    """The settings a run of `args` would use, checked as a run checks them, as JSON
    values (what `--print-config` prints): finetune's with the model's defaults filled
    in (`resolve_config`), dpo's after `check_config`.

    Not in a notebook: `--print-config`; notebook 06 calls `resolve_config` itself.
    """
    config = config_from_args(args, config_class)
    if config_class is RunConfig:
        config = resolve_config(config)
    else:
        check_config(config)
    return config_json(config)


def bundled_files(config):
    """The repository's files a run of `config` (RunConfig or DPOConfig) would read, as
    `check_bundled_files` takes them: the bundled data without --data, the committed
    base for --model gpt2-tiny-base, the bundled preference pairs without dpo's --data.
    An unknown --model is left to the run's own error.

    Not in a notebook: the CLI's check of a non-editable install.
    """
    if isinstance(config, DPOConfig):
        from ftlib.training.dpo import PREFERENCE_DATA_PATH

        return [] if config.data is not None else [(PREFERENCE_DATA_PATH, "the bundled preference data",
                                                    "--data FILE")]
    import ftlib.data.instructions as instructions
    import ftlib.model.base as base

    needed = []
    if config.data is None and config.dataset == "bundled":
        needed.append((instructions.BUNDLED_DATA_PATH, "the bundled data", "--data FILE"))
    try:
        kind = model_entry(config.model).kind
    except ConfigError:
        kind = None
    if kind == "base":
        needed.append((base.BASE_MODEL_DIR, "the pretrained base",
                       "--model gpt2 (downloaded)"))
    return needed


def next_steps(out, dpo=False):
    """The commands to use a finished run folder `out`: chat with it, export it, and
    (after `finetune`) preference-tune it, as the text to print.

    Not in a notebook: what `python -m ftlib finetune` and `dpo` print last.
    """
    import shlex

    run = shlex.quote(str(out))
    name = Path(out).name or "run"
    sibling = lambda suffix: shlex.quote(str(Path(out).with_name(f"{name}-{suffix}")))  # noqa: E731
    steps = [(f"python -m ftlib chat {run}", "talk to it (--base: the model before fine-tuning)"),
             (f"python -m ftlib export-hf {run} {sibling('hf')}", "a Hugging Face folder"),
             (f"python -m ftlib export-gguf {run} {sibling('gguf')}", "GGUF + Modelfile for llama.cpp, Ollama")]
    if not dpo:
        steps.append((f"python -m ftlib dpo --run {run} --out {sibling('dpo')}", "preference tuning (DPO)"))
    width = max(len(command) for command, _ in steps)
    return "Next steps:\n" + "\n".join(f"  {command:<{width}}  # {what}" for command, what in steps)


def _torchrun_rank():
    """RANK when torchrun started this process, else 0 (read from the environment:
    the process group may be gone by the time an error is reported). Without torch:
    an error in the arguments comes before torch is imported, and should not wait for it."""
    # the variables of ftlib.plumbing.distributed.TORCHRUN_VARS (that module imports torch)
    launched = all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    value = os.environ.get("RANK", "0") if launched else "0"
    return int(value) if value.isdigit() else 0


def _report_error(exc):
    """One line on stderr. Under torchrun rank 0 speaks for all; another process
    prints only an error of its own (prefixed with its rank), not rank 0's echo."""
    distributed = sys.modules.get("ftlib.plumbing.distributed")  # not loaded: not its error
    echo = distributed is not None and isinstance(exc, distributed.MainProcessFailed)
    process = _torchrun_rank()
    if process == 0:
        print(f"error: {exc}", file=sys.stderr)
    elif not echo:
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
    """`python -m ftlib ...`: 0 when the command finished, 2 after an error a user can
    cause (one line on stderr), 130 after Ctrl-C.

    Not in a notebook: the command line.
    """
    try:
        args = build_parser().parse_args(argv)
        config_class = {"finetune": RunConfig, "dpo": DPOConfig}.get(args.command)
        if config_class is not None and args.print_config:
            settings = json.dumps(resolved_settings(args, config_class), indent=2, ensure_ascii=False)
            try:
                print(settings, flush=True)
            except BrokenPipeError:  # `--print-config | head`: Python's advice, no traceback at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        _import_torch_whole()
        if args.command == "finetune":
            from ftlib.pipeline import finetune

            config = config_from_args(args)
            check_bundled_files(bundled_files(config))
            if finetune(config) is not None:  # None: another process than rank 0 under torchrun
                print(next_steps(config.out), flush=True)
        elif args.command == "dpo":
            from ftlib.training.dpo import preference_tune

            config = config_from_args(args, DPOConfig)
            check_bundled_files(bundled_files(config))
            if preference_tune(config) is not None:
                print(next_steps(config.out, dpo=True), flush=True)
        elif args.command == "export-hf":
            from ftlib.model.export import main_export

            main_export(args.run_dir, args.out_dir)
        elif args.command == "export-gguf":
            from ftlib.model.gguf_export import main_export_gguf

            main_export_gguf(args.run_dir, args.out_dir)
        elif args.command == "chat":
            from ftlib.classroom.chat import main_chat

            main_chat(args.run_dir, base=args.base, temperature=args.temperature, top_k=args.top_k,
                      max_new_tokens=args.max_new_tokens)
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
