"""The daemon's state as one JSON-ready document, read from the records.

What `superdctl status`, `superdctl list` and the `superd-status` handler
show comes from here, and only from the records: nothing is counted twice.
The document's shape is given in superd-status(8).  `History` keeps the
cumulative counters sampled at most every SAMPLE_EVERY seconds, as the loop
passes by (no timer wakes superd for it), for the page's rate charts.
"""

import os
import resource
import time
from collections import deque

from superd import __version__
from superd.status import OUTCOMES

SAMPLE_EVERY = 10.0       # seconds between history samples, at most
SAMPLES = 360             # an hour of them


class History:
    def __init__(self, clock):
        self.clock = clock
        self.samples = deque(maxlen=SAMPLES)
        self.next = 0.0

    def maybe_sample(self, now, records):
        if now < self.next:
            return
        self.next = now + SAMPLE_EVERY
        self.samples.append(_sample(time.time(), records))

    def document(self, records):
        """The samples, and one for now last."""
        return list(self.samples) + [_sample(time.time(), records)]


def _sample(wall, records):
    return {"t": round(wall, 3),
            "accepted": {r.name: r.counters.accepted for r in records},
            "refused": {r.name: sum(r.counters.refused.values()) for r in records}}


def service(record):
    c = record.counters
    paused = record.paused()
    return {
        "name": record.name,
        "addresses": [l.text for l in record.listeners],
        "mode": record.service.mode,
        "state": "paused" if paused else "serving",
        "paused": paused,
        "running": record.running,
        "instances": record.service.instances,
        "accepted": c.accepted,
        "refused": dict(c.refused),
        "exits": {k: c.exits[k] for k in OUTCOMES},
        "health_checks": c.health_checks,
        "duration": c.duration.cumulative(),
        "spawn": c.spawn.cumulative(),
    }


def connection(conn, now):
    return {"id": conn.id, "service": conn.record.name, "client": conn.client,
            "local": _local(conn), "pid": conn.pid, "state": conn.state,
            "age": round(max(0.0, now - conn.accepted), 3)}


def _local(conn):
    if conn.local:
        host, port = conn.local[0], conn.local[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return conn.listener.text if conn.listener is not None else ""


def connections(table, now, service_name=None):
    return [connection(c, now) for c in sorted(table.live.values(), key=lambda c: c.id)
            if service_name is None or c.record.name == service_name]


def daemon(started_wall, reloads, state="serving"):
    return {"pid": os.getpid(), "version": __version__, "state": state,
            "started": round(started_wall, 3),
            "now": round(time.time(), 3), "reloads": dict(reloads), "process": process()}


def process():
    """The standard process_* figures, from /proc through psutil."""
    import psutil          # here: the loop never needs it otherwise
    me = psutil.Process()
    with me.oneshot():
        cpu = me.cpu_times()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return {"resident_memory_bytes": me.memory_info().rss, "open_fds": me.num_fds(),
                "max_fds": soft, "cpu_seconds": round(cpu.user + cpu.system, 3),
                "start_time": round(me.create_time(), 3)}

