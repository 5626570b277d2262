"""Write small GPT-2 checkpoints in OpenAI's and Hugging Face's layouts, offline.

Tests and notebooks use these to exercise the real loading code (TensorFlow
checkpoint -> `params` -> GPTModel, or safetensors -> GPTModel) in a second, with
no internet: the files have exactly the names, shapes and format of the real ones,
only with a tiny model inside.

OpenAI's layout (see `model()` in OpenAI's gpt-2 repository, src/model.py): one
folder per size with seven files; variables are named `model/wte` (n_vocab, d),
`model/wpe` (n_ctx, d), `model/h{i}/{ln_1,ln_2}/{g,b}` (d,),
`model/h{i}/attn/c_attn/w` (1, d, 3d) and `/b` (3d,), `model/h{i}/attn/c_proj/w`
(1, d, d), `model/h{i}/mlp/c_fc/w` (1, d, 4d), `model/h{i}/mlp/c_proj/w` (1, 4d, d),
and `model/ln_f/{g,b}`. The weights of its "conv1d" layers are (1, in, out).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ftlib.model import GPTModel
from ftlib.tokenizer import bundled_gpt2_files
from ftlib.weights import import_tensorflow_quietly

# A GPT-2-shaped model small enough for tests: the real vocabulary (so the real
# tokenizer works with it) but width 32 and 2 layers; the weights file is ~6.5 MB,
# nearly all of it the (50257, 32) token embedding.
TOY_CONFIG = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,  # OpenAI's checkpoints always have query/key/value biases
}

# The name tests use for it as a "model size" (next to 124M, 355M, ...).
TOY_SIZE = "toy"


def _numpy(x):
    """A float32 numpy copy of a tensor or an array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
    return np.array(x, dtype=np.float32)


def gpt_to_params(model):
    """The inverse of `load_weights_into_gpt`: GPTModel -> OpenAI-layout `params` dict.

    Weights come out as (in, out) numpy arrays with query, key and value joined
    into c_attn. A model without qkv biases gets zero biases. `out_head` is not
    exported: GPT-2 ties it to the token embedding `wte`.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    def linear(layer):
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        return {"w": _numpy(layer.weight).T.copy(), "b": _numpy(bias)}

    def norm(layer):
        return {"g": _numpy(layer.scale), "b": _numpy(layer.shift)}

    blocks = []
    for block in model.trf_blocks:
        qkv = [linear(block.att.W_query), linear(block.att.W_key), linear(block.att.W_value)]
        blocks.append({
            "attn": {
                "c_attn": {  # (d, 3d) and (3d,): query, key, value side by side
                    "w": np.concatenate([p["w"] for p in qkv], axis=1),
                    "b": np.concatenate([p["b"] for p in qkv]),
                },
                "c_proj": linear(block.att.out_proj),
            },
            "mlp": {"c_fc": linear(block.ff.layers[0]), "c_proj": linear(block.ff.layers[2])},
            "ln_1": norm(block.norm1),
            "ln_2": norm(block.norm2),
        })
    return {
        "wte": _numpy(model.tok_emb.weight),
        "wpe": _numpy(model.pos_emb.weight),
        "blocks": blocks,
        **norm(model.final_norm),
    }


def _openai_variables(params):
    """Flatten `params` into OpenAI's variable names and shapes (conv1d w: (1, in, out))."""
    variables = {"model/wte": params["wte"], "model/wpe": params["wpe"]}
    for i, block in enumerate(params["blocks"]):
        for group in ("attn", "mlp"):
            for layer, wb in block[group].items():
                variables[f"model/h{i}/{group}/{layer}/w"] = wb["w"][None]  # (1, in, out)
                variables[f"model/h{i}/{group}/{layer}/b"] = wb["b"]
        for ln in ("ln_1", "ln_2"):
            variables[f"model/h{i}/{ln}/g"] = block[ln]["g"]
            variables[f"model/h{i}/{ln}/b"] = block[ln]["b"]
    variables["model/ln_f/g"] = params["g"]
    variables["model/ln_f/b"] = params["b"]
    return variables


def _build_model(cfg, seed, model):
    if model is not None:
        return model
    torch.manual_seed(seed)
    return GPTModel(cfg)


def write_openai_checkpoint(out_dir, cfg=TOY_CONFIG, seed=123, model=None, params=None):
    """Write a GPT-2 as OpenAI's seven files; return `out_dir` as a Path.

    The weights are `params` (OpenAI's layout, e.g. from `hf_state_dict_to_params`,
    with `cfg` giving the sizes), else `model`'s, else those of a new `GPTModel(cfg)`
    seeded with `seed`. Creates `out_dir/` with checkpoint, encoder.json,
    hparams.json, model.ckpt.data-00000-of-00001, model.ckpt.index, model.ckpt.meta
    and vocab.bpe, saved by TensorFlow 1's `Saver` as OpenAI's were.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    tf = import_tensorflow_quietly()
    if params is None:
        model = _build_model(cfg, seed, model)
        cfg, params = model.cfg, gpt_to_params(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variables = {name: _numpy(value) for name, value in _openai_variables(params).items()}

    v1 = tf.compat.v1
    # A private graph keeps these variables out of TensorFlow's global state.
    with tf.Graph().as_default():
        tf_vars, feeds, assigns = [], {}, []
        for name, value in variables.items():
            var = v1.get_variable(name, shape=value.shape, dtype=tf.float32,
                                  initializer=v1.zeros_initializer())
            # Values go in through a placeholder, so the (large) arrays are not
            # stored as constants in model.ckpt.meta.
            placeholder = v1.placeholder(tf.float32, shape=value.shape)
            assigns.append(var.assign(placeholder))
            feeds[placeholder] = value
            tf_vars.append(var)
        saver = v1.train.Saver(tf_vars)
        with v1.Session() as sess:
            sess.run(assigns, feed_dict=feeds)
            saver.save(sess, str(out_dir / "model.ckpt"), write_state=False)

    # OpenAI's `checkpoint` file names the checkpoint relative to its folder.
    (out_dir / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    )
    hparams = {
        "n_vocab": cfg["vocab_size"], "n_ctx": cfg["context_length"],
        "n_embd": cfg["emb_dim"], "n_head": cfg["n_heads"], "n_layer": cfg["n_layers"],
    }
    (out_dir / "hparams.json").write_text(json.dumps(hparams, indent=2))
    encoder_json, vocab_bpe = bundled_gpt2_files()
    shutil.copyfile(encoder_json, out_dir / "encoder.json")
    shutil.copyfile(vocab_bpe, out_dir / "vocab.bpe")
    return out_dir


def _hf_state_dict(params):
    """`params` as Hugging Face GPT-2 keys (`h.0.attn.c_attn.weight`, Conv1D (in, out))."""
    state = {"wte.weight": params["wte"], "wpe.weight": params["wpe"]}
    for i, block in enumerate(params["blocks"]):
        for group in ("attn", "mlp"):
            for layer, wb in block[group].items():
                state[f"h.{i}.{group}.{layer}.weight"] = wb["w"]
                state[f"h.{i}.{group}.{layer}.bias"] = wb["b"]
        for ln in ("ln_1", "ln_2"):
            state[f"h.{i}.{ln}.weight"] = block[ln]["g"]
            state[f"h.{i}.{ln}.bias"] = block[ln]["b"]
    state["ln_f.weight"] = params["g"]
    state["ln_f.bias"] = params["b"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def write_hf_safetensors(out_path, model):
    """Write `model`'s weights as Hugging Face's GPT-2 `model.safetensors` (no lm_head: tied).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_hf_state_dict(gpt_to_params(model)), str(out_path), metadata={"format": "pt"})
    return out_path
