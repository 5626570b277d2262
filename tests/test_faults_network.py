"""Deadlines that hold, and replies that are refused (issue 25): download_file, the
Ollama judge client and the file server, against real servers and clients on 127.0.0.1.

Misbehaving servers are raw sockets in a thread (they trickle a status line, headers
or a body a byte at a time, or frame a body wrongly); deadlines are a second, and
each test checks how long the failure took, what it says, and what was left on disk.
"""

import errno
import gzip
import io
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ftlib.classroom import serve
from ftlib.plumbing.download import download_file
from ftlib.plumbing.errors import DownloadError, FtlibError
from ftlib.evaluation.judge import query_model
from helpers import RawServer

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 1.0  # seconds: every deadline here
LATE = 0.8      # how much later than its deadline a failure may come, on a busy 2-core machine


def _assert_took_the_deadline(started):
    took = time.monotonic() - started
    assert DEADLINE - 0.05 <= took <= DEADLINE + LATE, f"took {took:.2f} s"


def trickle(slow, fast=b"", every=0.1):
    """A reply: `fast` at once, then `slow` one byte each `every` seconds (until stopped)."""
    def reply(conn, stop):
        conn.sendall(fast)
        for i in range(len(slow)):
            if stop.wait(every):
                return
            conn.sendall(slow[i:i + 1])
    return reply


def send(data):
    """A reply: `data` at once, then the connection closes."""
    return lambda conn, stop: conn.sendall(data)


def silent(conn, stop):
    stop.wait(10)  # accepts, reads the request, never answers


@pytest.fixture
def full_listener():
    """A port whose listen queue is full: a connection to it hangs in connect."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers, hangs = [], False
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            hangs = True
            break
        except OSError:  # refused instead of queued (e.g. tcp_abort_on_overflow)
            break
    if not hangs:
        for sock in fillers + [listener]:
            sock.close()
        pytest.skip("on this system a full listen queue does not make connect hang")
    yield f"http://127.0.0.1:{port}"
    for sock in fillers:
        sock.close()
    listener.close()


HEADERS_THEN = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
SLOW_STATUS = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n" + b"X-Slow: " + b"a" * 200
SLOW_HEADER = (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 200)  # (fast, slow)


# --- download_file: one deadline for connect, status line, headers and body -----------------

@pytest.mark.parametrize("phase", ["status line", "headers", "body", "no answer"])
def test_download_meets_its_deadline_in_every_phase(tmp_path, phase):
    reply = {"status line": trickle(SLOW_STATUS),
             "headers": trickle(SLOW_HEADER[1], fast=SLOW_HEADER[0]),
             "body": trickle(b"8" * 1000, fast=HEADERS_THEN),
             "no answer": silent}[phase]
    dest = tmp_path / "f.bin"
    with RawServer(reply) as server:
        url = f"{server.url}/f.bin"
        started = time.monotonic()
        with pytest.raises(DownloadError) as err:
            download_file(url, dest, timeout=5, deadline=DEADLINE, progress=False)
        _assert_took_the_deadline(started)
    message = str(err.value)
    assert message.startswith(f"Download too slow: {url} did not finish within 1 s"), message
    assert "\n" not in message
    assert not dest.exists()
    if phase == "body":  # the bytes that came are kept for a resume, and it says where
        assert f"kept in {dest}.part" in message and (tmp_path / "f.bin.part").stat().st_size > 0
    else:
        assert list(tmp_path.iterdir()) == []


def test_download_meets_its_deadline_while_connecting(tmp_path, full_listener):
    url = f"{full_listener}/f.bin"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"did not finish within 1 s") as err:
        download_file(url, tmp_path / "f.bin", timeout=5, deadline=DEADLINE, progress=False)
    _assert_took_the_deadline(started)
    assert url in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_size_check_of_an_existing_file_meets_the_deadline_and_keeps_it(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"my copy")
    with RawServer(trickle(SLOW_HEADER[1], fast=SLOW_HEADER[0])) as server:
        started = time.monotonic()
        with pytest.warns(UserWarning, match="timed out; using the existing"):
            path = download_file(f"{server.url}/f.bin", dest, timeout=5, deadline=DEADLINE,
                                 progress=False)
        _assert_took_the_deadline(started)
        assert server.heads[0].startswith(b"HEAD /f.bin ")
    assert path == dest and dest.read_bytes() == b"my copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# --- download_file: bodies whose bytes cannot be trusted are refused --------------------------

def _head(*headers):
    """A status line 200 with `headers` (and Connection: close)."""
    lines = [b"HTTP/1.1 200 OK", *headers, b"Connection: close", b"", b""]
    return b"\r\n".join(lines)


REFUSED = {
    "longer_than_content_length": (_head(b"Content-Length: 10") + b"0123456789" + b"and more",
                                   "sent more than the 10 bytes of its Content-Length"),
    "two_equal_content_lengths": (_head(b"Content-Length: 10", b"Content-Length: 10")
                                  + b"0123456789",
                                  "a Content-Length of '10', '10', not one number"),
    "two_different_content_lengths": (_head(b"Content-Length: 10", b"Content-Length: 4")
                                      + b"0123456789",
                                      "a Content-Length of '10', '4', not one number"),
    "a_list_in_one_content_length": (_head(b"Content-Length: 10, 4") + b"0123456789",
                                     "a Content-Length of '10, 4', not one number"),
    "content_length_and_chunked": (_head(b"Content-Length: 10", b"Transfer-Encoding: chunked")
                                   + b"a\r\n0123456789\r\n0\r\n\r\n",
                                   "both a Content-Length and a Transfer-Encoding"),
    "gzip_encoded_body": (_head(b"Content-Encoding: gzip",
                                b"Content-Length: %d" % len(gzip.compress(b"0123456789")))
                          + gzip.compress(b"0123456789"),
                          "with Content-Encoding 'gzip', not as its own bytes"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_download_refuses_a_body_it_cannot_trust(tmp_path, case):
    reply, expected = REFUSED[case]
    with RawServer(send(reply)) as server:
        url = f"{server.url}/f.bin"
        with pytest.raises(DownloadError) as err:
            download_file(url, tmp_path / "f.bin", timeout=5, deadline=10, progress=False)
        assert server.heads[0].startswith(b"GET /f.bin ")
        assert b"\r\naccept-encoding: identity" in server.heads[0].lower()  # it asked for the bytes
    message = str(err.value)
    assert message.startswith(f"Download refused: {url}: ") and expected in message, message
    assert message.endswith("nothing was saved") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_refused_body_leaves_an_existing_file_byte_for_byte(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")  # 3 bytes; the server says 10, so a fresh copy is fetched ...
    with RawServer(send(_head(b"Content-Length: 10") + b"0123456789+")) as server:
        with pytest.raises(DownloadError, match="more than the 10 bytes"):
            download_file(f"{server.url}/f.bin", dest, timeout=5, deadline=10, progress=False)
        assert [h.split(b" ")[0] for h in server.heads] == [b"HEAD", b"GET"]
    assert dest.read_bytes() == b"old"  # ... and refused: nothing of it replaced the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_body_of_exactly_its_content_length_is_saved(tmp_path):
    with RawServer(send(_head(b"Content-Length: 10", b'ETag: "v1"') + b"0123456789")) as server:
        started = time.monotonic()
        path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", timeout=5, progress=False)
        assert time.monotonic() - started < 1  # the server's close ends it; no wait for more
    assert path.read_bytes() == b"0123456789"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# --- the judge: the same deadline for connect, headers and the streamed reply ----------------

NDJSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
PIECE = b'{"message": {"content": "8"}, "done": false}\n'


@pytest.mark.parametrize("phase", ["status line", "headers", "body", "no answer"])
def test_judge_meets_its_deadline_in_every_phase(phase):
    reply = {"status line": trickle(NDJSON),
             "headers": trickle(b"X-Slow: " + b"a" * 200, fast=b"HTTP/1.1 200 OK\r\n"),
             "body": trickle(PIECE * 20, fast=NDJSON),
             "no answer": silent}[phase]
    with RawServer(reply) as server:
        url = f"{server.url}/api/chat"
        started = time.monotonic()
        with pytest.raises(FtlibError) as err:
            query_model("score this", url=url, timeout=5, deadline=DEADLINE)
        _assert_took_the_deadline(started)
        assert server.heads[0].startswith(b"POST /api/chat ")
    assert str(err.value) == f"Ollama at {url} did not finish its reply within 1 s"


def test_judge_meets_its_deadline_while_connecting(full_listener):
    url = f"{full_listener}/api/chat"
    started = time.monotonic()
    with pytest.raises(FtlibError) as err:
        query_model("score this", url=url, timeout=5, deadline=DEADLINE)
    _assert_took_the_deadline(started)
    assert str(err.value) == f"Ollama at {url} did not finish its reply within 1 s"


# --- the file server: slow clients are dropped, odd requests answered -----------------------

@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A served folder with two files, and short client timeouts; yields (host, port, url, root)."""
    monkeypatch.setattr(serve, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serve, "HEADER_TIMEOUT_S", 1.5)
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello")
    (root / "big.bin").write_bytes(bytes(range(256)) * 800)  # 204,800 bytes: several chunks
    with serve.serve_directory(root) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port), url, root


def _closed_by_server(sock, send_each=None, every=0.2, give_up=6):
    """Seconds until the server closes `sock` (sending `send_each` every `every` s meanwhile)."""
    started = time.monotonic()
    while time.monotonic() - started < give_up:
        try:
            if send_each:
                sock.sendall(send_each)
            if select.select([sock], [], [], every)[0] and not sock.recv(65536):
                return time.monotonic() - started
        except OSError:  # reset: closed too
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection for {give_up} s")


def _get(url, headers=None):
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_server_drops_a_client_that_sends_nothing(mirror, capfd):
    host, port, url, _ = mirror
    with socket.create_connection((host, port), timeout=5) as sock:
        assert 1.0 - 0.2 <= _closed_by_server(sock) <= 1.0 + LATE  # the server's clock began first
    with socket.create_connection((host, port), timeout=5) as sock:  # idle after one request
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"hello"):
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert 1.0 - 0.2 <= _closed_by_server(sock) <= 1.0 + LATE
    assert _get(f"{url}/hello.txt")[::2] == (200, b"hello")  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_server_drops_a_client_that_trickles_its_headers(mirror, capfd):
    host, port, url, _ = mirror
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /hello.txt HTTP/1.1\r\nX-Slow: ")
        seconds = _closed_by_server(sock, send_each=b"a", every=0.2)  # each byte within idle
    assert 1.5 - 0.2 <= seconds <= 1.5 + LATE  # HEADER_TIMEOUT_S, not the 1 s idle one
    assert _get(f"{url}/hello.txt")[::2] == (200, b"hello")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_command_refuses_a_port_out_of_range(tmp_path, port):
    done = subprocess.run([sys.executable, "-m", "ftlib.classroom.serve", str(tmp_path), "--port", port],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: Cannot serve {tmp_path} on port {port}: a port is a number from 0 to 65535 "
        "(0: any free one)"]


HUGE = "9" * 5000  # int() refuses to convert a number this long


@pytest.mark.parametrize("range_header,status,body", [
    (f"bytes={HUGE}-", 416, b""),                        # starts past the end
    (f"bytes={HUGE}-{HUGE}", 416, b""),
    (f"bytes=0-{HUGE}", 206, b"hello"),                  # to the end, as HTTP says
    (f"bytes={'0' * 5000}1-", 206, b"ello"),             # leading zeros: byte 1
])
def test_server_answers_a_range_with_thousands_of_digits(mirror, capfd, range_header, status, body):
    _, _, url, _ = mirror
    got_status, headers, got_body = _get(f"{url}/hello.txt", {"Range": range_header})
    assert (got_status, got_body) == (status, body)
    if status == 416:
        assert headers["Content-Range"] == "bytes */5"
    assert "Traceback" not in capfd.readouterr().err


class _FailingReads(io.BufferedReader):
    """A file whose reads fail with EIO after `good` of them (a failing disk)."""

    good = 0

    def read(self, size=-1):
        if self.good <= 0:
            raise OSError(errno.EIO, "Input/output error")
        self.good -= 1
        return super().read(size)


def _raw_get(host, port, path):
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return sock.makefile("rb").read()


@pytest.mark.parametrize("failure,status_line", [
    ("open", b"HTTP/1.1 403 Forbidden"),                  # what permissions 000 do, as a user
    ("first read", b"HTTP/1.1 500 Internal Server Error"),
])
def test_server_answers_an_unreadable_file_with_an_error_not_200(mirror, monkeypatch, capfd,
                                                                 failure, status_line):
    host, port, _, root = mirror

    def unreadable_open(path, mode="r", *args, **kwargs):
        if failure == "open":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return _FailingReads(io.FileIO(path, "rb"))

    monkeypatch.setattr(serve, "open", unreadable_open, raising=False)  # serve's open() only
    reply = _raw_get(host, port, "/big.bin")
    assert reply.split(b"\r\n", 1)[0] == status_line
    assert b"200 OK" not in reply and bytes(range(256)) not in reply
    assert "Traceback" not in capfd.readouterr().err


def test_server_cuts_a_file_that_fails_mid_way_and_the_download_says_so(mirror, monkeypatch,
                                                                       capfd, tmp_path):
    _, _, url, _ = mirror

    def failing_later(path, mode="r", *args, **kwargs):
        f = _FailingReads(io.FileIO(path, "rb"))
        f.good = 1  # the first 64 KiB, then EIO
        return f

    monkeypatch.setattr(serve, "open", failing_later, raising=False)
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(DownloadError, match=r"65536 of 204800 bytes"):
        download_file(f"{url}/big.bin", dest, timeout=5, deadline=10, progress=False)
    assert not dest.exists()
    assert "Traceback" not in capfd.readouterr().err
