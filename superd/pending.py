"""Connections waiting for their PROXY header, read without blocking the loop.

A connection to a `proxy_protocol` service is watched in the loop's
selector until its header has arrived.  Each readiness event peeks at what
is queued (MSG_PEEK) and hands proxy.parse what was read before plus what
is peeked.  While the header is incomplete, every byte seen is header, so
those bytes are read off the socket (kept in `conn.got`): the selector is
level-triggered, and bytes left queued would wake the loop again at once,
for as long as a slow client takes.  Once the header is whole, exactly its
remaining bytes are read and the connection goes on to the usual checks
with the client the header names.  The payload behind the header, even in
the same segment, stays in the socket for the handler.

Rule 1: a waiting connection ends in exactly one of three ways: its header
arrives (on_header), it fails or times out (on_refused), or it is evicted
because too many connections of its service are waiting (on_refused): the
oldest goes first, so a flood of silent connections cannot starve clients
that speak promptly.  on_refused closes it (records.ConnectionTable.close).
Rule 2: the waiting connections are the service record's `proxy_wait`;
while one waits, its record holds a non-blocking socket object over its fd.
"""

import selectors
import socket
from functools import partial

from superd import proxy

MIN_PENDING = 64          # per service; at least `instances`


class ProxyReader:
    def __init__(self, selector, timers, clock, on_header, on_refused):
        self.selector = selector
        self.timers = timers
        self.clock = clock
        self.on_header = on_header       # (conn, proxy.Header)
        self.on_refused = on_refused     # (conn, reason, detail)

    def add(self, conn):
        conn.sock = socket.socket(fileno=conn.fd)
        conn.sock.setblocking(False)
        queue = conn.record.proxy_wait
        if len(queue) >= max(MIN_PENDING, conn.record.service.instances):
            _, oldest = queue.popitem(last=False)
            self._drop(oldest, "proxy_evicted", "too many connections waiting for a header")
        queue[conn.id] = conn
        conn.timer = self.timers.at(self.clock() + conn.proxy_timeout,
                                    partial(self._expired, conn))
        self.selector.register(conn.fd, selectors.EVENT_READ, partial(self._readable, conn))
        self._readable(conn)             # on loopback the header is often there already

    def _readable(self, conn):
        if conn.record.proxy_wait.get(conn.id) is not conn:
            return
        try:
            data = conn.sock.recv(proxy.MAX_HEADER - len(conn.got), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            return self._finish(conn, "proxy_error", err.strerror or str(err))
        if not data:
            return self._finish(conn, "proxy_closed", "closed before a complete header")
        seen = conn.got + data
        try:
            header = proxy.parse(seen, conn.proxy_protocol)
        except proxy.ProxyError as err:
            return self._finish(conn, "proxy_malformed", str(err))
        if header is None:
            if len(seen) >= proxy.MAX_HEADER:
                return self._finish(conn, "proxy_malformed", "header too long")
            try:
                _consume(conn.sock, len(data))     # all header: see the module doc
            except OSError as err:
                return self._finish(conn, "proxy_error", err.strerror or str(err))
            conn.got = seen
            return
        try:
            _consume(conn.sock, header.length - len(conn.got))
        except OSError as err:
            return self._finish(conn, "proxy_error", err.strerror or str(err))
        self._forget(conn)
        conn.sock.setblocking(True)      # handlers get a blocking socket
        conn.fd, conn.sock = conn.sock.detach(), None
        self.on_header(conn, header)

    def _expired(self, conn):
        if conn.record.proxy_wait.get(conn.id) is conn:
            self._finish(conn, "proxy_timeout", f"no complete header within {conn.proxy_timeout:g} s")

    def drop(self, conn, reason, detail):
        """Refuse a waiting connection now (superdctl kill)."""
        self._finish(conn, reason, detail)

    def _finish(self, conn, reason, detail):
        self._forget(conn)
        self.on_refused(conn, reason, detail)

    def _drop(self, conn, reason, detail):
        """conn is out of the queue already: stop watching it, then refuse it."""
        self._unwatch(conn)
        self.on_refused(conn, reason, detail)

    def _forget(self, conn):
        conn.record.proxy_wait.pop(conn.id, None)
        self._unwatch(conn)

    def _unwatch(self, conn):
        conn.cancel_timer()
        try:
            self.selector.unregister(conn.fd)
        except (KeyError, ValueError):
            pass

    def close_all(self, records):
        """At a stop: every connection still waiting for its header is refused."""
        for record in records:
            queue, record.proxy_wait = record.proxy_wait, type(record.proxy_wait)()
            for conn in queue.values():
                self._drop(conn, "service_gone", "superd is stopping")


def _consume(sock, length):
    """Read exactly length bytes that MSG_PEEK showed are queued."""
    view = bytearray(length)
    got = 0
    while got < length:
        n = sock.recv_into(memoryview(view)[got:], length - got)
        if n == 0:
            raise OSError("connection closed inside the header")
        got += n
