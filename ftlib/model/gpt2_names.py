"""GPT-2's parameter names, written once: ours, OpenAI's and Hugging Face's.

GPTModel uses the book's names (`trf_blocks.3.att.W_query.weight`); OpenAI's
TensorFlow checkpoints and Hugging Face's `GPT2LMHeadModel` call the same numbers
by their own names. `GPT2_NAMES` is the one table where the three meet, one row per
tensor, with how it converts; the functions below it are driven by the table, and
ftlib/model/weights.py, ftlib/model/export.py and ftlib/classroom/toy_checkpoint.py go through them.

Besides the names, the layouts differ in three ways:
- OpenAI's and Hugging Face's linear layers ("conv1d", `Conv1D`) store their weight
  as (in, out), the transpose of `nn.Linear.weight` (out, in);
- both keep query, key and value in one layer, c_attn: weight (d, 3d), bias (3d,),
  where GPTModel has three (W_query, W_key, W_value);
- GPT-2 reuses the token embedding wte as its output layer ("weight tying"), so
  OpenAI's files have no output layer of their own.

`params` is the book's nested dict of OpenAI's arrays (numpy or torch), as
`download_and_load_gpt2` returns it:

    {"wte": (vocab, d), "wpe": (context, d), "g": (d,), "b": (d,),   # g, b: ln_f
     "blocks": [{"attn": {"c_attn": {"w": (d, 3d), "b": (3d,)}, "c_proj": {"w", "b"}},
                 "mlp": {"c_fc": {"w": (d, 4d), "b"}, "c_proj": {"w": (4d, d), "b"}},
                 "ln_1": {"g", "b"}, "ln_2": {"g", "b"}}, ...]}

Not in a notebook: the table's machinery; notebook 05 prints the table itself
(`GPT2_NAMES`) and checks the book's `load_weights_into_gpt` against `load_gpt2_params`,
which reads it.
"""

import re
from collections import namedtuple

import torch

from ftlib.plumbing.errors import ConfigError

COPY = "copy"            # the same array on both sides
TRANSPOSE = "transpose"  # ours nn.Linear (out, in) <-> theirs (in, out)
TIED = "tied"            # our out_head: OpenAI's files reuse wte; Hugging Face writes
                         # lm_head.weight only when the head differs from wte

OPENAI_SCOPE = "model/"      # OpenAI's variables are "model/wte", "model/h0/ln_1/g", ...
HF_SCOPE = "transformer."    # Hugging Face's body; the head, lm_head, sits outside it


def _qkv(part):
    """Our query, key and value `part` names: joined in this order into c_attn's."""
    return tuple(f"trf_blocks.{{i}}.att.{w}.{part}" for w in ("W_query", "W_key", "W_value"))


# (ours, OpenAI's, Hugging Face's, how it converts); `{i}` is a block's index.
# Where ours is a tuple, its three tensors are joined along the last axis into theirs.
# OpenAI's names are checkpoint variables without "model/", also the path in `params`
# (except ln_f's g and b, which `params` keeps at its top level).
GPT2_NAMES = (
    ("tok_emb.weight",                     "wte",                "transformer.wte.weight",             COPY),
    ("pos_emb.weight",                     "wpe",                "transformer.wpe.weight",             COPY),
    ("trf_blocks.{i}.norm1.scale",         "h{i}/ln_1/g",        "transformer.h.{i}.ln_1.weight",      COPY),
    ("trf_blocks.{i}.norm1.shift",         "h{i}/ln_1/b",        "transformer.h.{i}.ln_1.bias",        COPY),
    (_qkv("weight"),                       "h{i}/attn/c_attn/w", "transformer.h.{i}.attn.c_attn.weight", TRANSPOSE),
    (_qkv("bias"),                         "h{i}/attn/c_attn/b", "transformer.h.{i}.attn.c_attn.bias", COPY),
    ("trf_blocks.{i}.att.out_proj.weight", "h{i}/attn/c_proj/w", "transformer.h.{i}.attn.c_proj.weight", TRANSPOSE),
    ("trf_blocks.{i}.att.out_proj.bias",   "h{i}/attn/c_proj/b", "transformer.h.{i}.attn.c_proj.bias", COPY),
    ("trf_blocks.{i}.norm2.scale",         "h{i}/ln_2/g",        "transformer.h.{i}.ln_2.weight",      COPY),
    ("trf_blocks.{i}.norm2.shift",         "h{i}/ln_2/b",        "transformer.h.{i}.ln_2.bias",        COPY),
    ("trf_blocks.{i}.ff.layers.0.weight",  "h{i}/mlp/c_fc/w",    "transformer.h.{i}.mlp.c_fc.weight",  TRANSPOSE),
    ("trf_blocks.{i}.ff.layers.0.bias",    "h{i}/mlp/c_fc/b",    "transformer.h.{i}.mlp.c_fc.bias",    COPY),
    ("trf_blocks.{i}.ff.layers.2.weight",  "h{i}/mlp/c_proj/w",  "transformer.h.{i}.mlp.c_proj.weight", TRANSPOSE),
    ("trf_blocks.{i}.ff.layers.2.bias",    "h{i}/mlp/c_proj/b",  "transformer.h.{i}.mlp.c_proj.bias",  COPY),
    ("final_norm.scale",                   "ln_f/g",             "transformer.ln_f.weight",            COPY),
    ("final_norm.shift",                   "ln_f/b",             "transformer.ln_f.bias",              COPY),
    ("out_head.weight",                    "wte",                "lm_head.weight",                     TIED),
)

Row = namedtuple("Row", "ours openai hf how")


def gpt2_rows(n_layers):
    """`GPT2_NAMES` for a model of `n_layers` blocks: `{i}` filled in, `ours` always a tuple.
    """
    rows = []
    for ours, openai, hf, how in GPT2_NAMES:
        ours = (ours,) if isinstance(ours, str) else ours
        for i in range(n_layers) if "{i}" in openai else [None]:
            rows.append(Row(tuple(name.format(i=i) for name in ours),
                            openai.format(i=i), hf.format(i=i), how))
    return rows


# --- where a name lives: in `params`, in GPTModel ---------------------------------

def _params_path(name):
    """OpenAI's `name` as (block index or None, keys): "h3/attn/c_attn/w" -> (3, [attn, c_attn, w])."""
    first, *rest = name.split("/")
    if first == "ln_f":  # the book keeps the final norm's g and b at the top level
        return None, rest
    if first.startswith("h") and first[1:].isdigit():
        return int(first[1:]), rest
    return None, [first, *rest]


def get_param(params, name):
    """The array of OpenAI's variable `name` in `params`; KeyError(name) if it is missing.
    """
    block, keys = _params_path(name)
    try:
        target = params if block is None else params["blocks"][block]
        for key in keys:
            target = target[key]
    except (KeyError, IndexError):
        raise KeyError(name) from None
    return target


def set_param(params, name, value):
    """Put `value` into `params` where OpenAI's variable `name` belongs (nested dicts as needed).
    """
    block, keys = _params_path(name)
    if block is not None and block >= len(params["blocks"]):
        raise ValueError(f"{name} is past the {len(params['blocks'])} blocks of params (n_layer)")
    target = params if block is None else params["blocks"][block]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def get_ours(model, name):
    """GPTModel's parameter `name` ("trf_blocks.3.att.W_query.bias"), or None if it has none.
    """
    obj = model
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return obj


# --- how a row converts --------------------------------------------------------------

def to_theirs(row, tensors):
    """Our tensors of `row` -> their one tensor: each transposed if TRANSPOSE, then joined."""
    parts = [t.T if row.how == TRANSPOSE else t for t in tensors]
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def to_ours(row, array):
    """Their array of `row` -> our tensors, one per name in `row.ours` (split, then transposed)."""
    tensor = torch.as_tensor(array)
    n = len(row.ours)
    if n > 1 and tensor.shape[-1] % n:
        raise ConfigError(f"{row.openai}: last axis {tensor.shape[-1]} is not divisible by {n} "
                          "(query, key and value side by side)")
    parts = torch.chunk(tensor, n, dim=-1) if n > 1 else (tensor,)
    return [p.T if row.how == TRANSPOSE else p for p in parts]


def _own(tensor):
    """A detached, contiguous CPU copy (safetensors refuses tensors that share storage)."""
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


# --- the conversions ----------------------------------------------------------------

def gpt_to_params(model):
    """The inverse of `load_gpt2_params`: GPTModel -> `params` in OpenAI's layout.

    Torch tensors (CPU, the model's dtype, each its own copy): weights (in, out),
    query, key and value joined into one. A model without query/key/value biases
    (qkv_bias False) gets zero biases: GPT-2 always has them. `out_head` is left
    out: GPT-2 ties it to the token embedding.
    """
    params = {"blocks": [{} for _ in model.trf_blocks]}
    for row in gpt2_rows(len(model.trf_blocks)):
        if row.how != TIED:
            ours = [_ours_or_zero_bias(model, name) for name in row.ours]
            set_param(params, row.openai, _own(to_theirs(row, ours)))
    return params


def _ours_or_zero_bias(model, name):
    tensor = get_ours(model, name)
    if tensor is None and name.endswith(".bias"):
        weight = get_ours(model, name.removesuffix("bias") + "weight")  # (out, in)
        if weight is not None:
            return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if tensor is None:
        raise ConfigError(f"the model has no parameter {name}: is it a GPTModel (LoRA merged)?")
    return tensor


def params_to_hf_state_dict(params, out_head=None, scoped=True):
    """`params` -> a Hugging Face GPT-2 state dict; only the names change.

    Both store (in, out) weights and one c_attn. `out_head` (our output layer's
    weight) becomes lm_head.weight; leave it None when the head is tied to the
    token embedding, so transformers reuses it. `scoped=False` drops the
    "transformer." of the keys, as in openai-community/gpt2's model.safetensors.
    """
    state = {}
    for row in gpt2_rows(len(params["blocks"])):
        key = row.hf if scoped else row.hf.removeprefix(HF_SCOPE)
        if row.how != TIED:
            state[key] = torch.as_tensor(get_param(params, row.openai)).contiguous()
        elif out_head is not None:
            state[key] = _own(out_head)
    return state


def hf_state_dict_to_params(state_dict):
    """A Hugging Face GPT-2 state dict -> `params` in OpenAI's layout; only the names change.

    Keys may start with "transformer." or not (openai-community/gpt2's files have
    none). Two kinds of keys outside the table are skipped: lm_head.weight (tied to
    the token embedding), and the causal-mask buffers h.N.attn.bias /
    h.N.attn.masked_bias of older files; any other key is a ConfigError naming it.
    """
    state = {key.removeprefix(HF_SCOPE): tensor for key, tensor in state_dict.items()}
    blocks = sorted({int(key.split(".")[1]) for key in state
                     if re.fullmatch(r"h\.[0-9]+\..*", key)})
    if blocks != list(range(len(blocks))):
        raise ConfigError(f"the safetensors file has blocks {blocks[:5]}: some are missing")
    rows = {row.hf.removeprefix(HF_SCOPE): row for row in gpt2_rows(len(blocks))}
    unknown = [key for key in state if key not in rows and not _SKIPPED_HF_KEY.fullmatch(key)]
    if unknown:
        raise ConfigError(f"the safetensors file has keys GPT-2 does not have: {unknown[:3]}"
                          + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""))
    params = {"blocks": [{} for _ in blocks]}
    for key, row in rows.items():
        if row.how != TIED and key in state:
            set_param(params, row.openai, state[key])
    return params


# Keys a Hugging Face GPT-2 file may hold beside the table: the tied head, and the
# causal-mask buffers of older files.
_SKIPPED_HF_KEY = re.compile(r"lm_head\.weight|h\.[0-9]+\.attn\.(bias|masked_bias)")
