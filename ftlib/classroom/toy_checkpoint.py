"""Write small GPT-2 checkpoints in OpenAI's and Hugging Face's layouts, offline.

Tests and notebooks use these to exercise the real loading code (TensorFlow
checkpoint -> `params` -> GPTModel, or safetensors -> GPTModel) in a second, with
no internet: the files have exactly the names, shapes and format of the real ones,
only with a tiny model inside.

OpenAI's layout (see `model()` in OpenAI's gpt-2 repository, src/model.py): one
folder per size with seven files; the variables are named as in the table of
ftlib/model/gpt2_names.py, under the scope "model/", and the weights of its "conv1d"
layers are stored as (1, in, out).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ftlib.model.gpt2_names import (OPENAI_SCOPE, TIED, TRANSPOSE, get_param, gpt2_rows, gpt_to_params,
                              params_to_hf_state_dict)
from ftlib.model.gpt import GPTModel
from ftlib.data.tokenizer import bundled_gpt2_files
from ftlib.model.weights import import_tensorflow_quietly

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


def _openai_variables(params):
    """`params` as OpenAI's checkpoint variables: {OpenAI's name: float32 array}."""
    variables = {}
    for row in gpt2_rows(len(params["blocks"])):
        if row.how != TIED:  # no output layer: GPT-2 reuses the token embedding
            value = _numpy(get_param(params, row.openai))
            # conv1d weights (the transposed ones) keep a leading axis: (1, in, out)
            variables[OPENAI_SCOPE + row.openai] = value[None] if row.how == TRANSPOSE else value
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
    variables = _openai_variables(params)

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


def write_hf_safetensors(out_path, model):
    """Write `model`'s weights as Hugging Face's GPT-2 `model.safetensors` (no lm_head: tied).

    Not in a notebook: a test fixture for the Hugging Face loader (tests/test_weights.py).
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Without "transformer." in the keys, as in openai-community/gpt2's file.
    state = params_to_hf_state_dict(gpt_to_params(model), scoped=False)
    save_file(state, str(out_path), metadata={"format": "pt"})
    return out_path
