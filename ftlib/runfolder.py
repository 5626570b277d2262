"""A run folder is written whole, or not at all.

One way to write a run folder (`python -m ftlib finetune --out DIR`):

1. `prepare_run_folder(out)`, before any work: `out` must be a folder or nothing;
   a lock beside it (`.DIR.lock`) keeps a second run from writing to it at the
   same time; leftovers of a run killed earlier (its temporary folder, temporary
   files inside `out`) are removed; a temporary folder beside `out` is made, which
   also proves that the place can be written to.
2. The run writes everything (checkpoints, model, metrics) into that temporary
   folder, `folder.work`.
3. `folder.commit()` switches it into place: the old `out` is renamed aside, the
   new one renamed onto `out`, the old one removed. A run that fails is discarded
   with its temporary folder, so it replaces nothing; `out` is left as it was.

Not in a notebook: plumbing under `finetune`; notebooks see only finished run folders.
"""

import contextlib
import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path

try:
    import fcntl  # Linux, macOS
except ImportError:  # Windows: the `filelock` package (a dependency of torch) locks instead
    fcntl = None

from ftlib.errors import ConfigError, FtlibError

# Errors that mean "this storage cannot take the run folder" (a full disk, a file
# size limit, a read-only or unwritable place), reported as one line, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunFolder:
    """A locked run folder `out` and the temporary folder `work` that becomes it.

    Not in a notebook: made by `prepare_run_folder`.
    """

    def __init__(self, out, unlock, work, created=()):
        self.out, self.work, self.created = out, work, created
        self._unlock = unlock
        self.committed = False

    def commit(self):
        """Switch `work` into place as `out` (the old `out`, if any, is removed)."""
        old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
        if self.out.exists():
            os.rename(self.out, old)
        os.rename(self.work, self.out)
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def close(self):
        """Discard `work` unless committed; release the lock (its file is removed)."""
        if not self.committed:
            shutil.rmtree(self.work, ignore_errors=True)
        self._unlock()
        if not self.committed:
            for parent in self.created:  # the folders this run made for `out`, deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()


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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
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


def _remove_leftovers(out):
    """Remove what a killed run left (we hold the lock, so no other run owns them):
    its temporary folder beside `out`, temporary files inside it, and an old `out`
    renamed aside just before a switch (put back if the switch did not happen)."""
    for old in out.parent.glob(f".{out.name}.old-*"):
        if not out.exists():
            os.rename(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for work in out.parent.glob(f".{out.name}.run-*.tmp"):
        shutil.rmtree(work, ignore_errors=True)
    if out.is_dir():
        for tmp in out.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def prepare_run_folder(out):
    """Lock `out`, clean up after a killed run, make the temporary folder; a `RunFolder`.

    Raises ConfigError (one line naming `--out`) when `out` is a file, another run
    holds it, or the place cannot be written to.

    Not in a notebook: called by `finetune` before any work.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    created = [p for p in out.parent.resolve().parents[::-1] if not p.exists()]
    created = [*created, out.parent] if not out.parent.exists() else []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        unlock = _lock(out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        _remove_leftovers(out)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.run-", suffix=".tmp", dir=out.parent))
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    except OSError as exc:
        unlock()
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return RunFolder(out, unlock, work, created[::-1])


@contextlib.contextmanager
def run_folder(folder):
    """Around a run in a prepared RunFolder (None: nothing to do, e.g. torchrun's
    other processes): the caller commits on success; Ctrl-C commits a folder that
    holds a checkpoint, so `--resume` finds it; any other failure discards the
    temporary folder. A full disk or unwritable storage becomes one FtlibError
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
            folder.commit()
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise FtlibError(f"cannot write the run folder {folder.out}: {exc.strerror or exc}; "
                         "nothing was written to it") from None
    finally:
        folder.close()
