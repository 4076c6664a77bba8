"""superd-httpd as a real process under generated requests from clients that
misbehave (issue 18, items 3 and 4): the requests of test_httpd_fuzz.py
(valid grammar mutated, pipelined), sent over TCP by a client that

    polite         sends them all, half-closes, reads every answer
    half-head      sends a prefix (mid-head, mid-body), half-closes, reads
    silent         sends a prefix and then nothing, reading until it is closed
    close-mid      sends a prefix and closes without reading
    rst            sends them all and resets the connection (SO_LINGER 0),
                   maybe after reading part of the answer
    stall          asks first for a large file with a small receive buffer,
                   reads the head only, then resets, closes, or waits until
                   the server gives up on it (its access-log line)

in the two modes a launcher runs it in: accepting for itself (one event
loop, as inetd "wait" or systemd Accept=no give it a listening socket) and
one process per connection under a real superd (nowait).

Properties: a client that reads gets well-formed responses and then a clean
close (never a reset, never a wait past the timeouts, which are set short
here); no answer is a 500 (the site runs no CGI); nothing on stderr is a
traceback; after every example a polite client is answered (no hang); after
the batch the process holds as many fds as before it (no leak).
"""

import json
import os
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import LogReader
from test_httpd_events import procs, worker        # noqa: F401 (procs: a fixture)
from test_httpd_fuzz import requests
from test_httpd_support import Reader

TIMEOUTS = ("--header-timeout", "0.5", "--timeout", "0.5", "--keepalive-timeout", "0.5")
ARGS = ("--no-cgi", *TIMEOUTS)
WITHIN = 5.0            # seconds: past every timeout above and the 2 s lingering close
BIG = 64 << 20          # bytes: more than loopback's socket buffers hold
BIG_REQUEST = b"GET /big.bin HTTP/1.1\r\nHost: test\r\n\r\n"
# Real processes: a sixth of the profile's examples, 33 in CI (seconds), 2,000
# (minutes) under HYPOTHESIS_PROFILE=long (bench/fuzz.sh); half that per connection.
EXAMPLES = max(10, min(settings.default.max_examples // 6, 2_000))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BEHAVIOURS = st.sampled_from(["polite", "polite", "half-head", "half-head", "close-mid",
                              "rst", "stall", "silent"])
STALL_ENDINGS = st.sampled_from(["rst", "rst", "close", "close", "wait-out"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The files test_httpd_fuzz.py's targets name, and a large sparse one."""
    root = tmp_path_factory.mktemp("www")
    (root / "index.html").write_text("<p>home</p>\n")
    (root / "a.txt").write_text("alpha\n" * 50)
    (root / "dir").mkdir()
    (root / "dir" / "b.css").write_text("b{}\n")
    with open(root / "big.bin", "wb") as f:
        f.truncate(BIG)                   # sparse: costs no disk
    return root


# -- the clients ---------------------------------------------------------------

def connect(port, rcvbuf=None):
    sock = socket.socket()
    if rcvbuf:                            # before connect: it sets the window offered
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WITHIN)
    sock.connect(("127.0.0.1", port))
    return sock


def send(sock, data):
    """Send data; a server that has closed already (a 400 mid-way) is fine."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    sock.close()


def read_responses(sock, sent):
    """Every response until the server closes: each well-formed, none a 500."""
    reader = Reader(sock)
    answers = []
    try:
        while True:
            if not reader.buf:
                data = sock.recv(65536)
                if not data:
                    break
                reader.buf = data
            answers.append(reader.response())
    except socket.timeout:
        raise AssertionError(f"no answer and no close within {WITHIN} s: {sent!r}") from None
    except ConnectionResetError:
        raise AssertionError(f"reset instead of a clean close: {sent!r} {answers!r}") from None
    for answer in answers:
        assert 200 <= answer.status <= 505 and answer.status != 500, (sent, answer)
    return answers


def polite_get(port):
    """A well-behaved client is answered: the server does not hang."""
    with connect(port) as sock:
        sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = Reader(sock).response()
        assert answer.status == 200 and answer.body == b"alpha\n" * 50


def misbehave(port, data, behaviour, cut, ending, wait_logged):
    """One client, as its behaviour says (see the module docstring)."""
    prefix = data[:cut]
    if behaviour == "stall":
        return stall(port, data, ending, wait_logged)
    sock = connect(port)
    with sock:
        if behaviour == "polite":
            send(sock, data)
            sock.shutdown(socket.SHUT_WR)
            read_responses(sock, data)
        elif behaviour == "half-head":
            send(sock, prefix)
            sock.shutdown(socket.SHUT_WR)
            read_responses(sock, prefix)
        elif behaviour == "silent":
            send(sock, prefix)
            read_responses(sock, prefix)
        elif behaviour == "close-mid":
            send(sock, prefix)
        elif behaviour == "rst":
            send(sock, data)
            if cut % 2:
                try:
                    sock.recv(cut)
                except (socket.timeout, ConnectionResetError):
                    pass
            reset(sock)


def stall(port, data, ending, wait_logged):
    """A large answer the client stops reading; a polite client is served
    meanwhile; then the stalled client goes, or waits for the server to."""
    sock = connect(port, rcvbuf=4096)
    send(sock, BIG_REQUEST + data)
    reader = Reader(sock)
    head = reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    polite_get(port)
    if ending == "rst":
        return reset(sock)
    if ending == "wait-out":
        wait_logged(r"GET /big\.bin HTTP/1\.1\\?\" 200 ")    # it gave up (superd escapes the quote)
        try:
            while sock.recv(1 << 20):
                pass                     # what the kernel still held, then end of file
        except ConnectionResetError:
            pass                         # or a reset: the answer was cut either way
    sock.close()


@st.composite
def examples(draw):
    """(request bytes, behaviour, where to cut, how a stall ends)."""
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=4)))
    return (data, draw(BEHAVIOURS), draw(st.integers(0, max(0, len(data) - 1))),
            draw(STALL_ENDINGS))


# Every behaviour and every end of a stall at least once, whatever is drawn.
GET_A = b"GET /a.txt HTTP/1.1\r\nHost: test\r\n\r\n"
POST = b"POST /a.txt HTTP/1.1\r\nHost: test\r\nContent-Length: 9\r\n\r\nbody"
SEEN = [(GET_A * 3, "polite", 0, "rst"), (GET_A + POST, "close-mid", len(GET_A) + 30, "rst"),
        (GET_A * 2, "half-head", len(GET_A) + 20, "rst"), (POST, "silent", len(POST), "rst"),
        (GET_A * 3, "rst", 7, "rst")] + [(GET_A, "stall", 0, e) for e in ("rst", "close", "wait-out")]


def fuzz(port, log_text, wait_logged, share=1):
    """Run the generated examples (share of them) against the server on port."""
    @settings(FUZZ, max_examples=max(5, int(EXAMPLES * share)))
    @given(examples())
    def one(example):
        data, behaviour, cut, ending = example
        misbehave(port, data, behaviour, cut, ending, wait_logged)
        polite_get(port)
        assert "Traceback" not in log_text(), log_text()[-4000:]
    for seen in SEEN:
        one = example(seen)(one)
    one()


def log_waiter(log):
    """wait_logged(regex): wait for a line matching it among those the log
    got since the last wait returned (a stall's access-log line is its own)."""
    mark = [len(log.lines)]

    def wait_logged(rx):
        LogReader.wait_for(log, rx, timeout=WITHIN, start=mark[0])
        mark[0] = len(log.lines)
    return wait_logged


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settles(pid, baseline, port):
    """Whether pid's fd count comes back to baseline within WITHIN s.  Nothing
    announces the last close (a lingering one ends by its own clock), so
    this looks again between polite requests."""
    deadline = time.monotonic() + WITHIN
    while fds(pid) > baseline:
        if time.monotonic() > deadline:
            return False
        polite_get(port)
        threading.Event().wait(0.05)          # a bounded pause between looks
    return True


# -- the two modes ---------------------------------------------------------------

def test_accepting_for_itself_survives_misbehaving_clients(procs, site):
    """One event-loop worker on a listening socket (inetd wait, Accept=no)."""
    proc, port, log = worker(procs, site, "--workers", "1", *ARGS)
    polite_get(port)                         # the worker's lazy imports done
    baseline = fds(proc.pid)
    fuzz(port, log.text, log_waiter(log))
    assert settles(proc.pid, baseline, port), sorted(os.listdir(f"/proc/{proc.pid}/fd"))
    assert proc.poll() is None and "Traceback" not in log.text()


NOWAIT = """
services:
  http:
    listen: 127.0.0.1:0
    server: {python}
    args: [{handlers}/httpd.py, --root, "%s", %s]
    stderr: log
"""


def test_one_process_per_connection_survives_misbehaving_clients(superd, site):
    """superd-httpd per connection under a real superd (nowait)."""
    d = superd(NOWAIT % (site, ", ".join(json.dumps(a) for a in ARGS)))
    port = d.address("http")[1]
    polite_get(port)
    d.wait_running("http", 0)
    baseline = fds(d.pid)
    # the handlers' access logs are superd's `stderr` lines (stderr: log)
    fuzz(port, d.log.text, log_waiter(d.log), share=0.5)    # a process or two per example
    d.wait_running("http", 0, timeout=WITHIN)       # every handler has ended
    assert fds(d.pid) == baseline, sorted(os.listdir(f"/proc/{d.pid}/fd"))
    text = d.log.text()
    assert "Traceback" not in text and "internal-error" not in text
