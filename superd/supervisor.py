"""The event loop: it sleeps in the kernel and routes each event to its owner.

One thread sleeps in `selector.select` until a listener, a connection
waiting for its PROXY header, a handler's stderr pipe, a spawn server's
control socket, the signal wake-up socket or the next timer needs it, and
never waits for anything else.  Signal handlers do nothing:
`signal.set_wakeup_fd` writes the signal number to a socketpair and all the
work happens here, in the loop.

The state lives in records (records.py), each with one owner:
services.Services owns the service records and decides which listeners are
watched; records.ConnectionTable owns every connection from accept to reap;
intake.Intake admits connections, starts.Starter starts their handlers,
children.Children ends and reaps them, preload.WarmPool runs the spawn
servers.  The Supervisor builds them, passes each its collaborators, and
keeps only the lifecycle: start-up, reload (HUP), status (USR1), stop.

Rule 1: every connection is in the table from accept until it is refused,
fails to start, or its handler is reaped; every pid that ends is reaped.
superd exits only when no handler runs and no start waits for an answer.
Rule 2: a reload changes nothing until the new file has loaded and every new
listener is bound; then it swaps records in one step.
"""

import dataclasses
import os
import selectors
import signal
import socket
import time

from superd import announce, control, preload, reaping, snapshot, spawn, systemd, tuning, upgrade
from superd import config as configuration
from superd import listeners as sockets
from superd.children import Children
from superd.commands import Commands
from superd.intake import Intake
from superd.pending import ProxyReader
from superd.records import ConnectionTable, ServiceRecord
from superd.services import Services
from superd.starts import Starter
from superd.stderrlog import HandlerStderr
from superd.sysutil import errname, ignore_in_handler, load_reader, unlink_quietly
from superd.timers import Timers

HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                   signal.SIGUSR2)


class ReadyFileError(OSError):
    """The ready file could not be written at start: superd does not serve then."""

    def __init__(self, path, err):
        super().__init__(err.errno, err.strerror)
        self.path = path
        self.name = errname(err)


class Supervisor:
    def __init__(self, config_path, log, ready_file=None, grace=10.0,
                 clock=tuning.CLOCK, thresholds=tuning.Thresholds()):
        self.config_path = os.path.abspath(config_path)
        self.log = log
        self.ready_file = os.path.abspath(ready_file) if ready_file else None
        self.clock = clock
        self.thresholds = thresholds
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.listeners = {}       # identity -> Listener, for every current listen entry
        self.table = ConnectionTable(clock)
        self.config = None        # the running config.Config
        self.started_wall = time.time()
        self.reloads = {"ok": 0, "failed": 0}
        self._build(log, grace, thresholds)

    def _build(self, log, grace, thresholds):
        """The owners of the state, each given what it works with."""
        selector, timers, clock, table = self.selector, self.timers, self.clock, self.table
        self.spawner = spawn.Spawner()
        self.stderr = HandlerStderr(selector, log)
        self.services = Services(selector, timers, clock, log, thresholds,
                                 on_readable=lambda l: self.intake.accept(l),
                                 on_room=lambda r: self.intake.start_queued(r),
                                 load_reader=load_reader())
        self.warm = preload.WarmPool(selector, timers, self.spawner, log, clock,
                                     on_started=lambda c, pid: self.starter.spawned(c, pid),
                                     on_unanswered=lambda c: self.starter.unanswered(c),
                                     on_exit=lambda pid, st: self.children.exited(pid, st),
                                     reply_timeout=thresholds.reply_timeout)
        self.children = Children(self.services, table, self.warm, timers, log, clock,
                                 thresholds, grace)
        self.starter = Starter(self.services, table, self.children, self.warm, self.spawner,
                               self.stderr, log, clock)
        self.proxies = ProxyReader(selector, timers, clock,
                                   on_header=lambda c, h: self.intake.proxy_header(c, h),
                                   on_refused=lambda c, r, d: self.intake.proxy_refused(c, r, d))
        self.intake = Intake(self.services, table, self.proxies, self.starter, log, clock,
                             thresholds)
        self.history = snapshot.History(clock)
        self.commands = Commands(self.services, table, self.children, self.intake, self.proxies,
                                 self.history, clock, log, reload=self.reload,
                                 config=lambda: self.config,
                                 daemon=lambda: snapshot.daemon(self.started_wall, self.reloads,
                                                                self._state()),
                                 upgrade=self.upgrade)
        self.control = control.ControlServer(selector, timers, clock, log, self.commands.answer,
                                            thresholds.control_deadline)
        self.handover = upgrade.Handover(selector, self.spawner, log, on_ready=self._handed_over,
                                         on_failed=self._upgrade_failed)
        self.children.on_listener_free = self.handover.freed
        self.children.claim = lambda pid, status: self.handover.reaped(pid, reaping.decode(status))
        self.upgrade_waiters = []     # superdctl upgrade clients waiting for the verdict
        self.predecessor = None       # (ready fd, freed fd) from the superd this one replaces
        self.held = set()             # addresses a predecessor's wait-mode handler still owns
        self.fds_stored = False       # the listeners are in systemd's fd store too

    # -- start-up ------------------------------------------------------------
    def start(self):
        """Load, bind (or adopt), install signals, announce readiness.

        Raises ConfigError, SpawnSetupError or OSError; nothing is left open then.
        """
        config = configuration.load(self.config_path)
        recipes = {s.name: spawn.recipe(s) for s in config.enabled}
        given = upgrade.inherited()
        adopted, unwanted = sockets.adopt(systemd.listen_fds() + given.passed, config.enabled)
        for sock in unwanted:
            self.log.warning("systemd-socket-unused", address=sockets.bound_text(sock))
            sock.close()
        self.listeners, _ = sockets.reconcile(adopted, config.enabled)
        self._inherit(given.busy, given.state, given.ready_fd, given.freed_fd)
        self._install(config, recipes)
        if given.state:
            self._carry_over(given.state)
        self._signals()
        preload.become_subreaper()
        self.warm.configure(config.enabled)
        for record in self.services:
            self.services.sync(record)
        self.log.info("started", pid=os.getpid(), config=self.config_path,
                      services=len(self.services.records))
        self.services.check_load()
        self._open_control(given.control)
        try:
            announce.write_ready_file(self.ready_file, self.services, self.control.path)
        except OSError as err:
            self._abandon_start()
            raise ReadyFileError(self.ready_file, err) from err
        if self.predecessor is not None:
            systemd.notify(f"MAINPID={os.getpid()}")
        announce.notify_ready(self.services)
        self._store_fds()             # after READY=1: a reader of the first message sees it
        if self.predecessor is not None:
            upgrade.say_ready(self.predecessor[0])
            self.control.own_path()       # the predecessor leaves it to us now

    def _inherit(self, busy, state, ready_fd, freed_fd):
        """An upgrade's successor: block the listeners the predecessor's wait-mode
        handlers still own, until it says they are free."""
        if ready_fd < 0:
            return
        self.predecessor = (ready_fd, freed_fd)
        for listener in self.listeners.values():
            fd = getattr(listener, "inherited_fd", None)
            if fd in busy:
                listener.adopted = False      # the socket's file is ours to remove now
                if listener.address.kind == "unix":
                    listener.unix_inode = sockets.inode(listener.address.path)
                if busy[fd]:
                    listener.blocked.add("predecessor")
                    self.held.add(listener.text)
        if freed_fd >= 0:
            os.set_blocking(freed_fd, False)
            self.selector.register(freed_fd, selectors.EVENT_READ, self._predecessor_freed)

    def _carry_over(self, state):
        """Connection ids and counters go on from where the predecessor left them."""
        try:
            self.table.next_id = max(self.table.next_id, int(state.get("next_id", 1)))
            self.started_wall = float(state.get("started", self.started_wall))
            self.reloads.update({k: int(v) for k, v in state.get("reloads", {}).items()
                                 if k in self.reloads})
        except (TypeError, ValueError, AttributeError):
            return
        for name, counters in (state.get("counters") or {}).items():
            record = self.services.get(name)
            if record is not None:
                record.counters = upgrade.counters_from(counters)

    def _predecessor_freed(self):
        """Lines of addresses its wait-mode handlers let go of; EOF: it has exited."""
        fd = self.predecessor[1]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        freed = set(data.decode(errors="replace").split()) & self.held if data else set(self.held)
        self.held -= freed
        for text in freed:
            self.handover.freed_text(text)      # handed over already: tell ours in turn
        for record in self.services:
            for listener in record.listeners:
                if "predecessor" in listener.blocked and listener.text in freed:
                    listener.blocked.discard("predecessor")
                    self.services.sync(record)
        if not data:
            self.selector.unregister(fd)
            os.close(fd)

    # -- upgrade in place (the predecessor's side) ---------------------------------
    def upgrade(self, respond=None):
        """USR2 and `superdctl upgrade`: start a successor; None, or a refusal."""
        if self.services.stopping or self.handover.done:
            why = "superd is stopping" if self.services.stopping else "this superd has handed over"
            return self._upgrade_refused(why, respond)
        if self.handover.pid is not None:
            return self._upgrade_refused("an upgrade is under way", respond)
        state = {"next_id": self.table.next_id, "started": self.started_wall,
                 "reloads": self.reloads,
                 "counters": {r.name: upgrade.counters_state(r.counters) for r in self.services}}
        control_socket = self.control.listening()
        try:
            self.handover.start(list(self.listeners.values()), state,
                                busy=lambda l: l.owner is not None or l.text in self.held,
                                control=control_socket)
        except upgrade.UpgradeRefused as err:
            return self._upgrade_refused(str(err), respond)
        if respond is not None:
            self.upgrade_waiters.append(respond)
        return None

    def _upgrade_refused(self, why, respond):
        self.log.warning("upgrade-refused", reason=why)
        answer = {"ok": False, "error": f"no upgrade: {why}"}
        return answer if respond is not None else None

    def _handed_over(self, pid):
        """The successor serves: stop accepting, serve what was accepted, then leave."""
        self.log.info("upgraded", successor=pid, running=len(self.table.by_pid),
                      waiting=len(self.table.live) - len(self.table.by_pid))
        self.services.accepting = False
        self.control.close_listener(hand_over=True)   # the successor serves the same socket
        for listener in self.listeners.values():
            self.services.unwatch(listener)
            listener.release()
        self.listeners = {}
        for record in self.services:
            record.listeners = []
        self.warm.stop_all()
        self._answer_upgrade({"ok": True, "successor": pid})

    def _upgrade_failed(self, why):
        self._answer_upgrade({"ok": False, "error": f"the new superd failed: {why}"})

    def _answer_upgrade(self, answer):
        waiters, self.upgrade_waiters = self.upgrade_waiters, []
        for respond in waiters:
            respond(answer)

    def _abandon_start(self):
        """Undo a start that cannot announce itself: no listener or server outlives it."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners = {}
        self.warm.stop_all()
        self.control.close()

    def _open_control(self, passed=None):
        """The control socket; superd serves without one if it cannot be had (logged).
        passed: (fd, path) of the predecessor's, served as it is when the path is ours."""
        path = self.config.control or control.default_path(os.environ, os.geteuid(),
                                                            self.ready_file)
        if passed is not None:
            if path == passed[1] and self.control.adopt(passed[0], path):
                self.log.info("control", path=path, adopted=1)
                return
            if path != passed[1]:
                os.close(passed[0])           # the predecessor removes its own path
        if path in (None, "none"):
            return
        try:
            self.control.open(path, self.config.control_gid)
        except OSError as err:
            self.log.error("control-unavailable", path=path, error=errname(err))
            return
        self.log.info("control", path=path)

    def _install(self, config, recipes):
        """The records of the new configuration (a kept service keeps its record)."""
        self.config = config
        records = {}
        for service in config.enabled:
            record = self.services.get(service.name)
            warm = preload.wants_server(service)
            if record is None:
                record = ServiceRecord(service, recipes[service.name], warm, self.thresholds)
            else:
                record.configure(service, recipes[service.name], warm, self.thresholds)
            if service.max_load is None and "load" in record.pauses:
                self.services.resume(record, "load")
            keys = dict.fromkeys(sockets.identity(service.name, a, service.protocol)
                                 for a in service.listen)
            record.listeners = [self.listeners[k] for k in keys]
            record.env = {"SUPERD_CONTROL": self._control_path()} \
                if service.internal == "status" else {}
            records[service.name] = record
            for listener in record.listeners:
                self.log.info("listening", service=service.name, address=listener.text,
                              adopted=int(listener.adopted))
        self.services.records = records

    def _state(self):
        """What the status document says this superd is doing, for a balancer's agent."""
        if self.handover.done:
            return "handed-over"          # its successor serves: ask again
        return "stopping" if self.services.stopping else "serving"

    def _control_path(self):
        """Where the status handler asks (the socket is opened after the records)."""
        if self.control.path:
            return self.control.path
        path = (self.config.control or
                control.default_path(os.environ, os.geteuid(), self.ready_file))
        return "" if path in (None, "none") else path

    def _signals(self):
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, ignore_in_handler)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wakeup)

    # -- the loop ------------------------------------------------------------
    def run(self):
        """Serve until a stop completes; returns the exit status (0)."""
        wait_for_events, timers, clock = self.selector.select, self.timers, self.clock
        table, flush_log = self.table, self.log.flush
        self.log.buffered()
        try:
            while not self._finished(table):
                flush_log()               # before sleeping: no line waits longer
                for key, _ in wait_for_events(timers.delay(clock())):
                    self._guarded(key.data)
                now = clock()
                self._guarded(timers.run_due, now)
                self.history.maybe_sample(now, self.services.records.values())
            self.control.close()
            self.log.info("stopped", pid=os.getpid())
        finally:
            flush_log()
        if self.ready_file and not self.handover.done:   # else the successor's now
            unlink_quietly(self.ready_file)
        return 0

    def _finished(self, table):
        """Stopped and every handler reaped; or handed over and every connection done."""
        if self.handover.done:            # and no predecessor's handler to wait for on its behalf,
            # and no control client it accepted before the hand-over left unanswered
            return not table.live and not self.held and not self.control.clients
        return self.services.stopping and not table.by_pid and not table.counts["starting"]

    def _guarded(self, callback, *args):
        """Run one event's work; a bug in it is logged, and everyone else is still served."""
        try:
            callback(*args)
        except Exception as err:          # a safety net, not flow control
            import traceback
            where = traceback.extract_tb(err.__traceback__)[-1]
            self.log.error("internal-error", error=f"{type(err).__name__}: {err}",
                           at=f"{os.path.basename(where.filename)}:{where.lineno}")

    def _on_wakeup(self):
        received = set()
        while True:
            try:
                data = self.wake_r.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            received.update(data)
        if signal.SIGCHLD in received:
            self.children.reap()
        if signal.SIGHUP in received and not self.services.stopping:
            self.reload()
        if signal.SIGUSR1 in received:
            self.status()
        if signal.SIGUSR2 in received:
            self.upgrade()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig in received:
                self.stop(sig)

    # -- lifecycle -------------------------------------------------------------
    def status(self):
        for record in self.services:
            self.log.info("status", service=record.name, paused=",".join(record.paused()) or "no",
                          **record.counters.fields(record.running))

    def reload(self):
        """HUP and `superdctl reload`: load, validate, bind, then swap; returns the verdict."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        self.log.info("reloading", config=self.config_path)
        try:
            config = configuration.load(self.config_path)
            recipes = {s.name: spawn.recipe(s) for s in config.enabled}
            wanted, unwanted = sockets.reconcile(self.listeners, config.enabled)
        except configuration.ConfigError as err:
            for problem in err.problems:
                self.log.error("config-error", problem=str(problem))
            return self._reload_failed([str(p) for p in err.problems], errors=len(err.problems))
        except (spawn.SpawnSetupError, OSError) as err:
            address = getattr(err, "address", "")
            why = f"{address}: {errname(err)}" if address else errname(err)
            return self._reload_failed([why], address=address, error=errname(err))
        verdict = self._changes(config)
        for listener in unwanted:
            self._close_listener(listener)
        removed = [r.name for r in self.services if r.name not in recipes]
        for record in self.services:
            if record.name not in recipes:
                self._remove(record)
        self.listeners = wanted
        self._install(config, recipes)
        self._store_fds(removed)
        self.warm.configure(config.enabled)
        for record in self.services:
            self.services.freed(record)   # a larger `instances` has room for the queued now
        self.services.restart_load_checks()
        self._announce()             # before the log line: readers wait for that line
        self.reloads["ok"] += 1
        self.log.info("reloaded", config=self.config_path, services=len(self.services.records))
        return verdict

    def _changes(self, new):
        """What a reload to `new` changes, by service name."""
        old = {s.name: s for s in self.config.enabled}
        fresh = {s.name: s for s in new.enabled}
        return {"ok": True,
                "added": sorted(set(fresh) - set(old)), "removed": sorted(set(old) - set(fresh)),
                "changed": sorted(n for n in set(old) & set(fresh)
                                  if _settings(old[n]) != _settings(fresh[n])),
                "unchanged": sorted(n for n in set(old) & set(fresh)
                                    if _settings(old[n]) == _settings(fresh[n]))}

    def _reload_failed(self, messages, **fields):
        self.reloads["failed"] += 1
        self.log.error("reload-failed", config=self.config_path, **fields,
                       kept="the running configuration")
        systemd.notify("READY=1")
        return {"ok": False, "error": "the running configuration is kept", "errors": messages}

    def _close_listener(self, listener):
        """A listen entry the new file dropped: new clients are refused from now on."""
        self.services.unwatch(listener)
        listener.blocked.clear()
        owner = listener.owner if listener.owner is not None and listener.owner.pid else None
        self.log.info("closed", service=listener.service, address=listener.text,
                      **({"handler": owner.pid} if owner else {}))
        listener.close()
        if owner:
            self.children.end(owner)

    def _remove(self, record):
        """A service the new file dropped: its running handlers finish."""
        for listener in record.listeners:
            self.services.unwatch(listener)
        record.listeners = []
        self.intake.close_queued(record)
        self.log.info("removed", service=record.name, running=record.running)

    def _store_fds(self, removed=()):
        """Under systemd with an fd store, every service's listeners in it (a
        restart gets them back), replacing what was stored under its name (a
        socket no entry wants must not go on queueing clients there); a
        removed service's are taken out."""
        # systemd (254 and later) says how many fds the store keeps, if any
        store = os.environ.get("FDSTORE", "")
        self.fds_stored = bool(os.environ.get("NOTIFY_SOCKET")) and store.isdigit() \
            and int(store) > 0
        if not self.fds_stored:
            return
        for name in removed:
            systemd.forget_fds(name)
        for record in self.services:
            systemd.forget_fds(record.name)
            systemd.store_fds(record.name, [l.fd for l in record.listeners])

    def _announce(self):
        """After a reload: the ready file anew (a failure is logged: the old
        file still names a live pid), then systemd."""
        try:
            announce.write_ready_file(self.ready_file, self.services, self.control.path)
        except OSError as err:
            self.log.error("ready-file-failed", path=self.ready_file, error=errname(err))
        announce.notify_ready(self.services)

    def stop(self, sig):
        if self.services.stopping:
            self.log.warning("stop-now", signal=reaping.signal_name(sig),
                             killing=len(self.table.by_pid))
            self.children.kill_all()
            return
        self.services.stopping = True
        systemd.notify("STOPPING=1")
        for record in self.services:      # what the kernel queued is served, not reset
            if record.service.mode == "nowait":
                for listener in record.listeners:
                    self.intake.drain(record, listener)
        for listener in list(self.listeners.values()):
            self.services.unwatch(listener)
            if self.fds_stored:
                listener.release()    # systemd keeps it for the next superd: so its file
            else:
                listener.close()
        self.listeners = {}
        self.proxies.close_all(self.services)
        self.warm.stop_all()
        for record in self.services:
            record.listeners = []
            self.intake.close_queued(record)
        self.log.info("stopping", signal=reaping.signal_name(sig),
                      running=len(self.table.by_pid), grace=self.children.grace)
        self.children.stop()          # after closing: a reader may rely on that line


def _settings(service):
    """A service's settings less where it stands in the file."""
    return dataclasses.replace(service, line=0)
