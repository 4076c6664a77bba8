"""superd-httpd stops gracefully serving one connection (nowait), as its
worker does accepting for itself; and the worker copes with a low limit
on open files.

Per connection, the handler gets a TCP connection accepted here, on fds 0
and 1, as inetd nowait and superd give it.  A TERM is logged when handled:
the tests wait for that line before they go on, so that a second TERM is
never sent before the first was handled (two pending TERMs are one).
"""

import select
import resource
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from test_httpd_support import (ALPHA, HANDLER, TIMEOUT, Lines, Reader, kill_group,
                                make_site, pid_exits, request)

BIG = 64 << 20          # bytes: more than loopback's socket buffers hold
STOPPING = r"TERM: closing once the answer in flight, if any, is out"


@pytest.fixture
def site(tmp_path):
    root = make_site(tmp_path / "www")
    with open(root / "huge.bin", "wb") as f:
        f.truncate(BIG)                  # sparse: costs no disk
    return root


@pytest.fixture
def procs():
    """start(argv, **popen) -> Popen in its own session; all killed at teardown."""
    started = []

    def start(argv, **kw):
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen([str(a) for a in argv], **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc)


@pytest.fixture
def one(procs, site):
    """serve(*args) -> (Popen, client socket, log): the handler serving one
    TCP connection it was given, as inetd nowait starts it."""
    def serve(*args):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
            ours, _ = listener.accept()
        with ours:
            proc = procs([sys.executable, HANDLER, "--root", site, "--timeout", "60",
                          "--keepalive-timeout", "60", *args],
                         stdin=ours, stdout=ours, stderr=subprocess.PIPE)
        return proc, client, Lines(proc.stderr)
    return serve


def received(sock, reader):
    """Body bytes that arrive until the server closes."""
    count = len(reader.buf)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return count
        count += len(data)


def downloading(sock):
    sock.sendall(request("/huge.bin"))
    reader = Reader(sock)
    head = reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: %d" % BIG in head
    return reader


# -- per connection: the first TERM -------------------------------------------

@pytest.mark.parametrize("then", [b"", b"\r\n\r\n"], ids=["idle", "empty lines"])
def test_term_closes_an_idle_connection_at_once(one, then):
    """Idle after an answer, or with only empty lines since: closed at once.
    (A first request is awaited by the same read; the answer before shows
    that the handler is in it, with its TERM handler set.)"""
    proc, client, log = one()
    with client:
        reader = Reader(client)
        client.sendall(request("/alpha.txt"))
        assert reader.response().body == ALPHA
        log.wait_for(r'"GET /alpha.txt HTTP/1.1" 200 ')   # done: idle again, in its read
        client.sendall(then)
        proc.send_signal(signal.SIGTERM)
        assert client.recv(1) == b""             # at once, not after the 60 s of idling
    assert proc.wait(TIMEOUT) == 0
    assert "Traceback" not in log.text()


def test_term_lets_a_download_finish(one):
    proc, client, log = one()
    with client:
        reader = downloading(client)
        proc.send_signal(signal.SIGTERM)
        log.wait_for(STOPPING)
        assert received(client, reader) == BIG   # all of it, then the close
    assert proc.wait(TIMEOUT) == 0
    assert log.count(r'"GET /huge.bin HTTP/1.1" 200 %d ' % BIG) == 1


def test_term_lets_a_cgi_answer_finish(one, site):
    proc, client, log = one()
    with client:
        client.sendall(request("/cgi-bin/stream.sh"))
        reader = Reader(client)
        assert reader._until(b"one\n")
        proc.send_signal(signal.SIGTERM)
        log.wait_for(STOPPING)
        with open(site / "cgi-bin" / "stream.fifo", "w") as fifo:
            fifo.write("two\n")
        assert reader._until(b"0\r\n\r\n").endswith(b"two\n\r\n")
        assert reader.at_eof()
    assert proc.wait(TIMEOUT) == 0


def test_term_lets_a_head_under_way_finish_and_closes_after(one):
    proc, client, log = one()
    with client:
        reader = Reader(client)
        client.sendall(request("/alpha.txt"))
        assert reader.response().body == ALPHA
        client.sendall(b"GET /sub/file.txt HTTP/1.1\r\nHo")
        log.wait_for(r'"GET /alpha.txt HTTP/1.1" 200 ')  # the first is done: this one is read
        proc.send_signal(signal.SIGTERM)
        log.wait_for(STOPPING)
        client.sendall(b"st: test\r\n\r\n" + request("/alpha.txt"))   # and one more
        response = reader.response()
        assert response.body == b"in sub\n" and response.header("connection") == "close"
        assert reader.at_eof()                   # the one after it: never answered
    assert proc.wait(TIMEOUT) == 0
    assert log.count(r'"GET /alpha.txt HTTP/1.1" ') == 1


# -- per connection: the second TERM ------------------------------------------

def test_a_second_term_ends_a_download_at_once(one):
    proc, client, log = one()
    with client:
        reader = downloading(client)
        proc.send_signal(signal.SIGTERM)
        log.wait_for(STOPPING)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0           # not after the 60 s send timeout
        assert received(client, reader) < BIG


def test_a_second_term_kills_cgi_process_groups(one):
    proc, client, log = one()
    with client:
        client.sendall(request("/cgi-bin/slow.sh"))
        pids = log.wait_for(r"slow\.sh pid=(\d+) child=(\d+)").groups()
        proc.send_signal(signal.SIGTERM)
        log.wait_for(STOPPING)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        for pid in pids:                         # the program and its child
            assert pid_exits(int(pid)), pid
        assert client.recv(65536) == b""


# -- accepting for itself: the limit on open files ----------------------------

def limited_worker(procs, site, soft, hard, *args):
    """(Popen, port, log): a one-worker superd-httpd on a listening socket
    (backlog 256), started with RLIMIT_NOFILE at (soft, hard)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    port = listener.getsockname()[1]
    proc = procs([sys.executable, HANDLER, "--root", site, "--workers", "1", *args],
                 stdin=listener, stdout=listener, stderr=subprocess.PIPE,
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    listener.close()
    log = Lines(proc.stderr)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as probe:
        probe.sendall(request("/alpha.txt", headers=[("Connection", "close")]))
        assert Reader(probe).response().body == ALPHA          # in its loop
    return proc, port, log


def test_the_worker_raises_its_soft_limit_on_open_files(procs, site):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.fail("RLIMIT_NOFILE hard limit %s: cannot show a raise" % hard)
    proc, port, log = limited_worker(procs, site, 256, hard)
    assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0


PAUSED = r"accept: Too many open files; pausing"


def cpu_seconds(proc):
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def test_a_flood_past_the_open_files_limit_neither_spins_nor_stops_serving(procs, site):
    """With 64 fds, 150 clients: those it can accept are answered and kept
    alive, the rest wait in the backlog while the worker pauses accepting
    (its CPU time stays low over several pauses, however long the flood
    holds); as clients leave, every waiting one is answered (never a 503
    for want of an fd to open the file with)."""
    proc, port, log = limited_worker(procs, site, 64, 64, "--keepalive-timeout", "60",
                                     "--header-timeout", "60")
    clients = []
    try:
        for _ in range(150):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            clients[-1].sendall(request("/alpha.txt"))
        log.wait_for(PAUSED)
        start, used = time.monotonic(), cpu_seconds(proc)
        log.wait_count(PAUSED, 3, timeout=TIMEOUT)    # each pause ends, accept fails again
        elapsed, used = time.monotonic() - start, cpu_seconds(proc) - used
        assert elapsed >= 1.0 and used < 0.25 * elapsed, (elapsed, used)
        answered = [sock for sock in clients if readable(sock)]
        assert 20 < len(answered) < 64                 # as many as its fds allow
        for sock in answered:
            assert Reader(sock).response().body == ALPHA
            sock.close()                               # fds free up: it accepts again
        for sock in clients:                           # in the order they came
            if sock not in answered:
                assert Reader(sock).response().body == ALPHA
                sock.close()
    finally:
        for sock in clients:
            sock.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert log.count(r'"GET /alpha.txt HTTP/1.1" 200 ') == 151 and '" 503 ' not in log.text()


def readable(sock):
    """Whether an answer has begun to arrive on sock (without waiting)."""
    return bool(select.select([sock], [], [], 0)[0])
