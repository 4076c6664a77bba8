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
child of the helper server, so the helper server reports its exit status; superd
is a child subreaper, so a handler whose helper server died is re-parented to
superd and reaped there.

Rule 1: a start the warm interpreter cannot serve (not ready, gone, its
socket full, its handler file changed, its fork failed, or it died before
starting it) is started with exec by the caller, and the connection is never
lost: the caller keeps its own copy of the connection until the answer.
Rule 2: the helper server is superd's child and is reaped by the supervisor,
which calls `reaped()`; the pool decides when to start a new one.  Each of a
service's servers lives in a slot of its own, dies, backs off and restarts
on its own; the others go on serving meanwhile.
Rule 3: every start sent ends in exactly one of the pool's on_started and
on_unanswered: at its answer, or once its server has been reaped and its
socket has reached end of file.  Then the server's ledger (forkserver.py's
docstring) names the handlers it started and never told us of: superd, the
subreaper, has inherited them and adopts them (on_started); the other
starts were never made (on_unanswered).  A server that leaves starts waiting
REPLY_TIMEOUT s without answering any is killed, which ends them too; a
dead server's socket that stays open as long after is not waited for.

Vocabulary (the same in preload.py, warmserver.py and forkserver.py): a
*helper server* is one forkserver.py process.  In warm mode it is a *warm
interpreter* (`preload: true`): it has the handler imported and forks each
handler from itself.  In spawn mode it is a *spawn server* (a service with
`user:`/`group:` and no rlimits, not preloaded): it runs as that user and
posix_spawns each handler.  forkserver.py is the program of both;
warmserver.WarmInterpreter is superd's end of one; preload.WarmPool decides
which services get which, and how many.
"""

import ctypes
import os
import selectors
import signal
import socket

from superd import reaping
from superd.sysutil import errname
from superd.warmserver import WarmBusy, WarmInterpreter, WarmUnavailable

PR_SET_CHILD_SUBREAPER = 36
REPLY_TIMEOUT = 5.0      # seconds a server may leave starts unanswered (tuning.Thresholds)
SPAWN_SERVERS = 2        # per spawn-mode service: two posix_spawns at once (2 CPUs here)


def become_subreaper():
    """Orphaned handlers (of a dead helper server) are re-parented to superd."""
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


class WarmPool:
    """Every service's servers: started, watched, restarted, stopped.

    The supervisor tells it the current services (`configure`), hands it
    starts (`send`), hands it every reaped pid (`reaped` says whether it was
    a helper server) and calls `stop_all` on shutdown.  What the servers say
    comes back through three callbacks, in the loop: on_started(token, pid)
    when a start is answered with a pid (False if superd refuses the pid, and
    then it execs the start itself), on_unanswered(token) when it never will
    be (exec it), on_exit(pid, status) for each handler exit they report.
    """

    RESTART_MIN, RESTART_MAX = 0.5, 30.0

    def __init__(self, selector, timers, spawner, log, clock, on_started, on_unanswered,
                 on_exit, reply_timeout=REPLY_TIMEOUT):
        self.selector = selector
        self.timers = timers
        self.spawner = spawner
        self.log = log
        self.clock = clock
        self.reply_timeout = reply_timeout
        self.on_started = on_started
        self.on_unanswered = on_unanswered
        self.on_exit = on_exit
        self.current = {}        # service name -> [WarmInterpreter or None], one per slot
        self.by_pid = {}         # helper server pid -> (name, WarmInterpreter), until reaped
        self.ending = {}         # WarmInterpreter reaped, owing starts until EOF -> service name
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
        """True if pid was a helper server (then restart it when still wanted)."""
        entry = self.by_pid.pop(pid, None)
        if entry is None:
            return False
        name, warm = entry
        warm.pid = 0                      # reaped: its pid may be another process's now
        self._read(name, warm)            # what it said before it died; settled at EOF
        if warm.control is not None:      # no EOF yet: a child may be still recording
            if warm.pending:
                self.ending[warm] = name
            else:
                self._settle(name, warm)
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

    def catch_up(self, pid):
        """Find the start of a reaped pid superd does not know, before it calls it
        unknown: a handler whose server died is re-parented to superd and may
        be reaped by it before its pid was read, or before its server was.

        Reads what every server owing starts said, then their ledgers.  A
        reaped server said all it will before it was (`reaped` read it), and
        one not reaped is not settled by reading it, so the pid is looked for
        among the starts still owed.
        """
        owing = [(name, warm) for name, warm in self.by_pid.values() if warm.pending]
        for name, warm in owing:
            self._read(name, warm)
        owing += [(name, warm) for warm, name in self.ending.items()]
        for name, warm in owing:
            for entry in warm.pending:
                if warm.recorded(entry[0]) == pid:
                    warm.pending.remove(entry)
                    self._adopted(name, entry[1], pid)
                    return

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
            self.log.error("preload-failed", service=name, error=errname(err),
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
            if not warm.pid:              # reaped already
                self._settle(name, warm)

    def _oldest(self, name, warm):
        """The token an answer is for: the oldest start's, since the server
        answers each request in turn; None (and the server ended) if none waits."""
        if not warm.pending:
            self._trouble(name, warm, "answer to no request")
            return None
        warm.answered += 1
        return warm.pending.popleft()[1]

    def _started(self, name, warm, pid):
        token = self._oldest(name, warm)
        if token is None:
            return
        if self.on_started(token, pid):
            warm.children.add(pid)
        else:
            self._trouble(name, warm, "pid of a process superd knows")

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
        token = self._oldest(name, warm)
        if token is None:
            return
        self._trouble(name, warm, "handler file changed" if message.get("stale")
                      else message.get("error", "fork failed"))
        self.on_unanswered(token)

    def _settle(self, name, warm, why="helper server exited"):
        """The server will answer no more (Rule 3): adopt each start its ledger
        names, exec the rest; then let go of it."""
        self.ending.pop(warm, None)
        unmade = []
        while warm.pending:
            number, token = warm.pending.popleft()
            pid = warm.recorded(number)
            if pid and self._orphan(pid):
                self._adopted(name, token, pid)
            else:
                unmade.append(token)
        if unmade:
            self.log.warning("preload-unavailable", service=name, reason=why, fallback="exec",
                             starts=len(unmade))
        self._unwatch(warm)
        warm.gone()
        for token in unmade:
            self.on_unanswered(token)

    def _orphan(self, pid):
        """True for a child of superd's that is no server: one its ledger may name."""
        if pid in self.by_pid:
            return False
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False                  # not ours: a ledger that lies
        return True

    def _adopted(self, name, token, pid):
        if self.on_started(token, pid):
            self.log.info("preload-adopted", service=name, pid=pid)

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
            warm.watchdog = self.timers.at(self.clock() + self.reply_timeout,
                                           lambda: self._overdue(name, warm, seen))

    def _overdue(self, name, warm, seen):
        warm.watchdog = None
        if warm.pending and warm.answered == seen:
            if warm.pid:
                # KILL, not TERM: a stopped server must end too, so that its starts are exec'd
                self._trouble(name, warm, f"no answer in {self.reply_timeout:g} s", signal.SIGKILL)
            elif warm in self.ending:     # dead, and a child of it still holds its socket
                self._settle(name, warm, f"no end of file in {self.reply_timeout:g} s")
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
