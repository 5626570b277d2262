"""One HTTP download: skip if complete, resume if interrupted, rename when done.

Everything that ftlib fetches (the instruction data set, the GPT-2 checkpoints)
goes through `download_file`, so the rules are the same everywhere:

- a file that is already complete at `dest` is not fetched again, and works offline;
- bytes arrive in `dest + ".part"`; only a complete body is renamed onto `dest`,
  so an interrupted download never leaves a half file at `dest`;
- re-running after an interruption resumes from the `.part` with an HTTP Range request;
- every failure is a `DownloadError` that names the URL.

Not in a notebook: notebooks download through `download_and_load_file` (01) and
`download_and_load_gpt2` (05), which call this module.
"""

import http.client
import os
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

    Introduced in: notebooks/01_instruction_data.ipynb
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


def download_file(
    url, dest, *, timeout=30.0, progress=True, desc=None, resume=True, chunk_size=1 << 16
):
    """Download `url` to `dest` and return `dest` as a Path.

    - If `dest` exists with the size the server reports, nothing is fetched. If the
      server cannot be asked (offline), an existing `dest` is used with a warning.
    - Bytes go to `dest.part`; with `resume=True` an existing `.part` is continued
      with a Range request. Only a complete body is renamed onto `dest`.
    - `timeout` (seconds) applies to connecting and to each read; `progress` shows a
      tqdm bar labelled `desc` (default: the file name).
    - Any failure raises `DownloadError` naming the URL; after a dropped connection,
      calling again resumes where it stopped.

    >>> download_file("https://example.org/instruction-data.json", "data/instruction-data.json")
    PosixPath('data/instruction-data.json')

    Introduced in: notebooks/01_instruction_data.ipynb
    """
    dest = Path(dest)
    part = _part_path(dest)
    if dest.exists() and _local_copy_is_current(url, dest, timeout):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if resume and part.exists() else 0
    response = _open(url, part, start, timeout)
    if response is None:  # our .part could not be continued: start over
        return download_file(url, dest, timeout=timeout, progress=progress, desc=desc,
                             resume=False, chunk_size=chunk_size)
    with response:
        received, expected = _receive(response, url, part, start, chunk_size,
                                      tqdm_kwargs={"desc": desc or dest.name, "disable": not progress})
    if expected is not None and received != expected:
        raise DownloadError(
            f"Download interrupted: {url}: the connection closed after {received} of "
            f"{expected} bytes; they are kept in {part}. Run it again to resume."
        )
    os.replace(part, dest)
    return dest


def _local_copy_is_current(url, dest, timeout):
    """True when `dest` has the size the server reports (or the server cannot say,
    or cannot be asked: then a warning, and the local copy is used)."""
    try:
        expected = remote_size(url, timeout=timeout)
    except _REQUEST_ERRORS as exc:
        warnings.warn(f"Could not check {_describe(url, exc)}; using the existing {dest}",
                      stacklevel=3)
        return True
    # another size: the server's file changed, so fetch it again
    return expected is None or expected == dest.stat().st_size


def _open(url, part, start, timeout):
    """The server's response, asking for bytes `start`- when resuming; None when the
    server cannot continue our .part (it is deleted: the caller starts over)."""
    request = urllib.request.Request(url)
    if start > 0:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            # Our .part is not a prefix the server can continue (e.g. the file changed
            # on the server): drop it and start over.
            part.unlink()
            return None
        raise DownloadError(f"Download failed: {_describe(url, exc)}") from exc
    except _REQUEST_ERRORS as exc:
        raise DownloadError(f"Download failed: {_describe(url, exc)}") from exc


def _receive(response, url, part, start, chunk_size, tqdm_kwargs):
    """Write the body into `part` (appended after a 206, anew after a 200), with a
    progress bar; returns (bytes in `part`, the size expected or None)."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {start}-"):
            raise DownloadError(
                f"Download failed: {url}: asked for bytes {start}- but the server "
                f"sent {content_range or 'no Content-Range'}; delete {part} to start over."
            )
        mode = "ab"  # the server continues where our .part stops
    else:
        mode, start = "wb", 0  # a 200 is the whole file: start over
    body_length = _content_length(response)
    expected = None if body_length is None else start + body_length
    received = start
    bar = tqdm(total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               **tqdm_kwargs)
    try:
        with bar, open(part, mode) as f:
            while chunk := response.read(chunk_size):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
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

    Introduced in: notebooks/05_loading_gpt2.ipynb
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
