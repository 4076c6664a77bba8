"""The per-connection suites again, against the event-driven worker.

test_httpd_protocol, test_httpd_static and test_httpd_cgi drive
superd-httpd over a socketpair, one process per connection.  Here every one
of their tests runs again with the `handler` fixture replaced: the handler
gets a listening UNIX socket on fds 0 and 1 (inetd "wait", systemd
Accept=no; UNIX, as the socketpair is, so clients are named "unix:" alike),
runs its Worker loop (--workers 1), and the test's client is one connection
it accepted.  The tests and their assertions are theirs, unchanged.

`exit_status()` means, per connection, "the handler ended its client's
connection and exited": here it waits until the worker has closed the
connection (end of file), then sends TERM, which a worker with no client
left must answer by exiting 0 at once; if the test closed its end first,
TERM lets the worker finish what it was doing and exit 0.

Left out, because they are about the per-connection mode itself: the test
whose client address comes from the launcher's environment (a listening
socket names each client by its own address), and the ones that call
serve_connection() in-process.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from test_httpd_support import HANDLER, TIMEOUT, Lines, Reader, kill_group, request, site  # noqa: F401
from test_httpd_protocol import *  # noqa: F401,F403
from test_httpd_static import *  # noqa: F401,F403
from test_httpd_cgi import *  # noqa: F401,F403

# The client's address from a launcher's environment: per connection only.
globals().pop("test_launcher_address_variables")
# In-process serve_connection(): the per-connection code path, tested there.
for _name in [n for n, f in list(globals().items())
              if n.startswith("test_") and "serve_in_process" in getattr(
                  getattr(f, "__code__", None), "co_names", ())]:
    globals().pop(_name)


class WaitHandler:
    """handlers/httpd.py accepting for itself; self.sock is one client."""

    def __init__(self, args, env=None):
        listener = socket.socket(socket.AF_UNIX)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "http")
            listener.bind(path)
            listener.listen(16)
            self.start(listener, args, env)
            listener.close()

    def start(self, listener, args, env):
        child_env = {"PATH": "/usr/bin:/bin"}
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(HANDLER), *map(str, args), "--workers", "1"],
            stdin=listener, stdout=listener, stderr=subprocess.PIPE,
            env=child_env, start_new_session=True)
        # Ready: a probe that sends nothing is closed, unlogged, by the loop.
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(TIMEOUT)
            probe.connect(listener.getsockname())
            probe.shutdown(socket.SHUT_WR)
            assert probe.recv(1) == b""
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(listener.getsockname())
        self.reader = Reader(self.sock)
        self.log = Lines(self.proc.stderr)

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET"):
        return self.reader.response(method)

    def get(self, path, method="GET", **kw):
        self.send(request(path, method, **kw))
        return self.response(method)

    def at_eof(self):
        return self.reader.at_eof()

    def exit_status(self, timeout=TIMEOUT):
        """Once the worker has closed our connection, TERM: exit 0 at once."""
        if self.sock.fileno() >= 0:
            self.sock.settimeout(timeout)
            try:
                while self.sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self):
        self.sock.close()
        kill_group(self.proc)


@pytest.fixture
def handler():
    """Factory: handler(args) -> WaitHandler; every one killed at teardown."""
    started = []

    def start(args, env=None):
        h = WaitHandler(args, env)
        started.append(h)
        return h

    yield start
    for h in started:
        h.close()
