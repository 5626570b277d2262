"""See a batch the way the loss sees it: one column per position, the input token
above the target it predicts, each coloured by its role.

Roles: prompt, response, end-of-text, padding (and "token" where a batch does not
say which tokens were the prompt). The colour of a token is its role, whatever the
mask; a target that the loss ignores (`-100`) is struck through and faded, and still
shows the token it hides. Each position is an inline-block column (index, input,
target, all one width), so the pairs wrap together and stay aligned on any screen.

**Why plain HTML and no widget.** Every view here is one `text/html` output with
inline styles, and the explorer's controls are `<details>`/`<summary>` elements:
- a notebook opened without a kernel, or from a fresh clone (untrusted), shows HTML
  through JupyterLab's sanitizer, which removes `<script>`, `<style>` and `name`
  attributes (so no JavaScript, no stylesheet, no radio groups) but keeps
  `<details open>`, classes, titles and inline styles: the explorer works there;
- an ipywidgets output needs its widget state in the notebook: committed without
  it, JupyterLab shows `VBox(children=...)`; after a user runs and saves, it shows
  "Error displaying widget: model not found" (JupyterLab does not save widget state
  by default). Plain HTML is data in the notebook, so it survives save and reopen;
- running the cell again (Run All) replaces the output with the same HTML, so there
  is one view, never a static copy stacked over a live one.
The explorer therefore pre-renders every entry it is given, both with and without
the prompt masked. The chat box (ftlib/classroom/chat.py) is the one widget: it needs a kernel.

Helpers take the numbers from ftlib's own functions (`instruction_collate_fn`,
`pack_collate_fn`, the model's logits), so what you see is what the loss sees.
"""

import html

import torch
import torch.nn.functional as F

from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn, split_item
from ftlib.data.tokenizer import END_OF_TEXT_ID

ROLE_COLOURS = {
    "prompt": "#cfe2ff",       # blue: the instruction (and input)
    "response": "#d1e7dd",     # green: what the model should learn to write
    "end-of-text": "#ffe69c",  # yellow: the one <|endoftext|> that ends a response
    "padding": "#e9ecef",      # grey: filler so rows have one length
    "token": "#f3e8ff",        # lilac: a real token, prompt or response not known
}
IGNORED_STYLE = "text-decoration:line-through;opacity:0.45"  # a -100 target: not in the loss
SEGMENT_COLOURS = ("#cfe2ff", "#d1e7dd", "#ffe69c", "#f8d7da", "#e2d9f3", "#d2f4ea")
# Styles shared by a row's columns are set once on the row and inherited (the
# HTML of 8 entries, both ways, stays near 150 kB).
_ROW_STYLE = "font:12px/1.35 monospace;margin:4px 0"
_COLUMN_STYLE = "display:inline-block;white-space:pre;text-align:center;margin:0 2px 3px 0"


def input_roles(n_tokens, prompt_length, row_length):
    """Role of each input position of a padded row: (row_length,) list of str.

    `n_tokens` is the item's own length; position n_tokens holds the appended
    end-of-text, later positions are padding. `prompt_length=None`: the first
    n_tokens are "token" (prompt and response not told apart).

    Not in a notebook: a helper of the views, which colour the tokens by these roles.
    """
    roles = []
    for i in range(row_length):
        if i < n_tokens:
            roles.append("token" if prompt_length is None else
                         "prompt" if i < prompt_length else "response")
        elif i == n_tokens:
            roles.append("end-of-text")
        else:
            roles.append("padding")
    return roles


def token_text(tokenizer, token_id):
    """A token as the views print it: a newline as ↵, a space as ·, nothing as ∅.

    Not in a notebook: the one spelling of tokens in every view (and in the browser test).
    """
    text = tokenizer.decode([token_id])
    return text.replace("\n", "↵").replace(" ", "·") or "∅"


def _chip(text, colour, extra="", cls=""):
    """A token on its own line of a column (a div: block, so as wide as the column)."""
    cls = f' class="{cls}"' if cls else ""
    return f'<div{cls} style="background:{colour}{extra}">{html.escape(text)}</div>'


def _column(label, chips, title, boundary=False):
    """One position: a small label above its chips, as one inline-block box."""
    edge = ";border-left:2px solid #333;padding-left:2px" if boundary else ""
    return (f'<span class="ftlib-pos" title="{html.escape(title)}" style="{_COLUMN_STYLE}{edge}">'
            f'<div><small>{label}</small></div>{"".join(chips)}</span>')


def _target_chip(tokenizer, target, hidden, colour):
    """A target chip; a -100 one shows the token it hides, struck through."""
    if target == IGNORE_INDEX:
        return _chip(token_text(tokenizer, hidden), colour, ";" + IGNORED_STYLE, "ftlib-ignored")
    return _chip(token_text(tokenizer, target), colour)


def _ids_title(i, input_id, target, hidden):
    target_text = f"-100 (hides {hidden})" if target == IGNORE_INDEX else target
    return f"{i}: id {input_id} → {target_text}"


def _row_columns(tokenizer, row_in, row_tg, roles, pad_token_id, max_tokens=None):
    """The columns of one row; roles has len(row_in) + 1 entries (the last for the
    token after the row). The token a -100 target hides is the next input (or
    padding after the last)."""
    shown = len(row_in) if max_tokens is None else min(max_tokens, len(row_in))
    columns = []
    for i in range(shown):
        hidden = row_in[i + 1] if i + 1 < len(row_in) else pad_token_id
        tg_role = roles[i + 1]
        columns.append(_column(i, [
            _chip(token_text(tokenizer, row_in[i]), ROLE_COLOURS[roles[i]]),
            _target_chip(tokenizer, row_tg[i], hidden, ROLE_COLOURS[tg_role])],
            _ids_title(i, row_in[i], row_tg[i], hidden)))
    more = f'<span class="ftlib-more"> … {len(row_in) - shown} more</span>' if shown < len(row_in) else ""
    return "".join(columns) + more


def legend_html():
    """A one-line colour legend, with the look of an ignored target.

    Not in a notebook: part of every token view's HTML.
    """
    chips = [_chip(role, colour, ";display:inline-block") for role, colour in ROLE_COLOURS.items()]
    chips.append(_chip("-100: ignored", "#fff", ";display:inline-block;" + IGNORED_STYLE))
    return (f'<div class="ftlib-legend" style="{_ROW_STYLE}">{" ".join(chips)} '
            '<span style="color:#777">per position: index, input, the target it predicts (hover for ids)</span></div>')


def _row_html(tokenizer, row_in, row_tg, roles, pad_token_id, header, max_tokens=None):
    n_targets = sum(t != IGNORE_INDEX for t in row_tg)
    return (f'<div class="ftlib-row" style="{_ROW_STYLE}"><div>{header}: {len(row_in)} positions, '
            f'<b class="ftlib-count">{n_targets}</b> targets in the loss</div>'
            f'{_row_columns(tokenizer, row_in, row_tg, roles, pad_token_id, max_tokens)}</div>')


def token_view_html(batch, tokenizer, rows=None, allowed_max_length=None,
                    pad_token_id=END_OF_TEXT_ID, max_tokens=None, mask_prompt=True):
    """HTML of `instruction_collate_fn(batch)`: per row, inputs above their targets, by role.

    `batch` items are token-id lists or `(token_ids, prompt_length)` tuples (then
    the prompt is masked, as in training with --mask-prompt; `mask_prompt=False`
    collates them as plain lists, and still colours their prompt). `rows` picks rows
    to show (all by default); `max_tokens` cuts long rows for display.

    Not in a notebook: the HTML behind TokenView, which notebook 03 displays.
    """
    collated = batch if mask_prompt else [split_item(item)[0] for item in batch]
    inputs, targets = instruction_collate_fn(collated, pad_token_id=pad_token_id,
                                             allowed_max_length=allowed_max_length)
    parts = [legend_html()]
    for r in rows if rows is not None else range(len(batch)):
        ids, prompt_length = split_item(batch[r])
        row_in, row_tg = inputs[r].tolist(), targets[r].tolist()
        roles = input_roles(len(ids), prompt_length, len(row_in) + 1)
        parts.append(_row_html(tokenizer, row_in, row_tg, roles, pad_token_id, f"<b>row {r}</b>", max_tokens))
    return f'<div class="ftlib-view">{"".join(parts)}</div>'


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


class HTMLView:
    """A view's HTML, shown as HTML by Jupyter and as a one-line summary in text.

    Not in a notebook: what the view functions return (learners only display it).
    """

    def __init__(self, html_text, summary):
        self.html, self.summary = html_text, summary

    def _repr_html_(self):
        return self.html

    def __repr__(self):
        return f"<{self.summary}; open in Jupyter to see it>"


def _entry_view(item, tokenizer, mask_prompt, max_tokens, allowed_max_length):
    """One entry, prompt masked or not, as a `<details>` the reader opens and closes."""
    inputs, targets = instruction_collate_fn([item] if mask_prompt else [list(item[0])],
                                             allowed_max_length=allowed_max_length)
    row_in, row_tg = inputs[0].tolist(), targets[0].tolist()
    roles = input_roles(len(item[0]), item[1], len(row_in) + 1)
    label = "prompt masked" if mask_prompt else "prompt not masked"
    row = _row_html(tokenizer, row_in, row_tg, roles, END_OF_TEXT_ID, label, max_tokens)
    kind = "ftlib-masked" if mask_prompt else "ftlib-unmasked"
    n_targets = sum(t != IGNORE_INDEX for t in row_tg)
    return (f'<details class="{kind}"{" open" if mask_prompt else ""} style="margin-left:1em">'
            f'<summary style="cursor:pointer">{label}: {n_targets} targets</summary>{row}</details>')


def token_explorer(items, tokenizer, max_tokens=None, allowed_max_length=None):
    """Every entry of `items`, with and without prompt masking, as one HTML view.

    `items` are `(token_ids, prompt_length)` pairs, e.g.
    `InstructionDataset(...).with_prompt_lengths()`. Click an entry to open it, and
    "prompt masked" / "prompt not masked" to compare what the loss sees; entry 0 is
    open. Works without a kernel and in a saved notebook (see the module docstring);
    all entries are in the HTML, so pass a few (8 make about 200 kB).

    Introduced in: notebooks/03_ignore_index_masking.ipynb
    """
    parts = [legend_html()]
    for e in range(len(items)):
        ids, prompt_length = items[e]
        views = "".join(_entry_view((ids, prompt_length), tokenizer, mask, max_tokens, allowed_max_length)
                        for mask in (True, False))
        parts.append(f'<details class="ftlib-entry"{" open" if e == 0 else ""}><summary style="cursor:pointer">'
                     f'<b>entry {e}</b>: {len(ids)} tokens ({prompt_length} prompt, '
                     f'{len(ids) - prompt_length} response)</summary>{views}</details>')
    return HTMLView(f'<div class="ftlib-explorer">{"".join(parts)}</div>',
                    f"token explorer of {len(items)} entries")


def batch_view(inputs, targets, tokenizer, pad_token_id=END_OF_TEXT_ID, max_tokens=None):
    """The rows of a collated batch (e.g. one from a `DataLoader`), inputs above targets.

    A row's own tokens end at its first `pad_token_id` input (the end-of-text that
    collate appends); after it, padding. Prompt and response are not told apart
    here (a batch does not carry prompt lengths), but masked targets show as -100.

    Introduced in: notebooks/04_dataloaders.ipynb
    """
    parts = [legend_html()]
    for r, (row_in, row_tg) in enumerate(zip(inputs.tolist(), targets.tolist())):
        n_tokens = row_in.index(pad_token_id) if pad_token_id in row_in else len(row_in)
        roles = input_roles(n_tokens, None, len(row_in) + 1)
        parts.append(_row_html(tokenizer, row_in, row_tg, roles, pad_token_id,
                               f"<b>row {r}</b> ({n_tokens} tokens + {len(row_in) - n_tokens} padding)", max_tokens))
    return HTMLView(f'<div class="ftlib-batch">{"".join(parts)}</div>',
                    f"batch view of {inputs.shape[0]} rows x {inputs.shape[1]} positions")


def top_predictions(model, item, k=3, mask_prompt=True):
    """Per position of `item`: input, target, the model's top-k next tokens and the loss.

    The item is collated by `instruction_collate_fn` (prompt masked if `mask_prompt`
    and the item is a pair). Returns a list of dicts with keys position, input,
    target (-100 if ignored), top (k pairs (token id, probability), most likely first)
    and loss (cross-entropy at that target; None where the target is ignored). The
    mean of the losses is the batch loss of `calc_loss_batch` for this one item.

    Not in a notebook: the numbers behind `prediction_view`, which notebook 06 shows.
    """
    ids, prompt_length = split_item(item)
    inputs, targets = instruction_collate_fn([item] if mask_prompt else [ids])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(inputs.to(device))[0].float().cpu()  # (num_tokens, vocab)
    model.train(was_training)
    losses = F.cross_entropy(logits, targets[0], reduction="none")  # 0 where ignored
    probs, top_ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)  # (num_tokens, k) each
    return [{"position": i, "input": int(inputs[0, i]), "target": int(t),
             "top": list(zip(top_ids[i].tolist(), probs[i].tolist())),
             "loss": None if t == IGNORE_INDEX else float(losses[i])}
            for i, t in enumerate(targets[0].tolist())]


def _prediction_column(tokenizer, p, hidden, role):
    """Input, target, the top-k guesses (the right one bold) and the loss of one position."""
    guesses = [_chip(f"{prob:.2f} {token_text(tokenizer, tid)}", "#fff",
                     ";font-weight:bold;color:#0a6e31" if tid == p["target"] else ";color:#555", "ftlib-guess")
               for tid, prob in p["top"]]
    loss = "-" if p["loss"] is None else f"{p['loss']:.2f}"
    return _column(p["position"], [
        _chip(token_text(tokenizer, p["input"]), ROLE_COLOURS[role[0]]),
        _target_chip(tokenizer, p["target"], hidden, ROLE_COLOURS[role[1]]),
        *guesses, _chip(loss, "#fff", ";color:#a00", "ftlib-loss")],
        _ids_title(p["position"], p["input"], p["target"], hidden))


def prediction_view(model, tokenizer, item, k=3, mask_prompt=True, title="", positions=None):
    """What the model predicts at each position of `item`, and the loss at each target.

    Per position: the input, the target, the model's top-`k` tokens with their
    probabilities (the target in bold green when it is among them) and the target's
    cross-entropy ("-" where it is ignored). `positions` (a range) picks columns; the
    header gives the mean loss over all targets. Call it before and after fine-tuning.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    preds = top_predictions(model, item, k, mask_prompt)
    ids, prompt_length = split_item(item)
    roles = input_roles(len(ids), prompt_length, len(preds) + 1)
    row_in = [p["input"] for p in preds]
    shown = preds if positions is None else [preds[i] for i in positions]
    columns = "".join(_prediction_column(tokenizer, p, row_in[p["position"] + 1] if p["position"] + 1 < len(row_in)
                                         else END_OF_TEXT_ID, (roles[p["position"]], roles[p["position"] + 1]))
                      for p in shown)
    losses = [p["loss"] for p in preds if p["loss"] is not None]
    mean = sum(losses) / len(losses)
    header = (f'<div>{html.escape(title)} mean loss <b class="ftlib-mean-loss">{mean:.3f}</b> over '
              f'{len(losses)} targets (per position: input, target, top {k} with probabilities, loss)</div>')
    return HTMLView(f'<div class="ftlib-predictions" style="{_ROW_STYLE}">{header}{columns}</div>',
                    f"predictions at {len(preds)} positions, mean loss {mean:.3f}")


def packed_view(inputs, targets, extras, tokenizer, rows=None, max_tokens=None):
    """Packed rows from `pack_collate_fn`: each example in its own colour, a bar where
    one ends and the next begins, and above each column its position id (restarting at 0).

    Introduced in: notebooks/08_faster_training.ipynb
    """
    parts = []
    for r in rows if rows is not None else range(inputs.shape[0]):
        row_in, row_tg = inputs[r].tolist(), targets[r].tolist()
        pos, ex = extras["position_ids"][r].tolist(), extras["example_ids"][r].tolist()
        shown = len(row_in) if max_tokens is None else min(max_tokens, len(row_in))
        columns = []
        for i in range(shown):
            colour = ROLE_COLOURS["padding"] if ex[i] < 0 else SEGMENT_COLOURS[ex[i] % len(SEGMENT_COLOURS)]
            hidden = row_in[i + 1] if i + 1 < len(row_in) else END_OF_TEXT_ID
            columns.append(_column(pos[i], [
                _chip(token_text(tokenizer, row_in[i]), colour),
                _target_chip(tokenizer, row_tg[i], hidden, colour)],
                f"column {i}, example {ex[i]}; " + _ids_title(pos[i], row_in[i], row_tg[i], hidden),
                boundary=i > 0 and ex[i] != ex[i - 1]))
        examples = sorted(set(e for e in ex if e >= 0), key=ex.index)
        n_targets = sum(t != IGNORE_INDEX for t in row_tg)
        parts.append(f'<div class="ftlib-row" style="{_ROW_STYLE}"><div><b>row {r}</b>: examples {examples}, '
                     f'{ex.count(-1)} padding, <b class="ftlib-count">{n_targets}</b> targets in the loss</div>'
                     f'{"".join(columns)}</div>')
    return HTMLView(f'<div class="ftlib-packed">{"".join(parts)}</div>',
                    f"packed view of {inputs.shape[0]} rows x {inputs.shape[1]} positions")
