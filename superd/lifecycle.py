"""Signals, status, reload and shutdown: the supervisor's lifecycle half.

`Lifecycle` is a mixin of `supervisor.Supervisor` and works on its state;
it is split out only to keep each file readable in one sitting.  The
supervisor's module docstring states the rules both halves keep.
"""

import os
import signal
import time
from functools import partial

from superd import config as configuration
from superd import listeners as sockets
from superd import reaping, spawn, systemd
from superd.sysutil import errname, killpg


class Lifecycle:
    # -- signals ---------------------------------------------------------------
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
            self._reap()
        if signal.SIGHUP in received and not self.stopping:
            self._reload()
        if signal.SIGUSR1 in received:
            self._status()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig in received:
                self._stop(sig)

    def _status(self):
        for state in self.states.values():
            reasons = sorted(state.holds)
            if any(l in self.paused for l in state.listeners):
                reasons.append("error")
            if any(l in self.backoff for l in state.listeners):
                reasons.append("backoff")
            self.log.info("status", service=state.name, paused=",".join(reasons) or "no",
                          **state.counters.fields(state.running))

    # -- reload ------------------------------------------------------------------
    def _reload(self):
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        self.log.info("reloading", config=self.config_path)
        try:
            config = configuration.load(self.config_path)
            recipes = {s.name: spawn.recipe(s) for s in config.enabled}
            wanted, unwanted = sockets.reconcile(self.listeners, config.enabled)
        except configuration.ConfigError as err:
            for problem in err.problems:
                self.log.error("config-error", problem=str(problem))
            self.log.error("reload-failed", config=self.config_path, errors=len(err.problems),
                           kept="the running configuration")
            systemd.notify("READY=1")
            return
        except (spawn.SpawnSetupError, OSError) as err:
            self.log.error("reload-failed", config=self.config_path,
                           address=getattr(err, "address", ""), error=errname(err),
                           kept="the running configuration")
            systemd.notify("READY=1")
            return
        for listener in unwanted:
            self._unwatch(listener)
            self.paused.discard(listener)
            self.backoff.discard(listener)
            pid = self.busy.get(listener)
            self.log.info("closed", service=listener.service, address=listener.text,
                          **({"handler": pid} if pid else {}))
            listener.close()
            if pid:
                self._end_wait_handler(pid, listener)
        for name, state in self.states.items():
            if name not in recipes:
                for listener in state.listeners:
                    self._unwatch(listener)
                state.listeners = []
                state.close_ready()
                self.log.info("removed", service=name, running=state.running)
        self.listeners = wanted
        self._install(config, recipes)
        self.warm.configure(config.enabled)
        for state in self.states.values():
            self._start_ready(state)     # a larger `instances` has room for them now
            self._sync(state)
        if self.load_timer is not None:
            self.load_timer.cancel()
        self._check_load()
        self._announce()             # before the log line: readers wait for that line
        self.log.info("reloaded", config=self.config_path, services=len(self.states))

    def _end_wait_handler(self, pid, listener):
        """A wait-mode handler owns its listener: closing superd's copy does not
        refuse its clients, so a reload that drops the listener ends it as a
        stop does, TERM now and KILL after the grace period."""
        killpg(pid, signal.SIGTERM)
        self.timers.at(time.monotonic() + self.grace, partial(self._kill_if_still, pid, listener))

    def _kill_if_still(self, pid, listener):
        child = self.children.get(pid)
        if child is not None and child.listener is listener:   # not a reused pid
            killpg(pid, signal.SIGKILL)

    # -- shutdown ------------------------------------------------------------------
    def _stop(self, sig):
        if self.stopping:
            self.log.warning("stop-now", signal=reaping.signal_name(sig), killing=len(self.children))
            self._kill_all()
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        for listener in list(self.listeners.values()):
            self._unwatch(listener)
            listener.close()
        self.listeners = {}
        self.proxies.close_all()
        self.warm.stop_all()
        for state in self.states.values():
            state.listeners = []
            state.close_ready()
        self.log.info("stopping", signal=reaping.signal_name(sig), running=len(self.children),
                      grace=self.grace)     # after closing: a reader may rely on that
        for child in self.children.values():
            if child.listener is not None:     # wait-mode handlers never end by themselves
                killpg(child.pid, signal.SIGTERM)
        if self.children:
            self.timers.at(time.monotonic() + self.grace, self._grace_over)

    def _grace_over(self):
        if self.children:
            self.log.warning("grace-over", killing=len(self.children))
            self._kill_all()
            self.timers.at(time.monotonic() + 1.0, self._forget_lost)

    def _forget_lost(self):
        """A handler whose exit report was lost with its fork server: stop waiting."""
        for pid in list(self.children):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self._finished(self.children.pop(pid), None, time.monotonic())
        if self.children:
            self.timers.at(time.monotonic() + 1.0, self._forget_lost)

    def _kill_all(self):
        for pid in self.children:
            killpg(pid, signal.SIGKILL)


