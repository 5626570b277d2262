"""ftlib.model.gpt2_names: the one table covers every tensor of GPTModel and of Hugging Face's GPT-2."""

import pytest
import torch

from ftlib.model.gpt2_names import (gpt2_rows, gpt_to_params, hf_state_dict_to_params,
                              params_to_hf_state_dict)
from ftlib.model.gpt import GPTModel
from ftlib.classroom.toy_checkpoint import TOY_CONFIG
from ftlib.model.weights import load_weights_into_gpt

QKV_BIASES = {f"trf_blocks.{i}.att.{w}.bias" for i in range(2) for w in ("W_query", "W_key", "W_value")}


def _ours(rows):
    return [name for row in rows for name in row.ours]


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_every_parameter_of_gptmodel_has_one_row(qkv_bias):
    model = GPTModel({**TOY_CONFIG, "qkv_bias": qkv_bias})
    ours = _ours(gpt2_rows(TOY_CONFIG["n_layers"]))
    assert len(ours) == len(set(ours))
    missing_in_model = set(ours) - {name for name, _ in model.named_parameters()}
    assert missing_in_model == (set() if qkv_bias else QKV_BIASES)  # zeros on export
    assert {name for name, _ in model.named_parameters()} <= set(ours)


def test_every_tensor_of_hugging_faces_gpt2_has_one_row():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)
    keys = {k for k in transformers.GPT2LMHeadModel(config).state_dict()
            if not k.endswith(("attn.bias", "attn.masked_bias")) or "c_attn" in k}
    hf = [row.hf for row in gpt2_rows(2)]
    assert len(hf) == len(set(hf)) and set(hf) == keys


def test_params_and_hf_state_dict_round_trip_exactly():
    torch.manual_seed(0)
    model = GPTModel(TOY_CONFIG)
    params = gpt_to_params(model)
    state = params_to_hf_state_dict(params)
    assert "lm_head.weight" not in state  # tied: transformers reuses the token embedding
    assert state["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)  # (d, 3d): q, k, v
    again = hf_state_dict_to_params(params_to_hf_state_dict(params, scoped=False))
    twin = load_weights_into_gpt(GPTModel(TOY_CONFIG), again)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        if name != "out_head.weight":  # the twin's head is tied to its token embedding
            assert torch.equal(a, b), name
    torch.testing.assert_close(twin.out_head.weight, model.tok_emb.weight, rtol=0, atol=0)
