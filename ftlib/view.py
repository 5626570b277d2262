"""See a batch the way the loss sees it: every token coloured by its role.

For each row of a collated batch, two lines of tokens: the inputs, and under
each input the target it must predict (the next token), or `-100` where the
loss ignores it. Roles: prompt, response, end-of-text, padding, ignored target.

`token_view_html` returns plain HTML (so a saved notebook shows it on GitHub and
nbval can compare it); `token_explorer` wraps it in ipywidgets, with a slider
over entries and a toggle for prompt masking, for learners and instructors.
"""

import html

from ftlib.collate import IGNORE_INDEX, instruction_collate_fn, split_item
from ftlib.tokenizer import END_OF_TEXT_ID

ROLE_COLOURS = {
    "prompt": "#cfe2ff",       # blue: the instruction (and input)
    "response": "#d1e7dd",     # green: what the model should learn to write
    "end-of-text": "#ffe69c",  # yellow: the one <|endoftext|> that ends a response
    "padding": "#e9ecef",      # grey: filler so rows have one length
    "ignored": "#f8d7da",      # red: a target that cross_entropy skips (-100)
}


def input_roles(n_tokens, prompt_length, row_length):
    """Role of each input position of a padded row: (row_length,) list of str.

    `n_tokens` is the item's own length; position n_tokens holds the appended
    end-of-text, later positions are padding.

    Not in a notebook: a helper of token_view_html, which colours the tokens by these roles.
    """
    roles = []
    for i in range(row_length):
        if i < n_tokens:
            roles.append("prompt" if prompt_length is not None and i < prompt_length else "response")
        elif i == n_tokens:
            roles.append("end-of-text")
        else:
            roles.append("padding")
    return roles


def _token_text(tokenizer, token_id):
    if token_id == IGNORE_INDEX:
        return "-100"
    text = tokenizer.decode([token_id])
    # make whitespace visible: a newline as ↵, a leading space as ·
    return text.replace("\n", "↵").replace(" ", "·") or "∅"


def _chip(text, role, title):
    return (f'<span title="{html.escape(title)}" style="background:{ROLE_COLOURS[role]};'
            f'padding:1px 3px;margin:1px;border-radius:3px;font-family:monospace;'
            f'display:inline-block;white-space:pre">{html.escape(text)}</span>')


def legend_html():
    """A one-line colour legend.

    Not in a notebook: part of every token view's HTML (token_view_html).
    """
    return " ".join(_chip(role, role, role) for role in ROLE_COLOURS)


def token_view_html(batch, tokenizer, rows=None, allowed_max_length=None,
                    pad_token_id=END_OF_TEXT_ID, max_tokens=None):
    """HTML showing inputs and targets of `instruction_collate_fn(batch)` by role.

    `batch` items are token-id lists or `(token_ids, prompt_length)` tuples (then
    the prompt is masked, as in training with --mask-prompt). `rows` picks rows to
    show (all by default); `max_tokens` cuts long rows for display.

    Introduced in: notebooks/03_ignore_index_masking.ipynb
    """
    inputs, targets = instruction_collate_fn(batch, pad_token_id=pad_token_id,
                                             allowed_max_length=allowed_max_length)
    parts = [f"<div>{legend_html()}</div>"]
    for r in rows if rows is not None else range(len(batch)):
        item = batch[r]
        ids, prompt_length = split_item(item)
        row_in, row_tg = inputs[r].tolist(), targets[r].tolist()
        # input role of position i+1 is the role of the token that target i predicts
        roles = input_roles(len(ids), prompt_length, len(row_in) + 1)
        shown = len(row_in) if max_tokens is None else min(max_tokens, len(row_in))
        in_chips, tg_chips = [], []
        for i in range(shown):
            in_chips.append(_chip(_token_text(tokenizer, row_in[i]), roles[i], f"input {i}: id {row_in[i]}"))
            tg_role = "ignored" if row_tg[i] == IGNORE_INDEX else roles[i + 1]
            tg_chips.append(_chip(_token_text(tokenizer, row_tg[i]), tg_role, f"target {i}: id {row_tg[i]}"))
        more = f" … ({len(row_in) - shown} more)" if shown < len(row_in) else ""
        n_targets = sum(t != IGNORE_INDEX for t in row_tg)
        parts.append(
            f"<div style='margin-top:6px'><b>row {r}</b>: {len(row_in)} positions, "
            f"{n_targets} targets in the loss<br>"
            f"<span style='display:inline-block;width:4.5em'>inputs</span>{''.join(in_chips)}{more}<br>"
            f"<span style='display:inline-block;width:4.5em'>targets</span>{''.join(tg_chips)}{more}</div>"
        )
    return "\n".join(parts)


class TokenView:
    """Displays as the HTML of `token_view_html` in Jupyter (and as a summary in text).

    Introduced in: notebooks/03_ignore_index_masking.ipynb
    """

    def __init__(self, batch, tokenizer, **kwargs):
        self.html = token_view_html(batch, tokenizer, **kwargs)
        self.n_rows = len(kwargs.get("rows") or batch)

    def _repr_html_(self):
        return self.html

    def __repr__(self):
        return f"<TokenView of {self.n_rows} row(s); open in Jupyter to see colours>"


def token_explorer(items, tokenizer, max_tokens=None):
    """An ipywidgets explorer: a slider over entries, a toggle for prompt masking.

    `items` are `(token_ids, prompt_length)` pairs, e.g.
    `InstructionDataset(...).with_prompt_lengths()`. Returns the widget; the
    static HTML of its first state is displayed too, so a saved notebook shows it.

    Introduced in: notebooks/03_ignore_index_masking.ipynb
    """
    import ipywidgets as widgets
    from IPython.display import HTML, display

    slider = widgets.IntSlider(value=0, min=0, max=len(items) - 1, description="entry")
    mask = widgets.Checkbox(value=True, description="mask the prompt")
    out = widgets.HTML()

    def render(_=None):
        ids, prompt_length = items[slider.value]
        item = (ids, prompt_length) if mask.value else list(ids)
        out.value = token_view_html([item], tokenizer, max_tokens=max_tokens)

    slider.observe(render, names="value")
    mask.observe(render, names="value")
    render()
    display(HTML(out.value))  # the static picture for viewers without a kernel
    return widgets.VBox([widgets.HBox([slider, mask]), out])
