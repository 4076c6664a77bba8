"""Handlers' stderr as superd log lines (`stderr: log`).

Each handler with `stderr: log` writes into a pipe of its own; this module
owns the read ends: it watches them in the loop's selector, logs one
`stderr service=… pid=… conn=… text=…` line per line of output (long lines
cut at STDERR_LINE_MAX: one line, and the rest of it until its newline is
dropped), and closes each pipe at end of file, which may come after
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
        self.partial = {}         # fd -> (bytes not yet ending in a newline, cutting)

    def add(self, fd, service, pid, conn_id):
        self.partial[fd] = (b"", False)
        self.selector.register(fd, selectors.EVENT_READ,
                               partial(self._readable, fd, service, pid, conn_id))

    def _readable(self, fd, service, pid, conn_id):
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        rest, cutting = self.partial.get(fd, (b"", False))
        *lines, rest = (rest + data).split(b"\n")
        if not data:
            lines.append(rest)
            rest = b""
        for line in lines:
            if cutting:           # the tail of a line logged already, cut
                cutting = False
            elif line:
                self._line(service, pid, conn_id, line)
        if len(rest) > STDERR_LINE_MAX:
            if not cutting:
                self._line(service, pid, conn_id, rest)
            rest, cutting = b"", True
        if data:
            self.partial[fd] = (rest, cutting)
        else:
            self.selector.unregister(fd)
            os.close(fd)
            del self.partial[fd]

    def _line(self, service, pid, conn_id, line):
        self.log.info("stderr", service=service, pid=pid, conn=conn_id,
                      text=line[:STDERR_LINE_MAX].decode("utf-8", "replace"))
