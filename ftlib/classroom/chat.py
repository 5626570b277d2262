"""Chat with a fine-tuned model: type an instruction, watch the answer arrive token by token.

`chat_reply` is the core, plain Python: it formats the text as the chapter's Alpaca
prompt (`format_input` with an empty input), streams tokens until `<|endoftext|>`,
and yields the answer so far (`extract_response`) after each one. `chat_box` puts it
in an ipywidgets box with a history, temperature and top-k controls, and a toggle to
ask a second model (the base model before fine-tuning) the same question.

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
