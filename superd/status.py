"""Per-service counters, and the status line USR1 prints.

Counters only ever grow (running aside); the supervisor increments them and
nothing here has side effects.
"""

from dataclasses import dataclass, field


@dataclass
class Counters:
    accepted: int = 0        # connections taken off the listener (wait mode: activations)
    started: int = 0         # handlers spawned
    failed: int = 0          # spawns that failed (program gone, out of processes, ...)
    exited_nonzero: int = 0  # handlers that exited with a status other than 0
    killed: int = 0          # handlers that ended by a signal
    timeouts: int = 0        # handlers stopped for outliving `timeout`
    refused: dict = field(default_factory=dict)   # reason -> connections closed unserved

    def refuse(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def fields(self, running):
        out = {"running": running, "accepted": self.accepted, "started": self.started,
               "failed": self.failed, "exited_nonzero": self.exited_nonzero,
               "killed": self.killed, "timeouts": self.timeouts}
        out["refused"] = sum(self.refused.values())
        for reason, count in sorted(self.refused.items()):
            out[f"refused_{reason}"] = count
        return out
