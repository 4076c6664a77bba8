#!/usr/bin/env python3
"""chat: a tiny line chat, every client held by one process that accepts for itself.

    chat.py [--idle-exit SECONDS] [--max-clients N]

An example wait-mode handler for superd (`mode: wait`, with or without
`preload: true`; see etc/examples/services.yaml), inetd and xinetd
(`wait = yes`), systemd (Accept=no, or systemd-socket-activate without
--accept) and --listen-less runs of any launcher that passes a listening
socket.  Connect with nc or telnet; every line you send reaches everyone
else as `<name> line`.  Commands:

    /nick NAME      take a name (1-32 letters, digits, - or _; not taken)
    /who            the names of everyone here, one `* here NAME` line each
    /quit           leave

Arrivals, departures and renames are announced as `* ...` lines.

Why wait mode.  A chat must hold every client at once, and broadcast each
line to the others.  Under nowait (inetd's, superd's default) each
connection is a separate process that knows no other; they could only talk
through something shared (a broker, a file, a socket of their own), which
is another server.  In wait mode the launcher passes the listening socket
itself to one process, which accepts every client and holds them all: the
classic inetd model for exactly this.  `preload: true` works alike: the
warm interpreter forks that one process, which gets the listening socket
just as an exec'd one would.  Nothing survives the process: when the last
client has left and --idle-exit seconds (60; 0: never) have passed it
exits, and the launcher (superd, xinetd, systemd) starts a fresh one at the
next connection.

Promises: one thread and one selectors loop; a client is never waited for
(sockets are non-blocking, each has an outbox, and a client whose outbox
passes OUTBOX_MAX is dropped as too slow rather than slowing the others);
a line is at most LINE_MAX bytes (longer: that client is dropped); at
--max-clients (100) the listener is not watched and newcomers wait in the
kernel's backlog.  Standard library only; the socket comes from the kit's
blocks below (handlers/kit.py), pasted verbatim.
"""

import errno
import os
import selectors
import sys

LINE_MAX = 1024           # bytes of one chat line
OUTBOX_MAX = 256 << 10    # bytes queued for one slow client before it is dropped
NICK_MAX = 32
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


# -- the room: every client, their names and outboxes

class Client:
    def __init__(self, sock, address, name):
        self.sock = sock          # non-blocking, ours to close
        self.address = address    # (host, port) from accept
        self.name = name
        self.lines = LineBuffer(LINE_MAX)
        self.outbox = bytearray()  # what the socket has not taken yet


class Room:
    """The clients and the loop that serves them (Rule: only the loop writes)."""

    def __init__(self, listeners, idle_exit, max_clients):
        self.listeners = listeners
        self.idle_exit = idle_exit
        self.max_clients = max_clients
        self.selector = selectors.DefaultSelector()
        self.clients = {}         # fd -> Client
        self.watching = False     # whether the listeners are registered
        self.guests = 0           # guest names handed out

    def run(self):
        """Serve until idle; returns the exit status."""
        while True:
            self.watch_listeners(len(self.clients) < self.max_clients)
            timeout = self.idle_exit if not self.clients and self.idle_exit else None
            events = self.selector.select(timeout)
            if not events and not self.clients:
                return 0
            for key, mask in events:
                if key.data is None:
                    self.accept(key.fileobj)
                elif key.fd in self.clients:
                    self.ready(self.clients[key.fd], mask)

    def watch_listeners(self, wanted):
        if wanted != self.watching:
            for sock in self.listeners:
                if wanted:
                    self.selector.register(sock, selectors.EVENT_READ, None)
                else:
                    self.selector.unregister(sock)
            self.watching = wanted

    def accept(self, listener):
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            log("accept-error", error=exc.strerror)
            return
        sock.setblocking(False)
        self.guests += 1
        client = Client(sock, endpoint(address), "guest-%d" % self.guests)
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)
        log("join", client="%s:%d" % client.address, name=client.name)
        self.send(client, "* welcome, %s: /nick NAME, /who, /quit" % client.name)
        self.broadcast("* %s joined" % client.name, but=client)

    def ready(self, client, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
        if mask & selectors.EVENT_READ and client.sock.fileno() in self.clients:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                return self.leave(client, "left")
            try:
                lines = client.lines.feed(data)
            except LineTooLong:
                return self.leave(client, "dropped: line too long")
            for line in lines:
                if client.sock.fileno() not in self.clients:
                    break
                self.said(client, line)

    def said(self, client, line):
        word, _, rest = line.partition(" ")
        if word == "/quit":
            self.flush(client)
            self.leave(client, "left")
        elif word == "/who":
            self.send(client, *["* here %s" % c.name for c in self.clients.values()])
        elif word == "/nick":
            self.rename(client, rest.strip())
        elif line.strip():
            self.broadcast("<%s> %s" % (client.name, line), but=client)

    def rename(self, client, name):
        if not valid_nick(name):
            return self.send(client, "* a name is 1-%d letters, digits, - or _" % NICK_MAX)
        if any(c.name == name for c in self.clients.values()):
            return self.send(client, "* %s is taken" % name)
        old, client.name = client.name, name
        log("nick", client="%s:%d" % client.address, old=old, name=name)
        self.broadcast("* %s is now %s" % (old, name))

    def broadcast(self, text, but=None):
        for other in list(self.clients.values()):
            if other is not but and other.sock.fileno() in self.clients:   # not gone meanwhile
                self.send(other, text)

    def send(self, client, *texts):
        """Queue lines for client and send what its socket takes now; a client
        whose queue passes OUTBOX_MAX is dropped."""
        client.outbox += "".join(t + "\r\n" for t in texts).encode("utf-8", "surrogateescape")
        if len(client.outbox) > OUTBOX_MAX:
            return self.leave(client, "dropped: too slow")
        self.flush(client)

    def flush(self, client):
        try:
            sent = client.sock.send(client.outbox) if client.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return self.leave(client, "left")
        del client.outbox[:sent]
        if client.sock.fileno() in self.clients:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
            self.selector.modify(client.sock, events, client)

    def leave(self, client, why):
        """Close client's connection and tell the others (once, however often asked)."""
        if self.clients.pop(client.sock.fileno(), None) is None:
            return
        self.selector.unregister(client.sock)
        client.sock.close()
        log("leave", client="%s:%d" % client.address, name=client.name, why=why)
        self.broadcast("* %s %s" % (client.name, why))

    def close(self):
        for client in list(self.clients.values()):
            client.sock.close()
        self.selector.close()


def valid_nick(name):
    return 0 < len(name) <= NICK_MAX and all(c.isascii() and (c.isalnum() or c in "-_")
                                             for c in name)


# -- start

def parse_args(argv):
    """--idle-exit SECONDS, --max-clients N -> (idle_exit, max_clients); ValueError."""
    options = {"--idle-exit": "60", "--max-clients": "100"}
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
        idle, most = float(options["--idle-exit"]), int(options["--max-clients"])
    except ValueError:
        raise ValueError("--idle-exit and --max-clients take numbers") from None
    if not (idle >= 0 and most > 0):
        raise ValueError("--idle-exit must be 0 or more, --max-clients 1 or more")
    return idle, most


def main(argv=None):
    found = launch()
    try:
        idle_exit, max_clients = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        log("usage-error", error=str(exc))
        return EX_USAGE
    import socket             # here: the loop's sockets want accept() that makes socket objects
    listeners = [socket.socket(fileno=fd) for fd in found.fds]
    if not listeners or not all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                                for s in listeners):
        log("usage-error", error="chat needs listening sockets: run it in wait mode "
                                 "(superd mode: wait, xinetd wait = yes, systemd Accept=no)")
        return EX_USAGE
    for sock in listeners:
        sock.setblocking(False)           # ours while we run; blocking again when we leave
    room = Room(listeners, idle_exit, max_clients)
    log("start", service=found.service, listeners=len(listeners), pid=os.getpid())
    try:
        return room.run()
    except KeyboardInterrupt:
        return 130
    finally:
        room.close()
        for sock in listeners:
            try:
                sock.setblocking(True)    # the launcher's socket, as it gave it to us
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
