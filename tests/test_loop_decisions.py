"""The loop's decisions, in-process, with a fake clock and no real handlers.

Services (watching, pauses, blocks, back-off, loop protection), the
connection table (each resource released once), admission and the queue,
Children's timeouts and the Supervisor's reload bookkeeping are driven
directly: time moves only when a test moves it, so a 30 s pause is tested
in microseconds, and nothing here sleeps.
"""

import os
import selectors
import signal
import socket
import textwrap

import pytest

from superd import children as children_module
from superd import config, spawn, tuning
from superd import listeners as sockets
from superd.children import Children
from superd.intake import Intake
from superd.records import EXITING, QUEUED, RUNNING, STARTING, ConnectionTable, ServiceRecord
from superd.services import Services
from superd.supervisor import Supervisor
from superd.timers import Timers


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class Log:
    """A logger that keeps (level, event, fields)."""

    def __init__(self):
        self.lines = []

    def _add(self, level):
        return lambda event, **fields: self.lines.append((level, event, fields))

    def __getattr__(self, level):
        if level in ("debug", "info", "warning", "error"):
            return self._add(level)
        raise AttributeError(level)

    def events(self, name):
        return [fields for _, event, fields in self.lines if event == name]

    def flush(self):
        pass

    def buffered(self):
        pass


class Loop:
    """Services, a table and timers over a fake clock, for one loaded config."""

    def __init__(self, tmp_path, text, thresholds=tuning.Thresholds()):
        path = tmp_path / "services.yaml"
        path.write_text(textwrap.dedent(text))
        self.config = config.load(path)
        self.clock = FakeClock()
        self.timers = Timers()
        self.selector = selectors.DefaultSelector()
        self.log = Log()
        self.readable = []
        self.room = []
        self.thresholds = thresholds
        self.services = Services(self.selector, self.timers, self.clock, self.log, thresholds,
                                 on_readable=self.readable.append, on_room=self.room.append,
                                 load_reader=lambda: 0.0)
        self.listeners, _ = sockets.reconcile({}, self.config.enabled)
        records = {}
        for service in self.config.enabled:
            record = ServiceRecord(service, spawn.recipe(service), False, thresholds)
            record.listeners = [l for l in self.listeners.values() if l.service == service.name]
            records[service.name] = record
        self.services.records = records
        self.table = ConnectionTable(self.clock)

    def record(self, name):
        return self.services.get(name)

    def advance(self, seconds):
        self.clock.now += seconds
        self.timers.run_due(self.clock())

    def watched(self, name):
        return [l.watched for l in self.record(name).listeners]

    def close(self):
        for listener in self.listeners.values():
            self.services.unwatch(listener)
            listener.close()
        self.selector.close()


@pytest.fixture
def loop(tmp_path):
    made = []

    def make(text, **thresholds):
        made.append(Loop(tmp_path, text, tuning.Thresholds(**thresholds)))
        return made[-1]

    yield make
    for each in made:
        each.close()


ONE = """
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat, instances: 2}
"""


def test_a_listener_is_watched_exactly_when_it_has_room_and_no_reason(loop):
    l = loop(ONE)
    record = l.record("a")
    l.services.sync(record)
    assert l.watched("a") == [True]
    record.occupy()
    record.occupy()
    l.services.sync(record)
    assert l.watched("a") == [False]
    assert record.reasons(record.listeners[0]) == {"instances"}
    record.vacate()
    l.services.freed(record)
    assert l.watched("a") == [True] and l.room == [record], "what queued is started first"


def test_a_timed_hold_pauses_once_and_lifts_itself(loop):
    l = loop(ONE)
    record = l.record("a")
    l.services.sync(record)
    l.services.pause(record, "rate", 5.0, limit=3, per=1)
    l.services.pause(record, "rate", 5.0, limit=3, per=1)
    assert l.watched("a") == [False]
    assert len(l.log.events("service-paused")) == 1, "one line, not one per attempt"
    assert record.paused() == ["rate"]
    l.advance(4.9)
    assert l.watched("a") == [False]
    l.advance(0.2)
    assert l.watched("a") == [True] and record.paused() == []
    assert l.log.events("service-resumed") == [{"service": "a", "reason": "rate"}]


def test_loop_protection_pauses_after_the_limit_within_the_window(loop):
    l = loop(ONE, failures=5, failures_within=10.0, looping_pause=30.0)
    record = l.record("a")
    l.services.sync(record)
    for _ in range(5):
        l.services.failed(record, l.clock())
        l.advance(0.1)
    assert "looping" not in record.pauses, "the limit itself is tolerated"
    l.services.failed(record, l.clock())
    assert "looping" in record.pauses and l.watched("a") == [False]
    paused = l.log.events("service-paused")[0]
    assert (paused["failures"], paused["within"], paused["seconds"]) == (6, 10.0, 30.0)
    l.advance(29.9)
    assert "looping" in record.pauses
    l.advance(0.2)
    assert "looping" not in record.pauses and l.watched("a") == [True]


def test_failures_spread_wider_than_the_window_never_pause(loop):
    l = loop(ONE, failures=5, failures_within=10.0)
    record = l.record("a")
    for _ in range(50):
        l.services.failed(record, l.clock())
        l.advance(2.5)
    assert not record.pauses and not l.log.events("service-paused")


def test_an_error_rests_one_listener_for_the_configured_pause(loop):
    l = loop(ONE, pause_on_error=2.0)
    record = l.record("a")
    l.services.sync(record)
    listener = record.listeners[0]
    l.services.block_after_error(listener, "accept", OSError(24, "Too many open files"))
    l.services.block_after_error(listener, "accept", OSError(24, "Too many open files"))
    assert listener.blocked == {"error"} and not listener.watched
    assert [f["error"].split(":")[0] for f in l.log.events("paused")] == ["EMFILE"]
    l.advance(1.9)
    assert not listener.watched
    l.advance(0.2)
    assert listener.watched and l.log.events("resumed")


def test_wait_mode_back_off_doubles_up_to_its_cap(loop):
    l = loop(ONE, free_fast_exits=2, backoff_max=4.0)
    record = l.record("a")
    listener = record.listeners[0]
    delays = []
    for _ in range(7):
        l.services.block_after_fast_exit(record, listener, l.clock())
        if "backoff" in listener.blocked:
            delays.append(l.log.events("wait-backoff")[-1]["seconds"])
            l.advance(delays[-1])
            assert "backoff" not in listener.blocked
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0], "two free, then doubling, capped"


def test_a_connection_releases_its_fd_timer_and_slot_once(loop):
    l = loop(ONE)
    record = l.record("a")
    a, b = socket.socketpair()
    b.close()
    freed = []
    conn = l.table.open(record, record.listeners[0], a.detach(), ("127.0.0.1", 5000))
    conn.release_slot = lambda: freed.append(1)
    conn.timer = l.timers.at(l.clock() + 1, lambda: freed.append("timer ran"))
    fd = conn.fd
    assert l.table.counts[QUEUED] == 1 and conn.id in l.table.live
    l.table.close(conn)
    l.table.close(conn)
    assert freed == [1]
    with pytest.raises(OSError):
        os.fstat(fd)
    l.advance(5)
    assert freed == [1], "its timer was cancelled"
    assert l.table.counts[QUEUED] == 0 and not l.table.live


def test_ids_are_unique_and_states_are_counted(loop):
    l = loop(ONE)
    record = l.record("a")
    conns = [l.table.open(record, record.listeners[0], None, ("127.0.0.1", p)) for p in (1, 2, 3)]
    assert [c.id for c in conns] == [1, 2, 3]
    l.table.move(conns[0], STARTING)
    l.table.running(conns[1], 4242)
    assert l.table.by_pid == {4242: conns[1]}
    assert (l.table.counts[QUEUED], l.table.counts[STARTING], l.table.counts[RUNNING]) == (1, 1, 1)


class FakeStarter:
    def __init__(self, table):
        self.table = table
        self.launched = []

    def start(self, conn):
        self.table.move(conn, STARTING)
        conn.record.occupy()
        self.launched.append(conn)


def test_admitted_connections_queue_while_full_and_start_in_order(loop):
    l = loop("""
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat, instances: 1, only_from: [127.0.0.0/8]}
""")
    record = l.record("a")
    starter = FakeStarter(l.table)
    intake = Intake(l.services, l.table, None, starter, l.log, l.clock, l.thresholds)
    peers = []
    for port in (1, 2, 3):
        a, b = socket.socketpair()
        peers.append(b)
        intake.admit(l.table.open(record, record.listeners[0], a.detach(),
                                  ("127.0.0.1", port)), proxied=True)
    assert [c.peer[1] for c in starter.launched] == [1]
    assert [c.peer[1] for c in record.queue] == [2, 3]
    assert all(c.state == QUEUED for c in record.queue)
    record.vacate()
    intake.start_queued(record)
    assert [c.peer[1] for c in starter.launched] == [1, 2]
    outsider = l.table.open(record, record.listeners[0], peers[0].detach(), ("10.0.0.1", 9))
    intake.admit(outsider, proxied=True)
    refused = l.log.events("refused")
    assert refused == [{"service": "a", "client": "10.0.0.1:9", "conn": outsider.id,
                        "reason": "only_from"}]
    assert outsider.id not in l.table.live and outsider.fd is None
    for conn in list(l.table.live.values()):
        l.table.close(conn)
    for sock in peers[1:]:
        sock.close()


def test_a_timed_out_handler_gets_term_then_kill(loop, monkeypatch):
    l = loop("""
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat, timeout: 3}
""", kill_after=2.0)
    sent = []
    monkeypatch.setattr(children_module, "killpg", lambda pid, sig: sent.append((pid, sig)))
    kids = Children(l.services, l.table, None, l.timers, l.log, l.clock, l.thresholds, grace=10)
    record = l.record("a")
    conn = l.table.open(record, record.listeners[0], None, ("127.0.0.1", 1))
    record.occupy()
    l.table.running(conn, 999999)
    kids.watch(conn)
    l.advance(2.9)
    assert sent == []
    l.advance(0.2)
    assert sent == [(999999, signal.SIGTERM)] and conn.state == EXITING and conn.timed_out
    assert l.log.events("timeout")[0]["conn"] == conn.id
    l.advance(2.1)
    assert sent[-1] == (999999, signal.SIGKILL)
    kids.finished(conn, 9, l.clock())          # 9: killed by SIGKILL
    exit_line = l.log.events("exit")[0]
    assert (exit_line["conn"], exit_line["signal"], exit_line["timeout"]) == (conn.id, "SIGKILL", 1)
    assert record.counters.timeouts == 1 and record.counters.killed == 1
    assert not l.table.by_pid and record.running == 0


def test_a_kill_while_starting_ends_the_handler_once_it_runs_and_nothing_lingers(loop, monkeypatch):
    l = loop("""
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    sent = []
    monkeypatch.setattr(children_module, "killpg", lambda pid, sig: sent.append((pid, sig)))
    kids = Children(l.services, l.table, None, l.timers, l.log, l.clock, l.thresholds, grace=10)
    record = l.record("a")
    doomed = l.table.open(record, record.listeners[0], None, ("127.0.0.1", 1))
    kids.end_when_started(doomed)              # superdctl kill while its start is under way
    other = l.table.open(record, record.listeners[0], None, ("127.0.0.1", 2))
    for conn, pid in ((doomed, 999998), (other, 999999)):
        record.occupy()
        l.table.running(conn, pid)
        kids.watch(conn)
    assert sent == [(999998, signal.SIGTERM)], "only the killed one, as soon as it runs"
    l.advance(10.1)
    assert sent[-1] == (999998, signal.SIGKILL)
    failed = l.table.open(record, record.listeners[0], None, ("127.0.0.1", 3))
    kids.end_when_started(failed)              # and one whose start then fails
    l.table.close(failed)
    for conn in (doomed, other):
        l.table.close(conn)
    assert not l.table.live and not l.table.by_pid, "the mark went with its connection"


@pytest.fixture
def supervisor(tmp_path):
    """An in-process Supervisor on a fake clock; its signal set-up undone afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGCHLD, signal.SIGHUP,
                                                     signal.SIGTERM, signal.SIGINT,
                                                     signal.SIGUSR1)}
    made = []

    def make(text):
        path = tmp_path / "services.yaml"
        path.write_text(textwrap.dedent(text))
        sup = Supervisor(str(path), Log(), clock=FakeClock(), thresholds=tuning.Thresholds())
        sup.start()
        made.append(sup)
        return sup, path

    yield make
    signal.set_wakeup_fd(-1)
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    for sup in made:
        for listener in sup.listeners.values():
            listener.close()
        sup.warm.stop_all()


def test_reload_keeps_unchanged_listeners_closes_dropped_ones_and_binds_new(supervisor):
    sup, path = supervisor("""
services:
  keep: {listen: "127.0.0.1:0", server: /bin/cat}
  drop: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    keep, drop = (sup.services.get(n).listeners[0] for n in ("keep", "drop"))
    kept_record = sup.services.get("keep")
    kept_record.counters.accepted = 7
    path.write_text(textwrap.dedent("""
services:
  keep: {listen: "127.0.0.1:0", server: /bin/cat, instances: 5}
  new: {listen: "127.0.0.1:0", server: /bin/cat}
"""))
    sup.reload()
    assert sup.services.get("keep") is kept_record, "a kept service keeps its record"
    assert kept_record.counters.accepted == 7 and kept_record.service.instances == 5
    assert kept_record.listeners == [keep] and keep.watched and keep.sock.fileno() >= 0
    assert drop.sock.fileno() == -1 and not drop.watched
    assert sup.services.get("drop") is None
    assert sup.services.get("new").listeners[0].watched
    events = [event for _, event, _ in sup.log.lines]
    assert events.index("closed") < events.index("reloaded")
    assert [f["service"] for f in sup.log.events("removed")] == ["drop"]


def test_a_bad_reload_changes_nothing(supervisor):
    sup, path = supervisor("""
services:
  keep: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    before = dict(sup.services.records)
    listener = before["keep"].listeners[0]
    path.write_text("services:\n  keep: {listen: nowhere, server: /bin/cat}\n")
    sup.reload()
    assert sup.services.records == before and listener.watched and listener.sock.fileno() >= 0
    assert sup.log.events("reload-failed")[0]["errors"] == 1
