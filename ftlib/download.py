"""One HTTP download: skip if complete, resume if interrupted, rename when done.

Everything that ftlib fetches (the instruction data set, the GPT-2 checkpoints)
goes through `download_file`, so the rules are the same everywhere:

- a file that is already complete at `dest` is not fetched again, and works offline;
- bytes arrive in `dest + ".part"`; only a complete body is renamed onto `dest`,
  so an interrupted download never leaves a half file at `dest`;
- re-running after an interruption resumes from the `.part` with an HTTP Range request,
  only if the server's file is the version the `.part` came from (If-Range);
- a body is complete only if its length was announced (or its sha256 is given and
  matches), and the whole download has a deadline, not only each read;
- every failure is a `DownloadError` that names the URL.

Not in a notebook: notebooks download through `download_and_load_file` (01) and
`download_and_load_gpt2` (05), which call this module.
"""

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ftlib.errors import DownloadError


def _part_path(dest):
    return dest.with_name(dest.name + ".part")


def _content_length(response):
    """The response's Content-Length as an int, or None if it is absent."""
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _describe(url, exc):
    """A one-line reason for a failed request, naming the URL (and HTTP status)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"{url}: HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason  # e.g. "connection refused", or a timeout
    if isinstance(exc, TimeoutError):
        return f"{url}: timed out"
    return f"{url}: {exc}"


# Exceptions that mean "this request failed" (TimeoutError and ConnectionError are
# OSErrors; HTTPException covers malformed or cut-off responses).
_REQUEST_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def remote_size(url, *, timeout=30.0):
    """Ask the server how many bytes `url` has, without fetching the body.

    Uses a HEAD request; if the server refuses HEAD or omits Content-Length, opens a
    GET and reads only its headers. Returns None when the size is not advertised.
    """
    try:
        head = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(head, timeout=timeout) as r:
            size = _content_length(r)
        if size is not None:
            return size
    except urllib.error.HTTPError as exc:
        if exc.code not in (405, 501):  # 405/501: this server does not do HEAD
            raise
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return _content_length(r)  # closing now, before reading, skips the body


# A total limit on one download, whatever the per-read `timeout`: a server that
# trickles a byte a second never times out a read. 3 hours fetch the largest GPT-2
# checkpoint (6.2 GB) at 600 KB/s.
DOWNLOAD_DEADLINE_S = 3 * 3600


class _Deadline:
    """The time left for one download; `check()` raises DownloadError once it is spent."""

    def __init__(self, url, seconds):
        self.url, self.seconds = url, seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def timeout(self, per_read):
        """The socket timeout to use now: the per-read one, or less when time is short."""
        return per_read if self.end is None else max(0.01, min(per_read, self.end - time.monotonic()))

    def check(self, part=None):
        if self.end is not None and time.monotonic() > self.end:
            kept = f"; the bytes so far are kept in {part}, run it again to resume" if part else ""
            raise DownloadError(f"Download too slow: {self.url} did not finish within "
                                f"{self.seconds:g} s{kept}")


def download_file(
    url, dest, *, timeout=30.0, progress=True, desc=None, resume=True, chunk_size=1 << 16,
    sha256=None, deadline=DOWNLOAD_DEADLINE_S,
):
    """Download `url` to `dest` and return `dest` as a Path.

    - If `dest` exists with the size the server reports (and the `sha256` given, if
      any), nothing is fetched. If the server cannot be asked (offline), an existing
      `dest` is used with a warning.
    - Bytes go to `dest.part`; with `resume=True` an existing `.part` is continued
      with a Range request, only if the server's file is still the version the `.part`
      came from (`If-Range` with its ETag or Last-Modified, kept in `dest.part.version`).
      Only a complete body is renamed onto `dest`: its length must be known (a
      Content-Length, or `sha256`), and it must match `sha256` when given.
    - `timeout` (seconds) applies to connecting and to each read, `deadline` to the
      whole download (None: no limit); `progress` shows a tqdm bar labelled `desc`.
    - Any failure raises `DownloadError` naming the URL; after a dropped connection,
      calling again resumes where it stopped.

    >>> download_file("https://example.org/instruction-data.json", "data/instruction-data.json")
    PosixPath('data/instruction-data.json')
    """
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadError(f"Cannot download {url} to {dest}: it is a folder")
    part = _part_path(dest)
    if dest.exists() and _local_copy_is_current(url, dest, timeout, sha256):
        return dest
    clock = _Deadline(url, deadline)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot download {url} to {dest}: {exc.strerror or exc}") from None
    version = _saved_version(part) if resume else None
    start = part.stat().st_size if version and part.exists() else 0
    response = _open(url, part, start, version, clock.timeout(timeout))
    with response:
        received, expected = _receive(response, url, part, start, chunk_size, clock,
                                      tqdm_kwargs={"desc": desc or dest.name, "disable": not progress})
    _check_complete(url, part, received, expected, sha256)
    os.replace(part, dest)
    _version_path(part).unlink(missing_ok=True)
    return dest


def _version_path(part):
    """Where the version (ETag or Last-Modified) of the file a `.part` came from is kept."""
    return part.with_name(part.name + ".version")


def _saved_version(part):
    """The version a `.part` came from, or None (then it cannot be resumed safely)."""
    try:
        return _version_path(part).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_complete(url, part, received, expected, sha256):
    """Raise DownloadError unless `part` holds the whole body (and the expected sha256)."""
    if expected is not None and received != expected:
        raise DownloadError(
            f"Download interrupted: {url}: the connection closed after {received} of "
            f"{expected} bytes; they are kept in {part}. Run it again to resume."
        )
    if sha256 is None and expected is None:
        _discard(part)
        raise DownloadError(
            f"Download failed: {url}: the server sent no Content-Length, so a body cut short "
            "cannot be told from a complete one; pass the file's sha256 to check it")
    if sha256 is not None and _file_sha256(part) != sha256.lower():
        _discard(part)
        raise DownloadError(f"Download failed: {url}: the file's sha256 is not the expected "
                            f"{sha256}; it was deleted, run again to download it anew")


def _discard(part):
    part.unlink(missing_ok=True)
    _version_path(part).unlink(missing_ok=True)


def _local_copy_is_current(url, dest, timeout, sha256=None):
    """True when `dest` has the size the server reports (or the server cannot say,
    or cannot be asked: then a warning, and the local copy is used). With `sha256`,
    True exactly when the local copy has it."""
    if sha256 is not None:
        return _file_sha256(dest) == sha256.lower()
    try:
        expected = remote_size(url, timeout=timeout)
    except _REQUEST_ERRORS as exc:
        warnings.warn(f"Could not check {_describe(url, exc)}; using the existing {dest}",
                      stacklevel=3)
        return True
    # another size: the server's file changed, so fetch it again
    return expected is None or expected == dest.stat().st_size


def _open(url, part, start, version, timeout):
    """The server's response, asking for bytes `start`- of the same `version` when
    resuming (If-Range: another version makes the server send the whole file)."""
    request = urllib.request.Request(url)
    if start > 0:
        request.add_header("Range", f"bytes={start}-")
        request.add_header("If-Range", version)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            # Our .part is not a prefix the server can continue: start over.
            _discard(part)
            return _open(url, part, 0, None, timeout)
        raise DownloadError(f"Download failed: {_describe(url, exc)}") from exc
    except _REQUEST_ERRORS as exc:
        raise DownloadError(f"Download failed: {_describe(url, exc)}") from exc


def _body_start(response, url, part, start):
    """(file mode, first byte) for the body: append after a 206 that continues our
    .part, write anew after a 200 (and remember the version it is)."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {start}-"):
            raise DownloadError(
                f"Download failed: {url}: asked for bytes {start}- but the server "
                f"sent {content_range or 'no Content-Range'}; delete {part} to start over."
            )
        return "ab", start
    version = response.headers.get("ETag") or response.headers.get("Last-Modified")
    _version_path(part).unlink(missing_ok=True)
    if version:  # without one, a later run cannot know it resumes the same file
        _version_path(part).write_text(version, encoding="utf-8")
    return "wb", 0


def _receive(response, url, part, start, chunk_size, clock, tqdm_kwargs):
    """Write the body into `part` (appended after a 206, anew after a 200), with a
    progress bar; returns (bytes in `part`, the size expected or None)."""
    mode, start = _body_start(response, url, part, start)
    body_length = _content_length(response)
    expected = None if body_length is None else start + body_length
    received = start
    bar = tqdm(total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               **tqdm_kwargs)
    try:
        with bar, open(part, mode) as f:
            while chunk := response.read1(chunk_size):  # whatever has arrived, not a full chunk
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                clock.check(part)
    except DownloadError:
        raise  # the deadline (a DownloadError is an OSError too)
    except _REQUEST_ERRORS as exc:
        raise DownloadError(
            f"Download interrupted: {_describe(url, exc)}; {received} of "
            f"{expected if expected is not None else '?'} bytes arrived in {part}. "
            "Run it again to resume."
        ) from exc
    return received, expected


def download_first_available(urls, dest, **kwargs):
    """Try each URL in order; return the path from the first that downloads.

    Useful with a primary URL and a backup mirror. `kwargs` go to `download_file`.
    If every URL fails, one `DownloadError` lists each URL with its reason.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise DownloadError(f"No URL given to download {dest}")
    reasons = []
    for url in urls:
        try:
            return download_file(url, dest, **kwargs)
        except DownloadError as exc:
            reasons.append(f"  - {exc}")  # each message names its URL
    raise DownloadError(
        f"Could not download {dest} from any of {len(urls)} URLs:\n" + "\n".join(reasons)
    )
