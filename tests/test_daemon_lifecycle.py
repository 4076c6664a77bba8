"""Limits, failing handlers, reload and shutdown of a real daemon."""

import os
import signal
import socket
import threading

import psutil
import pytest

from conftest import TIMEOUT, connect, python_handler, read_all

# Waits for one line from the client, answers "<pid> <line>", exits.
GATE = r'''
import os, sys
line = sys.stdin.buffer.readline()
os.write(1, b"%d %s" % (os.getpid(), line))
'''


def ask(address, payload=b"hi\n"):
    """Send payload, half-close, return everything the handler wrote."""
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


@pytest.fixture
def gate(tmp_path):
    return python_handler(tmp_path, "gate.py", GATE)


def test_instances_limit_queues_clients_in_backlog(superd, gate):
    d = superd(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}, instances: 1}}
""")
    address = d.address("gate")
    first = connect(address)
    # the first handler is running (it answers only after our line)
    second = connect(address)               # accepted by the kernel, queued
    second.sendall(b"two\n")
    d.wait_running("gate", 1)
    first.sendall(b"one\n")
    assert read_all(first).endswith(b"one\n")
    assert read_all(second).endswith(b"two\n"), "the queued client is served, not refused"
    first.close()
    second.close()


def test_crashing_handler_is_logged_and_others_still_served(superd, tmp_path, gate):
    crash = python_handler(tmp_path, "crash.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    fail = python_handler(tmp_path, "fail.py", "raise SystemExit(3)\n")
    d = superd(f"""
services:
  crash: {{listen: "127.0.0.1:0", server: {crash}, stderr: null}}
  fail: {{listen: "127.0.0.1:0", server: {fail}, stderr: null}}
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    assert ask(d.address("crash"), b"") == b""
    assert ask(d.address("fail"), b"") == b""
    d.log.wait_for(r"^exit service=crash .*signal=SIGSEGV")
    d.log.wait_for(r"^exit service=fail .*status=3")
    assert ask(d.address("gate")).endswith(b"hi\n")
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=crash .*killed=1")
    d.log.wait_for(r"^status service=fail .*exited_nonzero=1")


def test_hanging_handler_is_terminated_after_timeout(superd, tmp_path):
    hang = python_handler(tmp_path, "hang.py", "import time\ntime.sleep(600)\n")
    stubborn = python_handler(tmp_path, "stubborn.py",
                              "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                              "import os\nos.write(1, b'ready')\ntime.sleep(600)\n")
    d = superd(f"""
services:
  hang: {{listen: "127.0.0.1:0", server: {hang}, timeout: 0.5}}
  stubborn: {{listen: "127.0.0.1:0", server: {stubborn}, timeout: 0.5}}
""")
    with connect(d.address("hang")) as sock:
        assert read_all(sock) == b""          # closed when the handler is killed
    d.log.wait_for(r"^timeout level=warning service=hang ")
    d.log.wait_for(r"^exit service=hang .*signal=SIGTERM .*timeout=1")
    with connect(d.address("stubborn")) as sock:
        assert read_all(sock) == b"ready"
    d.log.wait_for(r"^exit service=stubborn .*signal=SIGKILL .*timeout=1")


def test_timeout_reaches_the_handlers_children(superd, tmp_path):
    script = tmp_path / "family.sh"
    script.write_text("#!/bin/sh\nsleep 600 &\necho $!\nwait\n")
    script.chmod(0o755)
    d = superd(f"""
services:
  family: {{listen: "127.0.0.1:0", server: {script}, timeout: 0.5}}
""")
    with connect(d.address("family")) as sock:
        grandchild = int(sock.recv(64).split()[0])
        d.log.wait_for(r"^exit service=family .*timeout=1")
    try:
        orphan = psutil.Process(grandchild)
    except psutil.NoSuchProcess:
        return                                   # already gone and reaped
    _, alive = psutil.wait_procs([orphan], timeout=TIMEOUT)
    assert alive == [], "the TERM reached the whole process group"


def test_program_removed_after_load_is_refused_cleanly(superd, tmp_path, gate):
    doomed = python_handler(tmp_path, "doomed.py", "")
    d = superd(f"""
services:
  doomed: {{listen: "127.0.0.1:0", server: {doomed}}}
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    doomed.unlink()
    assert ask(d.address("doomed"), b"") == b""
    d.log.wait_for(r"^spawn-failed level=error service=doomed .*ENOENT")
    assert ask(d.address("gate")).endswith(b"hi\n")


def test_no_zombies_and_flat_fd_count_after_many_connections(superd, tmp_path):
    d = superd("""
services:
  cat: {listen: "127.0.0.1:0", server: /bin/cat, stderr: log}
""")
    address = d.address("cat")
    daemon = psutil.Process(d.pid)
    ask(address)
    d.log.wait_for(r"^exit service=cat ")
    fds_before = daemon.num_fds()
    for i in range(150):
        assert ask(address, b"%d\n" % i) == b"%d\n" % i
    d.log.wait_count(r"^exit service=cat ", 151)
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=cat .*running=0 .*started=151 ")
    assert daemon.num_fds() == fds_before
    assert [c for c in daemon.children() if c.status() == psutil.STATUS_ZOMBIE] == []
    assert daemon.children() == []


def listening(pid):
    return [c for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN]


def test_term_lets_running_handlers_finish_then_exits_0(superd, gate):
    d = superd(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""", args=["--grace", "30"])
    address = d.address("gate")
    client = connect(address)
    client.sendall(b"")                     # the handler is started and waiting
    d.wait_running("gate", 1)
    assert listening(d.pid) != []
    d.send(signal.SIGTERM)
    d.log.wait_for(r"^stopping signal=SIGTERM running=1")
    assert listening(d.pid) == [], "listeners are closed at once"   # (the port may be reused)
    client.sendall(b"last words\n")
    assert read_all(client).endswith(b"last words\n")
    client.close()
    assert d.proc.wait(TIMEOUT) == 0


def test_term_kills_handlers_after_grace_and_leaves_nothing_behind(superd, tmp_path):
    hang = python_handler(tmp_path, "hang.py",
                          "import os, subprocess, time\nsubprocess.Popen(['sleep', '600'])\n"
                          "os.write(1, b'%d' % os.getpid())\ntime.sleep(600)\n")
    d = superd(f"""
services:
  hang: {{listen: "127.0.0.1:0", server: {hang}}}
""", args=["--grace", "0.5"])
    client = connect(d.address("hang"))
    handler = int(client.recv(64))
    group = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == handler]
    assert len(group) >= 2                    # the handler and its sleep
    d.send(signal.SIGTERM)
    assert d.proc.wait(TIMEOUT) == 0
    d.log.wait_for(r"^grace-over level=warning killing=1")
    gone, alive = psutil.wait_procs(group, timeout=TIMEOUT)
    assert alive == []
    client.close()


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("grace, timeout", [("600", 0), ("3000000", 2592000)])
def test_second_term_kills_at_once(superd, tmp_path, grace, timeout):
    """Also with a grace and a timeout longer than epoll's longest sleep (~24.8 days)."""
    hang = python_handler(tmp_path, "hang.py", "import os, time\nos.write(1, b'up')\ntime.sleep(600)\n")
    d = superd(f"""
services:
  hang: {{listen: "127.0.0.1:0", server: {hang}, timeout: {timeout}}}
""", args=["--grace", grace])
    with connect(d.address("hang")) as client:
        assert client.recv(2) == b"up"
        d.send(signal.SIGINT)
        d.log.wait_for(r"^stopping signal=SIGINT")
        d.send(signal.SIGTERM)
        assert d.proc.wait(TIMEOUT) == 0
    assert d.log.count(r"internal-error|Traceback") == 0


# -- reload -------------------------------------------------------------------

def test_reload_adds_keeps_and_removes_services(superd, gate, tmp_path):
    base = f"""
services:
  keep: {{listen: "127.0.0.1:0", server: {gate}}}
  drop: {{listen: "127.0.0.1:0", server: {gate}}}
"""
    d = superd(base)
    keep, drop = d.address("keep"), d.address("drop")
    running = connect(drop)                 # a handler of the service to be removed
    running.sendall(b"")
    d.wait_running("drop", 1)
    lines = d.reload(f"""
services:
  keep: {{listen: "127.0.0.1:0", server: {gate}}}
  new: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    assert any(l.startswith("reloaded ") for l in lines)
    assert d.address("keep") == keep, "an unchanged listen entry keeps its socket and port"
    assert set(d.ready["services"]) == {"keep", "new"}
    assert ask(d.address("new")).endswith(b"hi\n")
    with pytest.raises(OSError):
        connect(drop, timeout=2)            # removed: new clients are refused
    running.sendall(b"finishing\n")
    assert read_all(running).endswith(b"finishing\n"), "its running handler finishes"
    d.log.wait_for(r"^exit service=drop .*status=0")


def test_reload_with_a_broken_file_keeps_the_running_configuration(superd, gate):
    d = superd(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    address = d.address("gate")
    lines = d.reload("services:\n  gate: {listen: [oops, server: nowhere\n")
    assert any(l.startswith("reload-failed ") for l in lines)
    assert any("config-error" in l and "YAML syntax" in l for l in lines)
    assert ask(address).endswith(b"hi\n")
    lines = d.reload(f"services:\n  gate: {{listen: '127.0.0.1:0', server: /no/such/file}}\n")
    assert any("no such program" in l for l in lines)
    assert ask(address).endswith(b"hi\n")


def test_reload_that_cannot_bind_changes_nothing(superd, gate):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    d = superd(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    address = d.address("gate")
    lines = d.reload(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
  other: {{listen: "127.0.0.1:{taken}", server: {gate}}}
""")
    blocker.close()
    assert any(l.startswith("reload-failed ") and "EADDRINUSE" in l for l in lines)
    assert set(d.ready["services"]) == {"gate"}
    assert ask(address).endswith(b"hi\n")


def test_reload_under_continuous_load_refuses_nobody(superd, tmp_path):
    d = superd("""
services:
  cat: {listen: "127.0.0.1:0", server: /bin/cat, instances: 50}
""")
    address = d.address("cat")
    failures = []
    done = threading.Event()
    counts = [0] * 4
    progress = threading.Condition()

    def client(slot):
        while not done.is_set() and counts[slot] < 5000:
            try:
                payload = b"%d-%d\n" % (slot, counts[slot])
                if ask(address, payload) != payload:
                    failures.append("short answer")
            except OSError as err:
                failures.append(repr(err))
            with progress:
                counts[slot] += 1
                progress.notify_all()

    def wait_progress(more):
        with progress:
            target = sum(counts) + more
            assert progress.wait_for(lambda: sum(counts) >= target, TIMEOUT)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(5):
            wait_progress(20)                # clients are busy while superd reloads
            lines = d.reload(f"""
services:
  cat: {{listen: "127.0.0.1:0", server: /bin/cat, instances: {50 + i}}}
  extra{i}: {{listen: "127.0.0.1:0", server: /bin/cat}}
""")
            assert any(l.startswith("reloaded ") for l in lines)
        wait_progress(20)
    finally:
        done.set()
        for t in threads:
            t.join(TIMEOUT * 3)
    assert sum(counts) >= 120
    assert failures == []
    assert d.address("cat") == address


def test_usr1_logs_one_status_line_per_service(superd, gate):
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {gate}}}
  b: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    ask(d.address("a"))
    d.log.wait_for(r"^exit service=a")
    d.send(signal.SIGUSR1)
    line_a = d.log.wait_for(r"^status service=a ")
    line_b = d.log.wait_for(r"^status service=b ")
    assert "accepted=1 " in line_a and "started=1 " in line_a and "running=0" in line_a
    assert "accepted=0 " in line_b


def test_json_log_format(superd, gate):
    import json
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {gate}}}
""", args=["--log-format", "json"])
    ask(d.address("a"))
    line = d.log.wait_for(r'"event": "exit"')
    record = json.loads(line)
    assert record["service"] == "a" and record["status"] == 0 and record["client"].startswith("127.0.0.1:")


# -- timers past the kernel's longest sleep -----------------------------------

def test_timers_a_month_away_neither_crash_nor_fire(superd, gate):
    """epoll sleeps at most ~24.8 days: a longer timeout, rate pause or grace
    must still be waited for, not crash the loop."""
    month = 30 * 86400
    d = superd(f"""
services:
  gate:
    listen: "127.0.0.1:0"
    server: {gate}
    timeout: {month}
    rate: {{limit: 1, per: 1, pause: {month}}}
""", args=["--grace", str(month)])
    assert ask(d.address("gate")).endswith(b"hi\n")      # a timer of a month runs
    d.log.wait_for(r"^service-paused .*service=gate .*reason=rate")
    held = connect(d.address("gate"))                    # queued while paused
    d.wait_running("gate", 0)                            # the loop still answers signals
    d.send(signal.SIGTERM)
    d.log.wait_for(r"^stopping signal=SIGTERM .*grace=2592000")
    held.close()
    assert d.proc.wait(TIMEOUT) == 0


# -- the ready file ---------------------------------------------------------------

def test_a_ready_file_that_cannot_be_written_at_start_exits_71(tmp_path, gate):
    from conftest import start_superd
    sock_path = tmp_path / "gate.sock"
    d = start_superd(tmp_path, f"""
services:
  gate: {{listen: "unix:{sock_path}", server: {gate}}}
""", args=["--ready-file", str(tmp_path / "no" / "such" / "dir" / "ready.json")], wait=False)
    try:
        assert d.proc.wait(TIMEOUT) == 71
        d.log.wait_for(r"^ready-file-failed level=error path=\S+ready\.json error=.*ENOENT")
        assert not sock_path.exists(), "the listener it had bound is gone with it"
        assert list((tmp_path).glob("**/*.tmp")) == []
    finally:
        d.kill()


def test_reload_of_a_yaml_bomb_is_one_short_error_and_serving_goes_on(superd, gate):
    """Issue 18: the daemon never expands an alias bomb or recursive alias at HUP."""
    d = superd(f"""
services:
  gate: {{listen: "127.0.0.1:0", server: {gate}}}
""")
    address = d.address("gate")
    bomb = "x-a: &a [" + ",".join(["1"] * 10) + "]\n" + "".join(
        f"x-{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefg", "bcdefgh"))
    for text in (bomb + "services:\n  gate: {listen: 0, server: /bin/cat, instances: *h}\n",
                 "x-r: &r [*r]\nservices:\n  gate: {listen: 0, server: /bin/cat, args: *r}\n"):
        lines = d.reload(text)
        assert any(l.startswith("reload-failed ") for l in lines)
        errors = [l for l in lines if "config-error" in l]
        assert errors and all(len(l) < 1000 for l in lines), lines
        assert "internal-error" not in "".join(lines)
        assert ask(address).endswith(b"hi\n")
