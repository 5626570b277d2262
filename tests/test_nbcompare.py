"""The notebook comparer (tests/nbcompare.py): rounding passes, anything else fails."""

import pytest

from tests.nbcompare import BAND, compare_text, numbers_match


@pytest.mark.parametrize("ref, new", [
    ("loss 11.3712 (the book's) = 11.3712", "loss 11.3711 (the book's) = 11.3711"),
    ("val loss 0.763", "val loss 0.764"),
    ("first loss 10.904; bf16 4.912 (0.0% apart)", "first loss 10.905; bf16 4.911 (0.1% apart)"),
    ("eps 1.19e-07", "eps 1.2e-07"),                     # 3 significant digits either way
    ("step 9.99 s", "step 10.00 s"),
    ("x    9.99 |", "x   10.00 |"),                      # a column one digit wider
    ("2.7x as fast", "2.8x as fast"),
    ("1,126 tokens, 0.5", "1,126 tokens, 0.4"),
    ("-0.000", "0.000"),
])
def test_rounding_differences_pass(ref, new):
    assert compare_text(ref, new) is None


@pytest.mark.parametrize("ref, new, says", [
    ("loss 11.3712", "loss 11.3800", "within 1 in the last digit"),   # a wrong number
    ("val loss 0.763", "val loss 0.765", "within 1 in the last digit"),
    ("110 test entries", "109 test entries", "an integer"),
    ("1,126 tokens", "1,127 tokens", "an integer"),
    ("train 0.5\nval 0.4", "train 0.5", "2 lines committed, 1 now"),    # a missing line
    ("the base completes text", "the base follows text", "the text differs"),  # a changed word
    ("answer 'Oslo'", "answer 'Oslo.'", "the text differs"),
    ("a 1 b", "a 1 2 b", "1 numbers committed, 2 now"),
    ("model gpt2", "model gpt3", "the text differs"),     # digits inside a word are text
    ("sizes 3.0 MB", "sizes 3.0 GB", "the text differs"),
    ("1.0e-05", "1.0e-04", "within 1 in the last digit"),
])
def test_anything_else_fails(ref, new, says):
    problem = compare_text(ref, new)
    assert problem is not None and says in problem


def test_lines_keep_their_breaks():
    assert compare_text("a 1.0\nb", "a 1.0 b") is not None


def test_band_is_for_training_results():
    assert compare_text("exact match 60.9% after 4 epochs", "exact match 66.4% after 4 epochs", BAND) is None
    assert compare_text("exact match 60.9%", "exact match 75.0%", BAND) is not None      # 14 points
    assert compare_text("41 of 110 changed", "45 of 110 changed", BAND) is None
    assert compare_text("41 of 110 changed", "60 of 110 changed", BAND) is not None
    assert compare_text("margin 5.96", "margin 5.10", BAND) is None
    assert compare_text("exact match 60.9%", "exact matches 60.9%", BAND) is not None    # words still count
    assert compare_text("exact match 60.9%", "exact match 66.4%") is not None           # outside a band cell


def test_numbers_match_units():
    assert numbers_match("0.10", "0.11") and not numbers_match("0.10", "0.12")
    assert numbers_match("7", "7") and not numbers_match("7", "8")
    assert numbers_match("1.5e3", "1.6e3") and not numbers_match("1.5e3", "1.7e3")



def _notebook(path, committed, now):
    """A one-cell notebook whose committed output is `committed` and whose code prints `now`."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"print({now!r})", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed + "\n")]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("now, passes", [
    ("loss 11.3711 after 2 epochs", True),    # rounding on another CPU
    ("loss 11.3711 after 3 epochs", False),   # an integer changed
    ("loss 11.3702 after 2 epochs", False),   # more than rounding
    ("loss 11.3711 after 2 steps", False),    # a word changed
])
def test_nbval_uses_the_comparer(tmp_path, now, passes):
    """The plugin is what `make test` loads: nbval itself, on a real notebook and kernel."""
    import subprocess
    import sys
    from pathlib import Path

    path = _notebook(tmp_path / "one.ipynb", "loss 11.3712 after 2 epochs", now)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval", "--nbval-current-env",
                           "-p", "tests.nbcompare", "-p", "no:cacheprovider", str(path)],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert (proc.returncode == 0) == passes, proc.stdout[-2000:]
    if not passes:
        assert "differs" in proc.stdout
