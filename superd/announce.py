"""Telling the world superd serves: the ready file and systemd's notify socket.

The ready file is written atomically (a temporary file renamed over it) with
the addresses actually bound, so a reader never sees half of one.
"""

import json
import os

from superd import systemd
from superd.sysutil import unlink_quietly


def write_ready_file(path, records, control=None):
    """{"pid": N, "services": {name: [address, ...]}, "control": PATH} at path
    (control only when there is a control socket); OSError if it cannot."""
    if not path:
        return
    ready = {"pid": os.getpid(),
             "services": {r.name: [l.text for l in r.listeners] for r in records}}
    if control:
        ready["control"] = control
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(ready, f)
        os.replace(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise


def notify_ready(records):
    systemd.notify("READY=1\nSTATUS=" + status_line(records))


def status_line(records):
    """What `systemctl status` shows: services, handlers running, refusals so far."""
    records = list(records)
    running = sum(r.running for r in records)
    refused = sum(sum(r.counters.refused.values()) for r in records)
    paused = [r.name for r in records if r.paused()]
    line = f"{len(records)} services, {running} running, {refused} refused"
    return line + (f"; paused: {', '.join(paused)}" if paused else "")
