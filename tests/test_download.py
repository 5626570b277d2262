"""download_file and serve_directory, against a real HTTP server on 127.0.0.1."""

import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from ftlib.plumbing.download import download_file, download_first_available, remote_size
from ftlib.plumbing.errors import ConfigError, DownloadError
from ftlib.classroom.serve import serve_directory

BODY = os.urandom(300_000)  # several 64 KiB chunks, so a cut lands mid-stream


@pytest.fixture
def served(tmp_path):
    """A folder with one file, served on 127.0.0.1; yields (server, out_dir)."""
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "model.bin").write_bytes(BODY)
    out = tmp_path / "out"
    with serve_directory(root) as server:
        yield server, out


def _gets(server):
    return [r for r in server.requests if r[0] == "GET"]


# --- the server ---------------------------------------------------------------------


def _fetch(url, headers=None, method="GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_server_ranges_head_and_404(served):
    server, _ = served
    assert server.url == str(server) and server.startswith("http://127.0.0.1:")
    url = f"{server}/model.bin"

    status, headers, body = _fetch(url)
    assert (status, int(headers["Content-Length"]), body) == (200, len(BODY), BODY)

    status, headers, body = _fetch(url, {"Range": "bytes=1000-"})
    assert status == 206 and body == BODY[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(BODY) - 1}/{len(BODY)}"

    status, headers, body = _fetch(url, {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Length"]) == (206, BODY[10:20], "10")

    status, headers, _ = _fetch(url, {"Range": f"bytes={len(BODY)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(BODY)}"

    status, headers, body = _fetch(url, method="HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, len(BODY), b"")

    assert _fetch(f"{server}/missing.bin")[0] == 404
    assert [r[0] for r in server.requests] == ["GET", "GET", "GET", "GET", "HEAD", "GET"]
    assert server.requests[1] == ("GET", "/model.bin", "bytes=1000-")


def test_server_refuses_paths_outside_root(served, tmp_path):
    server, _ = served
    (tmp_path / "secret.txt").write_text("not for you")
    host, port = server.url.removeprefix("http://").split(":")
    for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/mirror/../../secret.txt"]:
        # urllib would normalise "..", so send the raw request line ourselves.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            reply = sock.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.0 404") or reply.startswith(b"HTTP/1.1 404"), path
        assert b"not for you" not in reply


def test_serve_directory_rejects_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match="f.txt"):
        with serve_directory(tmp_path / "f.txt"):
            pass


def test_serve_main_rejects_missing_folder(tmp_path, capsys):
    from ftlib.classroom.serve import main

    assert main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


# --- download_file ------------------------------------------------------------------


def test_fresh_download_equals_source(served):
    server, out = served
    path = download_file(f"{server}/model.bin", out / "sub" / "model.bin", progress=False)
    assert path == out / "sub" / "model.bin"
    assert path.read_bytes() == BODY
    assert not (out / "sub" / "model.bin.part").exists()
    assert remote_size(f"{server}/model.bin") == len(BODY)


def test_second_call_does_not_fetch_the_body(served):
    server, out = served
    dest = out / "model.bin"
    download_file(f"{server}/model.bin", dest, progress=False)
    assert len(_gets(server)) == 1
    before = dest.stat().st_mtime_ns

    assert download_file(f"{server}/model.bin", dest, progress=False) == dest
    assert len(_gets(server)) == 1  # only a HEAD was added
    assert server.requests[-1][0] == "HEAD"
    assert dest.stat().st_mtime_ns == before


def test_existing_file_of_another_size_is_replaced(served):
    server, out = served
    dest = out / "model.bin"
    out.mkdir()
    dest.write_bytes(b"old and short")
    download_file(f"{server}/model.bin", dest, progress=False)
    assert dest.read_bytes() == BODY


def test_dropped_connection_then_resume(served):
    server, out = served
    dest = out / "model.bin"
    part = out / "model.bin.part"
    server.fail_after_bytes = 100_000

    with pytest.raises(DownloadError) as excinfo:
        download_file(f"{server}/model.bin", dest, progress=False)
    message = str(excinfo.value)
    assert f"100000 of {len(BODY)} bytes" in message
    assert "again" in message and "resume" in message
    assert not dest.exists()
    assert part.read_bytes() == BODY[:100_000]

    server.fail_after_bytes = None  # the network is back
    assert download_file(f"{server}/model.bin", dest, progress=False) == dest
    assert dest.read_bytes() == BODY
    assert not part.exists()
    assert _gets(server)[-1] == ("GET", "/model.bin", "bytes=100000-")


def test_resume_false_starts_over(served):
    server, out = served
    out.mkdir()
    (out / "model.bin.part").write_bytes(b"garbage")
    download_file(f"{server}/model.bin", out / "model.bin", progress=False, resume=False)
    assert (out / "model.bin").read_bytes() == BODY
    assert _gets(server)[-1][2] is None  # no Range header


def test_part_longer_than_file_starts_over(served):
    server, out = served
    out.mkdir()
    (out / "model.bin.part").write_bytes(b"x" * (len(BODY) + 5))  # server answers 416
    download_file(f"{server}/model.bin", out / "model.bin", progress=False)
    assert (out / "model.bin").read_bytes() == BODY


def test_404_names_the_url(served):
    server, out = served
    url = f"{server}/missing.bin"
    with pytest.raises(DownloadError) as excinfo:
        download_file(url, out / "missing.bin", progress=False)
    assert url in str(excinfo.value) and "404" in str(excinfo.value)
    assert not (out / "missing.bin").exists()


def test_fallback_to_the_second_url(served):
    server, out = served
    urls = [f"{server}/gone/model.bin", f"{server}/model.bin"]
    path = download_first_available(urls, out / "model.bin", progress=False)
    assert path.read_bytes() == BODY


def test_all_urls_fail_lists_each(served):
    server, out = served
    urls = [f"{server}/a.bin", f"{server}/b.bin"]
    with pytest.raises(DownloadError) as excinfo:
        download_first_available(urls, out / "x.bin", progress=False)
    for url in urls:
        assert url in str(excinfo.value)


def test_progress_false_prints_nothing(served, capsys):
    server, out = served
    download_file(f"{server}/model.bin", out / "model.bin", progress=False)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_progress_true_shows_a_bar(served, capsys):
    server, out = served
    download_file(f"{server}/model.bin", out / "model.bin", desc="weights")
    assert "weights" in capsys.readouterr().err


def test_offline_rerun_uses_existing_file(tmp_path):
    dest = tmp_path / "model.bin"
    dest.write_bytes(BODY)
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.warns(UserWarning, match="using the existing"):
        path = download_file(f"http://127.0.0.1:{port}/model.bin", dest, progress=False)
    assert path.read_bytes() == BODY


def test_connection_refused_names_the_url(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.bin"
    with pytest.raises(DownloadError, match=url):
        download_file(url, tmp_path / "model.bin", progress=False, timeout=2)


def test_timeout_is_quick(tmp_path):
    # A server that accepts the connection and then never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def accept_and_sleep():
        conn, _ = listener.accept()
        stop.wait(10)
        conn.close()

    thread = threading.Thread(target=accept_and_sleep, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/model.bin"
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="timed out") as excinfo:
            download_file(url, tmp_path / "model.bin", progress=False, timeout=0.5)
        assert url in str(excinfo.value)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert not (tmp_path / "model.bin").exists()
