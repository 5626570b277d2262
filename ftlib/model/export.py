"""Export a fine-tuned GPTModel as a Hugging Face GPT-2 folder (`GPT2LMHeadModel`).

`python -m ftlib export-hf runs/latest hf-model/` writes a folder that
`transformers` loads with `GPT2LMHeadModel.from_pretrained("hf-model")` and
`GPT2Tokenizer.from_pretrained("hf-model")`, offline, with the same logits as
our model. This module writes the files itself; it never imports transformers.

The tensors are renamed and reshaped by the one table of ftlib/model/gpt2_names.py
(Hugging Face's linear layers are (in, out), with query, key and value in one).
One difference needs care here: GPT-2 ties the output layer to the token
embedding; GPTModel has a separate `out_head`, which fine-tuning moves away from
`tok_emb`. When the two differ the export writes the head too and
`tie_word_embeddings: false`, otherwise transformers would silently reuse the
token embedding as the output layer.

Not in a notebook: the CLI's `python -m ftlib export-hf RUN OUT` (README: "LoRA and
export to Hugging Face").
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.plumbing.fileio import current_umask, replace_folder
from ftlib.model.gpt2_names import gpt_to_params, params_to_hf_state_dict
from ftlib.model.lora import has_lora
from ftlib.model.files import load_run_model
from ftlib.data.instructions import ALPACA_PREAMBLE, format_input, format_response
from ftlib.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, GPT2_N_VOCAB, bundled_gpt2_files

# A file in every export folder: it marks the folder as ours, so a later export may
# replace it, while any other non-empty folder is never overwritten.
EXPORT_MARKER = "ftlib-export.json"
# Everything an export writes (a test checks it is the whole folder): an earlier export
# holding anything else is not replaced.
EXPORT_FILES = {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "README.md",
                EXPORT_MARKER}


def gpt_to_hf_state_dict(model):
    """GPTModel -> a state dict in `GPT2LMHeadModel`'s layout (CPU torch tensors).

    Keys as `save_pretrained` writes them (the table of ftlib/model/gpt2_names.py). A
    model without query/key/value biases (qkv_bias False) gets zero biases: Hugging
    Face's GPT-2 always has them. `lm_head.weight` is included only when `out_head`
    differs from `tok_emb` (see `ties_embeddings`). A model with LoRA layers must be
    merged first.
    """
    if has_lora(model):
        raise ConfigError("the model has LoRA layers: call merge_lora(model) before exporting")
    out_head = None if ties_embeddings(model) else model.out_head.weight  # (vocab, d)
    return params_to_hf_state_dict(gpt_to_params(model), out_head=out_head)


def ties_embeddings(model):
    """True if `out_head.weight` equals `tok_emb.weight` exactly (GPT-2's weight tying).

    Pretrained GPT-2 loaded by `load_weights_into_gpt` starts tied; fine-tuning
    updates the two separately, so they differ afterwards.
    """
    return torch.equal(model.out_head.weight.detach(), model.tok_emb.weight.detach())


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_config(cfg, tie_word_embeddings, dtype=torch.float32):
    """The `config.json` of a `GPT2LMHeadModel` with GPTModel config `cfg`, as a dict.
    """
    dtype_name = _DTYPE_NAMES.get(dtype, "float32")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["context_length"],
        "n_ctx": cfg["context_length"],  # read by old transformers versions
        "n_embd": cfg["emb_dim"],
        "n_layer": cfg["n_layers"],
        "n_head": cfg["n_heads"],
        "n_inner": None,  # None means 4 * n_embd, as in FeedForward
        "activation_function": "gelu_new",  # GELU's tanh approximation, as in model.GELU
        "resid_pdrop": cfg["drop_rate"],
        "embd_pdrop": cfg["drop_rate"],
        "attn_pdrop": cfg["drop_rate"],
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # divide scores by sqrt(head_dim), as SDPA does
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": END_OF_TEXT_ID,
        "tie_word_embeddings": tie_word_embeddings,
        "dtype": dtype_name,        # transformers >= 4.56
        "torch_dtype": dtype_name,  # older transformers
    }


def response_header(style):
    """The text ftlib puts between the prompt and the answer: "\\n\\n### Response:\\n" (alpaca)
    or "\\n<|assistant|>:\\n" (phi3), i.e. `format_response` with an empty output.

    Not in a notebook: the exports' chat templates (README: "LoRA and export to Hugging Face").
    """
    return format_response({"output": ""}, style)


def chat_template(style):
    """The Jinja chat template of prompt style `style` ("alpaca" or "phi3"), for transformers.

    A user message X becomes `format_input({"instruction": X, "input": ""}, style)`; an
    assistant message becomes the response header, its text and <|endoftext|> (how a
    training example ends); `add_generation_prompt` adds the response header. So
    `apply_chat_template([{"role": "user", "content": X}], add_generation_prompt=True,
    tokenize=False)` is exactly the text ftlib's model was trained to answer. A first
    system message replaces Alpaca's preamble ("Below is an instruction ..."); the phi3
    style has no place for one, so the template refuses it. Several turns are rendered
    as training examples one after the other (the model was trained on single turns).

    Not in a notebook: the exports' chat templates (README: "LoRA and export to Hugging Face").
    """
    user_before, user_after = format_input({"instruction": "\x00", "input": ""}, style).split("\x00")
    q = json.dumps  # a JSON string is a Jinja string literal
    if style == "alpaca":
        assert user_before.startswith(ALPACA_PREAMBLE)
        system = ("{%- set preamble = " + q(ALPACA_PREAMBLE) + " -%}\n"
                  "{%- if messages and messages[0]['role'] == 'system' -%}\n"
                  "{%- set preamble = messages[0]['content'] -%}{%- set messages = messages[1:] -%}\n"
                  "{%- endif -%}\n")
        user = "preamble + " + q(user_before[len(ALPACA_PREAMBLE):])
    else:
        system = ("{%- if messages and messages[0]['role'] == 'system' -%}\n"
                  "{{- raise_exception('the phi3 prompt style has no system message') -}}\n"
                  "{%- endif -%}\n")
        user = q(user_before)
    header = q(response_header(style))
    return (system +
            "{%- for message in messages -%}\n"
            "{%- if message['role'] == 'user' -%}\n"
            "{{- " + user + " + message['content']" + (" + " + q(user_after) if user_after else "") + " -}}\n"
            "{%- elif message['role'] == 'assistant' -%}\n"
            "{{- " + header + " + message['content'] + eos_token -}}\n"
            "{%- else -%}\n"
            "{{- raise_exception('only user and assistant messages (and a first system message) are known') -}}\n"
            "{%- endif -%}\n"
            "{%- endfor -%}\n"
            "{%- if add_generation_prompt -%}{{- " + header + " -}}{%- endif -%}\n")


def _tokenizer_files(context_length, style="alpaca"):
    """{file name: bytes} for the GPT-2 tokenizer, from the bundled encoder.json and vocab.bpe."""
    encoder_json, vocab_bpe = bundled_gpt2_files()
    # GPT-2 has no padding token; pipelines that batch need one, and the chapter pads with this one
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT,
               "pad_token": END_OF_TEXT}
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "add_prefix_space": False,  # "Hello" and " Hello" stay different tokens, as in tiktoken
        "add_bos_token": False,
        "errors": "replace",
        # transformers >= 4.43 reads chat_template.jinja first; older ones and other tools read this
        "chat_template": chat_template(style),
        **special,
    }
    try:
        return {
            # Hugging Face's names for the same two files OpenAI ships.
            "vocab.json": Path(encoder_json).read_bytes(),
            "merges.txt": Path(vocab_bpe).read_bytes(),
            "tokenizer_config.json": _json_bytes(tokenizer_config),
            "special_tokens_map.json": _json_bytes(special),
            "chat_template.jinja": chat_template(style).encode("utf-8"),
        }
    except OSError as exc:
        raise FtlibError(f"cannot read the bundled GPT-2 tokenizer files: {exc}") from exc


def _json_bytes(obj):
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def model_card(run_config, metrics, style, tied):
    """The export's README.md: base model, data, prompt format, settings, scores, how to load.

    `run_config` is the run's config.json, `metrics` its metrics.json (or {}).

    Not in a notebook: written by `python -m ftlib export-hf` (README: "LoRA and export to Hugging Face").
    """
    get = run_config.get
    n = [metrics.get(k) for k in ("n_train", "n_val", "n_test")]
    entries = f"{sum(n)} entries ({n[0]} train, {n[1]} validation, {n[2]} test)" if None not in n else "entries: not recorded"
    settings = ", ".join(f"{k} {get(k)}" for k in ("epochs", "max_steps", "batch_size", "lr", "weight_decay",
                                                   "lora_rank", "mask_prompt", "batching", "seed") if k in run_config)
    scores = []
    for key, name in (("held_out_exact_match", "exact match"), ("held_out_contains_answer", "contains the answer")):
        if metrics.get(key + "_after") is not None:
            before = metrics.get(key + "_before")
            scores.append(f"- {name}: {metrics[key + '_after']:.1%}"
                          + (f" (before fine-tuning: {before:.1%})" if before is not None else ""))
    example = format_input({"instruction": "Name a color.", "input": ""}, style) + response_header(style)
    cfg = get("model_config", {})
    return f"""# GPT-2 fine-tuned with ftlib

A `GPT2LMHeadModel` exported by `python -m ftlib export-hf` from the run `{get('out', '?')}`.

- Base model: {get('model', 'not recorded')} ({cfg.get('n_layers', '?')} layers, {cfg.get('emb_dim', '?')} dimensions, context {cfg.get('context_length', '?')} tokens; output layer {'tied to' if tied else 'separate from'} the token embedding)
- Data: {get('data') or get('dataset') or 'not recorded'}, {entries}
- Training: {settings or 'not recorded'}

## Held-out scores (the run's metrics.json)

{chr(10).join(scores) or 'Not recorded.'}

## Prompt format: {style}

The chat template (chat_template.jinja) writes the prompt the model was trained on; the
answer ends with `<|endoftext|>`. For the message "Name a color.":

```
{example}
```

A system message {'replaces the first line (the preamble)' if style == 'alpaca' else 'is refused: this prompt style has none'}.

## Load it

```python
from transformers import pipeline
chat = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(chat([{{"role": "user", "content": "Name a color."}}], max_new_tokens=50, do_sample=False))
```
"""


def save_hf_model(model, out_dir, source=None, style="alpaca", card=None):
    """Write `model` (a GPTModel, LoRA merged) as a Hugging Face GPT-2 folder; return it.

    Files: config.json, model.safetensors, generation_config.json, vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json and our marker
    ftlib-export.json. The folder is built beside `out_dir` and renamed into place,
    so an interrupted export leaves no half-written folder. `style` picks the chat template
    (chat_template.jinja); `card` is the README.md text (`model_card`), a short default if None. An existing `out_dir`
    is replaced only if it is empty or an earlier export; otherwise FtlibError.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    cfg = model.cfg
    if cfg["vocab_size"] < GPT2_N_VOCAB:
        raise ConfigError(
            f"vocab_size {cfg['vocab_size']} is smaller than GPT-2's tokenizer "
            f"({GPT2_N_VOCAB} tokens): the exported tokenizer would produce ids the model lacks")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, source)
    tied = ties_embeddings(model)
    state = gpt_to_hf_state_dict(model)
    dtype = model.tok_emb.weight.dtype

    with export_folder(out_dir, errors=(OSError, SafetensorError)) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {
            "config.json": _json_bytes(hf_config(cfg, tied, dtype)),
            "generation_config.json": _json_bytes({
                "bos_token_id": END_OF_TEXT_ID,
                "eos_token_id": END_OF_TEXT_ID,
                # GPT-2 has no padding token; the chapter pads with <|endoftext|> too.
                "pad_token_id": END_OF_TEXT_ID,
            }),
            **_tokenizer_files(cfg["context_length"], style),
            "README.md": (card or model_card({"model_config": cfg}, {}, style, tied)).encode("utf-8"),
            EXPORT_MARKER: _json_bytes({
                "source": None if source is None else str(source),
                "gptmodel_config": cfg,
                "tie_word_embeddings": tied,
            }),
        }
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out_dir



def _check_out_dir(out_dir, source=None):
    """Refuse what `check_out_path` refuses ('.', a folder holding the run exported, the
    repository or home), a file, or a non-empty folder that is not an earlier export."""
    from ftlib.plumbing.runfolder import check_out_path

    check_out_path(out_dir, [("the run it exports", source)] if source is not None else [],
                   option="export folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise FtlibError(f"export folder {out_dir} is a file; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file():
        raise FtlibError(
            f"export folder {out_dir} is not empty and is not an earlier export "
            f"(no {EXPORT_MARKER}); choose a new or empty folder")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            raise FtlibError(
                f"export folder {out_dir} holds {', '.join(map(repr, foreign[:3]))}, which an export "
                "did not write; it is replaced whole, so move those files or choose another folder")


def export_hf(run_dir, out_dir):
    """Export the model of a run folder to a Hugging Face GPT-2 folder `out_dir`; return it.

    >>> export_hf("runs/latest", "hf-model")
    >>> # then: GPT2LMHeadModel.from_pretrained("hf-model")
    """
    model, run_config = load_run_model(run_dir)
    return _save_run_export(model, run_config, run_dir, out_dir)


def _save_run_export(model, run_config, run_dir, out_dir):
    style = run_config.get("prompt_style", "alpaca")
    card = model_card(run_config, read_run_metrics(run_dir), style, ties_embeddings(model))
    return save_hf_model(model, out_dir, source=run_dir, style=style, card=card)


def read_run_metrics(run_dir):
    """The run's metrics.json as a dict; {} if it is missing or unreadable (the card says so).

    Not in a notebook: the exports' model cards (README: "LoRA and export to Hugging Face").
    """
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


@contextlib.contextmanager
def export_folder(out_dir, errors=(OSError,)):
    """A temporary folder beside `out_dir` to write an export into. When the block ends,
    its files get the user's usual mode (safetensors writes 0600, mkdtemp makes 0700) and
    it replaces `out_dir` whole; if the block fails, it is removed, and one of `errors`
    (e.g. the disk is full) becomes an FtlibError naming `out_dir`.

    Not in a notebook: how export-hf and export-gguf write their folders.
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as exc:  # a read-only or missing place, a file in the way
        raise FtlibError(f"cannot write the export folder {out_dir}: {exc.strerror or exc}") from None
    try:
        yield tmp
        mask = current_umask()
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        replace_folder(tmp, out_dir)
    except errors as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FtlibError(f"cannot write the export folder {out_dir}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main_export(run_dir, out_dir, log=print):
    """The CLI's `python -m ftlib export-hf RUN_DIR OUT_DIR`: export and say what was written.
    """
    _check_out_dir(Path(out_dir), run_dir)  # before the model is read
    model, run_config = load_run_model(run_dir)
    tied = ties_embeddings(model)
    out = _save_run_export(model, run_config, run_dir, out_dir)
    log(f"Exported {run_dir} to {out}: GPT-2 with {model.cfg['n_layers']} layers, "
        f"output layer {'tied to' if tied else 'separate from'} the token embedding")
    log(f"Chat template: the {run_config.get('prompt_style', 'alpaca')} prompt style; model card: {out / 'README.md'}")
    log(f"Load it with transformers: pipeline('text-generation', model={str(out)!r})")
    return out
