"""superd's side of `preload: true`: one warm Python interpreter per service.

The same server, in spawn mode, starts the handlers of a service with
`user:`/`group:` (and no rlimits): it switches to that user once and then
only posix_spawns, so no connection pays for a setpriv exec.  Such a
service gets SPAWN_SERVERS of them, each start going to the ready one with
the fewest starts unanswered: posix_spawn waits in the server until the
child has exec'd (CLONE_VFORK), so one server spawns one child at a time,
and two can spawn at once on two CPUs.  A preloaded service keeps one warm
interpreter (a big process; its forks do not wait for an exec).

A `WarmInterpreter` (superd/warmserver.py) starts forkserver.py (with
posix_spawn, like any handler) and talks to it over a SOCK_SEQPACKET
socketpair: each start sends the connection's fd (and the stderr fd) with
SCM_RIGHTS, and the server answers with the pid (or an error, or "stale")
later, in the format forkserver.py's docstring gives.  The loop never waits
for that answer: it goes on accepting, and reads answers when the socket is
readable, as it reads the server's exit reports.  The socket keeps messages
in order and the server answers requests in the order it got them, so each
answer belongs to the oldest start not yet answered.  The handler is a
child of the fork server, so the fork server reports its exit status; superd
is a child subreaper, so a handler whose fork server died is re-parented to
superd and reaped there.

Rule 1: a start the warm interpreter cannot serve (not ready, gone, its
socket full, its handler file changed, its fork failed, or it died before
answering) is started with exec by the caller, and the connection is never
lost: the caller keeps its own copy of the connection until the answer.
Rule 2: the fork server is superd's child and is reaped by the supervisor,
which calls `reaped()`; the pool decides when to start a new one.  Each of a
service's servers lives in a slot of its own, dies, backs off and restarts
on its own; the others go on serving meanwhile.
Rule 3: every start sent ends in exactly one of the pool's on_started and
on_unanswered: at its answer, or when its server's socket reaches end of
file, or when its server is reaped, whichever comes first.  A server that
leaves starts waiting REPLY_TIMEOUT s without answering any is killed, which
ends them too.
"""

import ctypes
import os
import selectors
import signal
import socket

from superd import reaping
from superd.warmserver import WarmBusy, WarmInterpreter, WarmUnavailable

PR_SET_CHILD_SUBREAPER = 36
REPLY_TIMEOUT = 5.0      # seconds a server may leave starts unanswered
SPAWN_SERVERS = 2        # per spawn-mode service: two posix_spawns at once (2 CPUs here)


def become_subreaper():
    """Orphaned handlers (of a dead fork server) are re-parented to superd."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def wants_server(service):
    """preload, or a user switch that a spawn server can do once (not with rlimits)."""
    switches = service.uid != -1 or service.gid != -1
    return service.preload or (switches and not service.rlimits)


def servers_for(service):
    """How many servers the service gets: one warm interpreter, or SPAWN_SERVERS."""
    return 1 if service.preload else SPAWN_SERVERS


def is_python_program(path):
    """A .py file, or a script whose #! line names a python interpreter."""
    if str(path).endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first



class WarmPool:
    """Every service's servers: started, watched, restarted, stopped.

    The supervisor tells it the current services (`configure`), hands it
    starts (`send`), hands it every reaped pid (`reaped` says whether it was
    a fork server) and calls `stop_all` on shutdown.  What the servers say
    comes back through three callbacks, in the loop: on_started(token, pid)
    when a start is answered with a pid, on_unanswered(token) when it never
    will be (exec it), on_exit(pid, status) for each handler exit they report.
    """

    RESTART_MIN, RESTART_MAX = 0.5, 30.0

    def __init__(self, selector, timers, spawner, log, clock, on_started, on_unanswered,
                 on_exit):
        self.selector = selector
        self.timers = timers
        self.spawner = spawner
        self.log = log
        self.clock = clock
        self.on_started = on_started
        self.on_unanswered = on_unanswered
        self.on_exit = on_exit
        self.current = {}        # service name -> [WarmInterpreter or None], one per slot
        self.by_pid = {}         # fork server pid -> (name, WarmInterpreter), until reaped
        self.delay = {}          # (service name, slot) -> next restart delay
        self.services = {}       # service name -> config.Service wanting servers
        self.stopping = False

    def configure(self, services):
        """Fresh servers for each service that wants them (start and every reload)."""
        old = self.current
        self.services = {s.name: s for s in services if wants_server(s)}
        self.current = {name: [None] * servers_for(s) for name, s in self.services.items()}
        for servers in old.values():
            for warm in servers:
                if warm is not None:
                    self._retire(warm)
        for name, servers in self.current.items():
            for slot in range(len(servers)):
                self._start(name, slot)

    def send(self, name, recipe, sock_fd, env, wait_mode, token):
        """Hand one start to the service's ready server with the fewest unanswered.

        Returns (True, stderr read fd or None) once sent; its answer comes
        later, for token (Rule 3).  Returns (False, None) when the caller must
        exec it now: no server ready, every socket full, or trouble (logged).
        """
        servers = self.current.get(name)
        while servers:
            warm = _least_pending(servers)
            if warm is None:
                return False, None
            try:
                err_fd = self.spawner.send(warm, recipe, sock_fd, env, wait_mode, token)
            except WarmBusy:
                if len(servers) == 1:
                    return False, None
                servers = [w for w in servers if w is not warm]   # try the others
                continue
            except WarmUnavailable as why:
                self._trouble(name, warm, why)        # no longer ready: not chosen again
                continue
            self._watch_answers(name, warm)
            return True, err_fd
        return False, None

    def reaped(self, pid, status):
        """True if pid was a fork server (then restart it when still wanted)."""
        entry = self.by_pid.pop(pid, None)
        if entry is None:
            return False
        name, warm = entry
        warm.pid = 0                      # reaped: its pid may be another process's now
        self._read(name, warm)            # what it said before it died: answers, exits
        self._unanswered(name, warm, "fork server exited")
        self._unwatch(warm)
        warm.gone()
        servers = self.current.get(name)
        if servers and warm in servers:   # still in use (not retired by a reload)
            servers[warm.slot] = None
            key = (name, warm.slot)
            delay = self.delay.get(key, self.RESTART_MIN)
            self.log.warning("preload-exited", service=name, pid=pid, **reaping.decode(status),
                             restart_in=delay, meanwhile=self._meanwhile(name))
            self.delay[key] = min(self.RESTART_MAX, delay * 2)
            if not self.stopping:
                self.timers.at(self.clock() + delay, lambda: self._restart(name, warm.slot))
        return True

    def catch_up(self):
        """Read every server that owes answers, before superd calls a reaped pid unknown.

        A handler whose server died is re-parented to superd and may be
        reaped by it before the message with its pid has been read; the
        server's socket reaches end of file before that, so all it said can
        be read now.
        """
        for name, warm in list(self.by_pid.values()):
            if warm.pending:
                self._read(name, warm)

    def stop_all(self):
        self.stopping = True
        for servers in self.current.values():
            for warm in servers:
                if warm is not None:
                    self._retire(warm)
        self.current = {}

    # -- inside ------------------------------------------------------------------
    def _start(self, name, slot):
        service = self.services[name]
        warm = WarmInterpreter(service, slot)
        try:
            pid = warm.start(self.spawner, service.workdir)
        except OSError as err:
            key = (name, slot)
            delay = self.delay.get(key, self.RESTART_MIN)
            self.delay[key] = min(self.RESTART_MAX, delay * 2)
            self.log.error("preload-failed", service=name, error=err.strerror or str(err),
                           meanwhile=self._meanwhile(name), retry_in=delay)
            self.timers.at(self.clock() + delay, lambda: self._restart(name, slot))
            return
        self.current[name][slot] = warm
        self.by_pid[pid] = (name, warm)
        self.selector.register(warm.control, selectors.EVENT_READ,
                               lambda: self._read(name, warm))
        self.log.info("preload-starting", service=name, pid=pid,
                      mode="fork" if service.preload else "spawn")

    def _meanwhile(self, name):
        """Who starts the service's handlers while one of its servers is missing."""
        ready = any(w is not None and w.ready for w in self.current.get(name, ()))
        return "other-server" if ready else "exec"

    def _restart(self, name, slot):
        servers = self.current.get(name)
        if servers and slot < len(servers) and servers[slot] is None and not self.stopping:
            self._start(name, slot)

    def _read(self, name, warm):
        """Act on everything the server sent, in order; at end of file, stop watching it."""
        for message in warm.messages():
            if "pids" in message:
                for pid in message["pids"]:
                    self._started(name, warm, pid)
            elif "exits" in message:
                for pid, status in message["exits"]:
                    self._exited(name, warm, pid, status)
            elif message.get("ready"):
                warm.ready = True
                self.delay.pop((name, warm.slot), None)
                self.log.info("preload-ready", service=name, pid=warm.pid)
            else:
                self._refused(name, warm, message)
        if warm.eof:                      # it is exiting; the reaper does the rest
            self._unwatch(warm)
            self._unanswered(name, warm, "fork server closed its socket")

    def _started(self, name, warm, pid):
        """The answer to the oldest start: the server answers each request in turn."""
        if not warm.pending:
            self._trouble(name, warm, "answer to no request")
            return
        warm.answered += 1
        warm.children.add(pid)
        self.on_started(warm.pending.popleft(), pid)

    def _exited(self, name, warm, pid, status):
        """An exit report, believed only for a pid this server answered with:
        a spawn server runs as its service's user, which superd does not trust."""
        if pid not in warm.children:
            self._trouble(name, warm, "exit of a process it did not start")
            return
        warm.children.discard(pid)
        self.on_exit(pid, status)

    def _refused(self, name, warm, message):
        """A refusal, for the oldest start: exec it."""
        if not warm.pending:
            self._trouble(name, warm, "answer to no request")
            return
        warm.answered += 1
        token = warm.pending.popleft()
        self._trouble(name, warm, "handler file changed" if message.get("stale")
                      else message.get("error", "fork failed"))
        self.on_unanswered(token)

    def _unanswered(self, name, warm, why):
        """The server will answer no more: exec every start it still owes."""
        if not warm.pending:
            return
        warm.ready = False
        self.log.warning("preload-unavailable", service=name, reason=why, fallback="exec",
                         starts=len(warm.pending))
        while warm.pending:
            self.on_unanswered(warm.pending.popleft())

    def _trouble(self, name, warm, why, sig=signal.SIGTERM):
        """A start must fall back to exec; end this server so that a new one follows."""
        warm.ready = False
        self.log.warning("preload-unavailable", service=name, reason=str(why), fallback="exec")
        if warm.pid:
            _kill(warm.pid, sig)

    def _watch_answers(self, name, warm):
        """While starts wait, the server must answer one at least every REPLY_TIMEOUT s."""
        if warm.watchdog is None and warm.pending:
            seen = warm.answered
            warm.watchdog = self.timers.at(self.clock() + REPLY_TIMEOUT,
                                           lambda: self._overdue(name, warm, seen))

    def _overdue(self, name, warm, seen):
        warm.watchdog = None
        if warm.pending and warm.answered == seen and warm.pid:
            # KILL, not TERM: a stopped server must end too, so that its starts are exec'd
            self._trouble(name, warm, f"no answer in {REPLY_TIMEOUT:g} s", signal.SIGKILL)
        self._watch_answers(name, warm)

    def _retire(self, warm):
        """Ask it to finish: it answers what it was sent, then exits at EOF; its
        handlers go on (we reap them)."""
        warm.ready = False
        if warm.control is not None:
            try:
                warm.control.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _unwatch(self, warm):
        if warm.control is not None:
            try:
                self.selector.unregister(warm.control)
            except (KeyError, ValueError):
                pass


def _least_pending(servers):
    """The ready server with the fewest starts unanswered (the first on a tie), or None."""
    best = None
    for warm in servers:
        if warm is not None and warm.ready and (best is None
                                                or len(warm.pending) < len(best.pending)):
            best = warm
    return best


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
