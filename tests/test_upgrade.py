"""Upgrade in place (SIGUSR2, superdctl upgrade): a new superd inherits every
listening socket, and no client is refused or reset while it takes over."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import TIMEOUT, connect, python_handler, read_all

SUPERDCTL = str(Path(sys.executable).with_name("superdctl"))

TCP_WAIT = r'''
import os, socket, sys
listener = socket.socket(fileno=3)
for _ in range(int(sys.argv[1])):
    conn, _ = listener.accept()
    conn.sendall(b"%d" % os.getpid())
    conn.close()
'''


def ctl(d, *args):
    return subprocess.run([SUPERDCTL, "--ready-file", str(d.ready_path), *args],
                          capture_output=True, text=True, timeout=60)


def upgrade(d):
    """superdctl upgrade; the successor's pid once the ready file names it."""
    before = d.current_pid()
    run = ctl(d, "--json", "upgrade")
    assert run.returncode == 0, run.stderr
    successor = json.loads(run.stdout)["successor"]
    assert successor != before and d.current_pid() == successor
    return successor


class Load(threading.Thread):
    """One client in a loop: ask, check the answer, again, until stopped; counts failures."""

    def __init__(self, ask):
        super().__init__(daemon=True)
        self.ask = ask
        self.done = threading.Event()
        self.ok = 0
        self.failures = []

    def run(self):
        n = 0
        while not self.done.is_set():
            n += 1
            payload = b"%d" % n
            try:
                answer = self.ask(payload)
            except OSError as err:
                answer = repr(err).encode()
            if answer == payload:
                self.ok += 1
            else:
                self.failures.append((payload, answer))

    def stop(self):
        self.done.set()
        self.join(TIMEOUT * 2)


def served_from_now(count):
    """wait(more, why): wait until count() has grown by more since now."""
    start = count()

    def wait(more, why):
        deadline = time.monotonic() + TIMEOUT
        while count() < start + more:
            assert time.monotonic() < deadline, why
            time.sleep(0.01)
    return wait


def stream_echo(address):
    def ask(payload):
        with connect(address, timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return read_all(sock)
    return ask


def datagram_echo(address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)

    def ask(payload):
        sock.sendto(payload, address)
        return sock.recvfrom(2048)[0]
    return ask


def test_ten_upgrades_under_load_refuse_nothing(superd, tmp_path):
    d = superd(f"""
services:
  tcp: {{listen: "127.0.0.1:0", internal: echo}}
  unix: {{listen: "unix:{tmp_path}/echo.sock", internal: echo}}
  udp: {{listen: "127.0.0.1:0", protocol: udp, internal: echo, args: [--idle-exit, "0.5"]}}
""")
    loads = [Load(stream_echo(d.address("tcp"))), Load(stream_echo(d.address("tcp"))),
             Load(stream_echo(str(tmp_path / "echo.sock"))), Load(datagram_echo(d.address("udp")))]
    for load in loads:
        load.start()
    pids = [d.current_pid()]
    try:
        for _ in range(10):
            served = served_from_now(lambda: sum(load.ok for load in loads))
            pids.append(upgrade(d))
            served(20, "clients are served after the upgrade")   # by the new one too
    finally:
        for load in loads:
            load.stop()
    assert [load.failures for load in loads] == [[], [], [], []]
    assert all(load.ok > 0 for load in loads)
    assert len(set(pids)) == 11
    d.log.wait_count(r"^upgraded successor=", 10)
    # each predecessor leaves once its handlers are done; the one whose UDP
    # handler still owned the socket, once that handler idled out after the load
    for old in pids[:-1]:
        d.log.wait_for(rf"^stopped pid={old}$")
    assert d.log.count(r"^refused ") == 0
    assert os.path.exists(tmp_path / "echo.sock"), "the unix socket's file stays"


def test_ids_and_counters_carry_over(superd, tmp_path):
    d = superd("""
services:
  tcp: {listen: "127.0.0.1:0", internal: echo, only_from: [127.0.0.1]}
""")
    ask = stream_echo(d.address("tcp"))
    assert ask(b"a") == b"a" and ask(b"b") == b"b"
    d.log.wait_count(r"^exit service=tcp ", 2)
    successor = upgrade(d)
    d.wait_notify(f"MAINPID={successor}")       # systemd hears who serves now
    status = json.loads(ctl(d, "--json", "status").stdout)
    tcp = status["services"][0]
    assert tcp["accepted"] == 2 and tcp["exits"]["ok"] == 2 and tcp["duration"]["count"] == 2
    assert ask(b"c") == b"c"
    line = d.log.wait_for(r"^exit service=tcp .* conn=3 ")
    assert " pid=" in line


def test_a_successor_that_fails_leaves_the_old_one_serving(superd, tmp_path):
    d = superd("""
services:
  tcp: {listen: "127.0.0.1:0", internal: echo}
""")
    first = d.current_pid()
    Path(d.config_path).write_text("services:\n  tcp: {listen: nowhere, internal: echo}\n")
    run = ctl(d, "upgrade")
    assert run.returncode == 1
    assert "exited before it was ready" in run.stderr and "status=78" in run.stderr
    d.log.wait_for(r"^upgrade-failed level=error successor=\d+ ")
    d.log.wait_for(r"^config-error level=error problem=.*services\.tcp\.listen")
    assert d.current_pid() == first
    assert stream_echo(d.address("tcp"))(b"still") == b"still"
    assert ctl(d, "status").returncode == 0, "its control socket is back"
    d.send(signal.SIGUSR2)                  # the same by signal: it fails the same way
    d.log.wait_count(r"^upgrade-failed ", 2)


def test_a_running_wait_mode_handler_keeps_its_socket_until_it_ends(superd, tmp_path):
    handler = python_handler(tmp_path, "tcpwait.py", TCP_WAIT)
    d = superd(f"""
services:
  w: {{listen: "127.0.0.1:0", server: {handler}, args: ["2"], mode: wait}}
""")

    def ask():
        with connect(d.address("w")) as sock:
            return int(read_all(sock))
    old_handler = ask()                     # it serves one more, then exits
    successor = upgrade(d)
    assert ask() == old_handler, "the old superd's handler still owns the listener"
    new_handler = ask()                     # now the successor's, once the old one ended
    assert new_handler != old_handler
    assert psutil.Process(new_handler).ppid() == successor


def test_a_second_upgrade_while_one_is_under_way_is_refused(monkeypatch):
    from superd import upgrade as module

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, event, **fields):
            self.lines.append(event)

    spawned = []
    monkeypatch.setattr(module.os, "posix_spawn", lambda *a, **k: spawned.append(a) or 424242)
    import selectors
    selector = selectors.DefaultSelector()
    handover = module.Handover(selector, None, Log(), on_ready=None, on_failed=None)
    assert handover.start([], {"next_id": 1}) == 424242
    with pytest.raises(module.UpgradeRefused, match="under way"):
        handover.start([], {"next_id": 1})
    assert len(spawned) == 1
    selector.unregister(handover.ready_r)
    os.close(handover.ready_r)
    os.close(handover.freed_w)


PRELOADED_ECHO = r'''
import os, sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data)
'''


def test_an_upgrade_under_load_moves_preloaded_services_to_the_successor(superd, tmp_path):
    handler = python_handler(tmp_path, "pecho.py", PRELOADED_ECHO)
    d = superd(f"""
services:
  warm: {{listen: "127.0.0.1:0", server: {handler}, preload: true}}
""")
    old_warm = int(d.log.wait_for(r"^preload-ready service=warm ").split("pid=")[1].split()[0])
    old = d.current_pid()
    load = Load(stream_echo(d.address("warm")))
    load.start()
    try:
        served = served_from_now(lambda: load.ok)
        successor = upgrade(d)
        served(20, "clients are served after the upgrade")
    finally:
        load.stop()
    assert load.failures == [] and load.ok > 0
    d.log.wait_for(rf"^stopped pid={old}$")
    d.log.wait_count(r"^preload-ready service=warm ", 2)
    ready = [line for line in d.log.lines if line.startswith("preload-ready service=warm ")]
    new_warm = int(ready[-1].split("pid=")[1].split()[0])
    assert new_warm != old_warm
    assert psutil.Process(new_warm).ppid() == successor
    deadline = time.monotonic() + TIMEOUT
    while psutil.pid_exists(old_warm) and psutil.Process(old_warm).status() != "zombie":
        assert time.monotonic() < deadline, "the old superd's warm server ends with it"
        time.sleep(0.01)
    assert stream_echo(d.address("warm"))(b"after") == b"after"
    assert d.log.count(r"^refused ") == 0


def test_the_control_socket_answers_all_through_upgrades(superd, tmp_path):
    """The same control socket goes to the successor: no client finds it missing."""
    d = superd("""
services:
  tcp: {listen: "127.0.0.1:0", internal: echo}
""")
    path = json.loads(Path(d.ready_path).read_text())["control"]
    inode = os.stat(path).st_ino

    def ask(_payload):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b'{"command": "status", "connections": false, "history": false}\n')
            answer = json.loads(read_all(sock))
        return _payload if answer.get("ok") else repr(answer).encode()
    load = Load(ask)
    load.start()
    pids = [d.current_pid()]
    try:
        for _ in range(3):
            served = served_from_now(lambda: load.ok)
            pids.append(upgrade(d))
            served(5, "control clients are answered after it")
    finally:
        load.stop()
    assert load.failures == [] and load.ok > 0
    for old in pids[:-1]:
        d.log.wait_for(rf"^stopped pid={old}$")
    assert os.stat(path).st_ino == inode, "one socket all along, never bound anew"
    assert ctl(d, "status").returncode == 0
    Path(d.config_path).write_text("services:\n  tcp: {listen: nowhere, internal: echo}\n")
    assert ctl(d, "upgrade").returncode == 1
    assert os.stat(path).st_ino == inode, "a successor that failed leaves it in place"
    assert ctl(d, "status").returncode == 0
