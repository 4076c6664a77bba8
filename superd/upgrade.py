"""Upgrade in place: a new superd inherits every listening socket, then the old one leaves.

The predecessor (`Handover`) starts `python -m superd` with its own options,
whatever superd is installed now, and passes it, by fd: every listening
socket (SUPERD_INHERIT: fd, service, and whether a wait-mode handler of the
predecessor still owns it), a memfd with the state that carries over
(SUPERD_STATE: the next connection id and every service's counters), the
write end of a pipe on which the successor says "ready" (SUPERD_READY_FD),
and the read end of a pipe on which the predecessor says which listeners
its wait-mode handlers let go of (SUPERD_FREED_FD).

The successor loads and validates its configuration, adopts the inherited
sockets as it adopts systemd's, serves the control socket it was passed
(SUPERD_CONTROL_FD: fd and path; the same socket, so a control client is
never refused meanwhile), binds what is new, writes the ready file,
notifies systemd (MAINPID=, READY=1), and only then writes "ready".  Then
the predecessor stops accepting, closes its copies (never a unix socket's
file: the successor serves it), serves the connections it accepted already,
reaps its handlers until none is left, and exits.  A successor that exits
or closes the pipe before "ready" leaves the predecessor serving, and the
reason is logged.  A listener the predecessor's wait-mode handler owns is
watched by the successor only once the predecessor writes its address on
the freed pipe, or closes it (by exiting).
"""

import json
import os
import selectors
import sys
from dataclasses import dataclass, field

from superd.status import BUCKETS, Counters, Histogram

READY = b"ready\n"


class UpgradeRefused(Exception):
    """An upgrade cannot start now (one is under way, or the spawn failed)."""


# -- the predecessor ---------------------------------------------------------------
class Handover:
    def __init__(self, selector, spawner, log, on_ready, on_failed):
        self.selector = selector
        self.spawner = spawner
        self.log = log
        self.on_ready = on_ready          # (pid): the successor serves; stop accepting
        self.on_failed = on_failed        # (why): it will not; go on serving
        self.pid = None                   # the successor's, while it starts
        self.ready_r = None
        self.freed_w = None               # stays open until this process exits
        self.done = False

    def start(self, listeners, state, busy=lambda listener: listener.owner is not None,
              control=None):
        """Spawn the successor; UpgradeRefused if one is on its way or cannot start.

        busy(listener): a wait-mode handler (ours, or a predecessor's that we
        still wait for) owns it: the successor must not watch it yet.
        control: (fd, path) of the control socket, passed on as it is."""
        if self.pid is not None or self.done:
            raise UpgradeRefused("an upgrade is under way")
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        freed_r, freed_w = os.pipe2(os.O_CLOEXEC)
        memo = _memfd(json.dumps(state).encode())
        passed = [ready_w, freed_r, memo] + [l.fd for l in listeners]
        env = dict(os.environ)
        env.update(SUPERD_READY_FD=str(ready_w), SUPERD_FREED_FD=str(freed_r),
                   SUPERD_STATE=str(memo),
                   SUPERD_INHERIT=json.dumps([[l.fd, l.service, busy(l)] for l in listeners]))
        env.pop("SUPERD_CONTROL_FD", None)
        if control is not None:
            passed.append(control[0])
            env["SUPERD_CONTROL_FD"] = json.dumps(list(control))
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
        try:
            for fd in passed:
                os.set_inheritable(fd, True)
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "superd",
                                                       *sys.argv[1:]], env)
        except OSError as err:
            os.close(ready_r)
            os.close(freed_w)
            raise UpgradeRefused(f"cannot start a new superd: {err.strerror}") from None
        finally:
            for fd in passed:
                if fd in (ready_w, freed_r, memo):
                    os.close(fd)
                else:
                    os.set_inheritable(fd, False)
        self.ready_r, self.freed_w = ready_r, freed_w
        self.selector.register(ready_r, selectors.EVENT_READ, self._readable)
        self.log.info("upgrading", successor=self.pid)
        return self.pid

    def _readable(self):
        try:
            data = os.read(self.ready_r, 64)
        except BlockingIOError:
            return
        self.selector.unregister(self.ready_r)
        os.close(self.ready_r)
        self.ready_r = None
        if data.startswith(READY):
            self.done = True
            self.on_ready(self.pid)
        # else it is exiting: its reaping says how (reaped)

    def reaped(self, pid, decoded):
        """True if pid was the successor (it died before saying it was ready)."""
        if pid != self.pid:
            return False
        if not self.done:
            why = ", ".join(f"{k}={v}" for k, v in decoded.items())
            if self.ready_r is not None:
                self.selector.unregister(self.ready_r)
                os.close(self.ready_r)
                self.ready_r = None
            self._failed(f"it exited before it was ready ({why})")
        self.pid = None if not self.done else self.pid
        return True

    def _failed(self, why):
        self.log.error("upgrade-failed", successor=self.pid, reason=why,
                       kept="this superd, serving")
        self.pid = None
        if self.freed_w is not None:
            os.close(self.freed_w)
            self.freed_w = None
        self.on_failed(why)

    def freed(self, listener):
        """A wait-mode handler of ours let go of listener: the successor may watch it."""
        self.freed_text(listener.text)

    def freed_text(self, text):
        if self.done and self.freed_w is not None:
            try:
                os.write(self.freed_w, (text + "\n").encode())
            except OSError:
                pass


def _memfd(data):
    fd = os.memfd_create("superd-state", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# -- the successor -------------------------------------------------------------------
@dataclass
class Inherited:
    """What a predecessor passed; the defaults: none (not an upgrade)."""
    passed: list = field(default_factory=list)   # [(fd, service)] of listening sockets
    busy: dict = field(default_factory=dict)     # fd -> a wait-mode handler still owns it
    state: dict = None                           # next id, counters, ...
    ready_fd: int = -1
    freed_fd: int = -1
    control: tuple = None                        # (fd, path) of the control socket


def inherited(environ=os.environ):
    """What a predecessor passed, as an Inherited.  Clears the variables (no
    handler inherits them)."""
    try:
        entries = json.loads(environ.pop("SUPERD_INHERIT", "[]"))
        ready_fd = int(environ.pop("SUPERD_READY_FD", "-1"))
        freed_fd = int(environ.pop("SUPERD_FREED_FD", "-1"))
        state_fd = int(environ.pop("SUPERD_STATE", "-1"))
        control = json.loads(environ.pop("SUPERD_CONTROL_FD", "null"))
        control = (int(control[0]), str(control[1])) if control else None
    except (ValueError, TypeError, IndexError, KeyError):
        return Inherited()
    state = None
    if state_fd >= 0:
        try:
            with os.fdopen(state_fd, "rb") as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            state = None
    for fd in [fd for fd, _, _ in entries] + [ready_fd, freed_fd] + [c[0] for c in [control] if c]:
        if fd >= 0:
            os.set_inheritable(fd, False)
    return Inherited([(fd, name) for fd, name, _ in entries],
                     {fd: busy for fd, _, busy in entries}, state, ready_fd, freed_fd, control)


def say_ready(fd):
    if fd >= 0:
        try:
            os.write(fd, READY)
        except OSError:
            pass
        os.close(fd)


# -- what carries over ---------------------------------------------------------------------
def counters_state(counters):
    return {"accepted": counters.accepted, "started": counters.started,
            "failed": counters.failed, "exited_nonzero": counters.exited_nonzero,
            "killed": counters.killed, "timeouts": counters.timeouts,
            "health_checks": counters.health_checks, "refused": counters.refused,
            "exits": counters.exits, "duration": _histogram_state(counters.duration),
            "spawn": _histogram_state(counters.spawn)}


def counters_from(state):
    """Counters as a predecessor left them (anything malformed starts from 0)."""
    counters = Counters()
    try:
        for name in ("accepted", "started", "failed", "exited_nonzero", "killed", "timeouts",
                     "health_checks"):
            setattr(counters, name, int(state.get(name, 0)))
        counters.refused = {str(k): int(v) for k, v in state.get("refused", {}).items()}
        counters.exits.update({k: int(v) for k, v in state.get("exits", {}).items()
                               if k in counters.exits})
        counters.duration = _histogram_from(state.get("duration"))
        counters.spawn = _histogram_from(state.get("spawn"))
    except (AttributeError, TypeError, ValueError):
        return Counters()
    return counters


def _histogram_state(h):
    return {"counts": list(h.counts), "sum": h.sum, "count": h.count}


def _histogram_from(state):
    h = Histogram()
    if isinstance(state, dict) and len(state.get("counts", ())) == len(BUCKETS) + 1:
        h.counts = [int(n) for n in state["counts"]]
        h.sum, h.count = float(state["sum"]), int(state["count"])
    return h
