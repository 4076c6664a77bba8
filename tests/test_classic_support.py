"""Shared helpers for the tests of handlers/classic.py (this module holds no tests).

`procs` is a fixture: procs.start(argv, **popen_kw) starts a process in its own
session and process group; every group is killed with SIGKILL at teardown.
The classic handler is always run with this interpreter (sys.executable).
Every socket made here has a timeout; nothing sleeps to synchronise.
"""

import calendar
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import read_all  # noqa: F401  (re-exported for the classic tests)

ROOT = Path(__file__).resolve().parent.parent
CLASSIC = ROOT / "handlers" / "classic.py"
TIMEOUT = 10.0
TIME_EPOCH = 2208988800

# Line i of the RFC 864 pattern: 72 characters from the i-th printable one.
RING = bytes(range(32, 127)) * 2
CHARGEN = b"".join(RING[i:i + 72] + b"\r\n" for i in range(95))

# A shell trampoline that makes LISTEN_PID the handler's own pid: the shell
# execs the handler, so $$ is the pid the handler will have.  `prefix` runs
# first, to move the socket to fd 3 (and on) with redirections.
def trampoline(argv, prefix="", count=1, names=None):
    env = "LISTEN_FDS=%d LISTEN_PID=$$" % count
    if names:
        env += " LISTEN_FDNAMES=%s" % names
    return ["/bin/sh", "-c", '%s %s exec "$0" "$@"' % (prefix, env), *argv]


# The socket on fd 3 only (fd 0 is /dev/null): systemd's way.
FD3_ONLY = "exec 3<&0 0</dev/null;"
# The socket on fds 0, 1 and 3: superd's wait mode.
FD3_TOO = "exec 3<&0 1<&0;"


def handler(service, *args):
    return [sys.executable, str(CLASSIC), service, *args]


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def kill_all(self):
        """SIGKILL each process group, and any descendant that left it (setsid)."""
        for proc in self.procs:
            try:
                strays = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                strays = []
            kills = [(os.killpg, proc.pid)] + [(os.kill, child.pid) for child in strays]
            for kill, pid in kills:
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(TIMEOUT)


@pytest.fixture
def procs():
    group = Procs()
    yield group
    group.kill_all()


@pytest.fixture
def errfile(tmp_path):
    """A file for a handler's stderr; errfile.text() reads what was written."""
    path = tmp_path / "stderr"

    class Err:
        def __init__(self):
            self.file = open(path, "wb")

        def text(self):
            self.file.flush()
            return path.read_text(errors="replace")

    err = Err()
    yield err
    err.file.close()


def load_classic():
    """handlers/classic.py as a module, loaded from its path (not the installed copy)."""
    spec = importlib.util.spec_from_file_location("classic_under_test", CLASSIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recv_exact(sock, size):
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise AssertionError("EOF after %d of %d bytes" % (len(buf), size))
        buf += data
    return bytes(buf)


def tcp_listener(backlog=128):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.settimeout(TIMEOUT)
    return sock


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    return sock


def connect(address, timeout=TIMEOUT):
    return socket.create_connection(address, timeout=timeout)


def ask(address, payload=b"ping", timeout=TIMEOUT):
    """Send one datagram from a fresh socket and return the one answer."""
    with udp_socket() as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, address)
        data, peer = sock.recvfrom(65536)
        assert peer == address
        return data


def echo_roundtrip(sock, payload=b"hello, world\r\n"):
    sock.sendall(payload)
    assert recv_exact(sock, len(payload)) == payload


def check_daytime(data):
    """An RFC 867 answer as ctime(3) writes it, for a time near now (TZ=UTC)."""
    assert data.endswith(b"\r\n"), data
    when = time.strptime(data[:-2].decode("ascii"), "%a %b %d %H:%M:%S %Y")
    assert abs(calendar.timegm(when) - time.time()) < 300, data


def check_time(data):
    """An RFC 868 answer: four bytes, seconds since 1900, near now."""
    assert len(data) == 4, data
    assert abs(int.from_bytes(data, "big") - TIME_EPOCH - time.time()) < 300


def check_chargen(data):
    """A run of the RFC 864 pattern that starts at the start of some line."""
    repeated = CHARGEN * (len(data) // len(CHARGEN) + 2)
    assert any(repeated[start:start + len(data)] == data
               for start in range(0, len(CHARGEN), 74)), data[:80]


def readable(sock, timeout):
    """Whether sock becomes readable within timeout seconds (a blocking wait, not a sleep)."""
    return bool(select.select([sock], [], [], timeout)[0])
