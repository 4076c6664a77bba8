"""One line per event on stderr, as `event key=value ...` text or JSON.

The logger owns fd 2 for superd's own lines.  Values that a peer controls
(addresses, a handler's stderr) are escaped: a text value with spaces,
quotes, `=` or anything unprintable is written as a JSON string, so one event
is always one line and a line can always be split back into its fields.
Writing never raises: a log that cannot be written must not stop service.
With `buffered()`, lines wait in memory until `flush()`: the event loop
flushes once per wake-up, before it sleeps, so a burst of connections costs
one write(2) rather than one per line, and no line waits longer than that.
"""

import json
import os
import re
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_PLAIN = re.compile(r"[\x21\x23-\x3c\x3e-\x7e]+")   # printable, no space, quote or '='


class Logger:
    def __init__(self, fmt="text", level="info", fd=2):
        self.json = fmt == "json"
        self.threshold = LEVELS[level]
        self.fd = fd
        self.pending = None           # list of encoded lines while buffered

    def buffered(self):
        self.pending = []

    def flush(self):
        if self.pending:
            data, self.pending[:] = b"".join(self.pending), []
            self._write(data)

    def enabled(self, level):
        return LEVELS[level] >= self.threshold

    def debug(self, event, **fields):
        if self.threshold <= 10:
            self.emit("debug", event, fields)

    def info(self, event, **fields):
        self.emit("info", event, fields)

    def warning(self, event, **fields):
        self.emit("warning", event, fields)

    def error(self, event, **fields):
        self.emit("error", event, fields)

    def emit(self, level, event, fields):
        if LEVELS[level] < self.threshold:
            return
        if self.json:
            record = {"ts": round(time.time(), 6), "level": level, "event": event}
            record.update(fields)
            line = json.dumps(record, default=str, ensure_ascii=False)
        else:
            parts = [event]
            if level != "info":
                parts.append(f"level={level}")
            parts.extend(f"{k}={quote(v)}" for k, v in fields.items())
            line = " ".join(parts)
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self.pending is not None:
            self.pending.append(data)
        else:
            self._write(data)

    def _write(self, data):
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass


def quote(value):
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)
