"""Starting handlers: exec'd at once, or sent to a spawn server and answered later.

`Starter` takes a Connection that intake.Intake dispatched (or a wait-mode
activation) and starts its handler.  A service without a ready spawn server
(preload.WarmPool) posix_spawns its handler here and now.  A service with
one sends the start there and goes on: the server's answer arrives in the
loop, later, as `spawned` (a pid: the connection runs) or `unanswered` (no
pid will come: exec it after all), so the loop never waits for another
process.

A sent start holds its place in the service's `running` from the send, so
`instances`, `per_source` and `rate` count it exactly as a running handler,
and the connection record keeps superd's copy of the connection until the
answer.  Once a handler runs, children.Children owns its end.
"""

import errno

from superd.records import STARTING
from superd.sysutil import errname

SHORT_OF = (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)   # the machine, not the service


class Starter:
    def __init__(self, services, table, children, warm, spawner, stderr, log, clock):
        self.services = services
        self.table = table
        self.children = children
        self.warm = warm
        self.spawner = spawner
        self.stderr = stderr
        self.log = log
        self.clock = clock

    def start(self, conn):
        """Start one handler: through the service's spawn server when one is ready, else exec."""
        record = conn.record
        self.table.move(conn, STARTING)
        if record.warm:
            sent, conn.err_fd = self.warm.send(record.name, record.recipe, conn.fd, conn.env,
                                               conn.wait, conn)
            if sent:
                self.services.started(record, conn.started)
                return
        if self._spawn(conn):
            self.services.started(record, conn.started)

    def _spawn(self, conn):
        """posix_spawn the handler now; True once it runs, False after a (logged) failure."""
        try:
            pid, err_fd = self.spawner.start(conn.record.recipe, conn.fd, conn.env, conn.wait)
        except OSError as err:
            self._failed(conn, err)
            return False
        finally:
            conn.close_fd()               # the handler has its own copy now
        self._track(conn, pid, err_fd, preload=False)
        return True

    def spawned(self, conn, pid):
        """A spawn server started it (preload.WarmPool on_started): now it runs.

        False, and exec'd instead, when pid is a handler superd tracks
        already: the server lies (it runs code superd does not trust).
        """
        if pid in self.table.by_pid:
            self.unanswered(conn)
            return False
        conn.close_fd()
        err_fd, conn.err_fd = conn.err_fd, None
        self._track(conn, pid, err_fd, preload=True)
        if conn.wait:
            if self.services.stopping:
                self.children.terminate(conn)    # as a stop did to the handlers it knew
            elif conn.listener.sock.fileno() == -1:
                self.children.end(conn)   # a reload closed it meanwhile
        return True

    def unanswered(self, conn):
        """A spawn server will never start it (preload.WarmPool on_unanswered): exec it."""
        conn.close_err_fd()               # the exec gets a pipe of its own
        record = conn.record
        if conn.wait and conn.listener.sock.fileno() == -1:
            self._lost_listener(conn)     # closed by a reload or a stop meanwhile
        elif self._spawn(conn):
            return                        # it keeps the place (and `rate` counted it once)
        record.vacate()
        self.services.freed(record)

    def _track(self, conn, pid, err_fd, preload):
        """A handler runs: its connection is in the table by pid until it is reaped."""
        record = conn.record
        record.counters.started += 1
        record.counters.spawn.observe(max(0.0, self.clock() - conn.accepted))
        self.table.running(conn, pid)
        self.children.watch(conn)
        if err_fd is not None:
            self.stderr.add(err_fd, record.name, pid, conn.id)
        self.log.debug("start", service=record.name, client=conn.client, conn=conn.id, pid=pid,
                       preload=int(preload))

    def _lost_listener(self, conn):
        conn.listener.owner = None
        self.services.unblock(conn.listener, "busy")
        self.table.close(conn)

    def _failed(self, conn, err):
        listener = conn.listener
        self.table.close(conn)
        if conn.wait:
            listener.sock.setblocking(False)
            listener.owner = None
            self.services.unblock(listener, "busy")
        self.spawn_failed(conn, err)
        if conn.wait:
            self.services.block_after_error(listener, "spawn", err)   # still readable: must not retry at once

    def spawn_failed(self, conn, err):
        record = conn.record
        record.counters.failed += 1
        self.log.error("spawn-failed", service=record.name, client=conn.client, conn=conn.id,
                       program=record.recipe.argv[0], error=errname(err))
        if err.errno in SHORT_OF:
            self.services.block_after_error(conn.listener, "spawn", err)
        else:
            self.services.failed(record, self.clock())
