"""superd's side of `preload: true`: one warm Python interpreter per service.

The same server, in spawn mode, starts the handlers of a service with
`user:`/`group:` (and no rlimits): it switches to that user once and then
only posix_spawns, so no connection pays for a setpriv exec.

A `WarmInterpreter` starts forkserver.py (with posix_spawn, like any
handler) and talks to it over a SOCK_SEQPACKET socketpair: each start
sends the connection's fd (and the stderr fd) with SCM_RIGHTS and gets the
new handler's pid back.  The handler is a child of the fork server, so the
fork server reports its exit status; superd is a child subreaper, so a
handler whose fork server died is re-parented to superd and reaped there.

Rule 1: `fork()` raises WarmUnavailable whenever the warm interpreter
cannot serve (not ready yet, gone, or its handler file changed); the caller
then starts the handler with exec as usual, and the connection is never lost.
Rule 2: the fork server is superd's child and is reaped by the supervisor,
which calls `gone()` and decides when to start a new one.
"""

import ctypes
import json
import os
import selectors
import signal
import socket
import sys
from pathlib import Path

from superd.handlers_path import internal_source

FORKSERVER = str(Path(__file__).with_name("forkserver.py"))
PR_SET_CHILD_SUBREAPER = 36
REPLY_TIMEOUT = 5.0


class WarmUnavailable(Exception):
    """The warm interpreter cannot start this handler; use exec."""


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


def handler_argv(service):
    """The handler's own argv (script first) without interpreter or trampolines."""
    argv = list(service.argv)
    if service.internal:                 # the source, not the interpreter, -S and bytecode
        return [internal_source(service.internal)] + argv[3:]
    return argv


class WarmInterpreter:
    def __init__(self, service):
        self.service = service
        self.control = None              # our end of the socketpair
        self.pid = 0
        self.ready = False
        self.exits = []                  # (pid, status) reported while we waited

    def start(self, spawner, workdir):
        """Spawn the fork server; returns its pid.  Raises OSError."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = {"argv": handler_argv(self.service), "workdir": workdir,
                    "rlimits": list(self.service.rlimits), "uid": self.service.uid,
                    "gid": self.service.gid, "groups": list(self.service.groups),
                    # internal handlers are written to be imported: their top level runs once
                    "split_main": bool(self.service.internal)}
        if not self.service.preload:
            from superd.spawn import recipe
            plain = recipe(self.service, credentials=False)
            settings["spawn"] = {"path": plain.path, "argv": list(plain.argv)}
        try:
            self.pid = spawner.start_program(
                sys.executable, (sys.executable, FORKSERVER, json.dumps(settings)),
                theirs.fileno(), workdir)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)          # the loop reads it; only fork() waits, with a timeout
        self.control = ours
        self.ready = False
        return self.pid

    def fork(self, sock_fd, env, err_fd, wait_mode, stderr_mode):
        """Start one handler on sock_fd; returns its pid."""
        if not self.ready or self.control is None:
            raise WarmUnavailable("not ready")
        fds = [sock_fd] + ([err_fd] if err_fd is not None else [])
        message = json.dumps({"env": list(env.items()), "wait": wait_mode,
                              "stderr": stderr_mode}).encode()
        try:
            self.control.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              _pack_fds(fds))])
            reply = self._wait_reply()
        except OSError as err:
            self.ready = False
            raise WarmUnavailable(f"control socket: {err}") from None
        if "pid" in reply:
            return reply["pid"]
        self.ready = False
        if reply.get("stale"):
            raise WarmUnavailable("handler file changed")
        raise WarmUnavailable(reply.get("error", "fork failed"))

    def _wait_reply(self):
        self.control.settimeout(REPLY_TIMEOUT)
        try:
            while True:
                data = self.control.recv(65536)
                if not data:
                    raise OSError("fork server closed the control socket")
                message = json.loads(data)
                if "exit" in message:
                    self.exits.append((message["exit"], message["status"]))
                    continue
                return message
        finally:
            self.control.setblocking(False)

    def messages(self):
        """Read what the fork server sent on its own; returns [(pid, status)] exits.

        Also notices {"ready": true}.  Returns None when the socket closed.
        """
        exits, self.exits = self.exits, []
        if self.control is None:          # already reaped and closed in this same wake-up
            return exits or None
        while True:
            try:
                data = self.control.recv(65536)
            except (BlockingIOError, InterruptedError):
                return exits
            except OSError:
                data = b""
            if not data:
                return exits if exits else None
            message = json.loads(data)
            if message.get("ready"):
                self.ready = True
            elif "exit" in message:
                exits.append((message["exit"], message["status"]))

    def stop(self):
        """Close the control socket: the fork server exits when it sees EOF."""
        self.ready = False
        if self.control is not None:
            self.control.close()
            self.control = None

    def gone(self):
        self.stop()
        self.pid = 0


def _pack_fds(fds):
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


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
    """Every service's warm interpreter: started, watched, restarted, stopped.

    The supervisor tells it the current services (`configure`), asks it for
    a ready interpreter per start (`ready_for`), hands it every reaped pid
    (`reaped` says whether it was a fork server) and calls `stop_all` on
    shutdown.  Handler exits the fork servers report go to on_exit(pid, status).
    """

    RESTART_MIN, RESTART_MAX = 0.5, 30.0

    def __init__(self, selector, timers, spawner, log, on_exit, clock):
        self.selector = selector
        self.timers = timers
        self.spawner = spawner
        self.log = log
        self.on_exit = on_exit
        self.clock = clock
        self.current = {}        # service name -> WarmInterpreter (the one to use)
        self.by_pid = {}         # fork server pid -> (name, WarmInterpreter)
        self.delay = {}          # service name -> next restart delay
        self.services = {}       # service name -> config.Service wanting preload
        self.stopping = False

    def configure(self, services):
        """A fresh warm interpreter for each preload service (start and every reload)."""
        old = self.current
        self.current = {}
        self.services = {s.name: s for s in services if wants_server(s)}
        for warm in old.values():
            self._retire(warm)
        for name in self.services:
            self._start(name)

    def ready_for(self, name):
        warm = self.current.get(name)
        return warm if warm is not None and warm.ready else None

    def trouble(self, name, why):
        """A start fell back to exec; make sure a new interpreter follows."""
        warm = self.current.get(name)
        self.log.warning("preload-unavailable", service=name, reason=str(why), fallback="exec")
        if warm is not None and warm.pid:
            _kill(warm.pid)

    def drain(self, warm):
        for pid, status in warm.exits:
            self.on_exit(pid, status)
        warm.exits = []

    def reaped(self, pid, status, outcome):
        """True if pid was a fork server (then restart it when still wanted)."""
        entry = self.by_pid.pop(pid, None)
        if entry is None:
            return False
        name, warm = entry
        self._unwatch(warm)
        warm.gone()
        if self.current.get(name) is warm:
            del self.current[name]
            delay = self.delay.get(name, self.RESTART_MIN)
            self.log.warning("preload-exited", service=name, pid=pid, **outcome,
                             restart_in=delay, meanwhile="exec")
            self.delay[name] = min(self.RESTART_MAX, delay * 2)
            if not self.stopping:
                self.timers.at(self.clock() + delay, lambda: self._restart(name))
        return True

    def stop_all(self):
        self.stopping = True
        for warm in list(self.current.values()):
            self._retire(warm)
        self.current = {}

    # -- inside ------------------------------------------------------------------
    def _start(self, name):
        service = self.services[name]
        warm = WarmInterpreter(service)
        try:
            pid = warm.start(self.spawner, service.workdir)
        except OSError as err:
            delay = self.delay.get(name, self.RESTART_MIN)
            self.delay[name] = min(self.RESTART_MAX, delay * 2)
            self.log.error("preload-failed", service=name, error=err.strerror or str(err),
                           meanwhile="exec", retry_in=delay)
            self.timers.at(self.clock() + delay, lambda: self._restart(name))
            return
        self.current[name] = warm
        self.by_pid[pid] = (name, warm)
        self.selector.register(warm.control, selectors.EVENT_READ,
                               lambda: self._readable(name, warm))
        self.log.info("preload-starting", service=name, pid=pid,
                      mode="fork" if service.preload else "spawn")

    def _restart(self, name):
        if name in self.services and name not in self.current and not self.stopping:
            self._start(name)

    def _readable(self, name, warm):
        was_ready = warm.ready
        exits = warm.messages()
        if exits is None:                 # EOF: it is exiting; the reaper does the rest
            self._unwatch(warm)
            return
        if warm.ready and not was_ready:
            self.delay.pop(name, None)
            self.log.info("preload-ready", service=name, pid=warm.pid)
        for pid, status in exits:
            self.on_exit(pid, status)

    def _retire(self, warm):
        """Ask it to finish: it exits at EOF; its handlers go on (we reap them)."""
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


def _kill(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
