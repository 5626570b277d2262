"""Notebook 02's figure: the book's batch as inputs and targets, padding and -100 marked."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ftlib.classroom.figures import draw_padded_batch  # noqa: E402
from ftlib.data import custom_collate_fn  # noqa: E402

BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]  # the chapter's example batch


def _cells(ax):
    """{cell text: set of face colours} of one grid."""
    colours = [p.get_facecolor() for p in ax.patches]
    texts = [t.get_text() for t in ax.texts if not t.get_text().startswith("item")]
    found = {}
    for text, colour in zip(texts, colours):
        found.setdefault(text, set()).add(colour)
    return found


def test_the_book_batch_gives_two_grids_with_padding_and_ignored_cells_marked():
    fig = draw_padded_batch(*custom_collate_fn(BATCH))
    inputs_ax, targets_ax = fig.axes
    assert len(inputs_ax.patches) == len(targets_ax.patches) == 15  # 3 rows x 5 positions
    inputs, targets = _cells(inputs_ax), _cells(targets_ax)
    assert "-100" not in inputs
    assert sum(t.get_text() == "50256" for t in inputs_ax.texts) == 5
    assert sum(t.get_text() == "-100" for t in targets_ax.texts) == 5
    shades = {next(iter(inputs["50256"])), next(iter(targets["-100"])), next(iter(inputs["0"]))}
    assert len(shades) == 3  # a token, a padding cell and an ignored cell look different
    assert len(targets["50256"]) == len(targets["-100"]) == 1  # each kind one colour
    plt.close(fig)


def test_it_takes_lists_as_well_as_tensors():
    fig = draw_padded_batch([[1, 50256]], [[50256, -100]])
    assert [t.get_text() for t in fig.axes[1].texts] == ["50256", "-100"]
    plt.close(fig)
