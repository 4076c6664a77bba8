"""One line per event on stderr (or syslog), as `event key=value ...` text or JSON.

A text line begins with its time, RFC 3339 to the microsecond: UTC
(`2026-12-06T23:10:00.123456Z`), local with its offset, or none (journald
and syslog stamp lines themselves).  A JSON line has `ts`, Unix seconds.

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


SYSLOG_SEVERITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}
SYSLOG_DAEMON = 3 << 3            # facility daemon
SYSLOG_MAX = 8192                 # bytes of one message; longer lines are cut
TIMES = ("utc", "local", "none")


class Logger:
    def __init__(self, fmt="text", level="info", fd=2, times="utc", syslog=None):
        self.json = fmt == "json"
        self.threshold = LEVELS[level]
        self.fd = fd
        self.times = "none" if syslog is not None else times
        self.syslog = syslog          # a connected datagram socket to /dev/log, or None
        self.pending = None           # list of encoded lines while buffered
        self._second = None           # the stamp's whole-second part, made once a second
        self._prefix = ""
        self._suffix = ""

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
            if self.times != "none":
                line = self.stamp(time.time()) + " " + line
        if self.syslog is not None:
            return self._send(level, line)
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self.pending is not None:
            self.pending.append(data)
        else:
            self._write(data)

    def stamp(self, now):
        """RFC 3339 for now: the second's part is formatted once per second."""
        second = int(now)
        if second != self._second:
            self._second = second
            if self.times == "local":
                t = time.localtime(second)
                offset = time.strftime("%z", t)
                self._suffix = f"{offset[:3]}:{offset[3:]}"
            else:
                t = time.gmtime(second)
                self._suffix = "Z"
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", t)
        return f"{self._prefix}.{int((now - second) * 1e6):06d}{self._suffix}"

    def _send(self, level, line):
        """One syslog datagram, `<PRI>superd[PID]: line`; dropped if the socket is full."""
        head = f"<{SYSLOG_DAEMON | SYSLOG_SEVERITY[level]}>superd[{os.getpid()}]: "
        data = (head + line).encode("utf-8", "backslashreplace")[:SYSLOG_MAX]
        try:
            self.syslog.send(data)
        except OSError:
            pass

    def _write(self, data):
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass


def syslog_socket(path="/dev/log"):
    """A non-blocking datagram socket connected to the local syslog (journald's
    too); OSError if there is none."""
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def default_times(environ, fd=2):
    """utc, or none when fd is journald's stream (JOURNAL_STREAM): it stamps lines."""
    stream = environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(fd)
        if stream == f"{st.st_dev}:{st.st_ino}":
            return "none"
    except OSError:
        pass
    return "utc"


def quote(value):
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)
