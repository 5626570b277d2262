"""One HTTP download: skip if complete, resume if interrupted, rename when done.

Everything that ftlib fetches (the instruction data set, the GPT-2 checkpoints)
goes through `download_file`, so the rules are the same everywhere:

- a file that is already complete at `dest` is not fetched again, and works offline;
- bytes arrive in `dest + ".part"`; only a complete body is renamed onto `dest`,
  so an interrupted download never leaves a half file at `dest`;
- re-running after an interruption resumes from the `.part` with an HTTP Range request,
  only if the server's file is the version the `.part` came from (If-Range);
- a body is complete only if its length was announced (or its sha256 is given and
  matches); a body longer than its Content-Length, several Content-Lengths, or a
  compressed body (Content-Encoding) is refused, since the file could not be trusted;
- the whole exchange has a deadline (connecting, the status line and headers, the
  body), not only each read: a server that trickles a byte a second cannot hold it;
- every failure is a `DownloadError` that names the URL.

Not in a notebook: notebooks download through `download_and_load_file` (01) and
`download_and_load_gpt2` (05), which call this module.
"""

import hashlib
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ftlib.plumbing.errors import DownloadError


def _part_path(dest):
    return dest.with_name(dest.name + ".part")


def _content_length(response, url):
    """The body's length from the response's one Content-Length, or None if it has none.

    Raises DownloadError when the headers leave the body's bytes in doubt: several
    Content-Lengths (agreeing or not), one that is not a number, one next to a
    Transfer-Encoding, or a Content-Encoding (the bytes would be saved compressed;
    every request asks for identity).
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(f"Download refused: {url}: the server sent the file with Content-"
                            f"Encoding {encoding!r}, not as its own bytes; nothing was saved")
    values = response.headers.get_all("Content-Length") or []
    if not values:
        return None
    value = values[0].strip()
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,20}", value):
        shown = ", ".join(repr(v[:40]) for v in values[:3])
        raise DownloadError(f"Download refused: {url}: the server sent a Content-Length of "
                            f"{shown}, not one number; nothing was saved")
    if response.headers.get("Transfer-Encoding"):
        raise DownloadError(f"Download refused: {url}: the server sent both a Content-Length "
                            "and a Transfer-Encoding, so the body's end is in doubt; "
                            "nothing was saved")
    return int(value)


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


# Every request asks for the file's own bytes: a gzip-encoded body would be saved
# compressed under the file's name (and is refused, should a server send one anyway).
_IDENTITY = {"Accept-Encoding": "identity"}


def remote_size(url, *, timeout=30.0, deadline=None):
    """Ask the server how many bytes `url` has, without fetching the body.

    Uses a HEAD request; if the server refuses HEAD or omits Content-Length, opens a
    GET and reads only its headers. Returns None when the size is not advertised.
    `timeout` bounds each read, `deadline` (seconds, None: no limit) all of it.
    """
    return _remote_size(url, Deadline(deadline, per_read=timeout))


def _remote_size(url, clock):
    try:
        head = urllib.request.Request(url, headers=_IDENTITY, method="HEAD")
        with clock.open(head) as r:
            size = _content_length(r, url)
        if size is not None:
            return size
    except urllib.error.HTTPError as exc:
        if exc.code not in (405, 501):  # 405/501: this server does not do HEAD
            raise
    with clock.open(urllib.request.Request(url, headers=_IDENTITY)) as r:
        return _content_length(r, url)  # closing now, before reading, skips the body


# A total limit on one download, whatever the per-read `timeout`: a server that
# trickles a byte a second never times out a read. 3 hours fetch the largest GPT-2
# checkpoint (6.2 GB) at 600 KB/s.
DOWNLOAD_DEADLINE_S = 3 * 3600


class Deadline:
    """A time limit on a whole HTTP exchange, and `open`: urlopen, kept within it.

    urlopen's own `timeout` bounds each socket operation, so a server that trickles
    a byte a second (of its headers as well as of its body) never trips it. Through
    `open`, connecting, each send and each read wait at most `per_read` seconds and
    at most what is left of `seconds` (None: no limit); once the time is spent, the
    next of them raises TimeoutError, and `spent()` says that was the deadline.

    Not in a notebook: the clock under `download_file` and the judge's `query_model`.
    """

    def __init__(self, seconds, per_read=None):
        self.seconds, self.per_read = seconds, per_read
        self.end = None if seconds is None else time.monotonic() + seconds

    def spent(self):
        """True once the whole time is used up."""
        return self.end is not None and time.monotonic() >= self.end

    def timeout(self):
        """The socket timeout for the next connect, send or read: `per_read`, or the
        time left when that is less. TimeoutError if none is left."""
        if self.end is None:
            return self.per_read
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the deadline of {self.seconds:g} s has passed")
        return left if self.per_read is None else min(self.per_read, left)

    def open(self, request):
        """`urllib.request.urlopen(request)`, every socket operation within this deadline
        (redirects and proxies work as with urlopen; the response's reads stay timed)."""
        opener = urllib.request.build_opener(_TimedHTTPHandler(self), _TimedHTTPSHandler(self))
        return opener.open(request)


class _TimedReads(io.RawIOBase):
    """A socket's reads, each with the socket timeout `clock` gives at that moment."""

    def __init__(self, sock, clock):
        self.sock, self.clock = sock, clock
        # one of the socket's own files: closing the connection waits until this closes
        self.raw = sock.makefile("rb", buffering=0)

    def readable(self):
        return True

    def readinto(self, buffer):
        self.sock.settimeout(self.clock.timeout())
        return self.raw.readinto(buffer)

    def close(self):
        self.raw.close()
        super().close()


class _TimedSocket:
    """A connected socket as http.client uses it: `makefile` (where the status line, the
    headers and the body are read) and `sendall` keep to `clock`; the rest is the socket's."""

    def __init__(self, sock, clock):
        self.sock, self.clock = sock, clock

    def makefile(self, mode="rb", buffering=None):
        return io.BufferedReader(_TimedReads(self.sock, self.clock))

    def sendall(self, data):
        self.sock.settimeout(self.clock.timeout())
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class _TimedConnection:
    """Mixin for an http.client connection: connects within `clock`, then reads and
    sends through a `_TimedSocket`."""

    def __init__(self, *args, clock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def connect(self):
        self.timeout = self.clock.timeout()
        super().connect()  # for https, this includes the TLS handshake
        self.sock = _TimedSocket(self.sock, self.clock)


class _TimedHTTP(_TimedConnection, http.client.HTTPConnection):
    pass


class _TimedHTTPS(_TimedConnection, http.client.HTTPSConnection):
    pass


class _TimedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def http_open(self, req):
        return self.do_open(_TimedHTTP, req, clock=self.clock)


class _TimedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def https_open(self, req):
        return self.do_open(_TimedHTTPS, req, context=self._context, clock=self.clock)


def _too_slow(url, clock, part=None):
    """The DownloadError for a download that ran out of time (`part`: bytes kept for a resume)."""
    kept = f"; the bytes so far are kept in {part}, run it again to resume" if part else ""
    return DownloadError(f"Download too slow: {url} did not finish within "
                         f"{clock.seconds:g} s{kept}")


# After the last byte a Content-Length announced, how long to wait for the server to
# close (it was asked to, with "Connection: close"), to see that no more bytes follow.
_TRAILING_BYTES_WAIT_S = 1.0


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
      whole exchange: connecting, the status line and headers, and the body (None: no
      limit); `progress` shows a tqdm bar labelled `desc`.
    - A body longer than its Content-Length, several Content-Lengths, or a body sent
      compressed (Content-Encoding) is refused, and nothing of it is kept.
    - Any failure raises `DownloadError` naming the URL; after a dropped connection,
      calling again resumes where it stopped.

    >>> download_file("https://example.org/instruction-data.json", "data/instruction-data.json")
    PosixPath('data/instruction-data.json')
    """
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadError(f"Cannot download {url} to {dest}: it is a folder")
    part = _part_path(dest)
    clock = Deadline(deadline, per_read=timeout)
    if dest.exists() and _local_copy_is_current(url, dest, clock, sha256):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot download {url} to {dest}: {exc.strerror or exc}") from None
    version = _saved_version(part) if resume else None
    start = part.stat().st_size if version and part.exists() else 0
    response = _open(url, part, start, version, clock)
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


def _local_copy_is_current(url, dest, clock, sha256=None):
    """True when `dest` has the size the server reports (or the server cannot say,
    or cannot be asked: then a warning, and the local copy is used). With `sha256`,
    True exactly when the local copy has it."""
    if sha256 is not None:
        return _file_sha256(dest) == sha256.lower()
    try:
        expected = _remote_size(url, clock)
    except _REQUEST_ERRORS as exc:
        warnings.warn(f"Could not check {_describe(url, exc)}; using the existing {dest}",
                      stacklevel=3)
        return True
    # another size: the server's file changed, so fetch it again
    return expected is None or expected == dest.stat().st_size


def _open(url, part, start, version, clock):
    """The server's response, asking for bytes `start`- of the same `version` when
    resuming (If-Range: another version makes the server send the whole file)."""
    request = urllib.request.Request(url, headers=_IDENTITY)
    if start > 0:
        request.add_header("Range", f"bytes={start}-")
        request.add_header("If-Range", version)
    try:
        return clock.open(request)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            # Our .part is not a prefix the server can continue: start over.
            _discard(part)
            return _open(url, part, 0, None, clock)
        raise DownloadError(f"Download failed: {_describe(url, exc)}") from exc
    except _REQUEST_ERRORS as exc:
        if clock.spent():  # connecting, or the status line and headers, took too long
            raise _too_slow(url, clock, part if part.exists() else None) from exc
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
    progress bar; returns (bytes in `part`, the size expected or None).

    With a Content-Length, reads stop at its last byte, and then one more read checks
    that the server closes there: a longer body is refused and `part` deleted."""
    body_length = _content_length(response, url)  # before anything is written
    mode, start = _body_start(response, url, part, start)
    expected = None if body_length is None else start + body_length
    if body_length is not None:
        response.length = None  # http.client would stop quietly at Content-Length; we count
    received = start
    bar = tqdm(total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               **tqdm_kwargs)
    try:
        with bar, open(part, mode) as f:
            while received != expected:
                want = chunk_size if expected is None else min(chunk_size, expected - received)
                chunk = response.read1(want)  # whatever has arrived, not a full chunk
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except _REQUEST_ERRORS as exc:
        if clock.spent():
            raise _too_slow(url, clock, part) from exc
        raise DownloadError(
            f"Download interrupted: {_describe(url, exc)}; {received} of "
            f"{expected if expected is not None else '?'} bytes arrived in {part}. "
            "Run it again to resume."
        ) from exc
    if expected is not None and received == expected and _more_bytes_follow(response, clock):
        _discard(part)
        raise DownloadError(f"Download refused: {url}: the server sent more than the "
                            f"{body_length} bytes of its Content-Length; nothing was saved")
    return received, expected


def _more_bytes_follow(response, clock):
    """True if the server sends anything after the body's last byte before it closes
    (the clock's reads now wait at most _TRAILING_BYTES_WAIT_S, for a server that
    keeps the connection open)."""
    clock.per_read = min(clock.per_read or _TRAILING_BYTES_WAIT_S, _TRAILING_BYTES_WAIT_S)
    try:
        return bool(response.read1(1))
    except _REQUEST_ERRORS:  # no close, or no time left: the body itself was whole
        return False


def download_first_available(urls, dest, **kwargs):
    """Try each URL in order; return the path from the first that downloads.

    Useful with a primary URL and a backup mirror. `kwargs` go to `download_file`.
    If every URL fails, one `DownloadError` lists each URL with its reason (with one
    URL, its own one-line error).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise DownloadError(f"No URL given to download {dest}")
    if len(urls) == 1:
        return download_file(urls[0], dest, **kwargs)
    reasons = []
    for url in urls:
        try:
            return download_file(url, dest, **kwargs)
        except DownloadError as exc:
            reasons.append(f"  - {exc}")  # each message names its URL
    raise DownloadError(
        f"Could not download {dest} from any of {len(urls)} URLs:\n" + "\n".join(reasons)
    )
