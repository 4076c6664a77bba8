"""The two systemd protocols superd speaks: socket passing and sd_notify.

`listen_fds()` takes the sockets systemd passed (LISTEN_FDS, honoured only
when LISTEN_PID is ours), marks them close-on-exec and removes the variables
so that no handler inherits them.  `notify()` sends a state string to
$NOTIFY_SOCKET; it never raises, because a supervisor that cannot tell
systemd it is ready must still serve.  `store_fds()` keeps listening
sockets in the service's fd store (FDSTORE=1, FDNAME=the service), so that
a `systemctl restart` hands them to the next superd and refuses nobody.
"""

import array
import os
import socket

SD_LISTEN_FDS_START = 3
SCM_MAX_FD = 253          # fds one message may carry (the kernel's limit)


def listen_fds(environ=os.environ):
    """[(fd, name)] passed by systemd; clears LISTEN_* from environ."""
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
        pid = int(environ.get("LISTEN_PID", "0"))
    except ValueError:
        count = pid = 0
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    if pid != os.getpid() or count <= 0:
        return []
    fds = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        fds.append((fd, names[i] if i < len(names) else ""))
    return fds


def notify(state, environ=os.environ, fds=()):
    """Send state (e.g. "READY=1") to $NOTIFY_SOCKET, with fds (SCM_RIGHTS) if
    given; True if it was sent."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendmsg([state.encode()], rights, 0, address)
        return True
    except OSError:
        return False


def store_fds(name, fds, environ=os.environ):
    """Keep fds in the service's fd store under name (FDSTORE=1): systemd passes
    them back (LISTEN_FDS, LISTEN_FDNAMES) when it starts superd again."""
    if fds:
        notify(f"FDSTORE=1\nFDNAME={name}", environ, fds[:SCM_MAX_FD])


def forget_fds(name, environ=os.environ):
    notify(f"FDSTOREREMOVE=1\nFDNAME={name}", environ)
