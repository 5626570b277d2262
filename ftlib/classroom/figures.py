"""The lessons' figures, drawn by code (matplotlib): the prompt's parts, padding and
shifted targets, the -100 mask, the training loop, packing, the DPO pairs.

Each function returns a matplotlib Figure; a notebook cell ends with `plt.show()`, so
the figure is committed as an output that renders without a kernel. One section per
notebook, in the lessons' order.
"""

# --- notebook 01: the prompt's parts ---------------------------------------------

def draw_prompt_parts(entry):
    """An entry's Alpaca prompt as coloured blocks: instruction, input (if any) and
    response, with what the model reads and what it must learn to write.

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from ftlib.data.instructions import format_input, format_response

    prompt = format_input(entry)
    instruction = format_input({**entry, "input": ""})
    parts = [("instruction", instruction, "#cfe2f3")]
    if prompt != instruction:
        parts.append(("input", prompt[len(instruction):].strip("\n"), "#d9ead3"))
    parts.append(("response", format_response(entry).strip("\n"), "#fce5cd"))

    line, gap, pad = 0.27, 0.25, 0.12  # inches: a 13-point line (x 1.45), between, inside blocks
    wrapped = [[w for raw in text.split("\n") for w in (textwrap.wrap(raw, 58) or [""])]
               for _, text, _ in parts]
    heights = [len(lines) * line + 2 * pad for lines in wrapped]
    total = sum(heights) + gap * (len(parts) + 1)
    fig = plt.figure(figsize=(12, total))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 12)  # one unit is one inch
    ax.set_ylim(0, total)
    ax.axis("off")
    top, edges = total - gap, []
    for (name, _, colour), lines, height in zip(parts, wrapped, heights):
        ax.add_patch(FancyBboxPatch((1.9, top - height), 6.7, height, boxstyle="round,pad=0.02",
                                    facecolor=colour, edgecolor="black"))
        ax.text(1.7, top - height / 2, name, ha="right", va="center", fontsize=15, weight="bold")
        ax.text(2.05, top - pad, "\n".join(lines), ha="left", va="top", fontsize=13,
                family="monospace", linespacing=1.45)
        edges.append((top, top - height))
        top -= height + gap
    # a bracket over the prompt's blocks (all but the last) and one beside the response
    prompt_span = (edges[0][0], edges[-2][1])
    for (high, low), label in ((prompt_span, "the model reads:\nformat_input(entry)"),
                               (edges[-1], "the model must\nlearn to write")):
        ax.plot([8.8, 8.9, 8.9, 8.8], [high, high, low, low], color="black", lw=1.5)
        ax.text(9.05, (low + high) / 2, label, ha="left", va="center", fontsize=14)
    return fig

# --- notebook 02: padding and shifted targets --------------------------------------

def draw_padded_batch(inputs, targets, pad_token_id=50256, ignore_index=-100):
    """A collated batch as two grids of token ids, inputs and targets: end-of-text
    (padding) cells shaded, `ignore_index` cells dark.

    Introduced in: notebooks/02_collate_drafts.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    styles = {"token": ("white", "black"), "pad": ("#b6d7e8", "black"),  # (face, text) colours
              "ignore": ("#555555", "white")}
    inputs, targets = [t.tolist() if hasattr(t, "tolist") else t for t in (inputs, targets)]
    rows, cols = len(inputs), len(inputs[0])
    fig, axes = plt.subplots(1, 2, figsize=(2 * cols * 0.95 + 2.5, rows * 0.62 + 1.9))
    for ax, grid, title in ((axes[0], inputs, "inputs"),
                            (axes[1], targets, "targets: the inputs shifted left by one")):
        for r, row in enumerate(grid):
            for c, token in enumerate(row):
                kind = ("pad" if token == pad_token_id else
                        "ignore" if token == ignore_index else "token")
                face, ink = styles[kind]
                ax.add_patch(Rectangle((c, r), 1, 1, facecolor=face, edgecolor="black"))
                ax.text(c + 0.5, r + 0.5, str(token), ha="center", va="center", fontsize=14,
                        color=ink)
        ax.set_xlim(-0.05, cols + 0.05)
        ax.set_ylim(rows + 0.05, -0.05)  # row 1 on top
        ax.set_title(title, fontsize=15)
        ax.axis("off")
    for r in range(rows):
        axes[0].text(-0.15, r + 0.5, f"item {r + 1}", ha="right", va="center", fontsize=14)
    legend = [Patch(facecolor=styles[k][0], edgecolor="black", label=label) for k, label in
              (("token", "token of the item"), ("pad", f"<|endoftext|> ({pad_token_id})"),
               ("ignore", f"ignored by the loss ({ignore_index})"))]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=13, frameon=False)
    fig.subplots_adjust(left=0.09, right=0.99, top=0.82, bottom=0.2, wspace=0.08)
    return fig

# --- notebook 03: the -100 mask and prompt masking ---------------------------------

def draw_target_mask(targets, lengths, prompt_lengths, labels, ignore_index=-100):
    """Rows of target cells, one row per entry: prompt, response, end-of-text and
    padding targets coloured, the `ignore_index` ones hatched, with each row's count
    of targets in the loss. `lengths[r]` and `prompt_lengths[r]` are the token counts
    of row r's entry and of its prompt.

    Introduced in: notebooks/03_ignore_index_masking.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    colours = {"prompt": "#cfe2f3", "response": "#fce5cd", "end-of-text": "#b6d7a8", "padding": "#d9d9d9"}
    targets = targets.tolist() if hasattr(targets, "tolist") else targets
    rows, cols = len(targets), len(targets[0])
    fig, ax = plt.subplots(figsize=(13, 0.8 * rows + 1.4))
    for r, (row, n, p) in enumerate(zip(targets, lengths, prompt_lengths)):
        for c, target in enumerate(row):
            # target c predicts token c + 1 of the entry: a prompt token while c + 1 < p
            role = ("prompt" if c < p - 1 else "response" if c < n - 1
                    else "end-of-text" if c == n - 1 else "padding")
            ax.add_patch(Rectangle((c, r), 1, 0.8, facecolor=colours[role], edgecolor="black",
                                   lw=0.5, hatch="xx" if target == ignore_index else None))
        ax.text(-0.5, r + 0.4, labels[r], ha="right", va="center", fontsize=14)
        kept = sum(t != ignore_index for t in row)
        ax.text(cols + 0.5, r + 0.4, f"{kept} in the loss", ha="left", va="center", fontsize=14)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, -0.2)  # row 1 on top
    ax.set_title("targets, one cell per position", fontsize=15)
    ax.axis("off")
    handles = [Patch(facecolor=colour, edgecolor="black", label=role) for role, colour in colours.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="xx",
                         label=f"{ignore_index}: left out of the loss"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=13, frameon=False)
    fig.subplots_adjust(left=0.22, right=0.86, top=0.86, bottom=0.24)
    return fig


# --- notebook 04: a batch from the DataLoader --------------------------------------

def draw_loader_batch(inputs, targets, pad_token_id=50256, ignore_index=-100):
    """A batch as the DataLoader delivers it: inputs and targets as two grids, one cell
    per token, every row padded to the batch's longest; the targets keep one
    end-of-text per row and have `ignore_index` (hatched) over the rest of the padding.

    Introduced in: notebooks/04_dataloaders.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    colours = {"token": "#cfe2f3", "padding": "#d9d9d9", "end-of-text": "#b6d7a8"}
    inputs, targets = [t.tolist() if hasattr(t, "tolist") else t for t in (inputs, targets)]
    rows, cols = len(inputs), len(inputs[0])
    fig, axes = plt.subplots(2, 1, figsize=(13, rows + 2.4))
    for ax, grid, name in ((axes[0], inputs, "inputs"), (axes[1], targets, "targets")):
        for r, row in enumerate(grid):
            for c, token in enumerate(row):
                role = ("end-of-text" if name == "targets" and token == pad_token_id
                        else "padding" if token in (pad_token_id, ignore_index) else "token")
                ax.add_patch(Rectangle((c, r), 1, 0.85, facecolor=colours[role], edgecolor="black",
                                       lw=0.5, hatch="xx" if token == ignore_index else None))
            ax.text(-0.5, r + 0.42, f"row {r + 1}", ha="right", va="center", fontsize=13)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, -0.15)  # row 1 on top
        ax.set_title(f"{name}: shape ({rows}, {cols})", fontsize=15)
        ax.axis("off")
    handles = [Patch(facecolor=colours["token"], edgecolor="black", label="token of the entry"),
               Patch(facecolor=colours["padding"], edgecolor="black", label=f"padding ({pad_token_id})"),
               Patch(facecolor=colours["end-of-text"], edgecolor="black", label=f"end-of-text target ({pad_token_id})"),
               Patch(facecolor=colours["padding"], edgecolor="black", hatch="xx",
                     label=f"{ignore_index}: left out of the loss")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=13, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.93, bottom=0.12, hspace=0.3)
    return fig


# --- notebook 05: GPT-2's weights --------------------------------------------------

def draw_c_attn_split(emb_dim=1024):
    """How `load_weights_into_gpt` reads OpenAI's weights: the fused `c_attn` matrix
    (in, 3 * out) is cut in three by `np.split` and each third is transposed (`.T`) into
    PyTorch's (out, in) layout; a feed-forward matrix shows the transpose's effect.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = ["#cfe2f3", "#d9ead3", "#fce5cd"]
    fig, ax = plt.subplots(figsize=(13, 7.5))

    def box(x, y, w, h, colour, label, size=15):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", lw=1.5))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=size)

    def arrow(x0, x1, y, label):
        ax.annotate("", xy=(x1, y), xytext=(x0, y),
                    arrowprops=dict(arrowstyle="-|>", lw=2, mutation_scale=25))
        ax.text((x0 + x1) / 2, y + 0.12, label, ha="center", va="bottom", fontsize=15,
                family="monospace")

    # top row: c_attn, one (in, 3*out) matrix -> three (out, in) matrices
    y = 4.0
    ax.text(0, y + 1.15, f'c_attn["w"]   ({emb_dim}, {3 * emb_dim})', fontsize=17,
            family="monospace", va="bottom")
    for i, name in enumerate(["q_w", "k_w", "v_w"]):
        box(i, y, 1, 1, colours[i], name)
    ax.text(0, y - 0.12, "each third (in, out)", fontsize=15, va="top")
    arrow(3.2, 4.9, y + 0.5, "np.split\n+ .T")
    for i, name in enumerate(["W_query", "W_key", "W_value"]):
        box(5.1 + 1.35 * i, y, 1, 1, colours[i], f"{name}\n= {name[2].lower()}_w.T", size=14)
    ax.text(5.1, y + 1.15, f"3 × ({emb_dim}, {emb_dim})  (out, in)", fontsize=17,
            family="monospace", va="bottom")

    # bottom row: c_fc, (in, 4*in) -> .T -> (4*in, in): the transpose is visible here
    y, s = 0.0, 0.6
    ax.text(0, y + 4 * s + 0.15, f'c_fc["w"]   ({emb_dim}, {4 * emb_dim})', fontsize=17,
            family="monospace", va="bottom")
    box(0, y + 3 * s, 4 * s, s, "#eeeeee", "in × out")
    arrow(4 * s + 0.2, 4.9, y + 3.5 * s, ".T")
    box(5.1, y, s, 4 * s, "#eeeeee", "out\n×\nin")
    ax.text(5.1 + s + 0.15, y + 2 * s, f"ff.layers[0].weight\n({4 * emb_dim}, {emb_dim})",
            fontsize=17, family="monospace", va="center")

    ax.set_xlim(-0.5, 9.3)
    ax.set_ylim(-0.2, 5.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("OpenAI's checkpoint (in, out)  →  GPTModel's nn.Linear (out, in)", fontsize=18)
    fig.tight_layout()
    return fig

# --- notebook 06: the training loop ------------------------------------------------

# (label, what the code calls, added by `train_model`?) in the order of one step.
_TRAINING_STEPS = [
    ("next batch", "(inputs, targets)", False),
    ("forward", "model(inputs)", False),
    ("loss at the targets", "-100 skipped", False),
    ("backward", "loss.backward()", False),
    ("clip gradients", "clip_grad_norm_", True),
    ("optimizer step", "optimizer.step()", False),
    ("learning-rate schedule", "scheduler.step()", True),
    ("evaluate", "every eval_freq steps", False),
]


def draw_training_loop():
    """One training step as a loop of boxes: the book's `train_model_simple` steps in
    blue, what `train_model` adds (gradient clipping, the schedule) in orange.

    Introduced in: notebooks/06_finetuning.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    colours = {False: "#cfe2f3", True: "#fce5cd"}
    w, h, dx = 2.7, 1.25, 3.4
    # top row left to right (steps 0-3), bottom row right to left (4-7), then back up
    places = [(i * dx, 2.2) for i in range(4)] + [((3 - i) * dx, 0.0) for i in range(4)]
    fig, ax = plt.subplots(figsize=(14, 5.2))
    for (label, code, added), (x, y) in zip(_TRAINING_STEPS, places):
        dashed = label == "evaluate"  # only every eval_freq steps
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.08", lw=1.8,
                                    facecolor=colours[added], edgecolor="black",
                                    linestyle="--" if dashed else "-"))
        ax.text(x + w / 2, y + 0.8, label, ha="center", va="center", fontsize=15, weight="bold")
        ax.text(x + w / 2, y + 0.35, code, ha="center", va="center", fontsize=13, family="monospace")
    arrow = dict(arrowstyle="-|>", lw=2, mutation_scale=22, color="#444444")
    for (x0, y0), (x1, y1) in zip(places, places[1:] + places[:1]):
        if y0 == y1:  # along a row
            start, end = (x0 + w + 0.1, y0 + h / 2), (x1 - 0.1, y1 + h / 2)
            if x1 < x0:
                start, end = (x0 - 0.1, y0 + h / 2), (x1 + w + 0.1, y1 + h / 2)
        else:  # down the right side, or up the left side
            start = (x0 + w / 2, y0 - 0.12 if y1 < y0 else y0 + h + 0.12)
            end = (x1 + w / 2, y1 + h + 0.12 if y1 < y0 else y1 - 0.12)
        ax.annotate("", xy=end, xytext=start, arrowprops=arrow)
    ax.legend(handles=[Patch(facecolor=colours[False], edgecolor="black",
                             label="the book's train_model_simple"),
                       Patch(facecolor=colours[True], edgecolor="black", label="added by train_model")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=14, frameon=False)
    ax.set_title("The training loop: one step per batch, for every epoch", fontsize=17)
    ax.set_xlim(-0.3, 3 * dx + w + 0.3)
    ax.set_ylim(-0.4, 2.2 + h + 0.3)
    ax.axis("off")
    fig.tight_layout()
    return fig

# --- notebook 07: evaluation -------------------------------------------------------

# --- notebook 08: packing ----------------------------------------------------------

def draw_packed_row(segment_lengths, length):
    """Packing: examples laid end to end in one row, their position ids restarting at
    0, and the row's block-diagonal causal mask (`block_causal_mask`) as a grid.

    Introduced in: notebooks/08_faster_training.ipynb
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ftlib.data.packing import block_causal_mask

    colours = ["#9fc5e8", "#f9cb9c", "#b6d7a8", "#d5a6bd", "#ffe599"]
    segment, position = [], []
    for s, n in enumerate(segment_lengths):
        segment += [s] * n
        position += list(range(n))
    segment += [None] * (length - len(segment))  # row padding: its own block
    position += list(range(length - len(position)))
    mask = block_causal_mask(segment_lengths, length).tolist()

    def face(s):
        return "#dddddd" if s is None else colours[s % len(colours)]

    fig, ax = plt.subplots(figsize=(0.62 * length + 3.2, 0.62 * length + 2.6))
    for c, (s, p) in enumerate(zip(segment, position)):  # the row, with position ids
        ax.add_patch(Rectangle((c, -1.6), 1, 1, facecolor=face(s), edgecolor="black"))
        ax.text(c + 0.5, -1.1, str(p), ha="center", va="center", fontsize=14)
    ax.text(-0.3, -1.1, "position id", ha="right", va="center", fontsize=14)
    for r in range(length):  # the mask: query r (row) may attend to key c (column)
        for c in range(length):
            ax.add_patch(Rectangle((c, r), 1, 1, edgecolor="#999999",
                                   facecolor=face(segment[r]) if mask[r][c] else "white"))
    starts = [sum(segment_lengths[:s]) for s in range(1, len(segment_lengths) + 1)]
    for x in starts:  # where one example ends and the next begins
        ax.plot([x, x], [-1.7, length], color="black", linewidth=2.5)
        ax.plot([0, length], [x, x], color="black", linewidth=2.5)
    ax.text(-0.3, length / 2, "query (attends from)", rotation=90, ha="right", va="center", fontsize=14)
    ax.text(length / 2, length + 0.5, "key (attends to)", ha="center", va="top", fontsize=14)
    ax.set_title("One packed row and its attention mask\ncoloured: may attend; white: hidden",
                 fontsize=15)
    ax.set_xlim(-1.6, length + 0.1)
    ax.set_ylim(length + 1.3, -1.8)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig

# --- notebook 09: the DPO pairs ----------------------------------------------------

def draw_dpo_pair(prompt, chosen, rejected):
    """A preference pair: one prompt, its chosen and its rejected response, and what the
    DPO loss pushes: the policy's log-probability of each response, measured against
    the frozen reference's, up for the chosen and down for the rejected.

    Introduced in: notebooks/09_preference_tuning_dpo.ipynb
    """
    import textwrap

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.8))

    def box(x, y, text, colour, ha):
        ax.text(x, y, text, ha=ha, va="center", fontsize=15,
                bbox=dict(boxstyle="round,pad=0.5", facecolor=colour, edgecolor="black"))

    box(0.02, 0.62, "prompt\n" + textwrap.fill(prompt, 24), "#eeeeee", "left")
    box(0.42, 0.88, f"chosen\n{chosen!r}", "#b6d7a8", "left")
    box(0.42, 0.36, f"rejected\n{rejected!r}", "#f4cccc", "left")
    for y in (0.88, 0.36):
        ax.annotate("", xy=(0.40, y), xytext=(0.31, 0.62), arrowprops=dict(arrowstyle="->", lw=2))
    for y0, y1, colour, word in ((0.76, 1.0, "green", "up"), (0.48, 0.24, "firebrick", "down")):
        ax.annotate("", xy=(0.75, y1), xytext=(0.75, y0), arrowprops=dict(arrowstyle="-|>", lw=4, color=colour))
        ax.text(0.77, (y0 + y1) / 2, f"log π − log π_ref\npushed {word}", va="center",
                fontsize=14, color=colour)
    ax.text(0.5, 0.0, "loss = −log σ(β · margin),  margin = "
            "(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)\n"
            "π: the model being tuned;  π_ref: a frozen copy of it from before DPO",
            ha="center", va="bottom", fontsize=14)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.axis("off")
    return fig
