"""The event loop: accept, dispatch, reap, signals, reload, shutdown.

The Supervisor (this module, with its lifecycle half in lifecycle.py:
signals, status, reload, shutdown, and its starts in starts.py) is the only
holder of mutable runtime state; runstate.py defines the records it keeps.
One thread sleeps in `selector.select` until a listener, a handler's stderr
pipe, a spawn server's control socket, the signal wake-up socket or the next
timer needs it, and never waits for anything else: a start handed to a spawn
server (preload.py) is answered in a later wake-up.  Signal handlers do nothing:
`signal.set_wakeup_fd` writes the signal number to a socketpair and all the
work happens here, in the loop.

Rule 1: a listener is registered in the selector exactly when its service
may start a handler on it: not stopping, below `instances`, not paused, and
(wait mode) no handler owns it.  `_sync` is the only place that decides.
At the limit the kernel backlog holds new clients; none is refused.
Rule 2: every handler is in `children` from its spawn until it is reaped;
every pid that ends is reaped, known or not (superd may be PID 1).  A start
sent to a spawn server is in `starting` until the server answers (then its
handler joins `children`) or cannot answer (then it is exec'd); meanwhile it
counts in its service's `running` like a handler, and superd keeps its copy
of the connection.  superd exits only when both are empty.
Rule 3: a reload changes nothing until the new file has loaded and every new
listener is bound; then it swaps states in one step.
"""

import errno
import json
import os
import selectors
import signal
import socket
import time
from functools import partial

from superd import config as configuration
from superd import limits
from superd import listeners as sockets
from superd import preload, reaping, spawn, systemd
from superd.lifecycle import Lifecycle
from superd.pending import ProxyReader
from superd.runstate import ServiceState, Start
from superd.starts import Starts
from superd.stderrlog import HandlerStderr
from superd.sysutil import (client_text, errname, ignore_in_handler, killpg, load_reader,
                            local_address, peer_text, readable, unlink_quietly)
from superd.timers import Timers

ACCEPT_BATCH = 32        # connections taken per wake-up before looking at the rest
PAUSE_ON_ERROR = 1.0     # seconds a listener rests after EMFILE, ENFILE, EAGAIN, ...
KILL_AFTER = 5.0         # most seconds between TERM and KILL for a handler past `timeout`
FAST_EXIT = 1.0          # a wait-mode handler living less than this may be looping
FREE_FAST_EXITS = 2      # fast exits tolerated before backing off
BACKOFF_MAX = 30.0
PER_CONNECTION_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINVAL,
                         errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                         errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH)
LOAD_INTERVAL = 1.0      # seconds between load-average checks (only with max_load)
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class ReadyFileError(OSError):
    """The ready file could not be written at start: superd does not serve then."""

    def __init__(self, path, err):
        super().__init__(err.errno, err.strerror)
        self.path = path
        self.name = errname(err)


class Supervisor(Lifecycle, Starts):
    def __init__(self, config_path, log, ready_file=None, grace=10.0):
        self.config_path = os.path.abspath(config_path)
        self.log = log
        self.ready_file = os.path.abspath(ready_file) if ready_file else None
        self.grace = grace
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.spawner = spawn.Spawner()
        self.states = {}          # name -> ServiceState (current config)
        self.listeners = {}       # identity -> Listener
        self.children = {}        # pid -> Child
        self.watched = set()      # listeners registered in the selector
        self.paused = set()       # listeners resting after an error
        self.busy = {}            # listener -> pid of the wait-mode handler owning it (None: starting)
        self.starting = set()     # Starts sent to a spawn server and not answered yet
        self.backoff = set()      # wait-mode listeners held back after fast exits
        self.stderr = HandlerStderr(self.selector, log)
        self.stopping = False
        self.proxies = ProxyReader(self.selector, self.timers, self._on_proxy_header,
                                   self._on_proxy_refused)
        self.load_timer = None
        self.load_reader = load_reader()
        self.warm = preload.WarmPool(self.selector, self.timers, self.spawner, self.log,
                                     time.monotonic, on_started=self._spawned,
                                     on_unanswered=self._unanswered, on_exit=self._finish_pid)

    # -- start-up ------------------------------------------------------------
    def start(self):
        """Load, bind (or adopt), install signals, announce readiness.

        Raises ConfigError, SpawnSetupError or OSError; nothing is left open then.
        """
        config = configuration.load(self.config_path)
        recipes = {s.name: spawn.recipe(s) for s in config.enabled}
        adopted, unwanted = sockets.adopt(systemd.listen_fds(), config.enabled)
        for sock in unwanted:
            self.log.warning("systemd-socket-unused", address=sockets.bound_text(sock))
            sock.close()
        self.listeners, _ = sockets.reconcile(adopted, config.enabled)
        self._install(config, recipes)
        self._signals()
        preload.become_subreaper()
        self.warm.configure(config.enabled)
        for state in self.states.values():
            self._sync(state)
        self.log.info("started", pid=os.getpid(), config=self.config_path,
                      services=len(self.states))
        self._check_load()
        try:
            self._write_ready_file()
        except OSError as err:
            self._abandon_start()
            raise ReadyFileError(self.ready_file, err) from err
        self._notify_ready()

    def _abandon_start(self):
        """Undo a start that cannot announce itself: no listener or server outlives it."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners = {}
        self.warm.stop_all()

    def _install(self, config, recipes):
        states = {}
        for service in config.enabled:
            state = self.states.get(service.name) or ServiceState(service, recipes[service.name])
            state.service, state.recipe = service, recipes[service.name]
            state.warm = preload.wants_server(service)
            state.guard = limits.Guard(service, previous=state.guard)
            if service.max_load is None and "load" in state.holds:
                self._lift(state, "load")
            keys = dict.fromkeys(sockets.identity(service.name, a, service.protocol)
                                 for a in service.listen)
            state.listeners = [self.listeners[k] for k in keys]
            states[service.name] = state
            for listener in state.listeners:
                self.log.info("listening", service=service.name, address=listener.text,
                              adopted=int(listener.adopted))
        self.states = states

    def _signals(self):
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, ignore_in_handler)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wakeup)

    def _announce(self):
        """After a reload: the ready file anew (a failure is logged: the old
        file still names a live pid), then systemd."""
        try:
            self._write_ready_file()
        except OSError as err:
            self.log.error("ready-file-failed", path=self.ready_file, error=errname(err))
        self._notify_ready()

    def _notify_ready(self):
        systemd.notify("READY=1\nSTATUS=serving " + ", ".join(self.states))

    def _write_ready_file(self):
        if self.ready_file:
            ready = {"pid": os.getpid(),
                     "services": {n: [l.text for l in s.listeners] for n, s in self.states.items()}}
            tmp = f"{self.ready_file}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump(ready, f)
                os.replace(tmp, self.ready_file)
            except OSError:
                unlink_quietly(tmp)
                raise

    # -- the loop ------------------------------------------------------------
    def run(self):
        """Serve until a stop completes; returns the exit status (0)."""
        wait_for_events, timers, clock = self.selector.select, self.timers, time.monotonic
        flush_log = self.log.flush
        self.log.buffered()
        try:
            while not (self.stopping and not self.children and not self.starting):
                flush_log()               # before sleeping: no line waits longer
                for key, _ in wait_for_events(timers.delay(clock())):
                    self._guarded(key.data)
                self._guarded(timers.run_due, clock())
            self.log.info("stopped", pid=os.getpid())
        finally:
            flush_log()
        if self.ready_file:
            unlink_quietly(self.ready_file)
        return 0

    def _guarded(self, callback, *args):
        """Run one event's work; a bug in it is logged, and everyone else is still served."""
        try:
            callback(*args)
        except Exception as err:          # a safety net, not flow control
            import traceback
            where = traceback.extract_tb(err.__traceback__)[-1]
            self.log.error("internal-error", error=f"{type(err).__name__}: {err}",
                           at=f"{os.path.basename(where.filename)}:{where.lineno}")

    def _sync(self, state):
        """Rule 1: watch each listener of state exactly when it may accept."""
        room = (not self.stopping and not state.holds
                and state.running < state.service.instances)
        for listener in state.listeners:
            want = (room and listener not in self.paused and listener not in self.busy
                    and listener not in self.backoff)
            if want and listener not in self.watched:
                self.selector.register(listener.fd, selectors.EVENT_READ,
                                       partial(self._on_listener, listener))
                self.watched.add(listener)
            elif not want and listener in self.watched:
                self._unwatch(listener)

    def _unwatch(self, listener):
        if listener in self.watched:
            self.selector.unregister(listener.fd)
            self.watched.discard(listener)

    # -- accepting and starting ------------------------------------------------
    def _on_listener(self, listener):
        state = self.states.get(listener.service)
        if state is None or listener not in self.watched:
            return
        if state.service.mode == "wait":
            self._activate(state, listener)
        else:
            self._accept(state, listener)

    def _accept(self, state, listener):
        limit = state.service.instances
        for _ in range(ACCEPT_BATCH):
            if state.running >= limit or listener not in self.watched:
                break                         # full, or a start just paused it
            try:
                # _accept() gives (fd, address) without building a socket
                # object; the fd is close-on-exec and blocking (accept4).
                fd, peer = listener.sock._accept()
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno in PER_CONNECTION_ERRORS:
                    continue
                self._pause([listener], "accept", err)
                break
            state.counters.accepted += 1
            self._admit(state, listener, fd, peer)
        if state.running >= limit:
            self._sync(state)

    def _admit(self, state, listener, fd, peer, local=None, proxied=False):
        """The checks before a start: PROXY header, access lists, per-source limits.

        peer is (ip, port, ...) for an IP client, a str/bytes for a unix one;
        local, when given, overrides the socket's own local address.
        """
        service = state.service
        inet = isinstance(peer, tuple)
        if service.proxy_protocol != "none" and not proxied:
            if inet and state.guard.balancers and \
                    state.guard.balancers.refusal(limits.client_ip(peer[0])):
                return self._refuse(state, fd, peer, "proxy_from")
            return self.proxies.add(state, listener, fd, peer)
        release = None
        if inet and state.guard.checks_clients:
            reason, release = state.guard.admit(limits.client_ip(peer[0]), time.monotonic())
            if reason:
                return self._refuse(state, fd, peer, reason)
        if state.running >= service.instances or state.holds:   # only after a PROXY header
            state.ready.append((listener, fd, peer, local, release))
            return
        self._dispatch(state, listener, fd, peer, local, release)

    def _dispatch(self, state, listener, fd, peer, local=None, release=None):
        try:
            env, client = self._connection(listener, fd, peer, local)
        except OSError as err:
            os.close(fd)
            if release:
                release()
            self._spawn_failed(state, [listener], "?", err)
            return
        self._launch(Start(state, fd, env, client, time.monotonic(), listener, release=release))

    def _connection(self, listener, fd, peer, local=None):
        if not isinstance(peer, tuple):
            env = spawn.unix_peer_env(fd)
            return env, "unix:pid=" + env["UNIXREMOTEPID"]
        local = local or listener.local or local_address(fd)
        env = spawn.connection_env(peer, local)
        return env, client_text(env["REMOTE_ADDR"], peer[1])

    def _refuse(self, state, fd, peer, reason):
        os.close(fd)
        state.counters.refuse(reason.split(":")[0])
        self.log.info("refused", service=state.name, client=peer_text(peer), reason=reason)

    def _on_proxy_header(self, state, listener, fd, peer, header):
        if self.states.get(state.name) is not state or self.stopping:
            return self._refuse(state, fd, peer, "service_gone")
        if header.source is None:        # LOCAL, UNKNOWN, UNSPEC, UNIX: the connection's own
            return self._admit(state, listener, fd, peer, proxied=True)
        self._admit(state, listener, fd, header.source, header.destination, proxied=True)

    def _on_proxy_refused(self, state, peer, reason, detail):
        state.counters.refuse(reason)
        self.log.info("refused", service=state.name, client=peer_text(peer), reason=reason,
                      detail=detail)

    def _start_ready(self, state):
        """Start PROXY connections that waited for a free slot, or for a pause
        (rate, load, looping) to end: they were accepted already."""
        while state.ready and not state.holds and state.running < state.service.instances:
            self._dispatch(state, *state.ready.popleft())

    # -- pausing whole services ------------------------------------------------
    def _hold(self, state, reason, seconds, **fields):
        """Stop accepting on a service for `seconds` (None: until lifted); logged once."""
        if reason in state.holds:
            return
        timer = None
        if seconds is not None:
            timer = self.timers.at(time.monotonic() + seconds, partial(self._lift, state, reason))
        state.holds[reason] = timer
        self.log.warning("service-paused", service=state.name, reason=reason,
                         **({"seconds": seconds} if seconds is not None else {}), **fields)
        self._sync(state)

    def _lift(self, state, reason):
        timer = state.holds.pop(reason, None)
        if timer is not None:
            timer.cancel()
        self.log.info("service-resumed", service=state.name, reason=reason)
        if self.states.get(state.name) is state:
            self._start_ready(state)
            self._sync(state)

    def _note_failure(self, state, now):
        """Loop protection: too many failed starts pause the service (one loud line)."""
        failures = state.guard.failures
        if failures.failed(now):
            self._hold(state, "looping", failures.pause, failures=failures.limit + 1,
                       within=failures.per)

    def _check_load(self):
        self.load_timer = None
        watched = [s for s in self.states.values() if s.service.max_load is not None]
        if not watched or self.stopping:
            return
        load = self.load_reader()
        for state in watched:
            over = limits.overloaded(load, state.service.max_load)
            if over and "load" not in state.holds:
                self._hold(state, "load", None, load=load, max_load=state.service.max_load)
            elif not over and "load" in state.holds:
                self._lift(state, "load")
        self.load_timer = self.timers.at(time.monotonic() + LOAD_INTERVAL, self._check_load)

    def _activate(self, state, listener):
        """Wait mode: hand the listener itself to a handler."""
        state.counters.accepted += 1
        listener.sock.setblocking(True)      # the handler gets it in blocking mode
        self.busy[listener] = None           # the handler being started owns it
        self._launch(Start(state, listener.fd, {}, listener.text, time.monotonic(), listener,
                           wait=True))
        self._sync(state)

    def _pause(self, listeners, what, err):
        """Rest these listeners briefly: the loop must never spin on an error."""
        for listener in listeners:
            if listener in self.paused:
                continue
            self.paused.add(listener)
            self._unwatch(listener)
            self.log.warning("paused", service=listener.service, address=listener.text,
                             during=what, error=errname(err), seconds=PAUSE_ON_ERROR)
            self.timers.at(time.monotonic() + PAUSE_ON_ERROR, partial(self._resume, listener))

    def _resume(self, listener):
        self.paused.discard(listener)
        state = self.states.get(listener.service)
        if state is not None and listener in state.listeners:
            self.log.info("resumed", service=listener.service, address=listener.text)
            self._sync(state)

    # -- handlers ending -----------------------------------------------------
    def _reap(self):
        now = time.monotonic()
        for pid, status in reaping.reap_all():
            if self.warm.reaped(pid, status):
                continue
            child = self.children.pop(pid, None)
            if child is None and self.starting:
                self.warm.catch_up(pid)   # an orphaned handler whose pid is not read yet?
                child = self.children.pop(pid, None)
            if child is None:
                self.log.info("reaped", pid=pid, **reaping.decode(status))
            else:
                self._finished(child, status, now)

    def _finish_pid(self, pid, status):
        """A handler's exit as a fork server reported it."""
        child = self.children.pop(pid, None)
        if child is not None:
            self._finished(child, status, time.monotonic())

    def _finished(self, child, status, now):
        state = child.state
        state.running -= 1
        if child.timer is not None:
            child.timer.cancel()
        if child.release is not None:
            child.release()
        outcome = reaping.decode(status)
        if "signal" in outcome:
            state.counters.killed += 1
        elif outcome["status"] != 0:
            state.counters.exited_nonzero += 1
        if outcome.get("status", 1) != 0 and not child.timed_out and now - child.started < FAST_EXIT:
            self._note_failure(state, now)
        extra = {"timeout": 1} if child.timed_out else {}
        self.log.info("exit", service=state.name, client=child.client, pid=child.pid,
                      **outcome, duration=round(now - child.started, 6), **extra)
        if child.listener is not None:
            self._wait_handler_done(state, child, now)
        if self.states.get(state.name) is state:
            self._start_ready(state)
            self._sync(state)

    def _wait_handler_done(self, state, child, now):
        listener = child.listener
        self.busy.pop(listener, None)
        if listener.sock.fileno() == -1:
            return                        # closed by a reload meanwhile
        listener.sock.setblocking(False)
        if now - child.started >= FAST_EXIT or not readable(listener.fd):
            state.fast_exits = 0
            return
        state.fast_exits += 1
        if state.fast_exits <= FREE_FAST_EXITS:
            return
        delay = min(BACKOFF_MAX, 0.5 * 2 ** (state.fast_exits - FREE_FAST_EXITS - 1))
        self.backoff.add(listener)
        self.log.warning("wait-backoff", service=state.name, address=listener.text,
                         fast_exits=state.fast_exits, seconds=delay)
        self.timers.at(now + delay, partial(self._end_backoff, listener))

    def _end_backoff(self, listener):
        self.backoff.discard(listener)
        state = self.states.get(listener.service)
        if state is not None:
            self._sync(state)

    def _timeout(self, child):
        if self.children.get(child.pid) is not child:
            return
        child.timed_out = True
        child.state.counters.timeouts += 1
        self.log.warning("timeout", service=child.state.name, client=child.client,
                         pid=child.pid, after=child.timeout)
        killpg(child.pid, signal.SIGTERM)
        # A short timeout gets a short wait for TERM too (at least 1 s).
        delay = min(KILL_AFTER, max(1.0, child.timeout))
        child.timer = self.timers.at(time.monotonic() + delay, partial(self._kill, child))

    def _kill(self, child):
        if self.children.get(child.pid) is child:
            killpg(child.pid, signal.SIGKILL)

