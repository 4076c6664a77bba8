"""Running handlers: their timeouts, their ends, and every pid that ends.

`Children` watches each Connection whose handler runs (records.
ConnectionTable.by_pid): it arms the service's `timeout` (TERM, then KILL
after a short wait), sends TERM/KILL when a handler must end (a timeout, a
reload that drops a wait-mode listener, a stop and its grace period), and
turns every exit into the `exit` line, the counters, loop protection and
wait-mode back-off.  Every pid that ends is reaped, known or not (superd
may be PID 1).  A handler sent TERM is in state `exiting` until reaped.
"""

import os
import signal
from functools import partial

from superd import reaping
from superd.records import EXITING
from superd.status import outcome as status_outcome
from superd.sysutil import killpg, readable


class Children:
    def __init__(self, services, table, warm, timers, log, clock, thresholds, grace):
        self.services = services
        self.table = table
        self.warm = warm
        self.timers = timers
        self.log = log
        self.clock = clock
        self.thresholds = thresholds
        self.grace = grace
        self.on_listener_free = lambda listener: None   # a wait-mode handler let go of it
        self.claim = lambda pid, status: False          # a pid that is another part's child

    def watch(self, conn):
        """A handler runs: arm its service's timeout (or end it, if it was killed meanwhile)."""
        if conn.doomed:                   # killed while it started
            self.end(conn)
            return
        timeout = conn.record.service.timeout
        if timeout:
            conn.timeout = timeout
            conn.timer = self.timers.at(conn.started + timeout, partial(self._timed_out, conn))

    def __len__(self):
        return len(self.table.by_pid)

    # -- ending them -----------------------------------------------------------
    def terminate(self, conn, sig=signal.SIGTERM):
        killpg(conn.pid, sig)
        self.table.move(conn, EXITING)

    def _timed_out(self, conn):
        if not self._alive(conn):
            return
        conn.timed_out = True
        conn.record.counters.timeouts += 1
        self.log.warning("timeout", service=conn.record.name, client=conn.client, conn=conn.id,
                         pid=conn.pid, after=conn.timeout)
        self.terminate(conn)
        # A short timeout gets a short wait for TERM too (at least 1 s).
        delay = min(self.thresholds.kill_after, max(1.0, conn.timeout))
        conn.timer = self.timers.at(self.clock() + delay, partial(self._kill, conn))

    def _kill(self, conn):
        if self._alive(conn):
            killpg(conn.pid, signal.SIGKILL)

    def _alive(self, conn):
        return conn.pid is not None and self.table.by_pid.get(conn.pid) is conn

    def end(self, conn):
        """TERM its process group now and KILL it after the grace period, as a
        stop does: `superdctl kill`, and a reload that drops the listener a
        wait-mode handler owns (closing superd's copy does not refuse its
        clients)."""
        self.terminate(conn)
        self.timers.at(self.clock() + self.grace, partial(self._kill, conn))

    def end_when_started(self, conn):
        """`superdctl kill` of a connection whose handler is starting: the mark
        is its own, so a start that fails leaves nothing behind."""
        conn.doomed = True

    def stop(self):
        """A stop: TERM the wait-mode handlers (they never end by themselves),
        and KILL whatever runs after the grace period."""
        for conn in self.table.handlers():
            if conn.wait:
                self.terminate(conn)
        if self.table.by_pid:
            self.timers.at(self.clock() + self.grace, self._grace_over)

    def _grace_over(self):
        if self.table.by_pid:
            self.log.warning("grace-over", killing=len(self.table.by_pid))
            self.kill_all()
            self.timers.at(self.clock() + self.thresholds.lost_check, self._forget_lost)

    def _forget_lost(self):
        """A handler whose exit report was lost with its helper server: stop waiting."""
        for conn in self.table.handlers():
            try:
                os.kill(conn.pid, 0)
            except ProcessLookupError:
                self.finished(conn, None, self.clock())
        if self.table.by_pid:
            self.timers.at(self.clock() + self.thresholds.lost_check, self._forget_lost)

    def kill_all(self):
        for pid in list(self.table.by_pid):
            killpg(pid, signal.SIGKILL)

    # -- their exits -------------------------------------------------------------
    def reap(self):
        """SIGCHLD: reap every pid that ended (helper servers go to the pool)."""
        now = self.clock()
        for pid, status in reaping.reap_all():
            if self.warm.reaped(pid, status) or self.claim(pid, status):
                continue
            conn = self.table.by_pid.get(pid)
            if conn is None and self.table.counts["starting"]:
                self.warm.catch_up(pid)   # an orphaned handler whose pid is not read yet?
                conn = self.table.by_pid.get(pid)
            if conn is None:
                self.log.info("reaped", pid=pid, **reaping.decode(status))
            else:
                self.finished(conn, status, now)

    def exited(self, pid, status):
        """A handler's exit as a helper server reported it."""
        conn = self.table.by_pid.get(pid)
        if conn is not None:
            self.finished(conn, status, self.clock())

    def finished(self, conn, status, now):
        record = conn.record
        self.table.close(conn)            # its timer and per-source slot go with it
        record.vacate()
        outcome = reaping.decode(status)
        if "signal" in outcome:
            record.counters.killed += 1
        elif outcome["status"] != 0:
            record.counters.exited_nonzero += 1
        fast = now - conn.started < self.thresholds.fast_exit
        if outcome.get("status", 1) != 0 and not conn.timed_out and fast:
            self.services.failed(record, now)
        record.counters.exited(status_outcome(outcome, conn.timed_out), now - conn.started)
        extra = {"timeout": 1} if conn.timed_out else {}
        self.log.info("exit", service=record.name, client=conn.client, conn=conn.id,
                      pid=conn.pid, **outcome, duration=round(now - conn.started, 6), **extra)
        if conn.wait:
            self._listener_back(conn, fast)
        self.services.freed(record)

    def _listener_back(self, conn, fast):
        """A wait-mode handler ended: superd watches its listener again (or backs off)."""
        listener, record = conn.listener, conn.record
        listener.owner = None
        self.services.unblock(listener, "busy")
        self.on_listener_free(listener)
        if listener.sock.fileno() == -1:
            return                        # closed by a reload or an upgrade meanwhile
        listener.sock.setblocking(False)
        if not fast or not readable(listener.fd):
            record.fast_exits = 0
            return
        self.services.block_after_fast_exit(record, listener, self.clock())
