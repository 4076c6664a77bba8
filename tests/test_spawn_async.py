"""Starts through a spawn server are asynchronous: superd sends each one and goes on.

A service with `user:` (or `group:`) starts its handlers through a spawn
server (superd/forkserver.py in spawn mode); superd reads each pid when the
server answers.  A start not answered yet counts as a running handler, and
superd keeps its copy of the connection until the answer, so a server that
dies or stops answering costs no connection: each waiting start is exec'd.

The server is stopped (SIGSTOP) to hold starts unanswered for as long as a
test needs, never a sleep.  Handlers are /bin/sh scripts in a folder nobody
can read (Python handlers cannot run as nobody here: the interpreter lives
under /root), except where a `group:`-only service keeps uid 0.
"""

import os
import pwd
import re
import shutil
import signal
import tempfile

import pytest

from conftest import TIMEOUT, connect, python_handler, read_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

# One line in, "<pid> <uid> <line>" out; a line on stderr first, then stderr closed.
ANSWER = """#!/bin/sh
read line
echo "err $$ $line" >&2
exec 2>&-
echo "$$ $(id -u) $line"
"""


@pytest.fixture
def public_dir():
    """A folder the user nobody can enter (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="superd-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def answer(public_dir):
    path = os.path.join(public_dir, "answer.sh")
    with open(path, "w") as f:
        f.write(ANSWER)
    os.chmod(path, 0o755)
    return path


def start_nobody(superd, answer, public_dir, extra=""):
    """superd with one `user: nobody` service `a`; returns (daemon, spawn server pid)."""
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {answer}, user: nobody, workdir: {public_dir},
      stderr: log{extra}}}
""", args=["--log-level", "debug"])
    server = int(d.log.wait_for(r"^preload-ready service=a ").split("pid=")[1])
    return d, server


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def exit_lines(d):
    return [l for l in d.log.text().splitlines() if l.startswith("exit service=a ")]


def served(sock, line):
    """The handler's answer to line: (its pid, its uid)."""
    sock.sendall(line + b"\n")
    pid, uid, echoed = read_all(sock).decode().split()
    assert echoed == line.decode()
    return int(pid), int(uid)


def test_many_concurrent_connections_are_all_served_and_logged(superd, answer, public_dir):
    nobody = pwd.getpwnam("nobody").pw_uid
    d, _ = start_nobody(superd, answer, public_dir)
    address = d.address("a")
    with connect(address) as sock:             # every lazy allocation made once
        served(sock, b"warm")
    d.log.wait_count(r"^exit service=a ", 1)
    d.wait_running("a", 0)
    baseline = fd_count(d.pid)
    clients = [connect(address) for _ in range(60)]   # all in flight at once
    pids = {}
    for i, sock in enumerate(clients):
        pid, uid = served(sock, b"c%d" % i)
        assert uid == nobody
        pids[pid] = sock.getsockname()[1]
        sock.close()
    assert len(pids) == 60, "one handler per connection"
    d.log.wait_count(r"^exit service=a ", 61)
    for line in exit_lines(d)[1:]:
        pid = int(re.search(r" pid=(\d+)", line).group(1))
        assert f"client=127.0.0.1:{pids[pid]} " in line and " status=0 " in line, line
    for pid in pids:
        assert d.log.count(rf"^start level=debug service=a .* pid={pid} preload=1$") == 1
        assert d.log.count(rf'^stderr service=a pid={pid} text="err {pid} c') == 1
    assert d.log.count(r"^preload-(ready|unavailable|exited) ") == 1, "one server served all"
    assert "started=61 failed=0" in d.wait_running("a", 0)
    assert fd_count(d.pid) == baseline, os.listdir(f"/proc/{d.pid}/fd")


def test_an_unanswered_start_holds_its_instance(superd, answer, public_dir):
    d, server = start_nobody(superd, answer, public_dir, extra=", instances: 1")
    address = d.address("a")
    os.kill(server, signal.SIGSTOP)
    try:
        first = connect(address)
        d.wait_running("a", 1)                  # sent, not answered: it counts
        second = connect(address)               # waits in the backlog
        assert "accepted=1 " in d.wait_running("a", 1)
    finally:
        os.kill(server, signal.SIGCONT)
    first_pid, _ = served(first, b"one")
    second_pid, _ = served(second, b"two")
    first.close()
    second.close()
    d.log.wait_count(r"^exit service=a ", 2)
    text = d.log.text()
    assert text.index(f" pid={second_pid} preload=1") > text.index(f" pid={first_pid} status=0"), \
        "the second handler starts only after the first has ended"
    assert "accepted=2 started=2" in d.wait_running("a", 0)


def test_dead_spawn_server_with_starts_waiting_execs_every_one(superd, answer, public_dir):
    nobody = pwd.getpwnam("nobody").pw_uid
    d, server = start_nobody(superd, answer, public_dir)
    address = d.address("a")
    baseline = fd_count(d.pid)
    os.kill(server, signal.SIGSTOP)
    clients = [connect(address) for _ in range(8)]
    d.wait_running("a", 8)                      # all eight sent and unanswered
    os.kill(server, signal.SIGKILL)
    for i, sock in enumerate(clients):
        _, uid = served(sock, b"late%d" % i)
        assert uid == nobody, "the exec fallback switches user too (setpriv)"
        sock.close()
    d.log.wait_for(r"^preload-unavailable level=warning service=a .*fallback=exec starts=8")
    d.log.wait_for(rf"^preload-exited level=warning service=a pid={server} signal=SIGKILL")
    d.log.wait_count(r"^exit service=a .* status=0 ", 8)
    assert d.log.count(r"^start level=debug service=a .* preload=0$") == 8
    assert "started=8 failed=0" in d.wait_running("a", 0)
    d.log.wait_count(r"^preload-ready service=a ", 2)       # a new server follows
    with connect(address) as sock:
        served(sock, b"after")
    d.log.wait_count(r"^start level=debug service=a .* preload=1$", 1)
    d.log.wait_count(r"^exit service=a .* status=0 ", 9)
    d.wait_running("a", 0)
    assert fd_count(d.pid) == baseline, os.listdir(f"/proc/{d.pid}/fd")


def test_spawn_server_that_stops_answering_is_replaced(superd, answer, public_dir):
    d, server = start_nobody(superd, answer, public_dir)
    os.kill(server, signal.SIGSTOP)
    with connect(d.address("a"), timeout=TIMEOUT) as sock:
        sock.sendall(b"patient\n")
        line = d.log.wait_for(r"^preload-unavailable level=warning service=a "
                              r'reason="no answer in 5 s"', timeout=TIMEOUT)
        assert "fallback=exec" in line
        assert read_all(sock).decode().split()[2] == "patient"
    d.log.wait_for(rf"^preload-exited level=warning service=a pid={server} signal=SIGKILL")


def test_stop_waits_for_unanswered_starts(superd, answer, public_dir):
    d, server = start_nobody(superd, answer, public_dir)
    os.kill(server, signal.SIGSTOP)
    clients = [connect(d.address("a")) for _ in range(3)]
    d.wait_running("a", 3)
    d.send(signal.SIGTERM)
    d.log.wait_for(r"^stopping signal=SIGTERM")
    os.kill(server, signal.SIGCONT)              # it answers all three, then sees EOF
    for i, sock in enumerate(clients):
        served(sock, b"s%d" % i)
        sock.close()
    assert d.proc.wait(TIMEOUT) == 0
    assert d.log.count(r"^exit service=a .* status=0 ") == 3
    assert d.log.count(r"^start level=debug service=a .* preload=1$") == 3


def test_full_control_socket_execs_the_overflow(superd, answer, public_dir):
    d, server = start_nobody(superd, answer, public_dir, extra=", instances: 400")
    os.kill(server, signal.SIGSTOP)
    try:
        clients = [connect(d.address("a")) for _ in range(250)]
        d.wait_running("a", 250)
        for i, sock in enumerate(clients):
            sock.sendall(b"o%d\n" % i)
        # beyond what the socket buffers, starts go by exec at once
        d.log.wait_for(r"^start level=debug service=a .* preload=0$")
    finally:
        os.kill(server, signal.SIGCONT)
    for i, sock in enumerate(clients):
        assert read_all(sock).decode().split()[2] == "o%d" % i
        sock.close()
    d.log.wait_count(r"^exit service=a .* status=0 ", 250)
    assert d.log.count(r"^start level=debug service=a .* preload=1$") > 0
    assert "preload-unavailable" not in d.log.text(), "a busy server is no trouble"


WAIT_HANDLER = r'''
import os, socket
listener = socket.socket(fileno=3)
conn, _ = listener.accept()
conn.sendall(b"%s %d" % (os.environ["LISTEN_PID"].encode(), os.getpid()))
conn.close()
'''


@pytest.mark.parametrize("kill_server", [False, True])
def test_wait_mode_through_the_spawn_server(superd, tmp_path, kill_server):
    """group: only (uid 0 stays, so Python runs); the listener is busy until the handler ends."""
    handler = python_handler(tmp_path, "w.py", WAIT_HANDLER)
    d = superd(f"""
services:
  w: {{listen: "127.0.0.1:0", server: {handler}, mode: wait, group: nogroup}}
""", args=["--log-level", "debug"])
    server = int(d.log.wait_for(r"^preload-ready service=w ").split("pid=")[1])
    os.kill(server, signal.SIGSTOP)
    try:
        first = connect(d.address("w"))
        d.wait_running("w", 1)                   # the listener went to the server
        if kill_server:
            os.kill(server, signal.SIGKILL)      # exec'd with the listener instead
    finally:
        if not kill_server:
            os.kill(server, signal.SIGCONT)
    listen_pid, pid = read_all(first).split()
    first.close()
    assert int(listen_pid) == int(pid)
    d.log.wait_for(rf"^exit service=w .*pid={int(pid)} status=0")
    with connect(d.address("w")) as second:       # watched again once it ended
        assert read_all(second)
    d.log.wait_count(r"^exit service=w .* status=0 ", 2)
    preload = 0 if kill_server else 1
    assert d.log.count(rf"^start level=debug service=w .* pid={int(pid)} preload={preload}$") == 1


def test_a_service_with_args_keeps_its_spawn_server(superd, answer, public_dir):
    """The spawn server watches no file: args are not paths, and exec reads the program."""
    d, server = start_nobody(superd, answer, public_dir, extra=", args: [not-a-file]")
    for i in range(3):
        with connect(d.address("a")) as sock:
            pid, _ = served(sock, b"with-args-%d" % i)
        d.log.wait_for(rf"^exit service=a .*pid={pid} status=0")
    assert d.log.count(r"^start level=debug service=a .* preload=1$") == 3
    assert d.log.count(r"^preload-(unavailable|exited|failed) ") == 0
    assert os.path.exists(f"/proc/{server}")
