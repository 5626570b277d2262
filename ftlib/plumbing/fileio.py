"""Atomic writes: write to a temporary file (or folder) beside the target, then rename.

A crash or Ctrl-C half-way leaves either the old file or no file at the target,
never a half-written one (`os.replace` is atomic on POSIX and Windows).

Not in a notebook: every file ftlib writes goes through these functions; notebooks
see them only as files that are never half-written.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


def current_umask():
    """The process's umask (read by setting it and putting it back): temporary files and
    folders are made private, then given the permissions a plain file or folder gets."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(new, target):
    """Rename the folder `new` onto `target`, the folder-sized `os.replace`: an existing
    `target` is renamed aside first (`.NAME.old-PID`), put back if the rename fails, and
    removed after (a run folder's next run also puts it back if the process died between)."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it onto `path`.

    >>> with atomic_path("out.pt") as tmp:
    ...     torch.save(obj, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str, encoding="utf-8"):
    """Write `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def json_number(value, digits=None):
    """`value` (rounded to `digits`), or None when it is missing, NaN or infinite: JSON has
    no NaN, so metrics.json and history.jsonl stay valid JSON.

    Not in a notebook: how the run folder's numbers are written.
    """
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def atomic_write_json(path, obj, indent=2):
    """Write `obj` as JSON (UTF-8, non-ASCII kept readable) to `path` atomically.
    NaN and infinity are refused (ValueError): they are not JSON, and other readers fail on them."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")
