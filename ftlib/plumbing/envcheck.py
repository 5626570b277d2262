"""The run's environment, checked before any work: what would otherwise fail at the
end of a run, after the training it throws away.

- Standard output and error must be able to print the text ftlib prints: the
  entries' own text (Chinese, accents), the arrows and bars of its views. With
  `PYTHONIOENCODING=ascii`, or a terminal or pipe in a legacy code page, the first
  such character stops the run with a UnicodeEncodeError.
- `MPLBACKEND`, when set, must name a matplotlib backend: a run saves its plots
  (loss-plot.png, dpo-plot.png) last, and matplotlib reads the variable only then.

`check_run_environment()` raises ConfigError with one line (itself plain ASCII, so
any terminal prints it) that says what to set. `check_bundled_files(needed)` does
the same when a file the job takes from the repository (the bundled data, the
pretrained base) is not there, as in a non-editable install.

Not in a notebook: the first step of the jobs behind `python -m ftlib finetune` and `dpo`.
"""

import importlib.util
import os
import sys
from pathlib import Path

from ftlib.plumbing.errors import ConfigError

# Characters of the kinds ftlib prints: accents and Chinese (entries, task names, file
# names), an arrow and a dot (the views), a block (progress bars).
SAMPLE_TEXT = "é中→·█"


def check_run_environment():
    """Raise ConfigError before any work when the environment would stop a run later:
    standard output or error cannot encode `SAMPLE_TEXT`, or `MPLBACKEND` names no
    matplotlib backend.

    >>> check_run_environment()  # with PYTHONIOENCODING=ascii
    ConfigError: standard output uses the encoding 'ascii', which cannot print U+00E9 ...

    Not in a notebook: called first by `finetune` and `preference_tune`.
    """
    for name, stream in (("standard output", sys.stdout), ("standard error", sys.stderr)):
        _check_stream(name, stream)
    _check_matplotlib_backend(os.environ.get("MPLBACKEND"))


def _check_stream(name, stream):
    """ConfigError if `stream` (None when there is none) cannot write `SAMPLE_TEXT`
    with its encoding and error handler ("backslashreplace" can write anything)."""
    encoding = getattr(stream, "encoding", None)
    if stream is None or not encoding:
        return
    errors = getattr(stream, "errors", None) or "strict"
    try:
        SAMPLE_TEXT.encode(encoding, errors)
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{name} uses the encoding {ascii(encoding)}, which cannot print "
            f"U+{ord(exc.object[exc.start]):04X} and other text ftlib prints; set "
            "PYTHONIOENCODING=utf-8 (or run python -X utf8) and run again"
        ) from None
    except LookupError:  # an encoding Python does not know: let the stream itself complain
        return


def _check_matplotlib_backend(backend):
    """ConfigError if `backend` (the value of MPLBACKEND; None or "" when unset) is not
    a backend matplotlib knows, or a "module://name" whose module cannot be found."""
    if not backend:
        return
    hint = "unset MPLBACKEND, or set MPLBACKEND=agg (ftlib only saves plots to files)"
    try:
        from matplotlib import rcsetup  # importing matplotlib reads MPLBACKEND already

        rcsetup.validate_backend(backend)
    except ImportError:
        return  # no matplotlib: not this check's business
    except ValueError:
        raise ConfigError(f"MPLBACKEND={ascii(backend)} is not a matplotlib backend; {hint}") from None
    if backend.startswith("module://"):
        module = backend.removeprefix("module://")
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or an empty name
            found = False
        if not found:
            raise ConfigError(f"MPLBACKEND={ascii(backend)}: there is no module {ascii(module)} "
                              f"to import; {hint}")


def check_bundled_files(needed):
    """Raise ConfigError (one line) before any work when a file the job takes from the
    repository is not there. `needed`: (path, what it is, the option that replaces it)
    triples, e.g. (BUNDLED_DATA_PATH, "the bundled data", "--data FILE"); each path is
    a file or folder one level below the repository's root (data/..., models/...).

    The bundled data (data/) and the pretrained base (models/) sit beside the package,
    in the repository: a non-editable install (`pip install .`, a wheel) has the
    package alone. Such an install (no pyproject.toml beside the file's folder) is
    told to run from a clone with `pip install -e .`; a clone missing a file is told
    which one.

    Not in a notebook: called by `python -m ftlib finetune`, `dpo` and `chat --base`
    (ftlib/cli.py, ftlib/classroom/chat.py).
    """
    missing = [(Path(path), what, instead) for path, what, instead in needed if not Path(path).exists()]
    if not missing:
        return
    names = " and ".join(f"{what} ({path.parent.name}/{path.name})" for path, what, _ in missing)
    instead = " and ".join(option for _, _, option in missing if option)
    root = missing[0][0].parents[1]
    if (root / "pyproject.toml").is_file():  # a clone with a file missing
        raise ConfigError(f"{names} not found at {missing[0][0]}: restore it from the repository "
                          f"(git checkout -- {missing[0][0].parent.name})"
                          + (f", or give {instead}" if instead else ""))
    raise ConfigError(f"{names} {'are' if len(missing) > 1 else 'is'} not in this install of ftlib "
                      "(`pip install .` copies the package alone): run from a clone of the "
                      "repository, installed with `pip install -e .`"
                      + (f", or give {instead}" if instead else ""))
