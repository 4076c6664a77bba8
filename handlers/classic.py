#!/usr/bin/env python3
"""classic: the inetd built-in services as one standalone handler program.

    classic.py SERVICE [--idle-exit SECONDS] [--timeout SECONDS]

SERVICE is echo (RFC 862), discard (RFC 863), chargen (RFC 864), daytime
(RFC 867) or time (RFC 868).  Each is one row of BUILTINS, with a stream half
(one connection) and a datagram half (the answer to one datagram), in the
spirit of OpenBSD inetd's biltins[].  Standard library only: copy this one
file to any machine and run it under superd, inetd, xinetd, systemd or
tcpserver.

Where the socket comes from, the same rule under every launcher:
  1. LISTEN_FDS with LISTEN_PID equal to our pid: fds 3 .. 3+LISTEN_FDS-1
     (systemd; superd wait mode).  The variables are then removed.
  2. else fd 0, if it is a socket (inetd, xinetd, tcpserver, superd nowait,
     systemd-socket-activate --inetd).
  3. else stdin/stdout as a byte stream (run by hand from a terminal or pipe).
That rule is the kit's launch block (handlers/kit.py), pasted here verbatim:
change it there, and paste it back.

What it does with it:
  connected stream socket   serve that one connection on it, then exit.
  listening stream socket   wait mode: accept connections and serve each in
                            its own thread, at most MAX_CLIENTS at once (more
                            wait in the kernel backlog); exit once no client
                            has been connected for --idle-exit seconds.
  datagram socket           wait mode: answer each datagram to its sender;
                            exit after --idle-exit seconds without one.
Several sockets (LISTEN_FDS > 1) are served together by one poll loop.

Promises:
  - Never more than CHUNK bytes buffered per connection, one datagram at a
    time: a fast or hostile client meets kernel buffers, not our memory.
  - A client that goes away (EPIPE, ECONNRESET) ends its connection quietly;
    chargen stops then.  echo honours a half-close: it echoes everything the
    client sent before its shutdown, then shuts down its own side and closes.
  - Datagrams are never answered to port 0, nor to the ports of the classic
    services (LOOP_PORTS), nor to a port this program itself serves on: a
    forged datagram cannot make two of them, or one with itself, talk for
    ever (the loop inetd's check_loop guards against).
  - Diagnostics go to fd 2 only when fd 2 is not one of the served sockets
    (under inetd, xinetd and systemd StandardInput=socket fd 2 is the client).
  - Start-up imports only what the chosen socket and service need.

Exit status: 0 done or idle, 64 usage, 71 an unexpected OS error, 130 SIGINT.
"""

import errno
import os
import sys

CHUNK = 65536            # most bytes read or held per connection at once
MAX_CLIENTS = 64         # most connections served at once in TCP wait mode
IDLE_EXIT = 10.0         # default --idle-exit, seconds; 0 = never exit
DGRAM_CHARGEN_MAX = 512  # RFC 864: a UDP answer holds 0..512 characters
TIME_EPOCH = 2208988800  # RFC 868: seconds from 1900-01-01 to 1970-01-01 UTC
MAX_SECONDS = 1e9        # longer --idle-exit or --timeout values mean this (31 years)
MAX_POLL_MS = 86400000   # one poll(2) sleeps at most a day: it takes an int of ms
VERSION = "0.1.0"
SHUT_WR = 1              # socket.SHUT_WR everywhere; spares Stdio the socket module

OPTIONS = " [--idle-exit SECONDS] [--timeout SECONDS]"
USAGE = "usage: classic.py {echo|discard|chargen|daytime|time}" + OPTIONS + "\n"

EX_USAGE, EX_OSERR = 64, 71


def _errnos(*names):
    """The errno values of those names this system has (ENONET, say, is Linux's)."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# A connection ends quietly on these: the client went away.  (A --timeout
# stall raises socket.timeout, which carries no errno at all.)
GONE = _errnos("EPIPE", "ECONNRESET", "ENOTCONN", "ESHUTDOWN")

# accept(2) failures that concern one client only: take the next (Linux
# reports a new connection's pending network errors through accept).
ACCEPT_AGAIN = _errnos("EAGAIN", "EWOULDBLOCK", "EINTR", "ECONNABORTED", "EPROTO", "EPERM",
                       "ENETDOWN", "ENETUNREACH", "EHOSTDOWN", "EHOSTUNREACH", "ENONET",
                       "ENOPROTOOPT", "EOPNOTSUPP", "ETIMEDOUT")

# accept(2) failures for want of memory or descriptors: stop accepting until
# one of our own clients ends and gives some back (never retry in a spin).
ACCEPT_PAUSE = _errnos("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")

# Whether fd 2 may carry diagnostics; decided once the sockets are known.
_stderr_ok = False


# -- the services: stream halves get a connection, datagram halves return the answer

def echo_stream(conn):
    """RFC 862: send back every byte until the client's end of file."""
    while True:
        data = conn.recv(CHUNK)
        if not data:
            return
        conn.sendall(data)


def discard_stream(conn):
    """RFC 863: read and throw away until the client's end of file."""
    while conn.recv(CHUNK):
        pass


def chargen_stream(conn):
    """RFC 864: send the rotating pattern until the client goes away.

    Input is not read (the RFC throws it away); the kernel's receive buffer
    bounds it, and a closed client turns the next send into EPIPE/ECONNRESET.
    """
    block = chargen_block()
    while True:
        conn.sendall(block)


def daytime_stream(conn):
    """RFC 867: one line of local time, then close."""
    conn.sendall(daytime_now())


def time_stream(conn):
    """RFC 868: four bytes of time, then close."""
    conn.sendall(time_now())


def echo_dgram(data):
    return data


def discard_dgram(data):
    return None


def chargen_dgram(data):
    """A random number (0..512) of characters of the pattern, from a random line."""
    rand = os.urandom(3)
    length = int.from_bytes(rand[:2], "big") % (DGRAM_CHARGEN_MAX + 1)
    start = rand[2] % 95 * 74
    block = chargen_block()
    return (block[start:] + block)[:length]


def daytime_dgram(data):
    return daytime_now()


def time_dgram(data):
    return time_now()


def daytime_now():
    """The time as ctime(3) writes it, in the local zone, as BSD inetd does."""
    import time
    return time.ctime().encode("ascii") + b"\r\n"


def time_now():
    """Seconds since 1900 as 32 bits, big-endian; wraps in 2036 as RFC 868 does."""
    import time
    return ((int(time.time()) + TIME_EPOCH) % (1 << 32)).to_bytes(4, "big")


_chargen = []


def chargen_block():
    """The 95 lines of the RFC 864 pattern (72 characters and CR LF each);
    line i starts at the i-th of the 95 printable ASCII characters."""
    if not _chargen:
        ring = bytes(range(32, 127)) * 2
        _chargen.append(b"".join(ring[i:i + 72] + b"\r\n" for i in range(95)))
    return _chargen[0]


BUILTINS = {
    # name:      (port, stream half,     datagram half)   what it does
    "echo":      (7,    echo_stream,     echo_dgram),     # RFC 862: returns what it gets
    "discard":   (9,    discard_stream,  discard_dgram),  # RFC 863: the network's /dev/null
    "daytime":   (13,   daytime_stream,  daytime_dgram),  # RFC 867: human-readable time
    "chargen":   (19,   chargen_stream,  chargen_dgram),  # RFC 864: character generator
    "time":      (37,   time_stream,     time_dgram),     # RFC 868: 32-bit time since 1900
}

# Datagrams from these source ports are never answered: each is another
# classic service that would answer back (echo to chargen, for ever).
LOOP_PORTS = frozenset(row[0] for row in BUILTINS.values())


# -- diagnostics and arguments

def note(text):
    """One diagnostic line on fd 2, if fd 2 is ours to write (see _stderr_ok)."""
    if _stderr_ok:
        try:
            os.write(2, ("classic[%d]: %s\n" % (os.getpid(), text)).encode("utf-8", "replace"))
        except OSError:
            pass


def seconds(text, option):
    """A non-negative number of seconds, or ValueError quoting the bad value."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError("%s: not a number of seconds: %r" % (option, text))
    return min(value, MAX_SECONDS)


def parse_args(argv):
    """argv (without the program name) -> (service, idle_exit, timeout); ValueError on misuse."""
    options = {"--idle-exit": IDLE_EXIT, "--timeout": 0.0}
    service = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in options:
            if not eq:
                if not args:
                    raise ValueError("%s needs a value" % name)
                value = args.pop(0)
            options[name] = seconds(value, name)
        elif service is None and not arg.startswith("-"):
            if arg not in BUILTINS:
                raise ValueError("unknown service %r" % arg)
            service = arg
        else:
            raise ValueError("unexpected argument %r" % arg)
    if service is None:
        raise ValueError("no service named")
    return service, options["--idle-exit"], options["--timeout"] or None


# -- finding the socket

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


class Stdio:
    """stdin and stdout as one connection, for a run by hand: recv/sendall/shutdown/close."""

    def recv(self, size):
        return os.read(0, size)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]

    def settimeout(self, timeout):
        pass

    def shutdown(self, how):
        pass

    def close(self):
        pass


# -- serving

def serve_connection(conn, service, timeout):
    """Run the service's stream half on one connection, then close it; never raises OSError."""
    try:
        conn.settimeout(timeout)      # for a socket: blocking again when timeout is None
        BUILTINS[service][1](conn)
        conn.shutdown(SHUT_WR)        # a FIN now, whoever else holds the socket
    except OSError as exc:
        if exc.errno is not None and exc.errno not in GONE:
            note("error service=%s op=io errno=%s" % (service, errno_name(exc)))
    finally:
        conn.close()


def serve_datagram(sock, service, own_ports=(), pktinfo=False):
    """Read one datagram (if one is there) and answer it; never raises OSError.
    own_ports: the ports this program serves on, never answered either;
    pktinfo: the answer leaves from the address the datagram was sent to
    (see reply_from_destination)."""
    ancillary = ()
    try:
        if pktinfo:
            data, ancillary, _, peer = sock.recvmsg(65536, 64)
        else:
            data, peer = sock.recvfrom(65536)
    except (BlockingIOError, InterruptedError, ConnectionRefusedError):
        return                        # not ours after all, or an old ICMP error
    except OSError as exc:
        note("error service=%s op=recvfrom errno=%s" % (service, errno_name(exc)))
        return
    answer = BUILTINS[service][2](data)
    if answer is None or not answerable(peer, own_ports):
        return
    source = reply_source(ancillary) if ancillary else None
    try:
        if source:
            try:
                sock.sendmsg([answer], source, 0, peer)
                return
            except OSError:
                pass                  # that address is gone, say: answer as routed
        sock.sendto(answer, peer)
    except OSError:
        pass                          # a lost answer is a lost datagram, as UDP allows


# (level, option) that asks for each datagram's destination, by family
# (Linux: IP_PKTINFO is 8, missing from Python's constants); the control
# message then comes as (level, type) IP_PKTINFO or IPV6_PKTINFO.
PKTINFO_ASK = {2: (0, 8), 10: (41, 49)}          # AF_INET, AF_INET6 -> IPV6_RECVPKTINFO
IP_PKTINFO, IPV6_PKTINFO = (0, 8), (41, 50)


def reply_source(ancillary):
    """The control message that makes an answer leave from the address its
    datagram was sent to, or None: for a multicast or broadcast destination
    the routed address answers.  A datagram queued before the option was
    set carries only its destination (struct in_pktinfo's ipi_addr)."""
    for level, kind, data in ancillary:
        if (level, kind) == IP_PKTINFO and len(data) >= 12:
            local = data[4:8] if data[4:8] != bytes(4) else data[8:12]   # spec_dst, else addr
            if local == bytes(4) or local[0] >= 224:
                return None
            return [(level, kind, bytes(4) + local + bytes(4))]
        if (level, kind) == IPV6_PKTINFO and len(data) >= 20:
            if data[0] == 0xff or data[:16] == bytes(16):
                return None
            return [(level, kind, data[:20])]
    return None


def reply_from_destination(sock):
    """On a datagram socket bound to every address (0.0.0.0 or ::), ask the
    kernel for each datagram's destination, so that its answer leaves from
    that address: on a host with several, a client that sent to one of them
    (and connect()ed its socket there) takes an answer from nowhere else.
    True when that is on; sendto() from the routed address otherwise."""
    ask = PKTINFO_ASK.get(sock.family) if sys.platform.startswith("linux") else None
    if ask is None or sock.getsockname()[0] not in ("0.0.0.0", "::"):
        return False
    try:
        sock.setsockopt(ask[0], ask[1], 1)
    except OSError:
        return False
    return True


def answerable(peer, own_ports=()):
    """Whether a datagram from peer may be answered: not from port 0, a
    classic service's port (LOOP_PORTS) or one of own_ports, nor from an
    unbound UNIX socket."""
    if isinstance(peer, tuple):
        return peer[1] != 0 and peer[1] not in LOOP_PORTS and peer[1] not in own_ports
    return bool(peer)


class Clients:
    """The connections a wait-mode handler serves in threads, and a pipe that
    wakes the poll loop whenever one of them ends."""

    def __init__(self, service, timeout):
        import threading
        self.threading = threading
        self.service, self.timeout = service, timeout
        self.lock = threading.Lock()
        self.active = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def start(self, conn):
        with self.lock:
            self.active += 1
        try:
            self.threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        except RuntimeError:          # no thread to be had: drop this client
            conn.close()
            self._ended()

    def _serve(self, conn):
        try:
            serve_connection(conn, self.service, self.timeout)
        finally:
            self._ended()

    def _ended(self):
        with self.lock:
            self.active -= 1
        try:
            os.write(self.wake_w, b".")
        except OSError:
            pass                      # a full pipe already holds a wake-up

    def busy(self):
        with self.lock:
            return self.active


def serve_wait(socks, service, idle_exit, timeout):
    """Wait mode: poll the listening and datagram sockets until idle; returns the exit status.

    Rule 1: the loop sleeps in poll(2) until a socket, a finished client or
    the idle deadline needs it; nothing retries in a cycle.
    Rule 2: a listener is watched only while fewer than MAX_CLIENTS clients
    are served and accept(2) is not short of descriptors (paused until a
    client ends); the kernel backlog holds the others.
    Rule 3: the program never exits while a client is being served.
    """
    import select
    import time
    socket = socket_module()
    listeners = {s.fileno(): s for s in socks if s.type != socket.SOCK_DGRAM}
    dgrams = {s.fileno(): s for s in socks if s.type == socket.SOCK_DGRAM}
    own_ports = frozenset(port_of(s) for s in dgrams.values())
    pktinfo = {fd: reply_from_destination(s) for fd, s in dgrams.items()}
    clients = Clients(service, timeout) if listeners else None
    poller = select.poll()
    for fd in dgrams:
        poller.register(fd, select.POLLIN)
    if clients:
        poller.register(clients.wake_r, select.POLLIN)
    watched = set()                   # the listeners now registered with the poller
    paused = False                    # accept(2) ran short of descriptors or memory
    last = time.monotonic()           # when something last happened
    while True:
        busy = clients.busy() if clients else 0
        want = set() if paused or busy >= MAX_CLIENTS else set(listeners)
        for fd in watched - want:
            poller.unregister(fd)
        for fd in want - watched:
            poller.register(fd, select.POLLIN)
        watched = want
        if not listeners and not dgrams and not busy:
            return 0
        wait = None
        if idle_exit and not busy:
            left = idle_exit - (time.monotonic() - last)
            if left <= 0:
                return 0
            wait = min(int(left * 1000) + 1, MAX_POLL_MS)
        for fd, events in poller.poll(wait):
            last = time.monotonic()
            if clients and fd == clients.wake_r:
                os.read(fd, 4096)
                paused = False
            elif fd in dgrams:
                if events & select.POLLERR:   # an ICMP error: read it, or poll spins
                    dgrams[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                serve_datagram(dgrams[fd], service, own_ports, pktinfo[fd])
            elif fd in watched:
                result = accept_one(listeners[fd], clients, service)
                if result == "pause":
                    paused = True
                elif result == "gone":
                    del listeners[fd]


def accept_one(listener, clients, service):
    """Accept one client and start its thread: "ok", "pause" (short of
    descriptors or memory, with clients whose end will give some back) or
    "gone" (the socket no longer listens).  Raises what cannot be waited out."""
    try:
        fd, _ = listener._accept()
    except OSError as exc:
        if exc.errno in ACCEPT_AGAIN:
            return "ok"
        if exc.errno in ACCEPT_PAUSE and clients.busy():
            note("pause service=%s op=accept errno=%s" % (service, errno_name(exc)))
            return "pause"
        if exc.errno == errno.EINVAL:
            return "gone"
        raise
    clients.start(socket_module().socket(listener.family, listener.type, listener.proto,
                                         fileno=fd))
    return "ok"


def port_of(sock):
    """The port a socket is bound to (None for a UNIX socket)."""
    name = sock.getsockname()
    return name[1] if isinstance(name, tuple) else None


def socket_module():
    """_socket, the C type under the socket module: all this program needs.
    Importing it costs a millisecond where `import socket` (enum, selectors)
    costs about twelve under python -S, on every connection."""
    try:
        import _socket
    except ImportError:               # an interpreter without it: the public module
        import socket as _socket
    return _socket


def errno_name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def run(fds, service, idle_exit, timeout):
    """Serve the sockets on fds as their kind says (stdio when none); returns the exit status."""
    if not fds:
        serve_connection(Stdio(), service, None)
        return 0
    socket = socket_module()
    socks = [socket.socket(fileno=fd) for fd in fds]
    first = socks[0]
    if (len(socks) == 1 and first.type != socket.SOCK_DGRAM
            and not first.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        serve_connection(first, service, timeout)
        return 0
    return serve_wait(socks, service, idle_exit, timeout)


def main(argv=None, prog=None):
    """classic.py SERVICE [--idle-exit SECONDS] [--timeout SECONDS]; returns the exit status.

    prog: the name of a console script that names the service itself
    (superd-echo: argv then starts with "echo"), for its usage line."""
    global _stderr_ok
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: %s%s\n" % (prog, OPTIONS) if prog else USAGE
    launched = launch()
    fds = launched.fds
    _stderr_ok = launched.stderr_free
    if "-h" in argv or "--help" in argv:
        os.write(1, usage.encode())
        return 0
    if "--version" in argv:
        os.write(1, ("%s %s\n" % (prog or "classic.py", VERSION)).encode())
        return 0
    try:
        service, idle_exit, timeout = parse_args(argv)
    except ValueError as exc:
        note("%s\n%s" % (exc, usage.rstrip("\n")))
        return EX_USAGE
    try:
        return run(fds, service, idle_exit, timeout)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        note("error service=%s errno=%s %s" % (service, errno_name(exc), exc.strerror))
        return EX_OSERR


def echo_main():
    return main(["echo"] + sys.argv[1:], prog="superd-echo")


def discard_main():
    return main(["discard"] + sys.argv[1:], prog="superd-discard")


def chargen_main():
    return main(["chargen"] + sys.argv[1:], prog="superd-chargen")


def daytime_main():
    return main(["daytime"] + sys.argv[1:], prog="superd-daytime")


def time_main():
    return main(["time"] + sys.argv[1:], prog="superd-time")


if __name__ == "__main__":
    sys.exit(main())
