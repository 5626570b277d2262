"""A run folder is written whole, or not at all, and owns only what ftlib wrote.

One way to write a run folder (`python -m ftlib finetune --out DIR`):

1. `check_run_out(out, protected)`, before any work: `out` must be named (not `.`,
   `..` or nothing), not be a symbolic link, hold none of `protected` (the data, the run
   DPO starts from), the repository, the home folder or the current folder, not lie
   inside another run folder, and be new, empty
   or an earlier run folder of ftlib's holding only files ftlib wrote there (listed in
   its marker, `ftlib-run.json`). Anything else is refused in one line.
2. `prepare_run_folder(out)`: a lock beside it (`.DIR.lock`) keeps a second run out;
   what a killed run left is cleaned up, except a checkpoint, which is kept for
   `--resume`; a temporary folder beside `out` is made.
3. The run writes everything (checkpoints, model, metrics) into that temporary
   folder, `folder.work`.
4. `folder.commit()` switches it into place: the old `out` is renamed aside, the
   new one renamed onto `out`, the old one removed. A run that fails is discarded
   with its temporary folder, so it replaces nothing; `out` is left as it was.
5. A run stopped before it finishes (Ctrl-C, SIGTERM, SIGHUP, or `kill -9`, found by
   the next run) keeps its checkpoint: as `out` itself where `out` holds no finished
   run, else beside it in `.DIR.interrupted`, so a finished run is never replaced by a
   half-done one. `resume_checkpoint(out)` finds it.

Not in a notebook: plumbing under `finetune`; notebooks see only finished run folders.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

try:
    import fcntl  # Linux, macOS
except ImportError:  # Windows: the `filelock` package (a dependency of torch) locks instead
    fcntl = None

from ftlib.plumbing.errors import ConfigError, FtlibError
from ftlib.plumbing.fileio import current_umask, replace_folder

MARKER = "ftlib-run.json"  # in every run folder: what ftlib wrote there
# What run folders held before the marker: such a folder is still taken as a run.
LEGACY_FILES = {"config.json", "model.pth", "checkpoint.pt", "metrics.json", "loss-plot.png",
                "test-responses.json", "pretraining-only-responses.json", "dpo-plot.png"}
# Never inside a run folder, which is replaced whole.
REPOSITORY = Path(__file__).resolve().parents[2]

# Errors that mean "this storage cannot take the run folder" (a full disk, a file
# size limit, a read-only or unwritable place), reported as one line, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}



class RunFolder:
    """A locked run folder `out` and the temporary folder `work` that becomes it.

    Not in a notebook: made by `prepare_run_folder`.
    """

    def __init__(self, out, unlock, work, created=(), kind="finetune"):
        self.out, self.work, self.created, self.kind = out, work, created, kind
        self._unlock = unlock
        self.committed = False

    @property
    def kept_at(self):
        """Where this run's folder goes if it stops before it finishes (see `keep`)."""
        return _interrupted_dir(self.out) if (self.out / "model.pth").exists() else self.out

    def commit(self):
        """Switch `work` into place as `out` (the old `out`, if any, is removed, and so is
        a checkpoint an earlier interrupted run kept beside it: this run supersedes it)."""
        _write_marker(self.work, self.kind)
        replace_folder(self.work, self.out)
        self.committed = True
        _remove_kept(self.out)

    def keep(self):
        """A run stopped before it finished: keep `work` (it holds a checkpoint) at
        `kept_at`; return that place."""
        place = self.kept_at
        _write_marker(self.work, self.kind, finished=False)
        replace_folder(self.work, place)
        self.committed = True
        return place

    def close(self):
        """Discard `work` unless committed or kept; release the lock (its file is removed)."""
        if not self.committed:
            shutil.rmtree(self.work, ignore_errors=True)
        self._unlock()
        if not self.committed:
            for parent in self.created:  # the folders this run made for `out`, deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()


def _write_marker(folder, kind, finished=True):
    from ftlib import __version__
    from ftlib.plumbing.fileio import atomic_write_json

    files = sorted(p.name for p in folder.iterdir() if not _temporary(p.name)) + [MARKER]
    atomic_write_json(folder / MARKER, {"ftlib": __version__, "kind": kind, "finished": finished,
                                        "files": sorted(set(files))})


# The random part tempfile gives a name (mkstemp, mkdtemp): 8 of these characters.
_RANDOM = r"[a-z0-9_]{8}"


def _temporary(name, known=()):
    """Whether `name` is the temporary file of one of ftlib's atomic writes of a file
    named in `known` (`.model.pth.x1y2z3w4.tmp`); anything else is the user's."""
    found = re.fullmatch(rf"\.(.+)\.{_RANDOM}\.tmp", name)
    return bool(found) and found.group(1) in {*known, *LEGACY_FILES, MARKER}


def _interrupted_dir(out):
    return out.with_name(f".{out.name}.interrupted")


def _remove_kept(out):
    """Remove the checkpoint folder an interrupted run of `out` kept (superseded), if it
    is ftlib's (it holds the marker; a folder of the user's by that name stays)."""
    kept = _interrupted_dir(out)
    if (kept / MARKER).is_file() and not kept.is_symlink():
        shutil.rmtree(kept, ignore_errors=True)


# The folders ftlib makes beside `out`: its temporary folder (mkdtemp) and the old `out`
# renamed aside during a switch (the process id); matched exactly, nothing else.
_WORK, _OLD = rf"\.run-{_RANDOM}\.tmp", r"\.old-[0-9]+"


def _beside(out, pattern):
    """The folders beside `out` named `.NAME` + `pattern` (a regular expression; NAME
    taken literally, so an --out of 'runs/*' matches nothing but its own)."""
    start = f".{out.name}"
    try:
        return sorted(p for p in out.parent.iterdir() if p.name.startswith(start)
                      and re.fullmatch(pattern, p.name[len(start):]) and p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def resume_checkpoint(out):
    """The checkpoint `--resume` continues from: the newest one a run of `out` kept
    when it stopped early (in `.NAME.interrupted`, or the temporary folder of a run
    killed outright), else `out/checkpoint.pt`; None where there is none.

    Not in a notebook: used by `finetune`.
    """
    out = Path(out)
    kept = [d / "checkpoint.pt" for d in [_interrupted_dir(out), *_beside(out, _WORK)]]
    kept = [path for path in kept if path.is_file()]
    if kept:
        return max(kept, key=lambda path: path.stat().st_mtime)
    path = out / "checkpoint.pt"
    return path if path.is_file() else None


def check_out_path(out, protected=(), option="--out"):
    """ConfigError (one line) unless `out` may be replaced whole: named (not '', '.' or
    '..'), not a symbolic link or a file, holding none of `protected` ((what, path)
    pairs), the repository, the home folder or the current folder, and not inside a
    run folder.

    Not in a notebook: called by `finetune`, `dpo` and `export-hf` before any work.
    """
    raw = str(out)
    out = Path(out)
    if not raw.strip() or out.name in ("", ".", ".."):
        raise ConfigError(f"{option} {raw!r}: name a folder of its own for the run, e.g. runs/latest "
                          "(it is replaced whole, so not '.', '..' or nothing)")
    if out.is_symlink():  # replacing it would replace the link, not the folder it names
        raise ConfigError(f"{option} {out}: is a symbolic link (to {os.readlink(out)}); "
                          "give the folder itself")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: is a file, not a folder")
    where = out.resolve()
    for what, path in [*protected, ("the repository", REPOSITORY), ("your home folder", Path.home()),
                       ("the current folder", Path.cwd())]:
        if path is None or not str(path):
            continue
        path = Path(path).resolve()
        if path == where or where in path.parents:
            raise ConfigError(f"{option} {out}: would hold {what} ({path}), and it is replaced whole; "
                              f"choose a folder of its own, e.g. {out.name or 'runs'}/latest")
    for parent in where.parents:
        if (parent / MARKER).is_file() or (parent.is_dir() and _legacy_run(parent, _names(parent))):
            raise ConfigError(f"{option} {out}: is inside the run folder {parent}; choose a folder outside it")


def check_run_out(out, protected=()):
    """`check_out_path`, and `out` must be new, empty or an earlier run folder of
    ftlib's holding only what ftlib wrote there (its marker lists those files; a
    run folder from before the marker holds only LEGACY_FILES, config.json among them).

    Not in a notebook: called by `finetune` and `dpo` before any work.
    """
    out = Path(out)
    check_out_path(out, protected)
    kept = _interrupted_dir(out)
    if kept.exists() and not (kept / MARKER).is_file():
        raise ConfigError(f"--out {out}: the folder {kept} beside it is not ftlib's, but ftlib keeps "
                          "an interrupted run's checkpoint there; move it or choose another --out")
    if not out.is_dir():
        return
    try:
        names = [p.name for p in out.iterdir()]
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot be read ({exc.strerror or exc})") from None
    names = [name for name in names if not (_temporary(name) and (out / name).is_file())]
    if not names:
        return
    if MARKER in names:
        try:
            allowed = set(json.loads((out / MARKER).read_text(encoding="utf-8"))["files"]) | {MARKER}
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"--out {out}: its {MARKER} cannot be read, so ftlib cannot tell "
                              "which files are its own; choose another --out") from None
    elif _legacy_run(out, names):
        allowed = LEGACY_FILES
    else:
        raise ConfigError(f"--out {out}: is not empty ({_some(names)}) and is not an ftlib run folder "
                          f"(no {MARKER}); a run folder is replaced whole, so choose a new or empty folder")
    foreign = sorted(set(names) - allowed)
    if foreign:
        raise ConfigError(f"--out {out}: holds {_some(foreign)}, which ftlib did not write there; "
                          "a run folder is replaced whole, so move those files or choose another --out")


def _names(folder):
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError:
        return []


def _legacy_run(out, names):
    """Whether `out` looks like a run folder of an ftlib from before the marker: a
    config.json with the model's config (as finetune and dpo wrote it), or only the
    checkpoint an interrupted run left."""
    if names == ["checkpoint.pt"]:
        return True
    if "model.pth" not in names and "checkpoint.pt" not in names:
        return False
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_config" in config


def _some(names):
    names = sorted(names)
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _busy(out, holder="?"):
    return ConfigError(f"--out {out}: another run (process {holder}) is writing to "
                       "this folder; wait for it or choose another --out")


def _lock(out):
    """An exclusive lock on `out` (a file `.NAME.lock` beside it); returns the function
    that releases it and removes the file. ConfigError if another run holds it."""
    path = out.with_name(f".{out.name}.lock")
    if fcntl is None:
        return _lock_with_filelock(out, path)
    for _ in range(3):  # the holder may remove the file between our open and our lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise _busy(out, holder) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return lambda: _unlock(path, fd)
        os.close(fd)
    raise ConfigError(f"--out {out}: could not lock {path}")


def _unlock(path, fd):
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still held: nobody else holds this file
    os.close(fd)


def _lock_with_filelock(out, path):
    """Where there is no fcntl (Windows): filelock's lock (msvcrt's on Windows, a lock
    file made exclusively elsewhere), released and removed by the returned function."""
    with warnings.catch_warnings():  # "only soft file lock is available": that is the point
        warnings.simplefilter("ignore")
        import filelock

        lock = filelock.FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise _busy(out) from None

    def unlock():
        lock.release()
        with contextlib.suppress(OSError):  # Windows and soft locks remove it themselves
            os.unlink(path)

    return unlock


def _recover(out):
    """Clean up after a run that was killed (we hold the lock, so no other run owns
    what it left): put back an old `out` renamed aside just before a switch (or remove
    it if the switch happened), keep the temporary folder of a killed run that holds a
    checkpoint where a stopped run keeps its own (see `RunFolder.keep`; of several, the
    newest) and remove the others, and remove ftlib's temporary files inside `out`.
    Returns a line for each checkpoint kept."""
    notes = []
    for place in (out, _interrupted_dir(out)):
        for old in _beside(place, _OLD):
            if not place.exists():
                os.rename(old, place)
            else:
                shutil.rmtree(old, ignore_errors=True)
    works = _beside(out, _WORK)
    with_checkpoint = sorted((w for w in works if (w / "checkpoint.pt").is_file()),
                             key=lambda w: (w / "checkpoint.pt").stat().st_mtime)
    for work in works:
        if work not in with_checkpoint[-1:]:
            shutil.rmtree(work, ignore_errors=True)
    for work in with_checkpoint[-1:]:
        place = _interrupted_dir(out) if (out / "model.pth").exists() else out
        _write_marker(work, "finetune", finished=False)
        if place == out:  # an older kept checkpoint is superseded by this one
            _remove_kept(out)
        replace_folder(work, place)
        notes.append(f"A run into {out} was killed before it finished; its checkpoint is kept "
                     f"at {place / 'checkpoint.pt'} (--resume continues from it)")
    if out.is_dir():
        for tmp in out.iterdir():
            if _temporary(tmp.name) and tmp.is_file():
                tmp.unlink(missing_ok=True)
    return notes


def prepare_run_folder(out, protected=(), kind="finetune", log=None):
    """Lock `out`, clean up after a killed run, make the temporary folder; a `RunFolder`.

    Raises ConfigError (one line naming `--out`) when `check_run_out` refuses `out`,
    another run holds it, or the place cannot be written to.

    Not in a notebook: called by `finetune` and `dpo` before any work.
    """
    out = Path(out)
    check_run_out(out, protected)
    created = [p for p in out.parent.resolve().parents[::-1] if not p.exists()]
    created = [*created, out.parent] if not out.parent.exists() else []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        unlock = _lock(out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        check_run_out(out, protected)  # again, now that no other run can write there
        for note in _recover(out):
            (log or print)(note)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.run-", suffix=".tmp", dir=out.parent))
        os.chmod(work, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the usual permissions
    except OSError as exc:
        unlock()
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    except BaseException:
        unlock()
        raise
    return RunFolder(out, unlock, work, created[::-1], kind)


@contextlib.contextmanager
def run_folder(folder):
    """Around a run in a prepared RunFolder (None: nothing to do, e.g. torchrun's
    other processes): the caller commits on success; a run stopped by Ctrl-C,
    SIGTERM or SIGHUP keeps its folder when it holds a checkpoint (`RunFolder.keep`),
    so `--resume` finds it; any other failure discards the temporary folder. A full disk or unwritable storage becomes one FtlibError
    naming the run folder.

    Not in a notebook: plumbing under `finetune`.
    """
    if folder is None:
        yield None
        return
    try:
        yield folder
    except KeyboardInterrupt:
        if not folder.committed and (folder.work / "checkpoint.pt").is_file():
            folder.keep()
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise FtlibError(f"cannot write the run folder {folder.out}: {exc.strerror or exc}; "
                         "nothing was written to it") from None
    finally:
        folder.close()
