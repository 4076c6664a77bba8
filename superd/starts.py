"""Starting handlers: exec'd at once, or sent to a spawn server and answered later.

`Starts` is a mixin of `supervisor.Supervisor`, like lifecycle.Lifecycle,
and works on its state; the supervisor's module docstring states the rules.
A connection (or, in wait mode, a listener) becomes a runstate.Start when it
is dispatched.  A service without a ready spawn server (preload.WarmPool)
posix_spawns its handler here and now.  A service with one sends the start
there and goes on: the server's answer arrives in the loop, later, as
`_spawned` (a pid: the start becomes a Child) or `_unanswered` (no pid will
come: exec it after all), so the loop never waits for another process.

A sent start holds its place in the service's `running` from the send, so
`instances`, `per_source` and `rate` count it exactly as a running handler,
and superd keeps its own copy of the connection until the answer.
"""

import errno
import os
import signal
import time
from functools import partial

from superd.sysutil import errname, killpg


class Starts:
    def _launch(self, start):
        """Start one handler: through the service's spawn server when one is ready, else exec."""
        state = start.state
        if state.warm:
            sent, start.err_fd = self.warm.send(state.name, state.recipe, start.fd, start.env,
                                                start.wait, start)
            if sent:
                self.starting.add(start)
                self._occupy(state, start.started)
                return
        if self._exec(start):
            self._occupy(state, start.started)

    def _exec(self, start):
        """posix_spawn the handler now; True once it runs, False after a (logged) failure."""
        state = start.state
        try:
            pid, err_fd = self.spawner.start(state.recipe, start.fd, start.env, start.wait)
        except OSError as err:
            self._start_failed(start, err)
            return False
        finally:
            if not start.wait:
                os.close(start.fd)
        self._track(start.child(pid), err_fd, preload=False)
        return True

    def _spawned(self, start, pid):
        """A spawn server started it (preload.WarmPool on_started): now it is a Child.

        False, and exec'd instead, when pid is a handler superd tracks
        already: the server lies (it runs code superd does not trust).
        """
        if pid in self.children:
            self._unanswered(start)
            return False
        self.starting.discard(start)
        if not start.wait:
            os.close(start.fd)            # the handler has its own copy now
        child = start.child(pid)
        self._track(child, start.err_fd, preload=True)
        if child.listener is not None:
            if self.stopping:
                killpg(pid, signal.SIGTERM)   # as _stop did to the wait-mode handlers it knew
            elif child.listener.sock.fileno() == -1:
                self._end_wait_handler(pid, child.listener)   # a reload closed it meanwhile
        return True

    def _unanswered(self, start):
        """A spawn server will never start it (preload.WarmPool on_unanswered): exec it."""
        self.starting.discard(start)
        state = start.state
        if start.err_fd is not None:      # the exec gets a pipe of its own
            os.close(start.err_fd)
            start.err_fd = None
        if start.wait and start.listener.sock.fileno() == -1:
            self.busy.pop(start.listener, None)   # closed by a reload or a stop meanwhile
        elif self._exec(start):
            return                        # it keeps the place (and `rate` counted it once)
        state.running -= 1
        if self.states.get(state.name) is state:
            self._start_ready(state)
            self._sync(state)

    def _occupy(self, state, now):
        """A start takes its place in `running` and counts toward `rate`."""
        state.running += 1
        rate = state.guard.rate
        if rate is not None and rate.started(now):
            self._hold(state, "rate", rate.pause, limit=rate.limit, per=rate.per)

    def _track(self, child, err_fd, preload):
        """Rule 2: a handler that runs is in `children` until it is reaped."""
        state = child.state
        state.counters.started += 1
        self.children[child.pid] = child
        if child.listener is not None:
            self.busy[child.listener] = child.pid
        if state.service.timeout:
            child.timeout = state.service.timeout
            child.timer = self.timers.at(child.started + child.timeout,
                                         partial(self._timeout, child))
        if err_fd is not None:
            self.stderr.add(err_fd, state.name, child.pid)
        self.log.debug("start", service=state.name, client=child.client, pid=child.pid,
                       preload=int(preload))

    def _start_failed(self, start, err):
        state, listener = start.state, start.listener
        if start.release:
            start.release()
        if start.wait:
            listener.sock.setblocking(False)
            self.busy.pop(listener, None)
        self._spawn_failed(state, [listener], start.client, err)
        if start.wait:
            self._pause([listener], "spawn", err)   # still readable: must not retry at once

    def _spawn_failed(self, state, listeners, client, err):
        state.counters.failed += 1
        self.log.error("spawn-failed", service=state.name, client=client,
                       program=state.recipe.argv[0], error=errname(err))
        if err.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            self._pause(listeners, "spawn", err)      # the machine is short, not the service
        else:
            self._note_failure(state, time.monotonic())
