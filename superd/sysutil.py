"""Small helpers for the loop: OS calls that must not raise, and log formats.

Each function is stateless; the supervisor and its lifecycle half use them.
"""

import errno
import os
import select
import socket

from superd import spawn


def local_address(fd):
    probe = socket.socket(fileno=fd)
    try:
        return probe.getsockname()
    finally:
        probe.detach()


def client_text(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        return client_text(spawn.plain_ip(peer[0]), peer[1])
    return "unix"


def load_reader():
    """The 1-minute load average source: psutil, or a file named by
    SUPERD_LOADAVG_FILE (in /proc/loadavg's format) so tests can inject load."""
    path = os.environ.get("SUPERD_LOADAVG_FILE")
    if path:
        def read():
            try:
                with open(path) as f:
                    return float(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                return 0.0
        return read
    import psutil
    return lambda: psutil.getloadavg()[0]


def ignore_in_handler(signum, frame):
    """All signal work happens in the loop (set_wakeup_fd); see module doc."""


def killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def readable(fd):
    """Is input waiting on fd right now?  (One poll with a zero timeout.)"""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def errname(err):
    code = getattr(err, "errno", None)
    name = errno.errorcode.get(code, "") if code else ""
    text = getattr(err, "strerror", None) or str(err)
    return f"{name}: {text}" if name else text


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
