"""The settings of a run, in one place: the models a run can start from (`MODELS`),
`RunConfig` (python -m ftlib finetune) and `DPOConfig` (python -m ftlib dpo).

Every field carries its help (and its choices): the CLI's options are made from them
(ftlib/cli.py), so a field and its flag cannot drift apart. `check_config` is the one
validator of both; `resolve_config` fills in a run's model defaults. Plain Python, no
torch: `python -m ftlib --help` stays instant.

Not in a notebook: the helpers that make and check the settings (`setting`, `option`,
`field_type`, `model_entry`, `config_json`); the notebooks use RunConfig itself.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ftlib.plumbing.errors import ConfigError

# --- the models ----------------------------------------------------------------------

# The chapter's settings shared by every OpenAI GPT-2 size.
BASE_CONFIG = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # GPT-2 was trained with 1024 positions
    "drop_rate": 0.0,        # no dropout when fine-tuning, as in the chapter
    "qkv_bias": True,        # OpenAI's checkpoints have query/key/value biases
}

model_configs = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}

# A model small enough to train from scratch on a laptop CPU in minutes. It keeps
# GPT-2's real vocabulary (so the real tokenizer and data path are used unchanged);
# at this width the 50257-way output layer is most of the compute.
TINY_CONFIG = {
    "vocab_size": 50257,
    "context_length": 256,   # the bundled data's longest example is far shorter
    "emb_dim": 128,
    "n_heads": 4,            # head size 32
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}
TINY_NAME = "tiny"
# The pretrained base that ships with the repository (models/gpt2-tiny-base/, made by
# `make pretrain`): the tiny model's shape, with query/key/value biases as OpenAI's
# GPT-2 has them, so it round-trips exactly through OpenAI's checkpoint layout.
TINY_BASE_NAME = "gpt2-tiny-base"
TINY_BASE_CONFIG = {**TINY_CONFIG, "qkv_bias": True}

# Training settings that differ between the tiny models and pretrained GPT-2.
# - the tiny base and the tiny model from scratch: a model this small learns the
#   format fast with lr 1e-3, warm-up and cosine decay, and needs the prompt masked so
#   every update teaches the response (from the base, lr 3e-4 for 10 epochs was worse
#   in every task family: 37 % held-out exact match against 80 %);
# - GPT-2: the chapter's lr 5e-5 (and no schedule) keeps pretrained weights close to
#   where they were; the chapter does not mask the prompt.
TINY_DEFAULTS = {"lr": 1e-3, "epochs": 20, "batch_size": 16, "mask_prompt": True,
                 "warmup_cosine": True, "allowed_max_length": 256}
GPT2_DEFAULTS = {"lr": 5e-5, "epochs": 2, "batch_size": 8, "mask_prompt": False,
                 "warmup_cosine": False, "allowed_max_length": 1024}


@dataclass(frozen=True)
class ModelEntry:
    """One model a run can start from. `kind`: "base" (the committed pretrained base),
    "scratch" (random weights) or "gpt2" (OpenAI's pretrained weights, downloaded:
    `download` is the checkpoint's size name)."""

    kind: str
    config: dict
    defaults: dict
    download: str = None


# The one table of models: name -> ModelEntry.
MODELS = {
    TINY_BASE_NAME: ModelEntry("base", TINY_BASE_CONFIG, TINY_DEFAULTS),
    TINY_NAME: ModelEntry("scratch", TINY_CONFIG, TINY_DEFAULTS),
    **{name: ModelEntry("gpt2", {**BASE_CONFIG, **sizes}, GPT2_DEFAULTS,
                        download=name.split(" ")[-1].strip("()"))  # "gpt2-medium (355M)" -> "355M"
       for name, sizes in model_configs.items()},
}


# Other names of the OpenAI GPT-2 sizes: the short names, the sizes alone and Hugging
# Face's repository names. Each means its canonical name (the key of MODELS), which
# is what a run records.
MODEL_ALIASES = {
    **dict.fromkeys(("gpt2", "gpt2-small", "124M", "openai-community/gpt2"), "gpt2-small (124M)"),
    **dict.fromkeys(("gpt2-medium", "355M", "openai-community/gpt2-medium"), "gpt2-medium (355M)"),
    **dict.fromkeys(("gpt2-large", "774M", "openai-community/gpt2-large"), "gpt2-large (774M)"),
    **dict.fromkeys(("gpt2-xl", "1558M", "openai-community/gpt2-xl"), "gpt2-xl (1558M)"),
}
# Hugging Face's repository of each size's weights (its model.safetensors), by OpenAI's size.
GPT2_HF_REPOS = {"124M": "openai-community/gpt2", "355M": "openai-community/gpt2-medium",
                 "774M": "openai-community/gpt2-large", "1558M": "openai-community/gpt2-xl"}
# Where an OpenAI GPT-2 size's weights come from (RunConfig.weights_source).
WEIGHTS_SOURCES = ("safetensors", "tensorflow")


def model_name(name):
    """The canonical name (a key of `MODELS`) of a model's name or alias:
    "gpt2-medium" -> "gpt2-medium (355M)". ConfigError listing the names and the
    aliases otherwise.

    Not in a notebook: how RunConfig's `model` and `get_config` read a name.
    """
    if isinstance(name, str) and name in MODELS:
        return name
    if isinstance(name, str) and name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    allowed = ", ".join(repr(n) for n in MODELS)
    raise ConfigError(f"unknown model {name!r}; choose one of: {allowed}; "
                      f"or an alias: {', '.join(MODEL_ALIASES)}")


def model_entry(name):
    """The `MODELS` entry of `name` (or of an alias); ConfigError listing the known
    models and aliases otherwise."""
    return MODELS[model_name(name)]


def get_config(name):
    """The full GPTModel config dict of a model of `MODELS` (a copy); `name` may be
    an alias ("gpt2-medium").

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    return dict(model_entry(name).config)


# --- choices that the data and batching modules share --------------------------------

PROMPT_STYLES = ("alpaca", "phi3")
BATCHING_STRATEGIES = ("random", "length", "packed")
DATASETS = ("bundled", "chapter")
# The one default length of a generated answer: the chapter's sample length. The
# bundled answers are a few tokens, and generation stops at <|endoftext|> anyway.
MAX_NEW_TOKENS = 50


def setting(default, help, choices=None, flag=None, minimum=None):
    """A config field with its help: what the CLI shows for it (`choices` limit it,
    `flag` overrides its option name, `minimum` is the smallest allowed value)."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "flag": flag, "minimum": minimum})


@dataclass
class RunConfig:
    """Every setting of a fine-tuning run. None means "the model's default"
    (`MODELS`); `resolve_config` fills those in and checks every value.

    Introduced in: notebooks/06_finetuning.ipynb
    """

    # data
    data: Path = setting(None, "a JSON file in the chapter's format (default: --dataset)")
    dataset: str = setting("bundled", "bundled (offline) or the chapter's 1100 entries (downloads)",
                           DATASETS)
    prompt_style: str = setting("alpaca", "the chapter's Alpaca prompt, or Phi-3's (exercise 7.1)",
                                PROMPT_STYLES)
    max_train_entries: int = setting(None, "train on the first N training entries only (exercise 7.3; "
                                       "default: all)")
    # model
    # no `choices`: the names are checked by `model_name`, which also accepts the aliases
    model: str = setting(TINY_BASE_NAME, "the committed pretrained base (offline), 'tiny' (random "
                         "weights) or an OpenAI GPT-2 size (downloads); one of: "
                         + ", ".join(f'"{n}"' if " " in n else n for n in MODELS)
                         + "; aliases are accepted: " + ", ".join(MODEL_ALIASES))
    weights_dir: Path = setting(None, "where GPT-2's weights are downloaded, a folder per size "
                                "(default: gpt2/)")
    weights_source: str = setting("safetensors", "an OpenAI GPT-2 size's weights: Hugging Face's "
                                  "model.safetensors, or OpenAI's TensorFlow checkpoint (the "
                                  "chapter's; needs tensorflow)", WEIGHTS_SOURCES)
    lora_rank: int = setting(None, "train LoRA adapters of this rank instead of all weights "
                             "(exercise 7.4; default: none, all weights train)")
    lora_alpha: float = setting(16.0, "LoRA scaling alpha (the book's)")
    # training
    epochs: int = setting(None, "passes over the training entries")
    max_steps: int = setting(None, "stop after this many optimizer steps (default: at the "
                             "end of the last epoch)")
    batch_size: int = setting(None, "entries per batch")
    lr: float = setting(None, "AdamW's learning rate")
    weight_decay: float = setting(0.1, "AdamW's weight decay (the chapter's)", minimum=0)
    allowed_max_length: int = setting(None, "cut longer entries to this many tokens "
                                      "(at most the model's context)")
    mask_prompt: bool = setting(None, "ignore the targets inside the prompt")
    warmup_cosine: bool = setting(None, "warm-up and cosine decay of the learning rate")
    batching: str = setting("packed", "random: the chapter's padded batches; length: "
                            "length-grouped; packed: random's batches without padding",
                            BATCHING_STRATEGIES)
    mixed_precision: bool = setting(None, "bf16 autocast (and TF32 on CUDA); default: on with "
                                    "CUDA or a CPU with bfloat16 units, off elsewhere")
    grad_clip: float = setting(1.0, "max gradient norm: one bad batch cannot throw the model off")
    device: str = setting(None, "cpu, cuda or mps (default: the best available)")
    seed: int = setting(123, "the random seed (the chapter's)", minimum=0)
    # evaluation and output
    eval_points: int = setting(20, "losses recorded about this many times per run")
    eval_iter: int = setting(5, "batches per loss estimate")
    checkpoints: int = setting(10, "checkpoints written per run (the last one kept)")
    max_new_tokens: int = setting(MAX_NEW_TOKENS, "longest response generated when evaluating")
    out: Path = setting(Path("runs/latest"), "the run folder to write")
    resume: bool = setting(False, "continue from OUT/checkpoint.pt")
    progress: bool = setting(True, "progress bars")
    tensorboard: bool = setting(False, "also write the training log (OUT/history.jsonl) as "
                                "TensorBoard event files in OUT/tensorboard/ (pip install tensorboard)")


@dataclass
class DPOConfig:
    """Every setting of a DPO run (`python -m ftlib dpo`).

    Not in a notebook: the CLI's settings; notebook 09 calls the pieces directly.
    """

    run: Path = setting(Path("runs/latest"), "the fine-tuned run folder to start from")
    out: Path = setting(Path("runs/dpo"), "the run folder to write")
    data: Path = setting(None, "preference pairs: the chapter's fields plus 'chosen' and "
                         "'rejected' (default: data/preference-data.json)")
    beta: float = setting(0.1, "how far the model may move from the reference")
    nll_weight: float = setting(1.0, "weight of the fine-tuning loss on the chosen responses, "
                                "added to DPO's (0: DPO alone)", minimum=0)
    lr: float = setting(3e-4, "AdamW's learning rate")
    epochs: int = setting(1, "passes over the training pairs")
    batch_size: int = setting(8, "pairs per batch")
    max_train_pairs: int = setting(None, "train on the first N training pairs only (default: all)")
    max_new_tokens: int = setting(24, "longest response generated when evaluating "
                                  "('The answer is' and '.' add 4 tokens)")
    seed: int = setting(123, "the random seed", minimum=0)
    device: str = setting(None, "cpu, cuda or mps (default: the best available)")
    progress: bool = setting(True, "progress bars")
    tensorboard: bool = setting(False, "also write the training log (OUT/history.jsonl) as "
                                "TensorBoard event files in OUT/tensorboard/ (pip install tensorboard)")
    skip_unusable_pairs: bool = setting(True, "skip an unusable pair (chosen and rejected "
                                        "identical, one empty, longer than the model's "
                                        "context); off: refuse the file")


def option(name):
    """The CLI option of a field: "batch_size" -> "--batch-size"."""
    return f"--{name.replace('_', '-')}"


def field_type(f):
    """A field's type (its annotation): Path, str, int, float or bool."""
    return {"Path": Path, "str": str, "int": int, "float": float, "bool": bool}.get(
        f.type if isinstance(f.type, str) else f.type.__name__, f.type)


def check_config(config):
    """Raise ConfigError, naming the option, for a value of the wrong type or out of
    range, or not among its field's choices. None is "the default" and always passes.

    Not in a notebook: run by `resolve_config` and the DPO job before any work.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, meta = field_type(f), f.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            choices = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{option(f.name)}: unknown value {value!r}; choose one of: {choices}")
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{option(f.name)} must be true or false, got {value!r}")
        if kind is int:
            low = 1 if meta.get("minimum") is None else meta["minimum"]
            if not isinstance(value, int) or isinstance(value, bool) or value < low or value >= 2**64:
                raise ConfigError(f"{option(f.name)} must be a whole number of at least {low}, "
                                  f"got {value!r}")
        if kind is float:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if meta.get("minimum") == 0:
                if not (number and 0 <= value < math.inf):
                    raise ConfigError(f"{option(f.name)} must be a finite number of at least 0, "
                                      f"got {value!r}")
            elif not (number and 0 < value < math.inf):
                raise ConfigError(f"{option(f.name)} must be a positive, finite number, got {value!r}")
        if kind is Path and not isinstance(value, (str, Path)):
            raise ConfigError(f"{option(f.name)} must be a path, got {value!r}")
    if getattr(config, "model", None) is not None:  # RunConfig's: a name of MODELS or an alias
        try:
            model_name(config.model)
        except ConfigError as exc:
            raise ConfigError(f"{option('model')}: {exc}") from None


def resolve_config(config):
    """A copy of `config` with the model's canonical name (for an alias) and defaults
    filled in; raises ConfigError on a bad value, an unknown model or a missing
    weights folder, before any work.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    check_config(config)
    config = dataclasses.replace(config, model=model_name(config.model))  # an alias: its name
    entry = model_entry(config.model)
    if config.lora_rank is not None and config.lora_rank > entry.config["emb_dim"]:
        # a rank above the layers' width adds parameters and memory, not expressiveness
        raise ConfigError(f"--lora-rank must be at most {entry.config['emb_dim']} (the width of "
                          f"{config.model}), got {config.lora_rank}")
    if config.weights_dir is not None and entry.download and not Path(config.weights_dir).is_dir():
        raise ConfigError(f"--weights-dir {config.weights_dir}: no such folder")
    filled = {key: value for key, value in entry.defaults.items() if getattr(config, key) is None}
    resolved = dataclasses.replace(config, **filled, out=Path(config.out))
    resolved.allowed_max_length = min(resolved.allowed_max_length, entry.config["context_length"])
    return resolved


def config_json(config):
    """The fields of a config as JSON values (paths as strings)."""
    return {key: (str(value) if isinstance(value, Path) else value)
            for key, value in dataclasses.asdict(config).items()}
