"""nbval, with numbers compared as numbers: committed outputs that hold on every CPU.

Floating-point rounding differs between CPUs (AVX2 or AVX-512 kernels, bfloat16 units
or none, one thread or several), so a loss printed as 11.3712 on one machine prints as
11.3711 on another. nbval compares text character by character; this plugin (loaded
with `-p tests.nbcompare`, as the Makefile does) compares a cell's outputs so that

- the text between numbers must match exactly (runs of spaces count as one, since a
  number one digit wider shifts a column; line breaks still count),
- there must be as many numbers, and integers must be equal,
- a decimal number may differ from the committed one by `LAST_DIGITS` units of its
  last printed digit.

A cell tagged `compare-within-band` prints results of a training run, which move more
than rounding between CPUs: there every number (integers too) may differ by `BAND`,
in points for a percentage, relatively for anything else; its words must still match.

The tolerances live here and nowhere else; tests/test_nbcompare.py tests the comparer.
"""

import re
from collections import defaultdict

# The one place for tolerances.
LAST_DIGITS = 1                  # a decimal may move by one unit of its last printed digit
BAND = {"points": 8.0,           # a percentage in a compare-within-band cell: +- 8 points
        "relative": 0.25}        # any other number there: +- 25 %
BAND_TAG = "compare-within-band"

# A number as ftlib prints it: 3, -0.25, 1,126 (thousands), 1.2e-05, 60.9 (in "60.9%").
# Not digits that end a word (gpt2, h0); a unit may follow (1.2x, 60.9%).
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
SPACES = re.compile(r"[ \t]+")


def _split(text):
    """(the text between numbers, the numbers as printed)."""
    return NUMBER.split(text), NUMBER.findall(text)


def _decimals(number):
    """The place of the last printed digit, as a power of ten (-4 for 11.3712)."""
    mantissa, _, exponent = number.lower().partition("e")
    places = len(mantissa.partition(".")[2])
    return int(exponent or 0) - places


def _value(number):
    return float(number.replace(",", ""))


def numbers_match(ref, new, band=None):
    """Whether the printed number `new` stands for the committed `ref`; `band` is None
    (rounding only) or BAND, with `percent` telling which of its two applies."""
    if ref == new:
        return True
    a, b = _value(ref), _value(new)
    if band is not None:
        limit = band["points"] if band.get("percent") else band["relative"] * max(abs(a), abs(b))
        return abs(a - b) <= limit
    is_integer = not any(c in ref + new for c in ".eE")
    if is_integer:
        return False
    unit = 10.0 ** max(_decimals(ref), _decimals(new))
    return abs(a - b) <= LAST_DIGITS * unit * (1 + 1e-9)


def compare_text(ref, new, band=None):
    """None when `new` matches `ref` (see the module's rules), else one line saying
    where they first differ."""
    if ref == new:
        return None
    ref_lines, new_lines = ref.splitlines(), new.splitlines()
    if len(ref_lines) != len(new_lines):
        return f"{len(ref_lines)} lines committed, {len(new_lines)} now"
    for number, (r, n) in enumerate(zip(ref_lines, new_lines), 1):
        problem = _compare_line(r, n, band)
        if problem:
            return f"line {number}: {problem}\n  committed: {r!r}\n  now:       {n!r}"
    return None


def _compare_line(ref, new, band):
    (ref_text, ref_numbers), (new_text, new_numbers) = _split(ref), _split(new)
    if len(ref_numbers) != len(new_numbers):
        return f"{len(ref_numbers)} numbers committed, {len(new_numbers)} now"
    for r, n in zip(ref_text, new_text):
        if SPACES.sub(" ", r) != SPACES.sub(" ", n):
            return f"the text differs ({r.strip()!r} committed, {n.strip()!r} now)"
    for i, (r, n) in enumerate(zip(ref_numbers, new_numbers)):
        percent = new_text[i + 1].lstrip().startswith("%")
        if not numbers_match(r, n, band and {**band, "percent": percent}):
            allowed = (f"within {band['points']:g} points" if percent else
                       f"within {band['relative']:.0%}") if band else (
                "equal (an integer)" if not any(c in r + n for c in ".eE")
                else f"within {LAST_DIGITS} in the last digit")
            return f"{r} committed, {n} now: must be {allowed}"
    return None


def _flatten(outputs, skip, sanitize):
    """nbval's view of a cell's outputs: for each key (stdout, text/plain, ...) the list
    of its values, sanitized; streams already merged by nbval's helper."""
    flat = defaultdict(list)
    for output in outputs:
        for key, value in output.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


def compare_outputs(self, test, ref, skip_compare=None):
    """nbval's IPyNbCell.compare_outputs, with `compare_text` for every text value."""
    from nbval.plugin import transform_streams_for_comparison

    skip = skip_compare or self.parent.skip_compare
    band = BAND if BAND_TAG in self.cell.metadata.get("tags", []) else None
    new = _flatten(transform_streams_for_comparison(test), skip, self.sanitize)
    old = _flatten(transform_streams_for_comparison(ref), skip, self.sanitize)
    self.comparison_traceback = []
    if set(old) != set(new):
        self.comparison_traceback.append(
            f"outputs committed: {sorted(old)}; outputs now: {sorted(new)}")
        return False
    for key, old_values in old.items():
        new_values = new[key]
        if len(old_values) != len(new_values):
            self.comparison_traceback.append(
                f"{key}: {len(old_values)} outputs committed, {len(new_values)} now")
            return False
        for r, n in zip(old_values, new_values):
            if isinstance(r, str) and isinstance(n, str):
                problem = compare_text(r, n, band)
            else:
                problem = None if r == n else "not equal"
            if problem:
                self.comparison_traceback.append(f"{key} differs: {problem}")
                return False
    return True


def pytest_configure(config):
    from nbval import plugin

    plugin.IPyNbCell.compare_outputs = compare_outputs
