import pytest
import torch
import torch.nn as nn

from ftlib.plumbing.errors import ConfigError
from ftlib.model.lora import (LinearWithLoRA, LoRALayer, add_lora, count_lora_parameters,
                        count_trainable_parameters, format_lora_parameter_table, has_lora,
                        lora_parameter_table, merge_lora, replace_linear_with_lora)
from ftlib.model.gpt import GPTModel, count_parameters, get_config
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.training.loop import make_optimizer

SMALL_CFG = {**TOY_CONFIG, "vocab_size": 300}  # a fast model for forward passes


def meta_model(name):
    """GPT-2 of `name` with shapes but no storage: counting needs no RAM."""
    with torch.device("meta"):
        return GPTModel(get_config(name))


def test_book_figure_gpt2_medium_rank16_alpha16():
    # The book's solution to exercise 7.4: "Total trainable parameters before:
    # 406,286,336", after freezing 0, "Total trainable LoRA parameters: 7,898,384".
    model = meta_model("gpt2-medium (355M)")
    assert count_trainable_parameters(model) == 406_286_336
    assert add_lora(model, rank=16, alpha=16) == 7_898_384
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n)
    # The figure counts the output head's LoRA too: 16 * (1024 + 50257) of it.
    head = model.out_head
    assert isinstance(head, LinearWithLoRA)
    assert head.lora.A.numel() + head.lora.B.numel() == 820_496
    assert 7_898_384 - 820_496 == 7_077_888  # what LoRA on the blocks alone would give


def test_book_figure_appendix_e_classifier():
    # Appendix E: GPT-2 small with chapter 6's 2-class head, rank 16, alpha 16:
    # "Total trainable LoRA parameters: 2,666,528".
    model = meta_model("gpt2-small (124M)")
    with torch.device("meta"):
        model.out_head = nn.Linear(768, 2)
    assert add_lora(model, rank=16, alpha=16) == 2_666_528


def test_count_lora_parameters_from_config_and_name():
    cfg = get_config("gpt2-medium (355M)")
    assert count_lora_parameters(cfg, 16) == 7_898_384
    assert count_lora_parameters("gpt2-medium (355M)", 8) == 7_898_384 // 2
    model = meta_model("gpt2-medium (355M)")
    add_lora(model, 16, 16)
    assert count_lora_parameters(model, 16) == 7_898_384  # wrapped layers counted once


def test_lora_layer_starts_at_zero_and_scales_by_alpha():
    torch.manual_seed(123)
    layer = LoRALayer(6, 4, rank=2, alpha=8)
    assert layer.A.shape == (6, 2) and layer.B.shape == (2, 4)
    assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(layer.A) > 0
    x = torch.randn(3, 5, 6)
    assert torch.equal(layer(x), torch.zeros(3, 5, 4))
    with torch.no_grad():
        layer.B.normal_()
    # alpha itself is the scale (the book's appendix E), not alpha / rank
    torch.testing.assert_close(layer(x), 8 * (x @ layer.A @ layer.B))
    with pytest.raises(ConfigError, match="rank"):
        LoRALayer(6, 4, rank=0, alpha=1)


def test_linear_with_lora_equals_linear_until_trained():
    torch.manual_seed(123)
    linear = nn.Linear(6, 4)
    wrapped = LinearWithLoRA(linear, rank=3, alpha=2)
    x = torch.randn(2, 6)
    assert torch.equal(wrapped(x), linear(x))
    with torch.no_grad():
        wrapped.lora.B.fill_(0.1)
    torch.testing.assert_close(wrapped(x), linear(x) + 2 * (x @ wrapped.lora.A @ wrapped.lora.B))


def test_add_lora_keeps_outputs_and_trains_only_lora():
    torch.manual_seed(123)
    model = GPTModel(SMALL_CFG).eval()
    x = torch.randint(0, SMALL_CFG["vocab_size"], (2, 7))
    before = model(x)
    n = add_lora(model, rank=4, alpha=4)
    assert has_lora(model)
    # 2 blocks x (4 attention linears (32 -> 32) + 32 -> 128 + 128 -> 32) + out_head 32 -> 300
    assert n == 4 * (2 * (4 * 64 + 160 + 160) + (32 + 300))
    torch.testing.assert_close(model(x), before)  # B = 0: the pretrained model unchanged

    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora." not in k}
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.1, fused=False)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    for k, v in model.state_dict().items():
        if ".lora." not in k:
            assert torch.equal(v, frozen[k]), k
    assert torch.count_nonzero(model.out_head.lora.B) > 0
    with pytest.raises(ConfigError, match="already has LoRA"):
        add_lora(model, rank=4, alpha=4)


def test_replace_linear_with_lora_wraps_each_linear_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    replace_linear_with_lora(model, rank=1, alpha=1)
    replace_linear_with_lora(model, rank=1, alpha=1)  # already wrapped: left alone
    assert isinstance(model[0], LinearWithLoRA) and isinstance(model[0].linear, nn.Linear)
    assert isinstance(model[1][1], LinearWithLoRA) and isinstance(model[1][1].linear, nn.Linear)
    assert sum(isinstance(m, LinearWithLoRA) for m in model.modules()) == 2


def test_merge_lora_same_outputs_and_plain_keys():
    torch.manual_seed(123)
    model = GPTModel(SMALL_CFG).eval()
    add_lora(model, rank=4, alpha=16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".lora.B"):
                p.normal_(std=0.01)  # as if trained: the update is no longer zero
    x = torch.randint(0, SMALL_CFG["vocab_size"], (2, 9))
    with torch.no_grad():
        before = model(x)
    merge_lora(model)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() < 1e-5
    assert (before - GPTModel(SMALL_CFG).eval()(x)).abs().max() > 1e-3  # not trivially equal
    assert not has_lora(model)
    assert list(model.state_dict()) == list(GPTModel(SMALL_CFG).state_dict())
    assert all(p.requires_grad for p in model.parameters())
    # The merged weights load into a fresh GPTModel and give the same outputs.
    fresh = GPTModel(SMALL_CFG).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), after)


def test_lora_follows_model_dtype():
    model = GPTModel(SMALL_CFG).to(torch.bfloat16)
    add_lora(model, rank=2, alpha=2)
    assert model.out_head.lora.A.dtype == torch.bfloat16
    assert model.trf_blocks[0].ff.layers[0].lora.B.dtype == torch.bfloat16


def test_lora_parameter_table_gpt2_medium():
    rows = lora_parameter_table("gpt2-medium (355M)", rank=16, alpha=16)
    full, lora = rows
    total = count_parameters(get_config("gpt2-medium (355M)"))[0]
    assert full["trainable_params"] == full["total_params"] == total == 406_286_336
    assert lora["trainable_params"] == 7_898_384
    assert lora["total_params"] == total + 7_898_384
    gib = 1024 ** 3
    # weights + grads + AdamW's two moments, 4 bytes each
    assert full["total_gib"] == pytest.approx(16 * total / gib)
    assert lora["total_gib"] == pytest.approx((4 * (total + 7_898_384) + 12 * 7_898_384) / gib)
    assert lora["total_gib"] < full["total_gib"] / 3
    text = format_lora_parameter_table(rows)
    lines = text.splitlines()
    assert len(lines) == 3
    assert "406,286,336" in lines[1] and "7,898,384" in lines[2]
    assert "LoRA (rank 16, alpha 16)" in lines[2]
    # the same figures from a model that already has LoRA layers
    model = meta_model("gpt2-medium (355M)")
    add_lora(model, 16, 16)
    assert lora_parameter_table(model, 16, 16) == rows
