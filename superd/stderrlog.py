"""Handlers' stderr as superd log lines (`stderr: log`).

Each handler with `stderr: log` writes into a pipe of its own; this module
owns the read ends: it watches them in the loop's selector, logs one
`stderr service=… pid=… text=…` line per line of output (long lines cut at
STDERR_LINE_MAX), and closes each pipe at end of file, which may come after
the handler itself has exited (a grandchild can hold the pipe).
"""

import os
import selectors
from functools import partial

STDERR_LINE_MAX = 4096


class HandlerStderr:
    def __init__(self, selector, log):
        self.selector = selector
        self.log = log
        self.partial = {}         # fd -> bytes not yet ending in a newline

    def add(self, fd, service, pid):
        self.partial[fd] = b""
        self.selector.register(fd, selectors.EVENT_READ, partial(self._readable, fd, service, pid))

    def _readable(self, fd, service, pid):
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = self.partial.get(fd, b"") + data
        *lines, rest = buf.split(b"\n")
        if not data:
            lines.append(rest)
            rest = b""
        for line in lines:
            if line:
                self.log.info("stderr", service=service, pid=pid,
                              text=line[:STDERR_LINE_MAX].decode("utf-8", "replace"))
        if len(rest) > STDERR_LINE_MAX:
            self.log.info("stderr", service=service, pid=pid,
                          text=rest[:STDERR_LINE_MAX].decode("utf-8", "replace"))
            rest = b""
        if data:
            self.partial[fd] = rest
        else:
            self.selector.unregister(fd)
            os.close(fd)
            del self.partial[fd]
