"""Notebook 08's figure: a packed row, its restarted positions and block-diagonal mask."""

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ftlib.classroom.figures import draw_packed_row  # noqa: E402


def test_draw_packed_row_shows_positions_and_mask():
    fig = draw_packed_row([4, 3, 2], length=10)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    # the row: position ids restart at 0 for every example (and the padding)
    assert [t for t in texts if t.isdigit()] == ["0", "1", "2", "3", "0", "1", "2", "0", "1", "0"]
    cells = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(cells) == 10 + 10 * 10  # the row, then the 10 x 10 mask
    allowed = sum(p.get_facecolor() != (1.0, 1.0, 1.0, 1.0) for p in cells[10:])
    assert allowed == 4 * 5 // 2 + 3 * 4 // 2 + 2 * 3 // 2 + 1  # one causal triangle per block
