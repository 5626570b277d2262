"""The views show what ftlib computes: tokens and counts from instruction_collate_fn,
losses from the model, segments from pack_collate_fn; and they stay plain HTML that
JupyterLab's sanitizer keeps (no script, no style element)."""

import re
from html.parser import HTMLParser

import pytest
import torch
import torch.nn.functional as F

from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn
from ftlib.data.instructions import BUNDLED_DATA_PATH, InstructionDataset, load_instruction_data
from ftlib.model.gpt import GPTModel, get_config
from ftlib.data.packing import pack_collate_fn
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.classroom.view import (ROLE_COLOURS, batch_view, packed_view, prediction_view, token_explorer,
                        token_text, token_view_html, top_predictions)


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


@pytest.fixture(scope="module")
def items(tokenizer):
    return InstructionDataset(load_instruction_data(BUNDLED_DATA_PATH)[:3], tokenizer).with_prompt_lengths()


class Columns(HTMLParser):
    """Each `ftlib-pos` column as a list of its lines (label, input, target, ...), with
    the target's ignored flag and background colours."""

    def __init__(self, text):
        super().__init__()
        self.columns, self.depth, self.line = [], 0, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "ftlib-pos" in (attrs.get("class") or ""):
            self.columns.append({"lines": [], "ignored": [], "colours": []})
        elif self.columns and tag == "div" and self.line is None and self._open():
            self.line = ""
            self.columns[-1]["ignored"].append("ftlib-ignored" in (attrs.get("class") or ""))
            colour = re.search(r"background:(#\w+)", attrs.get("style") or "")
            self.columns[-1]["colours"].append(colour.group(1) if colour else None)
        if tag == "span" and "ftlib-pos" in (attrs.get("class") or ""):
            self.depth = 1
        elif self.depth and tag == "span":
            self.depth += 1

    def _open(self):
        return self.depth > 0

    def handle_endtag(self, tag):
        if tag == "div" and self.line is not None:
            self.columns[-1]["lines"].append(self.line)
            self.line = None
        elif tag == "span" and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.line is not None:
            self.line += data


def test_columns_put_each_input_above_the_target_it_predicts(items, tokenizer):
    inputs, targets = instruction_collate_fn(list(items))
    cols = Columns(token_view_html(list(items), tokenizer, rows=[1])).columns
    row_in, row_tg = inputs[1].tolist(), targets[1].tolist()
    assert len(cols) == len(row_in)
    for i, col in enumerate(cols):
        label, shown_in, shown_tg = col["lines"]
        assert label == str(i) and shown_in == token_text(tokenizer, row_in[i])
        # an ignored target still names the token it hides: the next input (or padding)
        hidden = row_in[i + 1] if i + 1 < len(row_in) else 50256
        assert shown_tg == token_text(tokenizer, hidden if row_tg[i] == IGNORE_INDEX else row_tg[i])
        assert col["ignored"][2] == (row_tg[i] == IGNORE_INDEX)


def test_the_prompt_keeps_its_colour_whatever_the_mask(items, tokenizer):
    ids, prompt_length = items[0]
    for mask in (True, False):
        cols = Columns(token_view_html([items[0]], tokenizer, mask_prompt=mask)).columns
        assert [c["colours"][1] for c in cols[:prompt_length]] == [ROLE_COLOURS["prompt"]] * prompt_length
        assert cols[prompt_length]["colours"][1] == ROLE_COLOURS["response"]
    masked = Columns(token_view_html([items[0]], tokenizer, mask_prompt=True)).columns
    unmasked = Columns(token_view_html([items[0]], tokenizer, mask_prompt=False)).columns
    assert sum(c["ignored"][2] for c in masked) == prompt_length - 1
    assert sum(c["ignored"][2] for c in unmasked) == 0


def test_explorer_holds_every_entry_both_ways_with_collates_counts(items, tokenizer):
    text = token_explorer(items, tokenizer).html
    counts = [int(n) for n in re.findall(r'class="ftlib-count">(\d+)<', text)]
    expected = []
    for ids, prompt_length in items:
        for item in ((ids, prompt_length), list(ids)):
            expected.append(int((instruction_collate_fn([item])[1] != IGNORE_INDEX).sum()))
    assert counts == expected
    assert text.count('class="ftlib-entry" open') == 1  # entry 0 starts open
    assert text.count('<details class="ftlib-entry"') == len(items)


@pytest.mark.parametrize("view", ["explorer", "batch", "packed"])
def test_views_are_html_the_sanitizer_keeps(items, tokenizer, view):
    inputs, targets = instruction_collate_fn(list(items))
    text = {"explorer": lambda: token_explorer(items, tokenizer).html,
            "batch": lambda: batch_view(inputs, targets, tokenizer).html,
            "packed": lambda: packed_view(*pack_collate_fn(list(items)), tokenizer).html}[view]()
    assert not re.search(r"<(script|style)\b|\son\w+=|\sname=", text)


def test_batch_view_counts_padding_and_targets(items, tokenizer):
    inputs, targets = instruction_collate_fn([list(ids) for ids, _ in items])
    text = batch_view(inputs, targets, tokenizer).html
    for r, (ids, _) in enumerate(items):
        assert f"({len(ids)} tokens + {inputs.shape[1] - len(ids)} padding)" in text
    assert [int(n) for n in re.findall(r'class="ftlib-count">(\d+)<', text)] == \
        (targets != IGNORE_INDEX).sum(dim=1).tolist()
    assert len(Columns(text).columns) == inputs.numel()


def test_packed_view_shows_restarted_positions_and_boundaries(items, tokenizer):
    inputs, targets, extras = pack_collate_fn(list(items))  # one row
    text = packed_view(inputs, targets, extras, tokenizer).html
    cols = Columns(text).columns
    assert [int(c["lines"][0]) for c in cols] == extras["position_ids"][0].tolist()
    assert text.count("border-left:2px") == len(items) - 1  # a bar where each next example starts


def test_predictions_match_the_models_loss(items, tokenizer, one_thread):
    torch.manual_seed(0)
    model = GPTModel(get_config("tiny"))
    preds = top_predictions(model, items[0], k=3)
    inputs, targets = instruction_collate_fn([items[0]])
    losses = [p["loss"] for p in preds if p["loss"] is not None]
    assert sum(losses) / len(losses) == pytest.approx(model(inputs, targets).item(), abs=1e-5)
    logits = model(inputs)[0]
    for p in preds:
        assert [t for t, _ in p["top"]] == logits[p["position"]].topk(3).indices.tolist()
        assert p["top"][0][1] == pytest.approx(F.softmax(logits[p["position"]], -1).max().item(), abs=1e-6)
    view = prediction_view(model, tokenizer, items[0], k=3, title="before fine-tuning")
    assert f"{sum(losses) / len(losses):.3f}" in view.html
    assert view.html.count('class="ftlib-guess"') == 3 * len(preds)
