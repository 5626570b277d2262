"""Notebook 06's figure: the training loop, the book's steps and what train_model adds."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from ftlib.classroom.figures import draw_training_loop  # noqa: E402

STEPS = ["next batch", "forward", "loss at the targets", "backward", "clip gradients",
         "optimizer step", "learning-rate schedule", "evaluate"]


def test_the_loop_has_its_steps_in_order_and_marks_the_additions():
    fig = draw_training_loop()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert [t for t in texts if t in STEPS] == STEPS
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == len(STEPS)
    orange = [STEPS[i] for i, b in enumerate(boxes) if b.get_facecolor() != boxes[0].get_facecolor()]
    assert orange == ["clip gradients", "learning-rate schedule"]  # train_model's additions
    assert {"loss.backward()", "optimizer.step()", "scheduler.step()"} <= set(texts)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["the book's train_model_simple", "added by train_model"]
    plt.close(fig)
