"""The committed pretrained base, models/gpt2-tiny-base/: 16-bit safetensors + config.json.

`load_base_model` is what a run starts from by default (ftlib/training/pretrain.py and
`make pretrain` made it; `save_base_model` writes it).
"""

import json
from pathlib import Path

import torch

from ftlib.model.gpt import GPTModel
from ftlib.plumbing.errors import ConfigError

BASE_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "gpt2-tiny-base"


def base_state_dict(model, used_ids=None):
    """`model`'s parameters in 16-bit, without `out_head` (it is the token embedding).

    `used_ids`: token ids to keep in the embedding; the other rows are zeroed. Rows
    of tokens the corpus never uses get no gradient in pretraining (they stay at
    their random start), and zeros compress, so the file costs git far less.

    Not in a notebook: what `make pretrain` saves (scripts/pretrain.py).
    """
    state = {name: p.detach().to(torch.float16).clone()
             for name, p in model.state_dict().items() if name != "out_head.weight"}
    if used_ids is not None:
        keep = torch.zeros(state["tok_emb.weight"].shape[0], dtype=torch.bool)
        keep[torch.as_tensor(sorted(used_ids))] = True
        state["tok_emb.weight"][~keep] = 0
    return state


def save_base_model(model, out_dir, info, used_ids=None):
    """Write `out_dir/model.safetensors` (16-bit) and `out_dir/config.json`.

    `info` (corpus hash, training settings, scores) is stored in config.json next
    to the model config under "model_config".

    Not in a notebook: `make pretrain` writes the committed base with it.
    """
    from safetensors.torch import save_file

    from ftlib.plumbing.fileio import atomic_path, atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(base_state_dict(model, used_ids), str(tmp), metadata={"format": "pt"})
    atomic_write_json(out_dir / "config.json", {"model_config": model.cfg, **info})
    return out_dir


def _read_base_config(path):
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        cfg = info["model_config"]
        GPTModel(cfg)  # a config GPTModel cannot build fails here (cheap at this size)
    except FileNotFoundError:
        raise ConfigError(f"base model config not found: {path} "
                          "(run `make pretrain` to create it)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a base model config.json ({type(exc).__name__}: {exc})") from None
    return info


def _restart_unused_rows(embedding, seed=123, std=0.02):
    """Give the embedding rows stored as zeros (tokens the corpus never uses, never
    trained) GPT-2's initial values again (normal, `std` 0.02, from `seed`), in place.

    All-zero rows would make those tokens identical to the model, and tasks that copy
    words it never saw in pretraining need them told apart: fine-tuning from zero rows
    reached 71.8 % held-out exact match, from restarted rows 80.0 % (seed 123).
    """
    unused = (embedding == 0).all(dim=1)
    generator = torch.Generator().manual_seed(seed)
    fresh = torch.randn(embedding.shape, generator=generator) * std
    embedding[unused] = fresh[unused]


def load_base_model(model_dir=BASE_MODEL_DIR):
    """The pretrained base as a float32 GPTModel, and its config.json as a dict.

    `out_head.weight` is a *copy* of the token embedding, as `load_weights_into_gpt`
    gives for OpenAI's GPT-2: fine-tuning may then change the two separately. Rows of
    tokens the corpus never uses are stored as zeros and restart from GPT-2's
    initialisation here (`_restart_unused_rows`).
    A missing or malformed file raises ConfigError naming it.

    >>> model, info = load_base_model()

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    from ftlib.model.weights import read_safetensors

    model_dir = Path(model_dir)
    info = _read_base_config(model_dir / "config.json")
    path = model_dir / "model.safetensors"
    state = read_safetensors(path, missing_hint="run `make pretrain` to create it")
    model = GPTModel(info["model_config"])
    state = {name: t.float() for name, t in state.items()}
    if "tok_emb.weight" in state:
        _restart_unused_rows(state["tok_emb.weight"])
    state["out_head.weight"] = state.get("tok_emb.weight", torch.empty(0)).clone()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path} does not fit the config in {model_dir / 'config.json'}: {first}") from None
    return model.eval(), info
