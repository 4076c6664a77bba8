"""The two systemd protocols superd speaks: socket passing and sd_notify.

`listen_fds()` takes the sockets systemd passed (LISTEN_FDS, honoured only
when LISTEN_PID is ours), marks them close-on-exec and removes the variables
so that no handler inherits them.  `notify()` sends a state string to
$NOTIFY_SOCKET; it never raises, because a supervisor that cannot tell
systemd it is ready must still serve.
"""

import os
import socket

SD_LISTEN_FDS_START = 3


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


def notify(state, environ=os.environ):
    """Send state (e.g. "READY=1") to $NOTIFY_SOCKET; True if it was sent."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(state.encode(), address)
        return True
    except OSError:
        return False
