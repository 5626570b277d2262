"""LoRA: fine-tune a frozen GPTModel through small low-rank updates (the book's appendix E).

Instead of updating a linear layer's weight W (out, in) directly, LoRA keeps W
frozen and learns two thin matrices A (in, rank) and B (rank, out); the layer then
computes `x @ W.T + alpha * (x @ A @ B)`. B starts at zero, so before training the
model gives exactly the outputs of the pretrained one.

As in the book (appendix E and the solution to exercise 7.4), *every* nn.Linear is
wrapped, the output head included, and the scaling is `alpha` itself (many other
LoRA implementations use `alpha / rank`). With rank 16 and alpha 16 this gives the
book's figure for GPT-2 medium: 7,898,384 trainable parameters, of which 820,496
belong to the output head (7,077,888 without it).

After training, `merge_lora` folds each update into its weight, W += (alpha * A @ B).T,
so the result is a plain GPTModel again: same outputs, same state_dict keys.
"""

import math

import torch
import torch.nn as nn

from ftlib.plumbing.errors import ConfigError
from ftlib.model.gpt import GPTModel, get_config


class LoRALayer(nn.Module):
    """The low-rank update `alpha * (x @ A @ B)`: (..., in_dim) -> (..., out_dim).

    A (in_dim, rank) starts random (kaiming uniform, as nn.Linear does), B (rank,
    out_dim) starts at zero, so the update starts at zero.

    Introduced in: notebooks/exercise_solutions.ipynb
    """

    def __init__(self, in_dim, out_dim, rank, alpha, device=None, dtype=None):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
        self.A = nn.Parameter(torch.empty(in_dim, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim, device=device, dtype=dtype))
        self.alpha = alpha

    def forward(self, x):
        return self.alpha * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    """A (frozen) nn.Linear plus a LoRALayer beside it: `linear(x) + lora(x)`.

    Introduced in: notebooks/exercise_solutions.ipynb
    """

    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        # On the linear layer's device and dtype, so LoRA can be added after .to(device).
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha,
                              device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def has_lora(model):
    """True if `model` contains at least one LinearWithLoRA.

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    return any(isinstance(m, LinearWithLoRA) for m in model.modules())


def replace_linear_with_lora(model, rank, alpha):
    """Replace every nn.Linear inside `model` by a LinearWithLoRA wrapping it, in place.

    Walks the module tree recursively (the book's function); layers already wrapped
    are left alone, so their inner linear is never wrapped twice.

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    for name, child in model.named_children():
        if isinstance(child, LinearWithLoRA):
            continue
        if isinstance(child, nn.Linear):
            setattr(model, name, LinearWithLoRA(child, rank, alpha))
        else:
            replace_linear_with_lora(child, rank, alpha)
    return model


def count_trainable_parameters(model):
    """The number of parameters with `requires_grad=True` (those an optimizer updates).

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def add_lora(model, rank=16, alpha=16):
    """Freeze all of `model`'s parameters, then wrap every nn.Linear with LoRA.

    Only the LoRA matrices A and B are left trainable. Returns their number, e.g.
    7,898,384 for GPT-2 medium with rank 16 and alpha 16 (the book's figure).
    Optimizers built afterwards (`make_optimizer`) see only these parameters.

    >>> n = add_lora(model, rank=16, alpha=16)

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    if has_lora(model):
        raise ConfigError("the model already has LoRA layers; add_lora is applied once")
    for param in model.parameters():
        param.requires_grad = False
    replace_linear_with_lora(model, rank, alpha)
    return count_trainable_parameters(model)


def merge_lora(model):
    """Fold every LinearWithLoRA back into a plain nn.Linear, in place; return `model`.

    Each weight becomes W + (alpha * A @ B).T, which gives the same outputs (up to
    float rounding), and the state_dict has GPTModel's plain keys again, so
    `save_model`, `load_model_state` and the Hugging Face export work unchanged.
    All parameters are trainable afterwards, as in a freshly built GPTModel.

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    def merge(module):
        for name, child in module.named_children():
            if isinstance(child, LinearWithLoRA):
                linear, lora = child.linear, child.lora
                with torch.no_grad():
                    # (in, rank) @ (rank, out) -> (in, out); transposed to Linear's (out, in).
                    # Summed in float32 so a bf16 model loses no more than one rounding.
                    delta = lora.alpha * (lora.A.float() @ lora.B.float())
                    linear.weight.copy_(linear.weight.float() + delta.T.to(linear.weight.device))
                setattr(module, name, linear)
            else:
                merge(child)

    merge(model)
    for param in model.parameters():
        param.requires_grad = True
    return model


def _base_linears(model):
    """(in_features, out_features) of every linear layer, wrapped with LoRA or not."""
    shapes = []
    for module in model.modules():
        if isinstance(module, LinearWithLoRA):
            continue  # its inner nn.Linear is visited on its own
        if isinstance(module, nn.Linear):
            shapes.append((module.in_features, module.out_features))
    return shapes


def _as_model(model_or_cfg):
    """A model to count: the model itself, or a GPTModel on the meta device (no memory)."""
    if isinstance(model_or_cfg, nn.Module):
        return model_or_cfg
    cfg = get_config(model_or_cfg) if isinstance(model_or_cfg, str) else model_or_cfg
    # "meta" tensors have shapes but no storage: GPT-2 XL is counted without 6 GB of RAM.
    with torch.device("meta"):
        return GPTModel(cfg)


def count_lora_parameters(model_or_cfg, rank):
    """Parameters LoRA would add with `rank`: rank * (in + out) per linear layer.

    `model_or_cfg`: a GPTModel (with or without LoRA), a config dict, or a model
    name such as "gpt2-medium (355M)".

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    model = _as_model(model_or_cfg)
    return sum(rank * (d_in + d_out) for d_in, d_out in _base_linears(model))


def lora_parameter_table(model_or_cfg, rank=16, alpha=16):
    """Two rows, full fine-tuning vs LoRA: trainable parameters and fp32 training memory.

    Memory counts weights (4 bytes each, frozen ones included), gradients of the
    trainable parameters (4 bytes) and AdamW's two moments (8 bytes); activations
    are left out (they depend on batch size and sequence length, and are the same
    for both methods to first order).

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    model = _as_model(model_or_cfg)
    lora_params = {p for m in model.modules() if isinstance(m, LoRALayer) for p in m.parameters()}
    base = sum(p.numel() for p in model.parameters() if p not in lora_params)
    added = count_lora_parameters(model, rank)
    gib = 1024 ** 3

    def row(method, total, trainable):
        weights, grads, adamw = total * 4 / gib, trainable * 4 / gib, trainable * 8 / gib
        return {
            "method": method,
            "total_params": total,
            "trainable_params": trainable,
            "trainable_percent": 100 * trainable / total,
            "weights_gib": weights,
            "grads_gib": grads,
            "adamw_state_gib": adamw,
            "total_gib": weights + grads + adamw,
        }

    return [
        row("full fine-tuning", base, base),
        row(f"LoRA (rank {rank}, alpha {alpha})", base + added, added),
    ]


def format_lora_parameter_table(rows):
    """The rows of `lora_parameter_table` as a fixed-width text table.

    Introduced in: notebooks/exercise_solutions.ipynb
    """
    header = (f"{'method':<28}{'trainable':>14}{'%':>8}{'weights GiB':>13}"
              f"{'grads GiB':>11}{'AdamW GiB':>11}{'total GiB':>11}")
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['method']:<28}{r['trainable_params']:>14,}{r['trainable_percent']:>8.2f}"
            f"{r['weights_gib']:>13.2f}{r['grads_gib']:>11.2f}{r['adamw_state_gib']:>11.2f}"
            f"{r['total_gib']:>11.2f}"
        )
    return "\n".join(lines)
