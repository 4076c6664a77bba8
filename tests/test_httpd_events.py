"""superd-httpd's event-driven worker (accepting for itself): a graceful
stop, hostile clients that cost no thread or process, and proof that file
bodies go out by sendfile in every mode.

Each handler gets a listening socket bound here on port 0 (inetd "wait",
systemd Accept=no).  A worker is known to be in its loop when a probe
connection that sends nothing and half-closes is closed by it (unlogged):
TERM is blocked until then, so a signal sent later is never lost.
"""

import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading

import psutil
import pytest

from test_httpd_support import (ALPHA, HANDLER, TIMEOUT, Lines, Reader, kill_group,
                                make_site, pid_exits, request)

BIG = 64 << 20          # bytes: more than loopback's socket buffers hold


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


def worker(procs, site, *args, backlog=64):
    """(Popen, port, log): handlers/httpd.py on a listening socket, ready."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    port = listener.getsockname()[1]
    proc = procs([sys.executable, HANDLER, "--root", site, *args],
                 stdin=listener, stdout=listener, stderr=subprocess.PIPE)
    listener.close()
    log = Lines(proc.stderr)
    assert probe(port)
    return proc, port, log


def probe(port):
    """Whether a worker closes a connection that sends nothing (no log line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(1) == b""


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def kept_alive(port, path="/alpha.txt"):
    """A client whose request was answered and which now idles, kept alive."""
    sock = connect(port)
    sock.sendall(request(path))
    response = Reader(sock).response()
    assert response.status == 200 and response.header("connection") is None
    return sock


def downloading(port, path="/huge.bin"):
    """(socket, Reader) of a download in flight: its head read, the rest
    waiting in the server, which the client does not read for now."""
    sock = connect(port)
    sock.sendall(request(path))
    reader = Reader(sock)
    head = reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: %d" % BIG in head
    return sock, reader


def received(sock, reader):
    """Body bytes that arrive until the server closes."""
    count = len(reader.buf)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return count
        count += len(data)


def terminate(proc, how):
    """TERM to the first process alone (as xinetd sends it) or to its whole
    process group (as superd, systemd and a terminal do)."""
    if how == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)


# -- graceful stop -----------------------------------------------------------

@pytest.mark.parametrize("how", ["group", "first"])
def test_term_finishes_answers_in_flight_and_closes_idle_clients(procs, site, how):
    proc, port, log = worker(procs, site, "--workers", "2", "--keepalive-timeout", "60")
    idle = kept_alive(port)
    download, download_reader = downloading(port)
    cgi = connect(port)
    cgi.sendall(request("/cgi-bin/stream.sh"))
    cgi_reader = Reader(cgi)
    assert cgi_reader._until(b"one\n")
    partial = connect(port)
    partial.sendall(b"GET /alpha.txt HTTP/1.1\r\nHo")
    terminate(proc, how)
    assert idle.recv(1) == b""                  # idle: closed at once, not after 60 s
    partial.sendall(b"st: test\r\n\r\n")        # a head under way may still finish
    partial_reader = Reader(partial)
    assert partial_reader.response().body == ALPHA
    assert partial_reader.at_eof()
    assert received(download, download_reader) == BIG        # in flight: all of it
    with open(site / "cgi-bin" / "stream.fifo", "w") as fifo:
        fifo.write("two\n")
    assert cgi_reader._until(b"0\r\n\r\n").endswith(b"two\n\r\n")
    assert cgi_reader.at_eof()
    assert proc.wait(TIMEOUT) == 0
    log.wait_closed()
    assert log.text().count('"GET /huge.bin HTTP/1.1" 200 %d ' % BIG) == 1
    assert "Traceback" not in log.text()
    for sock in (idle, download, cgi, partial):
        sock.close()


@pytest.mark.parametrize("workers, how", [("1", "group"), ("2", "first")])
def test_a_second_term_ends_at_once(procs, site, workers, how):
    """The first TERM is seen to be handled (an idle client is closed)
    before the second is sent, so that the two are not one pending signal."""
    proc, port, log = worker(procs, site, "--workers", workers, "--keepalive-timeout", "60")
    download, download_reader = downloading(port)
    slow = connect(port)
    slow.sendall(request("/cgi-bin/slow.sh"))
    pids = log.wait_for(r"slow\.sh pid=(\d+) child=(\d+)").groups()
    idle = kept_alive(port)
    terminate(proc, how)
    assert idle.recv(1) == b""
    terminate(proc, how)
    assert proc.wait(TIMEOUT) == 0
    for pid in pids:                             # the CGI program and its group
        assert pid_exits(int(pid)), pid
    assert received(download, download_reader) < BIG
    for sock in (idle, download, slow):
        sock.close()


def group_members(pgid):
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                members.append(pid)
        except ProcessLookupError:
            pass
    return members


def test_term_with_no_client_exits_at_once(procs, site):
    """TERM to the first process alone: it tells its workers (some may be
    forking still; TERM waits for each to be ready), and leaves last."""
    proc, port, log = worker(procs, site, "--workers", "3")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert group_members(proc.pid) == []


def test_concurrent_cgi_answers_that_close_lose_no_client(procs, site):
    """A CGI answer's connection is closed by the loop, never by its thread:
    a thread that closed it freed its fd number for the next accepted
    client, and the loop then forgot (and reset) that client instead."""
    proc, port, log = worker(procs, site, "--workers", "1", "--quiet")
    failures = []

    def client(path):
        try:
            for _ in range(15):
                with connect(port) as sock:
                    sock.sendall(request(path, headers=[("Connection", "close")]))
                    reader = Reader(sock)
                    assert reader.response().status == 200
                    assert reader.at_eof()
        except Exception as exc:         # reported below, in the test's thread
            failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(path,))
               for path in ["/cgi-bin/length.sh", "/alpha.txt"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert failures == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0


def test_requests_after_a_cgi_answer_are_answered_in_order(procs, site):
    """A CGI answer's thread keeps its connection for heads that follow at
    once (pipelined or not), and gives it back to the loop for the rest:
    every answer comes, in order, whoever gives it."""
    proc, port, log = worker(procs, site, "--workers", "1")
    with connect(port) as sock:
        reader = Reader(sock)
        sock.sendall(request("/cgi-bin/length.sh") + request("/alpha.txt")
                     + request("/cgi-bin/status.sh") + request("/sub/file.txt"))
        assert reader.response().body == b"hello"
        assert reader.response().body == ALPHA
        assert reader.response().status == 404
        assert reader.response().body == b"in sub\n"
        sock.sendall(request("/cgi-bin/length.sh"))
        assert reader.response().body == b"hello"
        sock.sendall(b"GET /alpha.txt HTTP/1.1\r\n")     # a head in two parts
        log.wait_count(r'"GET /cgi-bin/length.sh HTTP/1.1" 200 5 ', 2)
        sock.sendall(b"Host: test\r\n\r\n")
        assert reader.response().body == ALPHA
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert log.count(r'" 200 ') == 5 and log.count(r'" 404 ') == 1


def test_a_remembered_answer_is_only_for_the_same_head_without_a_body(procs, site):
    """A worker answers a head it has seen before from memory (a small file,
    checked by stat): never one with a body, whose bytes must still be
    read, and never a file changed since."""
    proc, port, log = worker(procs, site, "--workers", "1")
    with_body = request("/alpha.txt", headers=[("Content-Length", "28")])
    smuggled = b"GET /sub/file.txt HTTP/1.1\r\n"     # 28 bytes of body, not a request
    with connect(port) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(with_body + smuggled)
            assert reader.response().body == ALPHA
        sock.sendall(request("/alpha.txt") * 2)
        assert reader.response().body == ALPHA
        assert reader.response().body == ALPHA
        (site / "alpha.txt").write_bytes(b"changed")
        sock.sendall(request("/alpha.txt"))
        assert reader.response().body == b"changed"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert log.count(r'"GET /alpha.txt HTTP/1.1" 200 ') == 6
    assert "/sub/file.txt" not in log.text()


# -- hostile clients ---------------------------------------------------------

IDLE, SLOW = 1000, 500


def enough_fds(count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.fail("RLIMIT_NOFILE hard limit %d < %d" % (hard, count))
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
    return soft, hard


def footprint(proc):
    """(processes, threads, resident bytes) of the handler and its workers."""
    family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children()
    return (len(family), sum(p.num_threads() for p in family),
            sum(p.memory_info().rss for p in family))


def test_idle_and_slowloris_clients_cost_no_thread_and_little_memory(procs, site):
    """1,000 idle keep-alive clients and 500 that send a head a byte at a
    time hold no thread and no process; memory grows by a few kilobytes a
    client; a well-behaved client is served meanwhile."""
    limits = enough_fds(4 * (IDLE + SLOW) + 256)     # ours and the handler's (it inherits)
    try:
        proc, port, log = worker(procs, site, "--workers", "2", "--quiet",
                                 "--keepalive-timeout", "300", "--header-timeout", "300",
                                 "--max-connections", "2000", backlog=2048)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    before = footprint(proc)
    assert before[:2] == (2, 2)                  # two workers, one thread each
    clients = []
    try:
        for _ in range(IDLE):
            clients.append(connect(port))
            clients[-1].sendall(request("/alpha.txt"))
        for sock in clients:
            assert Reader(sock).response().body == ALPHA      # answered, kept alive
        slow = []
        head = request("/sub/file.txt")
        for _ in range(SLOW):
            slow.append(connect(port))
        for i in range(3):                       # a byte each, round after round
            for sock in slow:
                sock.sendall(head[i:i + 1])
        clients += slow
        during = footprint(proc)
        assert during[:2] == before[:2]          # no thread, no process per client
        per_client = (during[2] - before[2]) / (IDLE + SLOW)
        print("resident memory: %.1f MB before, %.1f MB with %d clients: %.1f KB each"
              % (before[2] / 1e6, during[2] / 1e6, IDLE + SLOW, per_client / 1e3))
        assert per_client < 32 << 10
        good = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        for _ in range(20):
            good.request("GET", "/alpha.txt")
            response = good.getresponse()
            assert (response.status, response.read()) == (200, ALPHA)
        good.request("GET", "/cgi-bin/env.sh")
        response = good.getresponse()
        assert response.status == 200 and b"REMOTE_ADDR=127.0.0.1" in response.read()
        good.close()
        slow[0].sendall(head[3:])                # a slow client may still finish
        assert Reader(slow[0]).response().body == b"in sub\n"
        clients[0].sendall(request("/alpha.txt"))
        assert Reader(clients[0]).response().body == ALPHA    # idle ones still alive
    finally:
        for sock in clients:
            sock.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0


def test_timeouts_hold_per_connection_among_many_clients(procs, site):
    """--header-timeout and the keep-alive timeout close each stalled or
    idle client by its own clock, while another is served."""
    proc, port, log = worker(procs, site, "--workers", "1",
                             "--header-timeout", "0.5", "--keepalive-timeout", "0.5")
    idle = [kept_alive(port) for _ in range(20)]
    slow = [connect(port) for _ in range(20)]
    for sock in slow:
        sock.sendall(b"GET /alpha.txt HTTP/1.1\r\n")
    with connect(port) as good:                  # served meanwhile
        good.sendall(request("/alpha.txt", headers=[("Connection", "close")]))
        assert Reader(good).response().body == ALPHA
    for sock in idle:
        assert sock.recv(1) == b""               # closed in silence
    for sock in slow:
        response = Reader(sock).response()
        assert response.status == 408 and response.header("connection") == "close"
    log.wait_count(r'"-" 408 ', 20)           # as per connection: no request line
    for sock in idle + slow:
        sock.close()


# -- sendfile, in every mode -------------------------------------------------

def strace():
    path = shutil.which("strace")
    assert path, "strace is not installed (.ci/run installs it with apt)"
    return path


def sendfile_bytes(trace):
    """Bytes the traced processes' sendfile calls returned, all together."""
    total = 0
    for match in re.finditer(r"sendfile\(\d+, \d+, .*\) = (\d+)", trace):
        total += int(match.group(1))
    return total


def traced(procs, tmp_path, argv, **kw):
    out = tmp_path / "strace.out"
    proc = procs([strace(), "-f", "-qq", "-e", "trace=sendfile", "-o", out, *argv], **kw)
    return proc, out


def fetch_big(sock, body=b"", headers=()):
    sock.sendall(request("/big.bin", headers=headers) + body)
    response = Reader(sock).response()
    assert response.status == 200
    return response.body


MODES = {
    # name: (extra request fields, a body): the worker answers in its loop,
    # or, for a request with a chunked body, in a thread of its own.
    "loop": ((), b""),
    "thread": ((("Transfer-Encoding", "chunked"),), b"0\r\n\r\n"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sendfile_carries_the_body_accepting_for_itself(procs, site, tmp_path, mode):
    big = (site / "big.bin").read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    proc, out = traced(procs, tmp_path, [sys.executable, HANDLER, "--root", site,
                                         "--workers", "2"],
                       stdin=listener, stdout=listener, stderr=subprocess.DEVNULL)
    listener.close()
    assert probe(port)
    headers, body = MODES[mode]
    with connect(port) as sock:
        assert fetch_big(sock, body, headers) == big
    handler = psutil.Process(proc.pid).children()[0]
    handler.send_signal(signal.SIGTERM)          # a graceful stop: strace then ends
    assert proc.wait(TIMEOUT) == 0
    assert sendfile_bytes(out.read_text()) >= len(big)


def test_sendfile_carries_the_body_per_connection(procs, site, tmp_path):
    big = (site / "big.bin").read_bytes()
    ours, theirs = socket.socketpair()
    proc, out = traced(procs, tmp_path, [sys.executable, HANDLER, "--root", site],
                       stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(TIMEOUT)
    assert fetch_big(ours) == big
    ours.close()
    assert proc.wait(TIMEOUT) == 0
    assert sendfile_bytes(out.read_text()) >= len(big)


def test_sendfile_carries_the_body_with_listen(procs, site, tmp_path):
    big = (site / "big.bin").read_bytes()
    proc, out = traced(procs, tmp_path, [sys.executable, HANDLER, "--root", site,
                                         "--listen", "127.0.0.1:0"],
                       stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    port = int(log.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    with connect(port) as sock:
        assert fetch_big(sock) == big
    psutil.Process(proc.pid).children()[0].send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert sendfile_bytes(out.read_text()) >= len(big)
