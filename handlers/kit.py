#!/usr/bin/env python3
"""kit: what every handler needs, for handler authors to copy.

Standard library only, like the handlers.  Copy the blocks between the
`# --- kit: NAME ... ---` and `# --- end kit: NAME ---` comments into your
handler verbatim (classic.py, httpd.py and etc/examples/*.py do), or keep
this file beside your handler and `import kit`.  tests/test_kit.py finds
every copy under handlers/ and etc/examples/ and fails when one differs
from this file by a byte: fix a block here, then paste it everywhere.

Block `launch`: the socket and the client, the same way under every
launcher (DESIGN.md, "What a handler gets"):

    launch() -> Launch      call it once, first thing in main() (never at
                            import: under `preload: true` the top level runs
                            once, in the warm interpreter).  It names the
                            process after SUPERD_SERVICE (writes
                            /proc/self/comm, cut to 15 bytes: what top and
                            ps -o comm show instead of python3; the bare
                            name, where superd's own helper servers are
                            superd:NAME), takes the LISTEN_* variables away
                            so that no child inherits them, and returns
                            what it found:
      .fds                  the socket fds: LISTEN_FDS's (3, 4, ...) when
                            LISTEN_PID is ours (systemd, superd wait mode),
                            else [0] when fd 0 is a socket (superd nowait,
                            inetd, xinetd, tcpserver, systemd-socket-activate
                            --inetd), else [] (run by hand: use stdin/stdout)
      .names                LISTEN_FDNAMES, one per fd ("unknown" if unnamed;
                            fd 0's is SUPERD_SERVICE, as superd's wait mode
                            names its socket)
      .stderr_free          True when fd 2 may carry diagnostics: it is open
                            and is not the client (under inetd, xinetd and
                            systemd StandardError=socket it is the socket)
      .service, .conn       SUPERD_SERVICE and SUPERD_CONN ("" without superd)
    ends_of(sock) -> ((host, port), (host, port))
                            the client and local ends of a connection the
                            launcher accepted: superd's REMOTE_ADDR and
                            REMOTE_PORT (the original client when a PROXY
                            header came first), tcpserver's TCPREMOTEIP and
                            TCPLOCALIP (with PROTO=TCP), else the socket's
                            own names; xinetd's REMOTE_HOST if the socket can
                            no longer say.  ("-", 0) when nothing knows;
                            ("unix:", 0) for a UNIX socket.
    endpoint(address)       (host, port) of a socket address, IPv4-mapped
                            IPv6 addresses unmapped ("::ffff:1.2.3.4").
    stderr_is_free(fds), listen_fds(), is_socket(fd), name_process(service)
                            the steps launch() takes, for a handler that
                            needs one alone.

A listening socket (getsockopt SO_ACCEPTCONN true) means accept for
yourself (superd or inetd wait mode, systemd Accept=no); a connected one
means serve that one client.

Block `io`: lines and logs.

    Lines(sock=None, timeout=60, limit=65536, newline="\\r\\n")
                            line I/O on a connection (None: stdin/stdout).
      .readline()           the next line as str (its "\\n" or "\\r\\n" taken
                            off; UTF-8, undecodable bytes kept as surrogates
                            and written back as they came), or None at end of
                            file.  TimeoutError when a whole line takes more
                            than `timeout` seconds (None or 0: for ever);
                            LineTooLong (a ValueError) past `limit` bytes.
      iter(lines)           readline() until end of file.
      .write(*texts)        each text plus newline, sent before it returns:
                            nothing is ever buffered, so there is no flush to
                            forget.  TimeoutError when the client does not
                            take it within `timeout` seconds (on a socket;
                            stdout by hand blocks as a terminal does).
      .close()              send end of file, then close.
    LineBuffer(limit)       bytes in (.feed(data) -> [str, ...]), whole lines
                            out, for a handler with its own event loop; Lines
                            uses it.  .rest() is an unfinished last line.
    log(event, **fields)    one line `event key=value ...` on stderr, values
                            quoted as superd quotes its own (JSON strings when
                            they hold spaces, quotes, '=' or unprintable
                            characters), only when launch() found stderr free;
                            never raises.
    stdout_line_buffered()  print() to a client on fd 1 sends at each newline.

A handler that writes with print() or sys.stdout to a socket and never
flushes never answers: Python buffers a socket's stdout in blocks.  Lines
sends every write at once; stdout_line_buffered() makes print() safe too.

Promises: nothing happens at import (a preloaded handler's top level runs
once, in the warm interpreter); nothing is ever written to fd 2 when it is
the client; the launch block imports only os and stat, the io block only modules
written in C (_socket, select, and time when a deadline is used) and sys,
so that a handler's start costs little more than the interpreter's.

Run as a program, this file is a line echo: `python3 kit.py [IDLE_EXIT]`
under any launcher answers each line with itself, and logs what launch()
found (what tests/test_kit.py runs); given a listening socket it serves one
client at a time and exits after IDLE_EXIT seconds (5) without one.
"""

import sys


# --- kit: launch (copied from handlers/kit.py; tests/test_kit.py keeps the copies identical) ---
# Finding the socket and the client under every launcher; see kit.py's docstring.
import os  # noqa: E402  (the block stands alone wherever it is pasted)
from stat import S_ISSOCK  # noqa: E402

COMM_MAX = 15             # bytes of a process name (TASK_COMM_LEN less its NUL)
LAUNCH = []               # the Launch that launch() found, for log()


class Launch:
    """What the launcher passed; see kit.py's docstring for each field."""

    def __init__(self, fds, names, stderr_free, service, conn):
        self.fds = fds
        self.names = names
        self.stderr_free = stderr_free
        self.service = service
        self.conn = conn


def launch():
    """Name the process, take the launcher's sockets, decide about fd 2."""
    env = os.environ
    name_process(env.get("SUPERD_SERVICE", ""))
    fds, names = listen_fds()
    if not fds and is_socket(0):
        fds, names = [0], [env.get("SUPERD_SERVICE") or "unknown"]
    found = Launch(fds, names, stderr_is_free(fds), env.get("SUPERD_SERVICE", ""),
                   env.get("SUPERD_CONN", ""))
    LAUNCH[:] = [found]
    return found


def listen_fds():
    """(fds, names) systemd's protocol passes us, ([], []) if it is not for
    us (LISTEN_PID another's).  The variables are removed either way, as
    sd_listen_fds(1) does, and the fds made close-on-exec: no child of ours
    may take them for its own."""
    env = os.environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    if not (pid.isascii() and pid.isdigit() and int(pid) == os.getpid()):
        return [], []
    if not (count.isascii() and count.isdigit() and int(count) > 0):
        return [], []
    fds = list(range(3, 3 + int(count)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass                  # not open after all: the caller meets it
    names = (names + ["unknown"] * len(fds))[:len(fds)]
    return fds, [name or "unknown" for name in names]


def is_socket(fd):
    try:
        return S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def stderr_is_free(fds):
    """Whether fd 2 is open and is not a client's socket: not one of fds nor
    fd 0 (same device and inode).  Any fd 2 that is no socket (a terminal
    fd 0 shares, a file, a pipe) is free."""
    try:
        err = os.fstat(2)
    except OSError:
        return False
    if not S_ISSOCK(err.st_mode):
        return True
    for fd in {0, *fds}:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (err.st_dev, err.st_ino):
            return False
    return True


def name_process(service):
    """The process's name (/proc/self/comm) becomes the service's, cut to
    COMM_MAX bytes; nothing when there is none or Linux will not."""
    if not service:
        return
    name = service.encode("utf-8", "replace")[:COMM_MAX].decode("utf-8", "ignore")
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, name.encode("utf-8"))
    except OSError:
        pass
    finally:
        os.close(fd)


def ends_of(sock):
    """((client host, port), (local host, port)) of a connection the launcher
    accepted.  Variables count only beside the launcher's own mark (superd:
    SUPERD_SERVICE; tcpserver: PROTO=TCP): ones merely left in the
    environment by a launcher that sets none of them name no one."""
    env = os.environ
    client = local = None
    if "SUPERD_SERVICE" in env:
        client = named_end(env, "REMOTE_ADDR", "REMOTE_PORT")
    if env.get("PROTO") == "TCP":
        client = client or named_end(env, "TCPREMOTEIP", "TCPREMOTEPORT")
        local = named_end(env, "TCPLOCALIP", "TCPLOCALPORT")
    client = client or socket_end(sock.getpeername)
    if client == ("-", 0) and env.get("REMOTE_HOST"):     # xinetd's, for a client gone already
        client = (unmap(env["REMOTE_HOST"]), 0)
    return client, local or socket_end(sock.getsockname)


def named_end(env, host, port):
    """(host, port) from two environment variables, or None."""
    host, port = env.get(host), env.get(port, "")
    if host and port.isascii() and port.isdigit():
        return unmap(host), int(port)
    return None


def socket_end(name):
    """(host, port) by getpeername or getsockname; ("-", 0) if it fails."""
    try:
        return endpoint(name())
    except OSError:
        return "-", 0


def endpoint(address):
    """(host, port) of a socket address; UNIX sockets are ("unix:", 0)."""
    if isinstance(address, tuple):
        return unmap(address[0]), address[1]
    return "unix:", 0


def unmap(host):
    return host[7:] if host.startswith("::ffff:") and "." in host else host
# --- end kit: launch ---


# --- kit: io (copied from handlers/kit.py; tests/test_kit.py keeps the copies identical) ---
# Lines with deadlines that are sent at once, and superd-style log lines; see
# kit.py's docstring.  Needs the launch block above it.
import _socket  # noqa: E402  (socket's C half: `import socket` costs more at every start)
import select  # noqa: E402
import sys  # noqa: E402

LINE_LIMIT = 65536        # most bytes of one line, by default


class LineTooLong(ValueError):
    pass


class LineBuffer:
    """Bytes in, whole lines out, never more than `limit` bytes held."""

    def __init__(self, limit=LINE_LIMIT):
        self.limit = limit
        self.data = bytearray()

    def feed(self, data):
        """The lines data completes (as str, newline taken off); LineTooLong
        when a line, finished or not, passes the limit."""
        self.data += data
        lines = []
        start = 0
        while True:
            end = self.data.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.limit:
                raise LineTooLong("a line longer than %d bytes" % self.limit)
            lines.append(decode_line(self.data[start:end]))
            start = end + 1
        del self.data[:start]
        if len(self.data) > self.limit:
            raise LineTooLong("a line longer than %d bytes" % self.limit)
        return lines

    def rest(self):
        """The unfinished last line (at end of file), or None."""
        if not self.data:
            return None
        line, self.data = decode_line(self.data), bytearray()
        return line


def decode_line(data):
    if data.endswith(b"\r"):
        data = data[:-1]
    return bytes(data).decode("utf-8", "surrogateescape")


class Lines:
    """Line I/O on a connected socket (or stdin/stdout when sock is None)."""

    def __init__(self, sock=None, timeout=60.0, limit=LINE_LIMIT, newline="\r\n"):
        self.sock = sock
        self.timeout = timeout or None
        self.buffer = LineBuffer(limit)
        self.ready = []           # lines read but not yet returned
        self.eof = False
        self.newline = newline

    def __iter__(self):
        while True:
            line = self.readline()
            if line is None:
                return
            yield line

    def readline(self):
        """The next line, or None at end of file; TimeoutError, LineTooLong."""
        deadline = None if self.timeout is None else monotonic() + self.timeout
        while not self.ready:
            if self.eof:
                return None
            data = self._read(deadline)
            if data:
                self.ready += self.buffer.feed(data)
            else:
                self.eof = True
                rest = self.buffer.rest()
                if rest is not None:
                    self.ready.append(rest)
        return self.ready.pop(0)

    def write(self, *texts):
        """Send each text and a newline now; TimeoutError if the client stalls."""
        data = "".join(text + self.newline for text in texts).encode("utf-8", "surrogateescape")
        if self.sock is None:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
            return
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except _socket.timeout:
            raise TimeoutError("the client took nothing for %s s" % self.timeout) from None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            self.sock.close()

    def _read(self, deadline):
        left = None if deadline is None else max(0.0, deadline - monotonic())
        if self.sock is None:
            poller = select.poll()
            poller.register(0, select.POLLIN)
            if not poller.poll(None if left is None else int(left * 1000) + 1):
                raise TimeoutError("no whole line in %s s" % self.timeout)
            return os.read(0, 65536)
        self.sock.settimeout(left)
        try:
            return self.sock.recv(65536)
        except _socket.timeout:
            raise TimeoutError("no whole line in %s s" % self.timeout) from None


def monotonic():
    import time               # here: a handler that never reads a line never pays for it
    return time.monotonic()


def log(event, **fields):
    """`event key=value ...` on stderr if launch() found it free; never raises."""
    if not (LAUNCH and LAUNCH[0].stderr_free):
        return
    line = " ".join([event] + ["%s=%s" % (key, log_quote(value)) for key, value in fields.items()])
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def log_quote(value):
    """A value as superd's logs write it: bare when printable ASCII without
    space, quote or '=', else a JSON string (json.dumps, ensure_ascii off)."""
    if isinstance(value, float):
        return ("%.6f" % value).rstrip("0").rstrip(".") or "0"
    text = str(value)
    if text and all("!" <= c <= "~" and c not in '"=' for c in text):
        return text
    return '"%s"' % "".join(_ESCAPES.get(c) or c for c in text)


# What json.dumps writes for each character it escapes in a string.
_ESCAPES = {chr(i): "\\u%04x" % i for i in range(32)}
_ESCAPES.update({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\b": "\\b", "\f": "\\f"})


def stdout_line_buffered():
    """print() to a client on fd 1 sends each line at its newline (Python
    buffers a socket's stdout in blocks otherwise, and the client waits)."""
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass                      # not a TextIOWrapper, or closed: nothing buffered there
# --- end kit: io ---


# -- run as a program: a line echo under any launcher, the kit's own test subject

IDLE_EXIT = 5.0           # seconds a wait-mode kit.py waits for its next client


def main(argv=None):
    """kit.py [IDLE_EXIT]: echo lines on the launcher's socket (or stdin)."""
    argv = sys.argv[1:] if argv is None else argv
    idle = float(argv[0]) if argv else IDLE_EXIT
    found = launch()
    if not found.fds:
        return echo_lines(Lines(None, timeout=10.0), ("-", 0), ("-", 0))
    sock = _socket.socket(fileno=found.fds[0])
    if not sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
        return echo_lines(Lines(sock, timeout=10.0), *ends_of(sock))
    sock.settimeout(idle)                  # wait mode: one client at a time, until idle
    while True:
        try:
            fd, address = sock._accept()
        except _socket.timeout:
            return 0
        conn = _socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        echo_lines(Lines(conn, timeout=10.0), endpoint(address), endpoint(conn.getsockname()))


def echo_lines(lines, client, local):
    """Each line back to its sender, with a log line before and after."""
    found = LAUNCH[0]
    log("connect", client="%s:%d" % client, local="%s:%d" % local, service=found.service,
        conn=found.conn, names=",".join(found.names), pid=os.getpid())
    try:
        for line in lines:
            lines.write(line)
    except (OSError, ValueError) as exc:   # timeouts and long lines included
        log("error", client="%s:%d" % client, error=str(exc))
    lines.close()
    log("done", client="%s:%d" % client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
