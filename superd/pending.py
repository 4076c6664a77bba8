"""Connections waiting for their PROXY header, read without blocking the loop.

A connection to a `proxy_protocol` service is watched in the loop's
selector until its header has arrived.  Each readiness event peeks at what
is queued (MSG_PEEK) and hands proxy.parse what was read before plus what
is peeked.  While the header is incomplete, every byte seen is header, so
those bytes are read off the socket (kept in `got`): the selector is
level-triggered, and bytes left queued would wake the loop again at once,
for as long as a slow client takes.  Once the header is whole, exactly its
remaining bytes are read and the connection goes on to the usual checks
with the client the header names.  The payload behind the header, even in
the same segment, stays in the socket for the handler.

Rule 1: a pending connection ends in exactly one of three ways: its header
arrives (on_header), it fails or times out (on_refused), or it is evicted
because too many connections of its service are waiting (on_refused): the
oldest goes first, so a flood of silent connections cannot starve clients
that speak promptly.
Rule 2: every pending fd has one owner, this module, until it hands it on.
"""

import selectors
import socket
import time
from collections import OrderedDict
from functools import partial

from superd import proxy

MIN_PENDING = 64          # per service; at least `instances`


class Pending:
    __slots__ = ("sock", "state", "listener", "peer", "timer", "got", "protocol", "timeout")

    def __init__(self, sock, state, listener, peer):
        self.sock = sock
        self.state = state
        self.listener = listener
        self.peer = peer
        self.timer = None
        self.got = b""                   # the start of the header, already read
        # the settings it was accepted under: a reload meanwhile does not change them
        self.protocol = state.service.proxy_protocol
        self.timeout = state.service.proxy_timeout


class ProxyReader:
    def __init__(self, selector, timers, on_header, on_refused):
        self.selector = selector
        self.timers = timers
        self.on_header = on_header       # (state, listener, fd, peer, Header)
        self.on_refused = on_refused     # (state, peer, reason, detail)
        self.waiting = {}                # service name -> OrderedDict(fd -> Pending)

    def add(self, state, listener, fd, peer):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        entry = Pending(sock, state, listener, peer)
        queue = self.waiting.setdefault(state.name, OrderedDict())
        if len(queue) >= max(MIN_PENDING, state.service.instances):
            _, oldest = queue.popitem(last=False)
            self._drop(oldest, "proxy_evicted", "too many connections waiting for a header")
        queue[fd] = entry
        entry.timer = self.timers.at(time.monotonic() + entry.timeout,
                                     partial(self._expired, entry))
        self.selector.register(fd, selectors.EVENT_READ, partial(self._readable, entry))
        self._readable(entry)            # on loopback the header is often there already

    def _readable(self, entry):
        fd = entry.sock.fileno()
        if fd < 0 or fd not in self.waiting.get(entry.state.name, ()):
            return
        try:
            data = entry.sock.recv(proxy.MAX_HEADER - len(entry.got), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            return self._finish(entry, "proxy_error", err.strerror or str(err))
        if not data:
            return self._finish(entry, "proxy_closed", "closed before a complete header")
        seen = entry.got + data
        try:
            header = proxy.parse(seen, entry.protocol)
        except proxy.ProxyError as err:
            return self._finish(entry, "proxy_malformed", str(err))
        if header is None:
            if len(seen) >= proxy.MAX_HEADER:
                return self._finish(entry, "proxy_malformed", "header too long")
            try:
                _consume(entry.sock, len(data))     # all header: see the module doc
            except OSError as err:
                return self._finish(entry, "proxy_error", err.strerror or str(err))
            entry.got = seen
            return
        try:
            _consume(entry.sock, header.length - len(entry.got))
        except OSError as err:
            return self._finish(entry, "proxy_error", err.strerror or str(err))
        self._forget(entry)
        entry.sock.setblocking(True)     # handlers get a blocking socket
        self.on_header(entry.state, entry.listener, entry.sock.detach(), entry.peer, header)

    def _expired(self, entry):
        if entry.sock.fileno() >= 0:
            self._finish(entry, "proxy_timeout",
                         f"no complete header within {entry.timeout:g} s")

    def _finish(self, entry, reason, detail):
        self._forget(entry)
        self._drop(entry, reason, detail)

    def _drop(self, entry, reason, detail):
        if entry.timer is not None:
            entry.timer.cancel()
        try:
            self.selector.unregister(entry.sock.fileno())
        except (KeyError, ValueError):
            pass
        entry.sock.close()
        self.on_refused(entry.state, entry.peer, reason, detail)

    def _forget(self, entry):
        entry.timer.cancel()
        fd = entry.sock.fileno()
        self.waiting.get(entry.state.name, {}).pop(fd, None)
        self.selector.unregister(fd)

    def close_all(self):
        """At a stop: every connection still waiting for its header is refused."""
        queues, self.waiting = self.waiting, {}
        for queue in queues.values():
            for entry in queue.values():
                self._drop(entry, "service_gone", "superd is stopping")


def _consume(sock, length):
    """Read exactly length bytes that MSG_PEEK showed are queued."""
    view = bytearray(length)
    got = 0
    while got < length:
        n = sock.recv_into(memoryview(view)[got:], length - got)
        if n == 0:
            raise OSError("connection closed inside the header")
        got += n
