"""Taking connections in: accept, admission, the queue, and handing them to a start.

`Intake` turns a readable listener into Connection records and decides,
for each, in this order: wait for a PROXY header (pending.ProxyReader), refuse
(proxy_from, only_from, no_access, per_source, per_source_rate), queue (a
PROXY connection with no slot or a paused service: it was accepted already),
or dispatch to starts.Starter.  A refusal closes the connection at once,
counts it by reason and logs it with its id.  In wait mode the listener
itself is handed on, as one activation.
"""

import errno

from superd import limits, spawn
from superd.records import PROXY_WAIT, QUEUED
from superd.sysutil import client_text, local_address

PER_CONNECTION_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINVAL,
                         errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                         errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH)


class Intake:
    def __init__(self, services, table, proxies, starter, log, clock, thresholds):
        self.services = services
        self.table = table
        self.proxies = proxies
        self.starter = starter
        self.log = log
        self.clock = clock
        self.batch = thresholds.accept_batch

    def accept(self, listener):
        """A watched listener is readable: take its connections (wait mode: itself)."""
        record = self.services.get(listener.service)
        if record is None or not listener.watched:
            return
        if record.service.mode == "wait":
            self._accept_listener(record, listener)
        else:
            self._accept_connections(record, listener)

    def _accept_connections(self, record, listener):
        for _ in range(self.batch):
            if record.full() or not listener.watched:
                break                         # full, or a start just paused it
            try:
                taken = _take(listener)
            except OSError as err:
                self.services.block_after_error(listener, "accept", err)
                break
            if taken is None:
                break
            record.counters.accepted += 1
            self.admit(self.table.open(record, listener, *taken))
        if record.full():
            self.services.sync(record)

    def _accept_listener(self, record, listener):
        """Wait mode: hand the listener itself to a handler."""
        record.counters.accepted += 1
        listener.sock.setblocking(True)      # the handler gets it in blocking mode
        self.services.block(listener, "busy")
        conn = self.table.open(record, listener, listener.fd, None, wait=True)
        listener.owner = conn
        conn.env = {**record.env, "SUPERD_CONN": str(conn.id)}
        self.starter.start(conn)
        self.services.sync(record)

    def admit(self, conn, proxied=False):
        """The checks before a start: PROXY header, access lists, per-source limits."""
        record, peer = conn.record, conn.peer
        inet = isinstance(peer, tuple)
        if conn.proxy_protocol != "none" and not proxied:
            balancers = record.guard.balancers
            if inet and balancers and balancers.refusal(limits.client_ip(peer[0])):
                return self.refuse(conn, "proxy_from")
            self.table.move(conn, PROXY_WAIT)
            return self.proxies.add(conn)
        if inet and record.guard.checks_clients:
            reason, conn.release_slot = record.guard.admit(limits.client_ip(peer[0]), self.clock())
            if reason:
                return self.refuse(conn, reason)
        if not record.may_start():         # only after a PROXY header
            self.table.move(conn, QUEUED)
            record.queue.append(conn)
            return
        self.start(conn)

    def start(self, conn):
        """Make its environment and start its handler."""
        try:
            self._describe(conn)
        except OSError as err:
            self.table.close(conn)
            self.starter.spawn_failed(conn, err)
            return
        conn.started = self.clock()
        self.starter.start(conn)

    def _describe(self, conn):
        """The handler's environment and the client's name, from the socket or the header."""
        peer = conn.peer
        if not isinstance(peer, tuple):
            conn.env = spawn.unix_peer_env(conn.fd)
            conn.client = "unix:pid=" + conn.env["UNIXREMOTEPID"]
        else:
            local = conn.local or conn.listener.local or local_address(conn.fd)
            conn.env = spawn.connection_env(peer, local)
            conn.client = client_text(conn.env["REMOTE_ADDR"], peer[1])
        conn.env.update(conn.record.env)
        conn.env["SUPERD_CONN"] = str(conn.id)

    def drain(self, record, listener):
        """Before a listener closes at a stop: take every connection queued on
        it and start it (Linux resets what a closed listener still queues; with
        reuse_port, the other instances never see those)."""
        count = 0
        while True:
            try:
                taken = _take(listener)
            except OSError:
                break
            if taken is None:
                break
            count += 1
            record.counters.accepted += 1
            self.admit(self.table.open(record, listener, *taken))
        while record.queue:                 # the stop grants them a slot: they were queued
            self.start(record.queue.popleft())
        if count:
            self.log.info("drained", service=record.name, address=listener.text,
                          connections=count)

    def start_queued(self, record):
        """Start connections that waited for a free slot, or for a pause
        (rate, load, looping) to end: they were accepted already."""
        while record.queue and record.may_start():
            self.start(record.queue.popleft())

    def refuse(self, conn, reason, **fields):
        self.table.close(conn)
        conn.record.counters.refuse(reason.split(":")[0])
        self.log.info("refused", service=conn.record.name, client=conn.client, conn=conn.id,
                      reason=reason, **fields)

    def close_queued(self, record):
        """Close the connections a service queued unstarted (it is removed, or stopping)."""
        while record.queue:
            self.table.close(record.queue.popleft())

    # -- the PROXY reader's answers --------------------------------------------
    def proxy_header(self, conn, header):
        if not self.services.current(conn.record) or self.services.stopping:
            return self.refuse(conn, "service_gone")
        if header.local:                 # HAProxy's check: connecting was the test
            return self.health_check(conn)
        if header.source is not None:    # LOCAL, UNKNOWN, UNSPEC, UNIX: the connection's own
            conn.peer, conn.local = header.source, header.destination
            conn.client = client_text(*header.source)
        self.admit(conn, proxied=True)

    def health_check(self, conn):
        """A PROXY v2 LOCAL connection: counted, closed, no handler, a debug line only."""
        conn.record.counters.health_checks += 1
        self.log.debug("health-check", service=conn.record.name, client=conn.client,
                       conn=conn.id)
        self.table.close(conn)

    def proxy_refused(self, conn, reason, detail):
        self.refuse(conn, reason, detail=detail)


def _take(listener):
    """One connection off the listener: (fd, peer), or None when none is queued.

    A connection that failed on its way in is skipped; OSError is the
    listener's own trouble (EMFILE and the like).  _accept() gives (fd,
    address) without building a socket object; the fd is close-on-exec and
    blocking (accept4)."""
    while True:
        try:
            return listener.sock._accept()
        except BlockingIOError:
            return None
        except InterruptedError:
            continue
        except OSError as err:
            if err.errno not in PER_CONNECTION_ERRORS:
                raise
