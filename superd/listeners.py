"""Listening sockets: bind them, adopt systemd's, keep them across reloads.

A `Listener` owns one socket for one listen entry of one service.  This
module promises:

- Rule 1: every socket it makes or adopts is non-blocking and
  close-on-exec; spawn hands it to a handler only through an explicit dup.
- Rule 2: `reconcile` keeps the socket of every listen entry whose identity
  (protocol and address; for port 0, also the service) survives a reload, so
  not one connection is refused while superd reloads; it binds new entries
  before it closes anything, and returns the sockets no entry wants any more.
- Rule 3: a unix socket file is removed only by the listener that bound it,
  and only if the file is still that socket.

Address rules: a bare PORT listens on every address, IPv6 and IPv4 (one
dual-stack socket where IPv6 exists); `[::]:PORT` is IPv6 only, so that
`0.0.0.0:PORT` can be listed beside it.  Unix sockets get mode 0666 (as
systemd's SocketMode default); a stale socket file nobody answers on is
replaced, anything else at that path is an error.
"""

import errno
import os
import socket
import stat

BACKLOG = socket.SOMAXCONN
UNIX_MODE = 0o666


class Listener:
    """One bound socket.  `text` is the address actually bound."""

    def __init__(self, service, address, protocol, sock, adopted=False):
        self.service = service          # name of the service that uses it
        self.address = address          # the configured values.Address
        self.protocol = protocol        # "tcp" | "udp"
        self.sock = sock
        self.fd = sock.fileno()
        self.adopted = adopted          # passed by systemd, not bound by us
        self.text = bound_text(sock)
        # the local address handlers are told; None: ask each connection
        self.local = None
        if address.kind == "inet" and address.host not in ("", "0.0.0.0", "::"):
            self.local = sock.getsockname()[:2]
        self.unix_inode = inode(address.path) if address.kind == "unix" and not adopted else None
        # the loop's view of it (services.Services decides): why it is not watched
        # now (busy, backoff, error), whether it is, and the wait-mode handler using it
        self.blocked = set()
        self.watched = False
        self.owner = None

    @property
    def key(self):
        return identity(self.service, self.address, self.protocol)

    def release(self):
        """Close our copy only: an upgrade's successor serves the socket (and its file)."""
        self.sock.close()

    def close(self):
        if self.unix_inode is not None:
            try:
                if inode(self.address.path) == self.unix_inode:
                    os.unlink(self.address.path)
            except OSError:
                pass
        self.sock.close()


def identity(service, address, protocol):
    """What makes two listen entries the same socket across a reload."""
    kind = "unix" if address.kind == "unix" else protocol
    if address.kind == "inet" and address.port == 0:
        return (kind, address.text, service)
    return (kind, address.text)


def bound_text(sock):
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return "unix:" + (name.decode() if isinstance(name, bytes) else name)
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def bind(address, protocol, reuse_port=False):
    """A new non-blocking, close-on-exec socket bound (and listening) on address
    (with SO_REUSEPORT: other processes may bind it too, and the kernel
    spreads new connections over them)."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    if address.kind == "unix":
        sock = _bind_unix(address.path)
    elif address.host == "":
        try:
            sock = _bind_inet(socket.AF_INET6, kind, "::", address.port, v6only=False,
                              reuse_port=reuse_port)
        except OSError as err:
            if err.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            sock = _bind_inet(socket.AF_INET, kind, "0.0.0.0", address.port, reuse_port=reuse_port)
    elif address.is_v6:
        sock = _bind_inet(socket.AF_INET6, kind, address.host, address.port, v6only=True,
                          reuse_port=reuse_port)
    else:
        sock = _bind_inet(socket.AF_INET, kind, address.host, address.port, reuse_port=reuse_port)
    if kind == socket.SOCK_STREAM:
        sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _bind_inet(family, kind, host, port, v6only=None, reuse_port=False):
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path):
    remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UNIX_MODE)
    except OSError:
        sock.close()
        raise
    return sock


def remove_stale(path):
    """Unlink a socket file nobody listens on; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return  # let bind report what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another server is listening there")


def inode(path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def adopt(passed, services):
    """Match systemd's sockets [(fd, name)] to services.

    Returns ({identity: Listener}, [fd not wanted]).  A socket matches a
    listen entry of the same type and address, or else (by LISTEN_FDNAMES)
    the first entry of the service of that name that nothing else matched.
    """
    entries = [(s, a) for s in services for a in s.listen]
    adopted = {}
    unwanted = []
    for fd, name in passed:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        match = _match(sock, entries, adopted, name)
        if match is None:
            unwanted.append(sock)
            continue
        service, address = match
        listener = Listener(service.name, address, service.protocol, sock, adopted=True)
        adopted[listener.key] = listener
        listener.inherited_fd = fd
    return adopted, unwanted


def _match(sock, entries, taken, name):
    kind = socket.SOCK_DGRAM if sock.type == socket.SOCK_DGRAM else socket.SOCK_STREAM
    free = [(s, a) for s, a in entries if identity(s.name, a, s.protocol) not in taken
            and (kind == socket.SOCK_DGRAM) == (s.protocol == "udp")]
    for service, address in free:
        if _same_address(sock, address):
            return service, address
    for service, address in free:
        if name and name == service.name:
            return service, address
    return None


def _same_address(sock, address):
    name = sock.getsockname()
    if address.kind == "unix":
        return sock.family == socket.AF_UNIX and name == address.path
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host, port = name[0], name[1]
    if address.port not in (0, port):
        return False
    if address.host == "":
        return host in ("::", "0.0.0.0")
    return host == address.host


def reconcile(current, services):
    """Listeners for services, reusing current ones (Rule 2).

    current: {identity: Listener}.  Returns (wanted {identity: Listener},
    unwanted [Listener]).  Raises OSError (with .address set) if a new
    entry cannot be bound; then nothing has changed and nothing leaks.
    """
    wanted = {}
    fresh = []
    renames = []
    try:
        for service in services:
            for address in service.listen:
                key = identity(service.name, address, service.protocol)
                if key in wanted:
                    continue
                old = current.get(key)
                if old is not None:
                    renames.append((old, service.name))
                    wanted[key] = old
                    continue
                try:
                    sock = bind(address, service.protocol, service.reuse_port)
                except OSError as err:
                    err.address = address.text
                    raise
                listener = Listener(service.name, address, service.protocol, sock)
                fresh.append(listener)
                wanted[key] = listener
    except OSError:
        for listener in fresh:
            listener.close()
        raise
    for listener, name in renames:
        listener.service = name
    unwanted = [l for k, l in current.items() if k not in wanted]
    return wanted, unwanted
