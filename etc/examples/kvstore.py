#!/usr/bin/env python3
"""kvstore: a line-based key-value store, one connection per process.

    kvstore.py [--data FILE] [--timeout SECONDS] [--max-bytes N]

An example handler for superd (etc/examples/services.yaml), inetd, xinetd
(wait = no), systemd (Accept=yes, or systemd-socket-activate --accept) and
tcpserver.  One command a line, one answer a line (KEYS: several):

    SET key value...    OK                    the value is the rest of the line
    GET key             VALUE value | NOTFOUND
    DEL key             OK | NOTFOUND
    KEYS                KEY key ... END       every key, sorted, then END
    QUIT                BYE, and the connection closes
    anything else       ERROR why

A key is 1 to 250 printable characters without spaces; lines end in LF or
CR LF, answers in CR LF (telnet and nc work).  A client that sends no whole
line for --timeout seconds (60) is told `ERROR timeout` and closed.

Where the state lives.  Each connection is a process of its own (nowait;
with superd's `preload: true` too: each is forked from a warm interpreter,
and nothing a process keeps in memory outlives its connection), so the data
is in a file, --data (kvstore.json in the working directory: superd's
`workdir:`): one JSON object.  Every command takes a lock on FILE.lock with
flock(2), shared to read and exclusive to change, reads the file, and a
change writes a new file beside it and renames it into place, so that
concurrent clients see every SET and DEL whole and in one order, a reader
never sees half a file, and a handler killed half-way loses only its own
command.  The file is read once per command: this is for a few thousand
small keys (--max-bytes, 1 MiB, bounds it; a SET past it is refused), not
a database.  A wait-mode model (one process holding the data in memory)
would lose it at every idle exit and restart; the file keeps it.

Given a listening socket (wait mode) it says so on stderr and exits 64:
run it nowait.  Standard library only; the socket and client come from the
kit's blocks below (handlers/kit.py), pasted verbatim.
"""

import errno
import fcntl
import json
import os
import sys

KEY_MAX = 250             # bytes of a key
EX_USAGE, EX_OSERR = 64, 71

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


# -- the store: a JSON file, changed under an exclusive flock, read under a shared one

class StoreFull(Exception):
    pass


class Store:
    def __init__(self, path, max_bytes):
        self.path = path
        self.max_bytes = max_bytes

    def read(self, work):
        """work(data) under a shared lock; its result."""
        with self._locked(fcntl.LOCK_SH):
            return work(self._load())

    def change(self, work):
        """work(data) under an exclusive lock; data saved if work returns True."""
        with self._locked(fcntl.LOCK_EX):
            data = self._load()
            changed = work(data)
            if changed:
                self._save(data)
            return changed

    def _locked(self, how):
        return Flock(self.path + ".lock", how)

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return {}
        if not isinstance(data, dict):
            raise ValueError("%s holds no JSON object" % self.path)
        return data

    def _save(self, data):
        text = json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogateescape")
        if len(text) > self.max_bytes:
            raise StoreFull()
        temp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            with open(temp, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)       # readers see the old file or the new, whole
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


class Flock:
    """flock(2) on a lock file for a with-block (the data file is replaced, so
    it cannot carry the lock itself)."""

    def __init__(self, path, how):
        self.path, self.how = path, how

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, self.how)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)                     # closing releases the lock


# -- the commands: one row each, (arguments wanted, function)

def cmd_set(store, key, value):
    def work(data):
        data[key] = value
        return True
    store.change(work)
    return ["OK"]


def cmd_get(store, key, _rest):
    value = store.read(lambda data: data.get(key))
    return ["NOTFOUND"] if value is None else ["VALUE " + value]


def cmd_del(store, key, _rest):
    return ["OK"] if store.change(lambda data: data.pop(key, None) is not None) else ["NOTFOUND"]


def cmd_keys(store, _key, _rest):
    return ["KEY " + key for key in store.read(sorted)] + ["END"]


COMMANDS = {
    # name:  (takes a key, takes a value, function)
    "SET":   (True,  True,  cmd_set),
    "GET":   (True,  False, cmd_get),
    "DEL":   (True,  False, cmd_del),
    "KEYS":  (False, False, cmd_keys),
}


def answer(store, line):
    """The answer lines to one command line (QUIT is the caller's)."""
    name, _, rest = line.partition(" ")
    row = COMMANDS.get(name.upper())
    if row is None:
        return ["ERROR unknown command %s" % json.dumps(name[:40])]
    takes_key, takes_value, work = row
    key, _, value = rest.partition(" ")
    if takes_key and not valid_key(key):
        return ["ERROR %s needs a key: 1-%d printable characters, no spaces" % (name.upper(), KEY_MAX)]
    if not takes_key and rest or takes_key and not takes_value and value:
        return ["ERROR too many arguments to %s" % name.upper()]
    try:
        return work(store, key, value)
    except StoreFull:
        return ["ERROR store full"]
    except (OSError, ValueError) as exc:
        log("store-error", data=store.path, error=str(exc))
        return ["ERROR store unavailable"]


def valid_key(key):
    return 0 < len(key.encode("utf-8", "surrogateescape")) <= KEY_MAX and key.isprintable()


# -- the connection

def serve(lines, store, client):
    """Answer every command until QUIT, end of file, a timeout or a line too long."""
    count = 0
    try:
        for line in lines:
            if line.strip().upper() == "QUIT":
                lines.write("BYE")
                break
            if line.strip():
                lines.write(*answer(store, line))   # a value keeps its spaces
                count += 1
    except TimeoutError:
        lines.write("ERROR timeout")
    except LineTooLong:
        lines.write("ERROR line too long")
    return count


def parse_args(argv):
    """--data FILE, --timeout SECONDS, --max-bytes N -> dict; ValueError quoting misuse."""
    options = {"--data": "kvstore.json", "--timeout": "60", "--max-bytes": "1048576"}
    args = list(argv)
    while args:
        name, eq, value = args.pop(0).partition("=")
        if name not in options:
            raise ValueError("unknown option %r" % name)
        if not eq:
            if not args:
                raise ValueError("%s needs a value" % name)
            value = args.pop(0)
        options[name] = value
    try:
        return {"data": options["--data"], "timeout": float(options["--timeout"]),
                "max_bytes": int(options["--max-bytes"])}
    except ValueError:
        raise ValueError("--timeout and --max-bytes take numbers: %r, %r"
                         % (options["--timeout"], options["--max-bytes"])) from None


def main(argv=None):
    found = launch()
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        log("usage-error", error=str(exc))
        return EX_USAGE
    sock = _socket.socket(fileno=found.fds[0]) if found.fds else None
    if sock is not None and sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
        log("usage-error", error="a listening socket: run kvstore nowait (one process a connection)")
        return EX_USAGE
    client, _ = ends_of(sock) if sock is not None else (("-", 0), None)
    store = Store(options["data"], options["max_bytes"])
    try:
        count = serve(Lines(sock, timeout=options["timeout"]), store, client)
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, None):
            return 0                      # the client went away (a timeout carries no errno)
        log("error", client="%s:%d" % client, error=str(exc))
        return EX_OSERR
    log("done", client="%s:%d" % client, commands=count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
