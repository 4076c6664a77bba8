"""The runtime records the supervisor keeps: one per service, one per handler.

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
