"""Notebook 05's figure: c_attn cut in three and transposed, with the model's shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ftlib.classroom.figures import draw_c_attn_split  # noqa: E402


def test_the_figure_labels_the_split_and_the_shapes_of_the_size_it_is_given():
    fig = draw_c_attn_split(emb_dim=128)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert 'c_attn["w"]   (128, 384)' in texts
    assert "3 × (128, 128)  (out, in)" in texts
    assert {"q_w", "k_w", "v_w", "W_query\n= q_w.T", "W_key\n= k_w.T", "W_value\n= v_w.T"} <= set(texts)
    assert "ff.layers[0].weight\n(512, 128)" in texts
    plt.close(fig)
