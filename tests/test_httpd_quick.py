"""superd-httpd's worker answers a request head it has seen before from
memory (Worker.quick_answer, Worker.replay_next): every rule of a fresh
answer still holds for it.  Each request here is sent several times, so
that the first answer is made the whole way and the others come from
memory; they must agree with it, field for field (the Date aside), and
the connection must stay open or close as HTTP/1.0 and 1.1 say.

The worker runs on a listening socket bound here on port 0, as in
test_httpd_events.py, with one worker so that every request meets the same
memory.
"""

import socket
import signal
import subprocess
import sys
import time

import pytest

from test_httpd_support import (ALPHA, HANDLER, TIMEOUT, Lines, Reader, kill_group,
                                make_site, request)


@pytest.fixture
def worker(tmp_path):
    """(port, log, site) of a one-worker superd-httpd; stopped at teardown."""
    site = make_site(tmp_path / "www")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    proc = subprocess.Popen([sys.executable, HANDLER, "--root", site, "--workers", "1"],
                            stdin=listener, stdout=listener, stderr=subprocess.PIPE,
                            start_new_session=True)
    port = listener.getsockname()[1]
    listener.close()
    log = Lines(proc.stderr)
    yield port, log, site
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(TIMEOUT) == 0
    finally:
        kill_group(proc)


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def fields(response):
    return [(k.lower(), v) for k, v in response.headers if k.lower() != "date"]


# (request fields, HTTP version, "Connection" field of the answer, kept open?)
KEEPING = [
    ((), "HTTP/1.1", None, True),
    ((("Connection", "close"),), "HTTP/1.1", "close", False),
    ((), "HTTP/1.0", "close", False),
    ((("Connection", "keep-alive"),), "HTTP/1.0", "keep-alive", True),
    ((("Connection", "Keep-Alive"),), "HTTP/1.0", "keep-alive", True),
]


@pytest.mark.parametrize("headers, version, connection, kept", KEEPING)
def test_a_remembered_answer_keeps_or_closes_as_a_fresh_one(worker, headers, version,
                                                            connection, kept):
    port, log, site = worker
    wire = request("/alpha.txt", headers=headers, version=version)
    first = None
    for _ in range(4):
        with connect(port) as sock:
            reader = Reader(sock)
            for _ in range(3 if kept else 1):    # on one connection, while it stays open
                sock.sendall(wire)
                response = reader.response()
                assert response.status == 200 and response.body == ALPHA
                assert response.header("connection") == connection
                first = first or fields(response)
                assert fields(response) == first
            if kept:
                sock.shutdown(socket.SHUT_WR)
            assert reader.at_eof()
    log.wait_count(r'"GET /alpha.txt %s" 200 26 ' % version, 12 if kept else 4)


def test_pipelined_remembered_answers_come_in_order(worker):
    """Many requests in one send: those answered from memory go out
    together, the others in their turn, every one in request order; a
    request after one that asks to close is never answered."""
    port, log, site = worker
    alpha, sub = request("/alpha.txt"), request("/sub/file.txt")
    with connect(port) as sock:                  # remember both
        reader = Reader(sock)
        sock.sendall(alpha + sub)
        assert reader.response().body == ALPHA
        assert reader.response().body == b"in sub\n"
        order = [alpha] * 5 + [sub, request("/missing.txt")] + [alpha, sub] * 3
        sock.sendall(b"".join(order))
        for wire in order:
            response = reader.response()
            if wire is alpha:
                assert response.body == ALPHA
            elif wire is sub:
                assert response.body == b"in sub\n"
            else:
                assert response.status == 404
        closing = request("/alpha.txt", headers=[("Connection", "close")])
        sock.sendall(alpha + closing + closing + alpha + sub)   # remember closing first
        for _ in range(2):
            assert reader.response().body == ALPHA
        assert reader.at_eof()
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(alpha * 3 + closing + alpha * 2)
        for _ in range(3):
            assert reader.response().header("connection") is None
        assert reader.response().header("connection") == "close"
        assert reader.at_eof()
    log.wait_count(r'"GET /alpha.txt HTTP/1.1" 200 26 ', 1 + 5 + 3 + 2 + 4)
    lines = [line for line in log.text().splitlines() if '"GET ' in line]
    paths = [line.split('"')[1].split()[1] for line in lines]
    assert paths[:17] == (["/alpha.txt", "/sub/file.txt"] + ["/alpha.txt"] * 5
                          + ["/sub/file.txt", "/missing.txt"]
                          + ["/alpha.txt", "/sub/file.txt"] * 3 + ["/alpha.txt"] * 2)


def test_a_remembered_answer_follows_the_file(worker):
    """Changed, removed or replaced, the file is served as it now is."""
    port, log, site = worker
    wire = request("/alpha.txt")
    with connect(port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(wire)
            assert reader.response().body == ALPHA
        (site / "alpha.txt").write_bytes(b"changed")
        sock.sendall(wire)
        assert reader.response().body == b"changed"
        (site / "alpha.txt").unlink()
        sock.sendall(wire)
        assert reader.response().status == 404
        (site / "alpha.txt").write_bytes(b"back again")
        sock.sendall(wire * 2)
        assert reader.response().body == b"back again"
        assert reader.response().body == b"back again"


def test_a_head_like_a_remembered_one_is_not_taken_for_it(worker):
    """Only the exact bytes are answered from memory: a longer recv (a body,
    the next request's start), a prefix, a different field, each goes the
    whole way."""
    port, log, site = worker
    wire = request("/alpha.txt")
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(wire)
        assert reader.response().body == ALPHA
        sock.sendall(wire + b"GET /sub/file.txt HTTP/1.1\r\n")  # a head and a half
        assert reader.response().body == ALPHA
        sock.sendall(b"Host: test\r\n\r\n")
        assert reader.response().body == b"in sub\n"
        sock.sendall(request("/alpha.txt", headers=[("Range", "bytes=0-1")]))
        response = reader.response()
        assert response.status == 206 and response.body == b"ab"
        sock.sendall(wire[:-2])                   # all but the last CRLF
        sock.sendall(b"\r\n")
        assert reader.response().body == ALPHA
        sock.sendall(request("/alpha.txt", method="HEAD"))
        response = reader.response("HEAD")
        assert response.body == b"" and response.header("content-length") == "26"
        sock.sendall(request("/alpha.txt", method="HEAD"))
        assert reader.response("HEAD").header("content-length") == "26"
        sock.sendall(wire)
        assert reader.response().body == ALPHA


def test_empty_lines_between_remembered_answers_do_not_add_up(worker):
    """Empty lines after each request (as some clients send after a body)
    are forgiven request by request, however many requests come.  Each
    batch is read on its own before the next request is sent, so that the
    request comes alone in a recv and takes the short way; and the rounds
    are few and quick, within the second a remembered answer lives (after
    it, the whole way is taken, which forgave them already)."""
    port, log, site = worker
    with connect(port) as sock:
        reader = Reader(sock)
        for _ in range(5):
            sock.sendall(request("/alpha.txt"))
            assert reader.response().body == ALPHA
            sock.sendall(b"\r\n" * 1500)         # 3,000 bytes; three times is past --max-line
            read_by_server(sock)
        sock.sendall(request("/alpha.txt"))
        assert reader.response().body == ALPHA


def read_by_server(sock):
    """Wait until the server has read everything sent on sock: its end's
    receive queue (rx_queue in /proc/net/tcp) is empty."""
    mine = "%08X:%04X" % (0x0100007F, sock.getsockname()[1])     # 127.0.0.1, as the kernel writes it
    theirs = ":%04X" % sock.getpeername()[1]
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            for row in table:
                fields = row.split()
                if fields[2] == mine and fields[1].endswith(theirs):
                    if fields[4].endswith(":00000000"):
                        return
                    break
        time.sleep(0.001)
    raise AssertionError("the server did not read what was sent")
