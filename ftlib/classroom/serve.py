"""A tiny read-only HTTP file server with Range support.

Two uses:
- Tests start it on 127.0.0.1 to check `ftlib.plumbing.download` against a real server,
  with no internet (it can also drop a connection on purpose, and it logs requests).
- An instructor runs it as a classroom mirror of the GPT-2 files and the data set:

      python -m ftlib.classroom.serve gpt2/ --host 0.0.0.0 --port 8000

Only files under the served folder are reachable (a symlink that leads outside it
is refused too); directories give 404, and a file that cannot be read an error
reply (403 or 500) before any `200 OK`.
`Range: bytes=N-` and `bytes=N-M` are honoured, so interrupted downloads resume;
each file has an ETag and Last-Modified, and `If-Range` with another version gets
the whole file, so a resumed download never splices two versions.
A client that sends nothing for IDLE_TIMEOUT_S, or takes more than HEADER_TIMEOUT_S
for a request's line and headers (a trickle of bytes), is disconnected, so no one
holds a thread for long.

Not in a notebook: the server's plumbing and its command line (notebook 05 uses
`serve_directory`, whose pointer says so).
"""

import argparse
import contextlib
import email.utils
import io
import mimetypes
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ftlib.plumbing.errors import ConfigError

_RANGE_RE = re.compile(r"^bytes=([0-9]+)-([0-9]*)$")
_CHUNK = 1 << 16

# A connection that sends nothing for this long (before a request, or between two on
# a kept-alive connection) is closed.
IDLE_TIMEOUT_S = 5.0
# A request's line and headers must all arrive within this, however the bytes trickle.
HEADER_TIMEOUT_S = 10.0
# A client that accepts no 64 KiB of the reply for this long is dropped.
SEND_TIMEOUT_S = 60.0


class LocalServer(str):
    """The base URL of a running `serve_directory` (a str), plus test helpers.

    - `.url`: the base URL, e.g. "http://127.0.0.1:54321" (same as the str itself)
    - `.root`: the folder being served
    - `.requests`: a list of (method, path, range header or None), one per request
    - `.fail_after_bytes`: if not None, each response body is cut after this many
      bytes and the connection closed (a dropped download); set it to None to heal.
    """

    def __new__(cls, url, root, fail_after_bytes=None):
        self = super().__new__(cls, url)
        self.url = url
        self.root = Path(root)
        self.requests = []
        self.fail_after_bytes = fail_after_bytes
        return self


def _parse_range(header, size):
    """Return (start, end) inclusive for a Range header, "unsatisfiable", or None.

    None means "no usable Range: send the whole file", as HTTP asks for a header
    we do not understand.
    """
    match = _RANGE_RE.match(header.strip()) if header else None
    if match is None:
        return None
    start = _position(match.group(1), size)
    if start >= size:
        return "unsatisfiable"
    end = _position(match.group(2), size) if match.group(2) else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


def _position(digits, size):
    """A byte position from its digits, or `size` if it is more than that: a number of
    thousands of digits is never converted (int() refuses those, and it is past the end)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(size)) else size


def _if_range_matches(if_range, etag, mtime):
    """True unless an If-Range header names another version than (etag, mtime)."""
    if if_range is None:
        return True
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag
    try:
        return email.utils.parsedate_to_datetime(if_range).timestamp() >= int(mtime)
    except (TypeError, ValueError):
        return False


class _RequestReads(io.RawIOBase):
    """A connection's reads: each waits at most IDLE_TIMEOUT_S, and all those of one
    request (its line and headers) at most HEADER_TIMEOUT_S from `next_request()`."""

    def __init__(self, connection, raw):
        self.connection, self.raw = connection, raw
        self.next_request()

    def next_request(self):
        self.end = time.monotonic() + HEADER_TIMEOUT_S

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request's headers took more than {HEADER_TIMEOUT_S:g} s")
        self.connection.settimeout(min(IDLE_TIMEOUT_S, left))
        return self.raw.readinto(buffer)

    def close(self):
        self.raw.close()
        super().close()


class _Handler(BaseHTTPRequestHandler):
    """Answers GET and HEAD for files under the server's root; `self.server.local`
    is the LocalServer (root, request log, options)."""

    protocol_version = "HTTP/1.1"  # keep-alive, so Content-Length must be right
    rbufsize = 0  # setup() makes the raw reads timed, then buffers them

    def setup(self):
        super().setup()
        self.reads = _RequestReads(self.connection, self.rfile)
        self.rfile = io.BufferedReader(self.reads)

    def handle_one_request(self):
        # A timeout while the request arrives ends here: BaseHTTPRequestHandler catches
        # TimeoutError and closes the connection (quietly: log_message says nothing).
        self.reads.next_request()
        super().handle_one_request()

    def parse_request(self):
        ok = super().parse_request()  # reads the headers, within the reads' limits
        self.connection.settimeout(SEND_TIMEOUT_S)  # from here on, the reply is written
        return ok

    def log_message(self, format, *args):
        pass  # quiet: no line on stderr per request

    def do_HEAD(self):
        self._serve(send_body=False)

    def do_GET(self):
        self._serve(send_body=True)

    def _file_for_request(self):
        """The file the URL names, or None if it is missing or outside the root."""
        root = self.server.local.root.resolve()
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        try:
            path = (root / url_path.lstrip("/")).resolve()
            # resolve() has removed ".." and followed symlinks: anything not under root
            # is an attempt to escape it
            if not path.is_relative_to(root) or not path.is_file():
                return None
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system
            return None
        return path

    def _serve(self, send_body):
        range_header = self.headers.get("Range")
        self.server.local.requests.append((self.command, self.path, range_header))
        path = self._file_for_request()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return
        try:
            f = open(path, "rb")
        except OSError as exc:
            self._cannot_read(exc)
            return
        with f:
            self._serve_file(f, path, range_header, send_body)

    def _cannot_read(self, exc):
        """The error reply for a file that exists but cannot be read (nothing else was sent)."""
        status = HTTPStatus.FORBIDDEN if isinstance(exc, PermissionError) else (
            HTTPStatus.INTERNAL_SERVER_ERROR)
        self.send_error(status, explain="The file exists but cannot be read.")

    def _serve_file(self, f, path, range_header, send_body):
        """The reply for an open file: its first bytes are read before the status line,
        so a file that cannot be read gets an error reply, never a `200 OK` cut short."""
        stat = os.fstat(f.fileno())
        size = stat.st_size
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'  # changes when the file does
        if not _if_range_matches(self.headers.get("If-Range"), etag, stat.st_mtime):
            range_header = None  # the client's partial copy is of another version: send it all
        byte_range = _parse_range(range_header, size)

        if byte_range == "unsatisfiable":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = (0, size - 1) if byte_range is None else byte_range
        length = end - start + 1
        try:
            f.seek(start)
            first = f.read(min(_CHUNK, length)) if send_body else b""
        except OSError as exc:
            self._cannot_read(exc)
            return
        if byte_range is None:
            self.send_response(HTTPStatus.OK)
        else:
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.end_headers()
        if send_body:
            self._send_body(f, first, length)

    def _send_body(self, f, first, length):
        """Write `length` bytes: `first`, then the rest of `f` from where it stands."""
        limit = self.server.local.fail_after_bytes
        to_send = length if limit is None else min(length, limit)
        sent, chunk = 0, first[:to_send]
        while chunk:
            self.wfile.write(chunk)  # a client gone or stuck: the server drops it quietly
            sent += len(chunk)
            try:
                chunk = f.read(min(_CHUNK, to_send - sent))
            except OSError:  # the disk failed mid-way: cut the reply short
                break
        if sent < length:
            # Fewer bytes than Content-Length went out (on purpose, or the file
            # shrank or failed): close, so the client sees a short read instead of
            # waiting.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown

    def handle_error(self, request, client_address):
        # A client that hangs up mid-download is normal here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_directory(root, host="127.0.0.1", port=0, fail_after_bytes=None):
    """Serve the files under `root` over HTTP in a background thread.

    Yields a `LocalServer`: the base URL as a str (port 0 picks a free port), which
    also carries the request log. The server stops when the `with` block ends.

    >>> with serve_directory("data") as url:
    ...     download_file(f"{url}/instruction-data.json", "copy.json")

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"Cannot serve {root}: it is not a folder")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"Cannot serve {root} on port {port!r}: a port is a number "
                          "from 0 to 65535 (0: any free one)")
    httpd = _QuietServer((host, port), _Handler)
    bound_host, bound_port = httpd.server_address[:2]  # port 0 -> the one the OS chose
    server = LocalServer(f"http://{bound_host}:{bound_port}", root, fail_after_bytes)
    httpd.local = server  # what the handler reads: root, request log, options
    # A short poll interval makes shutdown quick (serve_forever checks it that often).
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"serve {server}",
        daemon=True,
    )
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def main(argv=None):
    """Command line: `python -m ftlib.classroom.serve DIR [--host H] [--port P]`, until Ctrl-C.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ftlib.classroom.serve",
        description="Serve a folder read-only over HTTP (with Range support), "
        "for example as a classroom mirror of the GPT-2 files.",
    )
    parser.add_argument("directory", help="the folder to serve")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; "
        "use 0.0.0.0 to let other machines in the room download)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    args = parser.parse_args(argv)

    try:
        with serve_directory(args.directory, host=args.host, port=args.port) as url:
            print(f"Serving {Path(args.directory).resolve()} at {url} (Ctrl-C to stop)")
            if args.host == "0.0.0.0":
                port = url.rsplit(":", 1)[1]
                print(f"Other machines can use http://{socket.gethostname()}:{port}")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()  # until Ctrl-C
    except (ConfigError, OSError) as exc:  # not a folder, no such port, or it is taken
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
