"""Notebook 03's figure: the -100 mask and prompt masking, as rows of target cells."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ftlib.classroom.figures import draw_target_mask  # noqa: E402


def test_draw_target_mask_one_cell_per_target_and_counts_the_loss():
    # an entry of 4 tokens (prompt 2) padded to 6 positions, and an entry of 6 tokens
    targets = [[-100, 3, 4, 50256, -100, -100],
               [-100, -100, 13, 14, 15, 50256]]
    fig = draw_target_mask(targets, lengths=[4, 6], prompt_lengths=[2, 3], labels=["a", "b"])
    try:
        assert isinstance(fig, Figure)
        (ax,) = fig.axes
        cells = ax.patches
        assert len(cells) == 12
        hatched = [c.get_hatch() is not None for c in cells]
        assert hatched == [t == -100 for row in targets for t in row]
        texts = [t.get_text() for t in ax.texts]
        assert {"a", "b", "3 in the loss", "4 in the loss"} <= set(texts)
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend == ["prompt", "response", "end-of-text", "padding", "-100: left out of the loss"]
    finally:
        plt.close(fig)
