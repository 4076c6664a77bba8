"""The runtime records the supervisor keeps: one per service, one per handler,
one per handler start that a spawn server has not answered yet.

Plain data with the few methods that only touch their own fields; the
supervisor is the one that changes them.
"""

import os
from collections import deque

from superd import limits, preload
from superd.status import Counters


class ServiceState:
    """A service as it runs: its config, recipe, listeners and counters."""

    def __init__(self, service, recipe):
        self.service = service
        self.recipe = recipe
        self.name = service.name
        self.listeners = []
        self.running = 0
        self.counters = Counters()
        self.fast_exits = 0
        self.guard = limits.Guard(service)
        self.holds = {}           # reason -> Timer (None: until a check lifts it)
        self.ready = deque()      # PROXY connections checked and waiting for a slot
        self.warm = preload.wants_server(service)   # started through a WarmInterpreter

    def close_ready(self):
        """Close the PROXY connections still waiting for a slot."""
        while self.ready:
            _, fd, _, _, release = self.ready.popleft()
            os.close(fd)
            if release:
                release()


class Child:
    """One running handler."""

    __slots__ = ("pid", "state", "client", "started", "timer", "listener", "timed_out",
                 "release", "timeout")

    def __init__(self, pid, state, client, started, listener=None, release=None):
        self.pid = pid
        self.state = state
        self.client = client
        self.started = started
        self.timer = None
        self.listener = listener      # wait mode: the listener it owns
        self.timed_out = False
        self.release = release        # frees its per-source slot when it ends
        self.timeout = 0.0            # its service's timeout when it started


class Start:
    """One handler start on its way: the connection and what its Child will need.

    A start sent to a spawn server stays one of these until the server answers
    with a pid (then it becomes a Child) or cannot answer (then it is exec'd).
    Until then it holds superd's own copy of the connection (`fd`; in wait mode
    the listener's, which the listener owns) and the read end of the handler's
    stderr pipe, and it holds a place in its service's `running`.
    """

    __slots__ = ("state", "fd", "env", "client", "started", "listener", "wait",
                 "release", "err_fd")

    def __init__(self, state, fd, env, client, started, listener, wait=False, release=None):
        self.state = state
        self.fd = fd                  # the connection (nowait, ours to close) or the listener's
        self.env = env                # the connection's part of the handler's environment
        self.client = client
        self.started = started        # when it was dispatched: its Child's start time
        self.listener = listener      # where it came from (paused on EAGAIN and the like)
        self.wait = wait              # wait mode: the handler will own `listener`
        self.release = release        # frees its per-source slot when it ends
        self.err_fd = None            # read end of its stderr pipe (stderr: log), sent starts only

    def child(self, pid):
        """The Child this start became."""
        return Child(pid, self.state, self.client, self.started,
                     self.listener if self.wait else None, self.release)
