"""Chat with a fine-tuned model: type an instruction, watch the answer arrive token by token.

`chat_reply` is the core, plain Python: it formats the text as the chapter's Alpaca
prompt (`format_input` with an empty input), streams tokens until `<|endoftext|>`,
and yields the answer so far (`extract_response`) after each one. `chat_box` puts it
in an ipywidgets box with a history, temperature and top-k controls, and a toggle to
ask a second model (the base model before fine-tuning) the same question.
`main_chat` is the same in a terminal (`python -m ftlib chat RUN`): `stream_answer`
writes each answer piece by piece as it is generated.

The chat box is a widget and needs a running kernel: a saved notebook shows only a
note in its place (see ftlib/classroom/view.py's docstring for why the views are plain HTML).
"""

import html

from ftlib.data.instructions import format_input
from ftlib.model.generate import MAX_NEW_TOKENS, generate_stream, text_to_token_ids
from ftlib.evaluation.responses import RESPONSE_HEADERS, STOP_MARKERS, extract_response
from ftlib.data.tokenizer import END_OF_TEXT_ID


def _has_ended(continuation):
    """True once the model, after its response header, starts a new prompt section."""
    text = continuation.lstrip()
    for header in RESPONSE_HEADERS:
        if text.startswith(header):
            text = text[len(header):]
            break
    return any(marker in text for marker in STOP_MARKERS)


def chat_reply(model, tokenizer, text, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0,
               top_k=None, style="alpaca"):
    """Yield the model's answer to `text` so far, after each new token.

    The prompt is `format_input({"instruction": text, "input": ""}, style)`;
    generation stops at `<|endoftext|>`, after `max_new_tokens`, or when the model
    starts a new prompt section. `temperature=0` is greedy; seed `torch` to repeat a
    sampled answer. The last value yielded is the full answer. Switches the model to
    eval mode and restores its mode afterwards.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    prompt = format_input({"instruction": text, "input": ""}, style)
    idx = text_to_token_ids(prompt, tokenizer).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        new_ids = []
        for token in generate_stream(model, idx, max_new_tokens, model.cfg["context_length"],
                                     temperature, top_k, eos_id=END_OF_TEXT_ID):
            new_ids.append(token)
            continuation = tokenizer.decode(new_ids)
            yield extract_response(prompt + continuation, prompt)
            if _has_ended(continuation):
                return
    finally:
        model.train(was_training)


def _history_html(turns):
    """The conversation as HTML: (who, text) pairs, newest last."""
    rows = [f'<div class="ftlib-chat-{who.replace(" ", "-")}" style="margin:3px 0"><b>{who}:</b> '
            f'<span style="white-space:pre-wrap">{html.escape(text)}</span></div>' for who, text in turns]
    return f'<div class="ftlib-chat-history">{"".join(rows)}</div>'


class ChatBox:
    """The widget of `chat_box`; without a kernel (a saved notebook) only a note shows.

    Not in a notebook: what chat_box returns (learners only display it).
    """

    def __init__(self, widget):
        self.widget = widget

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = ("<p><i>A chat box with the model: run the notebook "
                               "(it needs a running kernel) to talk to it.</i></p>")
        return bundle


def chat_box(model, tokenizer, base_model=None, max_new_tokens=MAX_NEW_TOKENS):
    """An ipywidgets chat with `model`: a history, a text box, "send", temperature and
    top-k, and "use the base model" to ask `base_model` instead (e.g. before fine-tuning).

    Answers stream in as `chat_reply` yields them. Runs on the CPU offline.

    Introduced in: notebooks/07_evaluation.ipynb
    """
    import ipywidgets as widgets

    turns = []
    history = widgets.HTML(_history_html(turns))
    text = widgets.Text(placeholder="Ask something, e.g. What is the capital of France?")
    send = widgets.Button(description="send", button_style="primary")
    temperature = widgets.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.1, description="temperature")
    top_k = widgets.IntSlider(value=0, min=0, max=50, description="top-k (0: all)")
    use_base = widgets.Checkbox(value=False, description="use the base model", disabled=base_model is None)

    def on_send(_):
        question, text.value = text.value.strip(), ""
        if not question:
            return
        who = "base model" if use_base.value else "fine-tuned"
        turns.extend([("you", question), (who, "")])
        for answer in chat_reply(base_model if use_base.value else model, tokenizer, question,
                                 max_new_tokens, temperature.value, top_k.value or None):
            turns[-1] = (who, answer)
            history.value = _history_html(turns)
        history.value = _history_html(turns)

    send.on_click(on_send)
    controls = widgets.HBox([temperature, top_k, use_base])
    return ChatBox(widgets.VBox([history, widgets.HBox([text, send]), controls],
                                layout=widgets.Layout(border="1px solid #ccc", padding="4px")))


# --- python -m ftlib chat RUN: the same answers in a terminal ------------------------

def _settled(answer):
    """The part of a growing answer that can no longer change: without trailing space,
    a half-decoded character, or a tail that may begin a stop marker or a header."""
    text = answer.rstrip().rstrip("\ufffd")
    for i in range(len(text)):
        if any(marker.startswith(text[i:]) for marker in STOP_MARKERS + RESPONSE_HEADERS):
            return text[:i].rstrip()
    return text


def stream_answer(model, tokenizer, text, write, **settings):
    """Write the answer to `text` piece by piece as `chat_reply` makes it (`write` takes
    each new piece); returns the full answer.

    Not in a notebook: the terminal's chat (`python -m ftlib chat`); notebooks use chat_box.
    """
    shown, answer = "", ""
    for answer in chat_reply(model, tokenizer, text, **settings):
        now = _settled(answer)
        if now.startswith(shown) and len(now) > len(shown):
            write(now[len(shown):])
            shown = now
    if answer.startswith(shown):
        write(answer[len(shown):])
    else:  # rare: the answer changed after it was shown
        write("\n" + answer)
    return answer


def load_chat_model(run_dir, base=False):
    """(model, what it is) for `python -m ftlib chat RUN`: the run's model, or with
    `base` the pretrained model the run started from (the committed tiny base, or the
    run's GPT-2 weights already on disk); ConfigError when there is none to load.

    Not in a notebook: the terminal's chat; notebook 07 loads its models itself.
    """
    from pathlib import Path

    from ftlib.config import model_entry
    from ftlib.model.files import load_run_model, read_run_config
    from ftlib.plumbing.errors import ConfigError, FtlibError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FtlibError(f"run folder {run_dir} not found (name a run folder of "
                         "`python -m ftlib finetune` or `dpo`, e.g. runs/latest)")
    if not base:
        model, config = load_run_model(run_dir)
        return model, config, f"{run_dir} (fine-tuned from {config.get('model', '?')})"
    config = read_run_config(run_dir)
    name = config.get("model")
    entry = model_entry(name)
    if entry.kind == "base":
        import ftlib.model.base as base_module
        from ftlib.plumbing.envcheck import check_bundled_files

        check_bundled_files([(base_module.BASE_MODEL_DIR, "the pretrained base", "")])
        model = base_module.load_base_model(base_module.BASE_MODEL_DIR)[0]
        return model.eval(), config, f"the base model of {run_dir} ({name}, before fine-tuning)"
    if entry.kind != "gpt2":
        raise ConfigError(f"--base: {run_dir} was trained from random weights (--model {name}): "
                          "there is no pretrained base to talk to")
    from ftlib.model.gpt import GPTModel
    from ftlib.model.weights import SAFETENSORS_FILENAME, download_and_load_hf_gpt2

    folder = Path(config.get("weights_dir") or "gpt2") / entry.download
    if not (folder / SAFETENSORS_FILENAME).is_file():
        raise ConfigError(f"--base: the run's base, {name}, would need a download: "
                          f"{folder / SAFETENSORS_FILENAME} is not there (a run with "
                          f"`--model \"{name}\"` downloads it)")
    model = GPTModel(dict(entry.config))
    download_and_load_hf_gpt2(model, entry.download, folder.parent, progress=False)
    return model.eval(), config, f"the base model of {run_dir} ({name}, before fine-tuning)"


def chat_loop(model, tokenizer, lines, write, interactive, ask=None, **settings):
    """Answer each question of `lines` (an iterator of lines), streaming through `write`.

    Interactive (`ask(prompt)` reads a line, EOFError at Ctrl-D) or piped: blank lines
    are skipped, /quit or the end of the input ends. Piped, each answer is one line
    (a line break inside it is written as a space), so answers and questions pair up.

    Not in a notebook: the terminal's chat (`python -m ftlib chat`).
    """
    end_line = write  # the line's end, after the answer
    if not interactive:  # line breaks inside an answer written as spaces
        def write(text, raw=write):
            raw(text.replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    while True:
        try:
            line = ask("you> ") if interactive else next(lines)
        except (EOFError, StopIteration):
            if interactive:
                write("\n")
            return
        question = line.strip()
        if question == "/quit":
            return
        if not question:
            continue
        if interactive:
            write("model> ")
        stream_answer(model, tokenizer, question, write, **settings)
        end_line("\n")


def main_chat(run_dir, base=False, temperature=0.0, top_k=None, max_new_tokens=MAX_NEW_TOKENS):
    """`python -m ftlib chat RUN`: a terminal chat with a run folder's model (or its base).

    Not in a notebook: the command line's chat; notebooks use chat_box.
    """
    import sys

    from ftlib.data.tokenizer import get_gpt2_tokenizer

    model, config, what = load_chat_model(run_dir, base)
    style = config.get("prompt_style", "alpaca")
    interactive = sys.stdin.isatty()

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    if interactive:
        sampling = ("greedy" if not temperature else
                    f"temperature {temperature:g}" + (f", top-k {top_k}" if top_k else ""))
        write(f"Chatting with {what}: {style} prompt, {sampling}, up to {max_new_tokens} new tokens.\n"
              "Each question is answered on its own: the model does not see earlier turns.\n"
              "/quit or Ctrl-D ends.\n")
    try:
        chat_loop(model, get_gpt2_tokenizer(), iter(sys.stdin), write, interactive, ask=input,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, style=style)
    except BrokenPipeError:  # `chat RUN | head -1`: the reader left; Python's advice, no traceback at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
