"""Shared helpers for the superd-httpd tests (no tests of its own but one).

- `Handler`: handlers/httpd.py started like a Unix filter, its stdin and
  stdout one end of a socketpair, its stderr (the access log) collected by a
  thread; killed by process group at teardown.
- `Reader`: reads HTTP responses byte-exactly off a socket, one after the
  other (pipelining), framing them by Content-Length, chunked or close.
- `make_site`: a document root with files, symlinks, dotfiles and CGI
  programs that every test module shares.
- `pid_exits`: wait for any process (not only a child) to end, via a pidfd.
- `load_httpd`, `serve_in_process`: the handler's module loaded by path, and
  its keep-alive loop run in this process over a socketpair, for tests that
  must step in between two of its calls (a file replaced after resolve()).

Every socket has a timeout; nothing sleeps to synchronise.
"""

import contextlib
import gzip
import http.client
import importlib.util
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import LogReader

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "handlers" / "httpd.py"
TIMEOUT = 10.0
ALPHA = b"abcdefghijklmnopqrstuvwxyz"


# -------------------------------------------------------------------------
# reading responses
# -------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers          # [(name, value)] in order
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        values = self.all(name)
        return values[0] if values else default

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Reader:
    """Reads responses off one socket, keeping what follows for the next."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed; had %r" % self.buf[:200])
        self.buf += data

    def _until(self, marker):
        while marker not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _exact(self, n):
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, method="GET"):
        """The next final response (interim 1xx ones are skipped)."""
        while True:
            head = self._until(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
            assert version == "HTTP/1.1", lines[0]
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
            status = int(status)
            if status >= 200:
                break
        response = Response(status, reason, headers, b"", head)
        te = response.header("transfer-encoding")
        cl = response.header("content-length")
        if method == "HEAD" or status in (204, 304):
            return response
        if te is not None:
            assert te.lower() == "chunked"
            parts = []
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            response.body = b"".join(parts)
        elif cl is not None:
            response.body = self._exact(int(cl))
        else:
            response.body = self.rest()
        return response

    def rest(self):
        """Everything until EOF."""
        while True:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        data, self.buf = self.buf, b""
        return data

    def at_eof(self):
        """Whether the peer closes with nothing more to say."""
        return not self.buf and self.sock.recv(65536) == b""


def request(path, method="GET", headers=(), body=b"", version="HTTP/1.1", host="test"):
    """Bytes of one request; headers is a list of (name, value)."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: " + host)
    lines += ["%s: %s" % h for h in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -------------------------------------------------------------------------
# log collection and process handling
# -------------------------------------------------------------------------

class Lines(LogReader):
    """A stream's lines, collected from the start; wait_for() returns the match."""

    def __init__(self, stream):
        super().__init__(stream)
        self.start()

    def wait_for(self, pattern, timeout=TIMEOUT):
        return re.search(pattern, super().wait_for(pattern, timeout))

    def wait_closed(self, timeout=TIMEOUT):
        with self.cond:
            self.cond.wait_for(lambda: self.closed, timeout)
            return self.closed


def kill_group(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def pid_exits(pid, timeout=TIMEOUT):
    """Whether process pid (any, not only a child) ends within timeout s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


class Handler:
    """handlers/httpd.py on one end of a socketpair, like a Unix filter."""

    def __init__(self, args, env=None):
        ours, theirs = socket.socketpair()
        child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(HANDLER), *map(str, args)],
            stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
            env=child_env, start_new_session=True)
        theirs.close()
        ours.settimeout(TIMEOUT)
        self.sock = ours
        self.reader = Reader(ours)
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
        return self.proc.wait(timeout)

    def close(self):
        self.sock.close()
        kill_group(self.proc)


@pytest.fixture
def handler():
    """Factory: handler(args) -> Handler; every one killed at teardown."""
    started = []

    def start(args, env=None):
        h = Handler(args, env)
        started.append(h)
        return h

    yield start
    for h in started:
        h.close()


def load_httpd():
    """handlers/httpd.py as a module (loaded by path once, then shared)."""
    module = sys.modules.get("httpd_under_test")
    if module is None:
        spec = importlib.util.spec_from_file_location("httpd_under_test", HANDLER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["httpd_under_test"] = module
        spec.loader.exec_module(module)
    return module


def serve_in_process(httpd, root, data, *args, around=contextlib.nullcontext):
    """(Reader, log text): httpd's serve_connection() run here, under the
    context manager around(), on one end of a socketpair that has been sent
    data and then end of file.  Answers must fit in the socket's buffer;
    the Reader holds them all, its socket closed."""
    settings = httpd.prepare(["--root", str(root), *map(str, args)])
    settings.root_real = httpd.real_directory(settings.root)
    ours, theirs = socket.socketpair()
    with ours, theirs, tempfile.TemporaryFile() as log:
        ours.settimeout(TIMEOUT)            # theirs: SO_RCVTIMEO, set by Connection
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        conn = httpd.Connection(theirs, "127.0.0.1", 1, "127.0.0.1", 80,
                                settings, httpd.Log(log.fileno(), False))
        with around():
            httpd.serve_connection(conn)          # closes theirs
        reader = Reader(ours)
        reader.buf = reader.rest()            # all of it: the loop has closed its end
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    return reader, text


# -------------------------------------------------------------------------
# the shared site
# -------------------------------------------------------------------------

def script(path, text, interpreter="/bin/sh"):
    path.write_text("#!%s\n%s" % (interpreter, text))
    path.chmod(0o755)
    return path


CGI_SCRIPTS = {
    "env.sh": 'printf "Content-Type: text/plain\\r\\n\\r\\n"; env\n',
    "echo.sh": 'printf "Content-Type: application/octet-stream\\r\\n\\r\\n"; cat\n',
    "count.sh": 'printf "Content-Type: text/plain\\r\\n\\r\\n"; wc -c | tr -d " \\n"\n',
    "status.sh": ('printf "Status: 404 Nowhere here\\r\\nContent-Type: text/plain\\r\\n'
                  'X-Script: yes\\r\\nConnection: keep-alive\\r\\n\\r\\ngone\\n"\n'),
    "semi;colon $HOME `x`.sh": 'printf "Content-Type: text/plain\\r\\n\\r\\nno shell\\n"\n',
    "redirect.sh": 'printf "Location: http://example.com/elsewhere\\r\\n\\r\\n"\n',
    "local.sh": 'printf "Location: /alpha.txt\\r\\n\\r\\n"\n',
    "loop.sh": 'printf "Location: /cgi-bin/loop.sh\\r\\n\\r\\n"\n',
    "length.sh": 'printf "Content-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello"\n',
    "short.sh": 'printf "Content-Type: text/plain\\r\\nContent-Length: 50\\r\\n\\r\\nhello"\n',
    "nph-raw.sh": 'printf "HTTP/1.1 299 Raw\\r\\nContent-Type: text/plain\\r\\n\\r\\nraw body"\n',
    "fail.sh": 'echo "fail.sh says no" >&2; exit 3\n',
    "garbage.sh": 'echo "this is not a header"\n',
    "nohead.sh": 'printf "Content-Type: text/plain\\r\\n"\n',
    "pwd.sh": 'printf "Content-Type: text/plain\\r\\n\\r\\n"; pwd\n',
    "ppid.sh": 'printf "Content-Type: text/plain\\r\\n\\r\\n%s" "$PPID"\n',
    "stream.sh": ('printf "Content-Type: text/plain\\r\\n\\r\\n"; echo one; '
                  'read line < ./stream.fifo; echo "$line"\n'),
    "slow.sh": ('sleep 60 & echo "slow.sh pid=$$ child=$!" >&2\n'
                'wait\n'),
    "slowhead.sh": ('printf "Content-Type: text/plain\\r\\n\\r\\nstarted\\n"; '
                    'sleep 60 & echo "slowhead.sh pid=$$ child=$!" >&2; wait\n'),
    # exec: grep reads its own status, as the shell left it (a shell that
    # waits for a child blocks signals for a moment while it does)
    "signals.sh": ('printf "Content-Type: text/plain\\r\\n\\r\\n"; '
                   'exec grep -E "^Sig(Ign|Blk)" /proc/self/status\n'),
    "badinterp.sh": None,
    "noexec.sh": None,
}

FDS_PY = '''import os, sys
open_fds = []
for fd in range(3, 256):
    try:
        os.fstat(fd)
    except OSError:
        continue
    open_fds.append(fd)
sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\n")
sys.stdout.write("fds=%r sid=%d pid=%d\\n" % (open_fds, os.getsid(0), os.getpid()))
'''


def make_site(root):
    """Build the shared test site under root; return root."""
    root = Path(root)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "nodir").mkdir()
    (root / "evil.com").mkdir()
    (root / "cgi-bin").mkdir()
    (root / ".git").mkdir()
    (root / ".well-known").mkdir()
    (root / "index.html").write_text("<!DOCTYPE html><title>home</title><p>home page</p>\n")
    (root / "alpha.txt").write_bytes(ALPHA)
    (root / "empty.txt").write_bytes(b"")
    (root / "style.css").write_text("p { color: red }\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / "data.unknownext").write_bytes(b"?")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "page.txt").write_text("plain text, compressible " * 40)
    (root / "caf\u00e9.txt").write_text("accented\n")
    (root / "page.txt.gz").write_bytes(gzip.compress((root / "page.txt").read_bytes()))
    (root / "sub" / "index.html").write_text("sub index\n")
    (root / "sub" / "file.txt").write_text("in sub\n")
    (root / "sub" / ".htpasswd").write_text("secret\n")
    (root / "nodir" / "a&b.txt").write_text("x")
    (root / "nodir" / "<script>.txt").write_text("x")
    (root / "nodir" / ".hidden").write_text("x")
    (root / "nodir" / "space name.txt").write_text("x")
    (root / "evil.com" / "index.html").write_text("evil\n")
    (root / ".hidden").write_text("hidden\n")
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".well-known" / "thing.txt").write_text("well known\n")
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "x.txt").write_text("literal percent name\n")
    os.mkfifo(root / "fifo")
    outside = root.parent / (root.name + "-outside")
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the root\n")
    (root / "link-in.txt").symlink_to(root / "alpha.txt")
    (root / "link-out.txt").symlink_to(outside / "secret.txt")
    (root / "link-dir-out").symlink_to(outside)
    cgi = root / "cgi-bin"
    for name, text in CGI_SCRIPTS.items():
        if text is not None:
            script(cgi / name, text)
    script(cgi / "badinterp.sh", "echo x\n", interpreter="/nonexistent/interpreter")
    (cgi / "noexec.sh").write_text("#!/bin/sh\necho secret source\n")
    script(cgi / "fds.py", FDS_PY, interpreter=sys.executable)
    os.mkfifo(cgi / "stream.fifo")
    (cgi / "sub").mkdir()
    script(cgi / "sub" / "inner.sh", 'printf "Content-Type: text/plain\\r\\n\\r\\ninner\\n"\n')
    return root


def get(address, path, conn=None, **kw):
    """(response, body) by http.client from (host, port); conn reused for keep-alive."""
    conn = conn or http.client.HTTPConnection(*address, timeout=TIMEOUT)
    conn.request(kw.pop("method", "GET"), path, **kw)
    response = conn.getresponse()
    return response, response.read()


def serves_side_by_side(address, site):
    """A slow CGI answer (the site's stream.sh) holds up no other client."""
    slow = socket.create_connection(address, timeout=TIMEOUT)
    slow.sendall(request("/cgi-bin/stream.sh"))
    reader = Reader(slow)
    assert reader._until(b"one\n")
    response, body = get(address, "/alpha.txt")
    assert body == ALPHA
    with open(site / "cgi-bin" / "stream.fifo", "w") as fifo:
        fifo.write("two\n")
    assert reader._until(b"0\r\n\r\n").endswith(b"two\n\r\n")
    slow.close()


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "www")


@pytest.fixture
def serve(handler, site):
    """serve(*extra_args) -> a Handler rooted at the shared site."""
    def start(*args):
        return handler(["--root", site, *args])
    return start


def test_reader_frames_chunked_length_and_close():
    """The helper itself: chunked, Content-Length and close-delimited bodies."""
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    with a, b:
        b.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                  b"HTTP/1.1 200 OK\r\n\r\nrest")
        b.shutdown(socket.SHUT_WR)
        reader = Reader(a)
        assert reader.response().body == b"abc"
        assert reader.response().body == b"hi"
        assert reader.response().body == b"rest"
