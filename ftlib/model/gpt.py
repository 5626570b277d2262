"""GPTModel: the GPT-2 architecture of the book, written to be read top to bottom.

The parameter names (`tok_emb`, `trf_blocks[i].att.W_query`, `ff.layers[0]`,
`norm1.scale`, `out_head`, ...) are the book's, so `load_weights_into_gpt` maps
OpenAI's checkpoints onto them exactly as the chapter does.

Two additions beyond the chapter, both optional and off by default:
- `kv_cache`: keys and values of earlier tokens are kept, so generation feeds
  one new token per step instead of the whole sequence (see ftlib/model/generate.py);
- `position_ids` and `attn_mask`: several examples can share one row ("packing")
  with positions restarting per example and attention kept inside each example.

The model knows nothing of data, files or tokenizers.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# The configs (the book's BASE_CONFIG and model_configs among them) and the one table of
# models live in ftlib/config.py, beside the run settings that name them.
from ftlib.config import (BASE_CONFIG, TINY_BASE_CONFIG, TINY_BASE_NAME, TINY_CONFIG,  # noqa: F401
                          TINY_NAME, get_config, model_configs)
from ftlib.plumbing.errors import ConfigError

# The keys of a GPTModel config, and what each must be.
MODEL_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                     "drop_rate", "qkv_bias")


def check_model_config(cfg, source="model config"):
    """Raise ConfigError unless `cfg` is a config GPTModel can be built from: every key
    of MODEL_CONFIG_KEYS, the sizes positive whole numbers, `emb_dim` divisible by
    `n_heads`, `drop_rate` in [0, 1), `qkv_bias` true or false. The message starts
    with `source` (e.g. "runs/latest/config.json: model_config") and names the key:

    >>> check_model_config({**TINY_CONFIG, "n_heads": 0}, "config.json: model_config")
    ConfigError: config.json: model_config: 'n_heads' must be a positive whole number, got 0

    Not in a notebook: the check of every config.json a model is rebuilt from.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: must be an object of {', '.join(MODEL_CONFIG_KEYS)}, "
                          f"got {type(cfg).__name__}")
    missing = [key for key in MODEL_CONFIG_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"{source}: lacks {', '.join(repr(key) for key in missing)}")
    for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{source}: {key!r} must be a positive whole number, got {value!r:.40}")
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ConfigError(f"{source}: 'emb_dim' {cfg['emb_dim']} is not divisible by "
                          f"'n_heads' {cfg['n_heads']}")
    rate = cfg["drop_rate"]
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
        raise ConfigError(f"{source}: 'drop_rate' must be a number in [0, 1), got {rate!r:.40}")
    if not isinstance(cfg["qkv_bias"], bool):
        raise ConfigError(f"{source}: 'qkv_bias' must be true or false, got {cfg['qkv_bias']!r:.40}")


class LayerNorm(nn.Module):
    """Layer normalisation with the book's parameter names (`scale`, `shift`).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps  # GPT-2's value
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GELU with the tanh approximation, the one GPT-2 was trained with.

    Not in a notebook: a layer of FeedForward, in the source notebook 05 shows.
    """

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Expand to 4x the width, GELU, project back: (b, t, d) -> (b, t, d).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """

    def __init__(self, cfg):
        super().__init__()
        d = cfg["emb_dim"]
        self.layers = nn.Sequential(nn.Linear(d, 4 * d), GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention (PyTorch's fused scaled_dot_product_attention).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ConfigError(f"n_heads must be a positive whole number, got {num_heads!r:.40}")
        if d_out % num_heads:
            raise ConfigError(f"emb_dim {d_out} is not divisible by n_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.dropout = dropout
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The book's MultiHeadAttention keeps its causal mask as a buffer, so a state_dict
        # saved with the book's code holds `...att.mask`. Here the mask is made when needed,
        # not stored: drop it, so a model.pth of the book's loads as it is.
        state_dict.pop(prefix + "mask", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _heads(self, x):
        b, t, _ = x.shape
        # (b, t, d_out) -> (b, num_heads, t, head_dim)
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, attn_mask=None, kv_cache=None, layer_idx=0):
        b, t, _ = x.shape
        q, k, v = self._heads(self.W_query(x)), self._heads(self.W_key(x)), self._heads(self.W_value(x))
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(layer_idx, k, v)  # (b, heads, past + t, head_dim)

        is_causal = False
        if attn_mask is None and t > 1:
            if past == 0:
                is_causal = True
            else:
                # new token i may see every cached token and new tokens up to itself
                attn_mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (b, heads, t, head_dim)
        ctx = ctx.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out_proj(ctx)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + ff(norm2(x)).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            dropout=cfg["drop_rate"], num_heads=cfg["n_heads"], qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, attn_mask=None, kv_cache=None, layer_idx=0):
        x = x + self.drop_shortcut(self.att(self.norm1(x), attn_mask, kv_cache, layer_idx))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class KVCache:
    """Keys and values of the tokens seen so far, one slot per layer.

    Memory is allocated once for `max_len` positions (the context length), so
    it stays bounded however long generation runs.

    Not in a notebook: what `GPTModel.new_kv_cache` returns for `generate` (notebook 05 compares
    generation with and without it).
    """

    def __init__(self, n_layers, max_len):
        self.max_len = max_len
        self.keys = [None] * n_layers
        self.values = [None] * n_layers
        self.length = 0  # positions filled, the same in every layer

    def update(self, layer_idx, k, v):
        """Append (b, heads, t, head_dim) keys/values; return all so far."""
        t = k.shape[2]
        if self.keys[layer_idx] is None:
            b, h, _, hd = k.shape
            self.keys[layer_idx] = k.new_zeros(b, h, self.max_len, hd)
            self.values[layer_idx] = v.new_zeros(b, h, self.max_len, hd)
        end = self.length + t
        if end > self.max_len:
            raise ConfigError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer_idx][:, :, self.length:end] = k
        self.values[layer_idx][:, :, self.length:end] = v
        if layer_idx == len(self.keys) - 1:
            self.length = end  # the last layer has written: advance for the next call
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, `n_layers` blocks, final norm, output head.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg["n_layers"]))
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # GPT-2's initialisation (normal, std 0.02) rather than PyTorch's defaults:
        # a model trained from scratch learns much faster with it, and pretrained
        # weights overwrite it anyway.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(self, in_idx, position_ids=None, attn_mask=None, kv_cache=None):
        """Everything but the output head: (b, t) ids -> (b, t, emb_dim)."""
        b, t = in_idx.shape
        if position_ids is None:
            start = kv_cache.length if kv_cache is not None else 0
            position_ids = torch.arange(start, start + t, device=in_idx.device)
        if int(position_ids.max()) >= self.cfg["context_length"]:
            raise ConfigError(
                f"position {int(position_ids.max())} is past context_length "
                f"{self.cfg['context_length']}; truncate inputs (allowed_max_length)"
            )
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(position_ids))  # (b, t, d)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, attn_mask, kv_cache, i)
        return self.final_norm(x)

    def forward(self, in_idx, targets=None, *, position_ids=None, attn_mask=None,
                kv_cache=None, reduction="mean"):
        """(b, t) token ids -> (b, t, vocab_size) logits; given `targets`, the loss instead.

        With `targets` (b, t), as nanoGPT's `forward(idx, targets)`: the output head
        runs only where a target is not -100 (cross_entropy's ignore_index), which is
        the same loss as on every position's logits, for less work. `reduction` is
        cross_entropy's ("sum" adds the token losses, for gradient accumulation).
        DistributedDataParallel can wrap the model itself: the loss is computed
        inside `forward()`.
        """
        hidden = self.hidden_states(in_idx, position_ids, attn_mask, kv_cache)  # (b, t, d)
        if targets is None:
            return self.out_head(hidden)  # (b, t, vocab_size)
        keep = targets != -100  # (b, t); -100: cross_entropy's ignore_index, as collate marks
        logits = self.out_head(hidden[keep])           # (num_targets, vocab_size)
        return F.cross_entropy(logits, targets[keep], reduction=reduction)

    def new_kv_cache(self):
        """An empty KV cache sized for this model's context length."""
        return KVCache(self.cfg["n_layers"], self.cfg["context_length"])


def count_parameters(cfg):
    """Parameters of `GPTModel(cfg)`, computed from the config alone (no allocation).

    Returns (total, total_if_tied): OpenAI's GPT-2 shares the token embedding with
    the output head, so its advertised sizes (124M, ...) count that matrix once.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    v, c, d, n = cfg["vocab_size"], cfg["context_length"], cfg["emb_dim"], cfg["n_layers"]
    qkv = 3 * (d * d + (d if cfg["qkv_bias"] else 0))
    attn = qkv + d * d + d                       # + out_proj with bias
    ff = d * 4 * d + 4 * d + 4 * d * d + d       # two linears with biases
    norms = 2 * 2 * d                            # norm1, norm2: scale + shift
    total = v * d + c * d + n * (attn + ff + norms) + 2 * d + d * v
    return total, total - d * v


def model_memory_table(names=None):
    """Rows of parameters and memory per model size: weights in fp32 and bf16,
    and what full fine-tuning with AdamW needs (weights + grads + 2 moments, fp32).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    rows = []
    for name in names or [TINY_NAME, *model_configs]:
        total, tied = count_parameters(get_config(name))
        gib = 1024 ** 3
        rows.append({
            "model": name,
            "params": total,
            "params_tied": tied,
            "fp32_weights_gib": total * 4 / gib,
            "bf16_weights_gib": total * 2 / gib,
            # AdamW keeps two fp32 moments per parameter; training also holds grads
            "adamw_train_fp32_gib": total * 4 * 4 / gib,
        })
    return rows


def format_memory_table(rows):
    """The rows of `model_memory_table` as a fixed-width text table.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    lines = [f"{'model':<20}{'params':>14}{'as tied':>14}{'fp32 GiB':>10}{'bf16 GiB':>10}{'AdamW train GiB':>17}"]
    for r in rows:
        lines.append(
            f"{r['model']:<20}{r['params']:>14,}{r['params_tied']:>14,}"
            f"{r['fp32_weights_gib']:>10.2f}{r['bf16_weights_gib']:>10.2f}{r['adamw_train_fp32_gib']:>17.2f}"
        )
    return "\n".join(lines)

