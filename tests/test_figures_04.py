"""Notebook 04's figure: a batch as the DataLoader delivers it."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ftlib.classroom.figures import draw_loader_batch  # noqa: E402
from ftlib.data import custom_collate_fn  # noqa: E402


def test_draw_loader_batch_draws_inputs_and_targets_with_their_shape():
    inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])  # the chapter's batch
    fig = draw_loader_batch(inputs, targets)
    try:
        assert isinstance(fig, Figure)
        top, bottom = fig.axes
        assert top.get_title() == "inputs: shape (3, 5)" and bottom.get_title() == "targets: shape (3, 5)"
        assert len(top.patches) == len(bottom.patches) == 15
        assert [c.get_hatch() is not None for c in bottom.patches] == [
            t == -100 for row in targets.tolist() for t in row]
        assert [t.get_text() for t in top.texts] == ["row 1", "row 2", "row 3"]
        assert len(fig.legends[0].get_texts()) == 4
    finally:
        plt.close(fig)
