"""The daemon's clock and its thresholds: what the loop measures time with,
and every number it decides by that is not in services.yaml.

`Thresholds` is one frozen record, built once at start and passed to each
part that decides by it, so a test can give the loop a fake clock and small
windows.  `SUPERD_THRESHOLDS` (a comma list of NAME=VALUE, read by the CLI)
overrides them for tests and for an operator who must tune one; superd(8)
names them.  Nothing here reads the clock itself.
"""

import dataclasses
import time

CLOCK = time.monotonic       # the loop's clock: seconds, never set back


@dataclasses.dataclass(frozen=True)
class Thresholds:
    accept_batch: int = 32           # connections taken per wake-up before looking at the rest
    pause_on_error: float = 1.0      # seconds a listener rests after EMFILE, ENFILE, EAGAIN, ...
    kill_after: float = 5.0          # most seconds between TERM and KILL for a handler past `timeout`
    fast_exit: float = 1.0           # a wait-mode handler living less than this may be looping
    free_fast_exits: int = 2         # fast exits tolerated before backing off
    backoff_max: float = 30.0        # longest wait-mode back-off, seconds
    load_interval: float = 1.0       # seconds between load-average checks (only with max_load)
    failures: int = 25               # loop protection: failed starts tolerated ...
    failures_within: float = 10.0    # ... within this many seconds; one more pauses the service
    looping_pause: float = 30.0      # seconds a looping service rests
    reply_timeout: float = 5.0       # seconds a spawn server may leave starts unanswered
    lost_check: float = 1.0          # seconds between looks for handlers lost with their server
    control_deadline: float = 5.0    # seconds a control client has, from connect to answer read


def from_text(text):
    """Thresholds with the NAME=VALUE,... overrides of text; ValueError names a bad one."""
    fields = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    changes = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        kind = fields.get(name.strip())
        if kind is None:
            raise ValueError(f"unknown threshold {name.strip()!r} (known: {', '.join(fields)})")
        try:
            number = (int if kind in (int, "int") else float)(value)
        except ValueError:
            raise ValueError(f"threshold {name.strip()}: {value!r} is not a number") from None
        if number < 0 or number != number:
            raise ValueError(f"threshold {name.strip()}: {value!r} must be 0 or more")
        changes[name.strip()] = number
    return Thresholds(**changes)
