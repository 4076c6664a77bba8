"""The daemon's runtime state: one record per service, one per connection.

A `ServiceRecord` is a service as it runs: its config and recipe, its
listeners, its running count, its pauses (`holds`), its connections waiting
for a PROXY header (`proxy_wait`) and for a slot (`queue`), its admission
rules (`guard`) and its counters.  `reasons(listener)` is the one rule for
watching a listener: it is watched exactly when that set is empty.

A `Connection` is one accepted connection (or one wait-mode activation)
from accept to reap.  Its state goes proxy-wait -> queued -> starting ->
running -> exiting (any step may be skipped, and it may end in any state).
It is the only holder of its fd, its timer, its per-source slot and its
pid, and `release()` frees each exactly once, however often it is called.

The `ConnectionTable` owns every live Connection: ids unique for the
daemon's life, lookup by id and by pid, and counts by state.  Records hold
no references to the loop: the parts that own the decisions change them.
"""

import os
from collections import OrderedDict, deque

from superd import limits
from superd.status import Counters
from superd.sysutil import peer_text

PROXY_WAIT, QUEUED, STARTING, RUNNING, EXITING = (
    "proxy-wait", "queued", "starting", "running", "exiting")
STATES = (PROXY_WAIT, QUEUED, STARTING, RUNNING, EXITING)


class ServiceRecord:
    """A service as it runs.  `running` changes only through occupy/vacate."""

    def __init__(self, service, recipe, warm, thresholds):
        self.name = service.name
        self.listeners = []
        self.running = 0          # handlers alive or being started (one writer: occupy/vacate)
        self.counters = Counters()
        self.fast_exits = 0       # wait mode: consecutive handlers that ended at once
        self.pauses = {}           # reason -> Timer (None: until a check lifts it)
        self.proxy_wait = OrderedDict()   # conn id -> Connection, oldest first
        self.queue = deque()      # Connections admitted and waiting for a slot or a pause
        self.guard = None
        self.env = {}             # added to each connection's environment (SUPERD_CONTROL)
        self.configure(service, recipe, warm, thresholds)

    def configure(self, service, recipe, warm, thresholds):
        """Take a (re)loaded service's settings; the admission state carries over."""
        self.service = service
        self.recipe = recipe
        self.warm = warm          # starts go through a spawn server (preload.WarmPool)
        self.guard = limits.Guard(service, previous=self.guard, thresholds=thresholds)

    def occupy(self):
        self.running += 1

    def vacate(self):
        self.running -= 1

    def full(self):
        return self.running >= self.service.instances

    def may_start(self):
        """Room for one more handler, and no pause."""
        return not self.pauses and not self.full()

    def reasons(self, listener):
        """Why listener is not watched now (empty: watch it)."""
        why = set(self.pauses) | listener.blocked
        if self.full():
            why.add("instances")
        return why

    def paused(self):
        """The reasons the whole service or one of its listeners is paused (sorted)."""
        why = set(self.pauses)
        for listener in self.listeners:
            why |= listener.blocked - {"busy"}
        return sorted(why)


class Connection:
    """One connection from accept to reap (or one wait-mode activation)."""

    __slots__ = ("id", "record", "listener", "state", "fd", "sock", "peer", "local",
                 "_client", "env", "wait", "accepted", "started", "pid", "timer", "release_slot",
                 "err_fd", "timed_out", "doomed", "timeout", "got", "proxy_protocol",
                 "proxy_timeout")

    def __init__(self, conn_id, record, listener, fd, peer, now, wait=False):
        self.id = conn_id
        self.record = record
        self.listener = listener      # where it came from (wait mode: the listener it uses)
        self.state = QUEUED
        self.fd = fd                  # ours to close (nowait); wait mode: the listener's
        self.sock = None              # a socket object over fd while its PROXY header is read
        self.peer = peer              # the client: (ip, port, ...), unix peer name, or None
        self.local = None             # the local address a PROXY header named
        # how logs name the client; made from peer only if asked before the start
        # names it from the handler's environment (a refusal, say): not per connection
        self._client = listener.text if wait else None
        self.env = {}                 # the connection's part of the handler's environment
        self.wait = wait              # wait mode: the handler gets the listener itself
        self.accepted = now
        self.started = now            # when its start was dispatched
        self.pid = None
        self.timer = None             # PROXY timeout, then the handler's timeout
        self.release_slot = None      # frees its per-source slot (limits.Guard.admit)
        self.err_fd = None            # read end of its stderr pipe, while a server starts it
        self.timed_out = False
        self.doomed = False           # killed while starting: ended as soon as it runs
        self.timeout = 0.0            # its service's timeout when it started
        self.got = b""                # the start of its PROXY header, already read
        # the settings it was accepted under: a reload meanwhile does not change them
        self.proxy_protocol = record.service.proxy_protocol
        self.proxy_timeout = record.service.proxy_timeout

    @property
    def client(self):
        if self._client is None:
            self._client = peer_text(self.peer)
        return self._client

    @client.setter
    def client(self, text):
        self._client = text

    def close_fd(self):
        """Close superd's copy of the connection, once (never the listener's)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.fd = None
        elif self.fd is not None:
            fd, self.fd = self.fd, None
            if not self.wait:
                os.close(fd)

    def cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def free_slot(self):
        """Give back the per-source slot admission took, once."""
        release, self.release_slot = self.release_slot, None
        if release is not None:
            release()

    def close_err_fd(self):
        if self.err_fd is not None:
            os.close(self.err_fd)
            self.err_fd = None

    def release(self):
        """Free everything it holds; calling it again does nothing."""
        self.cancel_timer()
        self.close_fd()
        self.close_err_fd()
        self.free_slot()


class ConnectionTable:
    """Every live Connection, by id and by pid, and how many are in each state."""

    def __init__(self, clock, first_id=1):
        self.clock = clock
        self.next_id = first_id
        self.live = {}            # id -> Connection
        self.by_pid = {}          # pid -> Connection in state running or exiting
        self.counts = dict.fromkeys(STATES, 0)

    def open(self, record, listener, fd, peer, wait=False):
        conn = Connection(self.next_id, record, listener, fd, peer, self.clock(), wait)
        self.next_id += 1
        self.live[conn.id] = conn
        self.counts[conn.state] += 1
        return conn

    def move(self, conn, state):
        if conn.id in self.live:
            self.counts[conn.state] -= 1
            self.counts[state] += 1
        conn.state = state

    def running(self, conn, pid):
        conn.pid = pid
        self.by_pid[pid] = conn
        self.move(conn, RUNNING)

    def close(self, conn):
        """Release what conn holds and forget it; a second call does nothing."""
        conn.release()
        if self.live.pop(conn.id, None) is not None:
            self.counts[conn.state] -= 1
        if conn.pid is not None and self.by_pid.get(conn.pid) is conn:
            del self.by_pid[conn.pid]

    def handlers(self):
        """Connections whose handler runs (running or exiting)."""
        return list(self.by_pid.values())

