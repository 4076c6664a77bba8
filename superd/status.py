"""Per-service counters and histograms, and the status line USR1 prints.

Counters only ever grow (running aside); the loop's parts increment them
and nothing here has side effects.  A kept service keeps its record, so its
counters are cumulative from the daemon's start across reloads.
"""

import bisect
from dataclasses import dataclass, field

# seconds; the upper bounds of superd_handler_duration_seconds and superd_spawn_seconds
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
OUTCOMES = ("ok", "failed", "signaled", "timeout")


class Histogram:
    """Observations counted in BUCKETS (each count is of its bucket alone)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)     # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds):
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self):
        """{"counts": one cumulative count per bound, "sum", "count"} (Prometheus' shape)."""
        total, counts = 0, []
        for n in self.counts[:-1]:
            total += n
            counts.append(total)
        return {"counts": counts, "sum": round(self.sum, 6), "count": self.count}


@dataclass
class Counters:
    accepted: int = 0        # connections taken off the listener (wait mode: activations)
    started: int = 0         # handlers spawned
    failed: int = 0          # spawns that failed (program gone, out of processes, ...)
    exited_nonzero: int = 0  # handlers that exited with a status other than 0
    killed: int = 0          # handlers that ended by a signal
    timeouts: int = 0        # handlers stopped for outliving `timeout`
    health_checks: int = 0   # PROXY LOCAL connections: a balancer's check, no handler
    refused: dict = field(default_factory=dict)   # reason -> connections closed unserved
    exits: dict = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    duration: Histogram = field(default_factory=Histogram)   # a handler's life
    spawn: Histogram = field(default_factory=Histogram)      # accept to handler started

    def refuse(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def exited(self, outcome, seconds):
        self.exits[outcome] += 1
        self.duration.observe(seconds)

    def fields(self, running):
        out = {"running": running, "accepted": self.accepted, "started": self.started,
               "failed": self.failed, "exited_nonzero": self.exited_nonzero,
               "killed": self.killed, "timeouts": self.timeouts}
        out["refused"] = sum(self.refused.values())
        for reason, count in sorted(self.refused.items()):
            out[f"refused_{reason}"] = count
        return out


def outcome(decoded, timed_out):
    """ok, failed, signaled or timeout, for reaping.decode's fields of one exit."""
    if timed_out:
        return "timeout"
    if "signal" in decoded:
        return "signaled"
    return "ok" if decoded.get("status") == 0 else "failed"
