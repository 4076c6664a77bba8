"""Who may be served, and how fast: access lists, per-source and rate limits.

The supervisor asks; this module decides.  Nothing here reads the clock,
the network or a file: every call gets `now` (monotonic seconds) and the
client address, so each rule is a small function of its own state and
time, and the tests drive them directly.

Rule 1: memory is bounded whatever the clients do.  Per-source tables hold
at most MAX_SOURCES addresses; the least recently seen is forgotten first,
and entries with nothing left to remember are dropped as they expire.
Rule 2: an IPv4-mapped IPv6 client (::ffff:a.b.c.d) is the IPv4 client
a.b.c.d for every rule.  IPv6 clients are grouped by a prefix (/64 by
default) for per-source limits, since one host commonly owns a whole /64.
"""

import ipaddress
from collections import OrderedDict, deque

MAX_SOURCES = 8192


def client_ip(text):
    """An ipaddress object for a peer's address text (mapped v6 made v4)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AccessList:
    """only_from and no_access: networks compiled once per config."""

    def __init__(self, only_from=(), no_access=()):
        self.only_from = tuple(only_from)
        self.no_access = tuple(no_access)

    def __bool__(self):
        return bool(self.only_from or self.no_access)

    def refusal(self, ip):
        """None if ip may connect, else the rule that refuses it."""
        if self.only_from and not any(ip in net for net in self.only_from
                                      if net.version == ip.version):
            return "only_from"
        for net in self.no_access:
            if net.version == ip.version and ip in net:
                return f"no_access:{net}"
        return None


def source_key(ip, v6_prefix):
    """The per-source bucket of a client: its IPv4 address, or its IPv6 prefix."""
    if ip.version == 4:
        return int(ip)
    return (6, int(ip) >> (128 - v6_prefix))


class Concurrency:
    """per_source: handlers alive at once for each source (counts drop to 0 and vanish)."""

    def __init__(self, limit):
        self.limit = limit
        self.alive = {}

    def admit(self, key):
        count = self.alive.get(key, 0)
        if count >= self.limit:
            return False
        self.alive[key] = count + 1
        return True

    def release(self, key):
        count = self.alive.get(key, 0) - 1
        if count > 0:
            self.alive[key] = count
        else:
            self.alive.pop(key, None)


class SourceRate:
    """per_source_rate: at most `limit` new connections per source in any `per` s."""

    def __init__(self, limit, per, max_sources=MAX_SOURCES):
        self.limit = limit
        self.per = per
        self.max_sources = max_sources
        self.seen = OrderedDict()        # key -> deque of start times, least recent first

    def admit(self, key, now):
        self._expire(now)
        times = self.seen.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
        while times and times[0] <= now - self.per:
            times.popleft()
        allowed = len(times) < self.limit
        if allowed:
            times.append(now)
        self.seen[key] = times           # most recently seen goes last
        while len(self.seen) > self.max_sources:
            self.seen.popitem(last=False)
        return allowed

    def _expire(self, now):
        """Forget sources whose every connection has left the window."""
        while self.seen:
            key, times = next(iter(self.seen.items()))
            if times and times[-1] > now - self.per:
                return
            del self.seen[key]


class ServiceRate:
    """rate: more than `limit` starts in `per` s pauses the service for `pause` s.

    The service pauses as its limit-th start in the window happens, so the
    next client waits in the backlog instead of being refused.
    """

    def __init__(self, limit, per, pause):
        self.limit = limit
        self.per = per
        self.pause = pause
        self.starts = deque(maxlen=limit)

    def started(self, now):
        """Record a start; True when the service must pause now."""
        self.starts.append(now)
        return len(self.starts) == self.limit and self.starts[0] > now - self.per


class FailureWindow:
    """Loop protection: more than `limit` failed starts in `per` s pauses a service."""

    def __init__(self, limit=25, per=10.0, pause=30.0):
        self.limit = limit
        self.per = per
        self.pause = pause
        self.failures = deque(maxlen=limit + 1)

    def failed(self, now):
        """Record a failure; True when the service must pause now."""
        self.failures.append(now)
        if len(self.failures) > self.limit and self.failures[0] > now - self.per:
            self.failures.clear()
            return True
        return False


def overloaded(load, max_load):
    """max_load: is the 1-minute load average above the limit?"""
    return max_load is not None and load > max_load


class Guard:
    """Every admission rule of one service, built from its config.Service.

    `admit(ip, now)` returns (refusal reason or None, release): call release()
    when the handler admitted ends (it frees the per-source slot).
    """

    def __init__(self, service, previous=None, thresholds=None):
        self.access = AccessList(service.only_from, service.no_access)
        self.balancers = AccessList(service.proxy_from)    # who may send a PROXY header
        self.v6_prefix = service.v6_prefix
        self.concurrency = Concurrency(service.per_source) if service.per_source else None
        psr = service.per_source_rate
        self.source_rate = SourceRate(psr["limit"], psr["per"]) if psr else None
        rate = service.rate
        self.rate = ServiceRate(rate["limit"], rate["per"], rate["pause"]) if rate else None
        if thresholds is None:
            self.failures = FailureWindow()
        else:
            self.failures = FailureWindow(thresholds.failures, thresholds.failures_within,
                                          thresholds.looping_pause)
        self.max_load = service.max_load
        # True when some rule needs the client's address: the hot path skips it otherwise
        self.checks_clients = bool(self.access or self.concurrency or self.source_rate)
        if previous is not None:
            self._inherit(previous)

    def _inherit(self, old):
        """A reload keeps what the running handlers and recent starts count for."""
        if self.concurrency and old.concurrency:
            self.concurrency.alive = old.concurrency.alive   # shared: old releases count
        if self.source_rate and old.source_rate and old.source_rate.limit == self.source_rate.limit:
            self.source_rate.seen = old.source_rate.seen
        if self.rate and old.rate and old.rate.limit == self.rate.limit:
            self.rate.starts = old.rate.starts
        self.failures = old.failures

    def admit(self, ip, now):
        reason = self.access.refusal(ip)
        if reason:
            return reason, None
        key = source_key(ip, self.v6_prefix)
        # per_source first: a refused attempt must not use up the rate's budget
        if self.concurrency is not None and not self.concurrency.admit(key):
            return "per_source", None
        if self.source_rate is not None and not self.source_rate.admit(key, now):
            if self.concurrency is not None:
                self.concurrency.release(key)
            return "per_source_rate", None
        if self.concurrency is not None:
            return None, lambda: self.concurrency.release(key)
        return None, None
