"""The service records, and which of their listeners the loop watches.

`Services` owns the current ServiceRecords (by name) and every decision
about watching: a listener is registered in the selector exactly when its
service is not stopping and `record.reasons(listener)` is empty (room below
`instances`, no pause of the service, no block on the listener).  `sync` is
the only place that registers or unregisters a listener.  At the limit the
kernel backlog holds new clients; none is refused.

Pauses of a whole service (`pause`/`resume`: rate, load, looping) and blocks
on one listener (`block`/`unblock`: busy, backoff, error) are logged once each
and may end by a timer.  When a pause ends or a handler leaves, `freed`
calls on_room (start what waited) and syncs.
"""

import selectors
from functools import partial

from superd import limits
from superd.sysutil import errname


class Services:
    def __init__(self, selector, timers, clock, log, thresholds, on_readable, on_room,
                 load_reader):
        self.selector = selector
        self.timers = timers
        self.clock = clock
        self.log = log
        self.thresholds = thresholds
        self.on_readable = on_readable    # (listener): it has a connection or a datagram
        self.on_room = on_room            # (record): start the connections it queued
        self.load_reader = load_reader
        self.records = {}                 # name -> ServiceRecord (the current configuration)
        self.stopping = False
        self.accepting = True             # False once an upgrade's successor serves
        self.load_timer = None

    def get(self, name):
        return self.records.get(name)

    def current(self, record):
        return self.records.get(record.name) is record

    def __iter__(self):
        return iter(list(self.records.values()))

    # -- the rule --------------------------------------------------------------
    def sync(self, record):
        """Watch each listener of record exactly when it may accept."""
        for listener in record.listeners:
            want = self.accepting and not self.stopping and not record.reasons(listener)
            if want and not listener.watched:
                self.selector.register(listener.fd, selectors.EVENT_READ,
                                       partial(self.on_readable, listener))
                listener.watched = True
            elif not want and listener.watched:
                self.unwatch(listener)

    def unwatch(self, listener):
        if listener.watched:
            self.selector.unregister(listener.fd)
            listener.watched = False

    def freed(self, record):
        """A slot came free or a pause ended: start what waited, then watch again."""
        if self.current(record):
            self.on_room(record)
            self.sync(record)

    # -- one listener ---------------------------------------------------------------
    def block(self, listener, reason):
        listener.blocked.add(reason)
        self.unwatch(listener)

    def unblock(self, listener, reason):
        """Lift one block; the caller syncs (a handler's exit does it once)."""
        listener.blocked.discard(reason)

    def block_after_error(self, listener, what, err):
        """Rest a listener briefly after an error: the loop must never spin on one."""
        if "error" in listener.blocked:
            return
        seconds = self.thresholds.pause_on_error
        self.block(listener, "error")
        self.log.warning("paused", service=listener.service, address=listener.text,
                         during=what, error=errname(err), seconds=seconds)
        self.timers.at(self.clock() + seconds, partial(self._rested, listener))

    def _rested(self, listener):
        listener.blocked.discard("error")
        record = self.records.get(listener.service)
        if record is not None and listener in record.listeners:
            self.log.info("resumed", service=listener.service, address=listener.text)
            self.sync(record)

    def block_after_fast_exit(self, record, listener, now):
        """Wait mode: a handler that ended at once, with clients still waiting.

        A few are tolerated; then the listener waits, doubling each time."""
        record.fast_exits += 1
        t = self.thresholds
        if record.fast_exits <= t.free_fast_exits:
            return
        delay = min(t.backoff_max, 0.5 * 2 ** (record.fast_exits - t.free_fast_exits - 1))
        self.block(listener, "backoff")
        self.log.warning("wait-backoff", service=record.name, address=listener.text,
                         fast_exits=record.fast_exits, seconds=delay)
        self.timers.at(now + delay, partial(self._backed_off, listener))

    def _backed_off(self, listener):
        listener.blocked.discard("backoff")
        record = self.records.get(listener.service)
        if record is not None:
            self.sync(record)

    # -- a whole service -------------------------------------------------------------
    def pause(self, record, reason, seconds, **fields):
        """Stop accepting on a service for `seconds` (None: until resumed); logged once."""
        if reason in record.pauses:
            return
        timer = None
        if seconds is not None:
            timer = self.timers.at(self.clock() + seconds, partial(self.resume, record, reason))
        record.pauses[reason] = timer
        self.log.warning("service-paused", service=record.name, reason=reason,
                         **({"seconds": seconds} if seconds is not None else {}), **fields)
        self.sync(record)

    def resume(self, record, reason):
        timer = record.pauses.pop(reason, None)
        if timer is not None:
            timer.cancel()
        self.log.info("service-resumed", service=record.name, reason=reason)
        self.freed(record)

    def started(self, record, now):
        """A start takes its place in `running` and counts toward `rate`."""
        record.occupy()
        rate = record.guard.rate
        if rate is not None and rate.started(now):
            self.pause(record, "rate", rate.pause, limit=rate.limit, per=rate.per)

    def failed(self, record, now):
        """Loop protection: too many failed starts pause the service (one loud line)."""
        failures = record.guard.failures
        if failures.failed(now):
            self.pause(record, "looping", failures.pause, failures=failures.limit + 1,
                      within=failures.per)

    def check_load(self):
        """max_load: pause the services over their limit, resume the others; again soon."""
        self.load_timer = None
        watched = [r for r in self.records.values() if r.service.max_load is not None]
        if not watched or self.stopping:
            return
        load = self.load_reader()
        for record in watched:
            over = limits.overloaded(load, record.service.max_load)
            if over and "load" not in record.pauses:
                self.pause(record, "load", None, load=load, max_load=record.service.max_load)
            elif not over and "load" in record.pauses:
                self.resume(record, "load")
        self.load_timer = self.timers.at(self.clock() + self.thresholds.load_interval,
                                         self.check_load)

    def restart_load_checks(self):
        if self.load_timer is not None:
            self.load_timer.cancel()
        self.check_load()
