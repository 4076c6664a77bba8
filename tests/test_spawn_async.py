"""Starts through a spawn server are asynchronous: superd sends each one and goes on.

A service with `user:` (or `group:`) starts its handlers through two spawn
servers (superd/forkserver.py in spawn mode), each start going to the one
with fewer starts unanswered; superd reads each pid when a server answers.  A start not answered yet counts as a running handler, and
superd keeps its copy of the connection until the answer, so a server that
dies or stops answering costs no connection: each waiting start is exec'd.

The servers are stopped (SIGSTOP) to hold starts unanswered for as long as a
test needs, never a sleep.  Each handler says its parent's pid: the spawn
server that started it, or superd itself for an exec.  Handlers are /bin/sh scripts in a folder nobody
can read (Python handlers cannot run as nobody here: the interpreter lives
under /root), except where a `group:`-only service keeps uid 0.
"""

import contextlib
import os
import pwd
import re
import signal

import psutil
import pytest

from conftest import TIMEOUT, connect, python_handler, read_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

# One line in, "<pid> <uid> <line> <parent pid>" out; a line on stderr first,
# then stderr closed.
ANSWER = """#!/bin/sh
read line
echo "err $$ $line" >&2
exec 2>&-
echo "$$ $(id -u) $line $PPID"
"""
SERVERS = 2          # spawn servers per service (preload.SPAWN_SERVERS)


@pytest.fixture
def answer(public_dir):
    path = os.path.join(public_dir, "answer.sh")
    with open(path, "w") as f:
        f.write(ANSWER)
    os.chmod(path, 0o755)
    return path


def start_nobody(superd, answer, public_dir, extra=""):
    """superd with one `user: nobody` service `a`; returns (daemon, spawn server pids)."""
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {answer}, user: nobody, workdir: {public_dir},
      stderr: log{extra}}}
""", args=["--log-level", "debug"])
    d.log.wait_count(r"^preload-ready service=a ", SERVERS)
    return d, ready_servers(d, "a")


def ready_servers(d, service):
    """The pids of every preload-ready line of service, in order."""
    return [int(m) for m in re.findall(rf"(?m)^preload-ready service={service} pid=(\d+)",
                                       d.log.text())]


@contextlib.contextmanager
def stopped(*pids):
    """The spawn servers hold every start unanswered until the block ends."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def exit_lines(d):
    return [l for l in d.log.text().splitlines() if l.startswith("exit service=a ")]


def warmed_fd_count(d):
    """superd's fd count once one connection to `a` has come and gone (lazy set-up done)."""
    with connect(d.address("a")) as sock:
        served(sock, b"warm")
    d.log.wait_count(r"^exit service=a ", 1)
    d.wait_running("a", 0)
    return fd_count(d.pid)


def served(sock, line):
    """The handler's answer to line: (its pid, its uid)."""
    pid, uid, _ = served_by(sock, line)
    return pid, uid


def served_by(sock, line):
    """The handler's answer to line: (its pid, its uid, its parent's pid)."""
    sock.sendall(line + b"\n")
    pid, uid, echoed, parent = read_all(sock).decode().split()
    assert echoed == line.decode()
    return int(pid), int(uid), int(parent)


def test_many_concurrent_connections_are_all_served_and_logged(superd, answer, public_dir):
    nobody = pwd.getpwnam("nobody").pw_uid
    d, _ = start_nobody(superd, answer, public_dir)
    address = d.address("a")
    baseline = warmed_fd_count(d)
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
        assert d.log.count(rf'^stderr service=a pid={pid} conn=\d+ text="err {pid} c') == 1
    assert d.log.count(r"^preload-(ready|unavailable|exited) ") == SERVERS, \
        "the servers served all"
    assert "started=61 failed=0" in d.wait_running("a", 0)
    assert fd_count(d.pid) == baseline, os.listdir(f"/proc/{d.pid}/fd")


def test_an_unanswered_start_holds_its_instance(superd, answer, public_dir):
    d, servers = start_nobody(superd, answer, public_dir, extra=", instances: 1")
    address = d.address("a")
    with stopped(*servers):
        first = connect(address)
        d.wait_running("a", 1)                  # sent, not answered: it counts
        second = connect(address)               # waits in the backlog
        assert "accepted=1 " in d.wait_running("a", 1)
    first_pid, _ = served(first, b"one")
    second_pid, _ = served(second, b"two")
    first.close()
    second.close()
    d.log.wait_count(r"^exit service=a ", 2)
    text = d.log.text()
    assert text.index(f" pid={second_pid} preload=1") > text.index(f" pid={first_pid} status=0"), \
        "the second handler starts only after the first has ended"
    assert "accepted=2 started=2" in d.wait_running("a", 0)


def test_dead_spawn_servers_with_starts_waiting_exec_every_one(superd, answer, public_dir):
    nobody = pwd.getpwnam("nobody").pw_uid
    d, servers = start_nobody(superd, answer, public_dir)
    address = d.address("a")
    baseline = fd_count(d.pid)
    with stopped(*servers):
        clients = [connect(address) for _ in range(8)]
        d.wait_running("a", 8)                  # all eight sent and unanswered
        for server in servers:
            os.kill(server, signal.SIGKILL)
    for i, sock in enumerate(clients):
        _, uid, parent = served_by(sock, b"late%d" % i)
        assert uid == nobody, "the exec fallback switches user too (setpriv)"
        assert parent == d.pid, "exec'd by superd itself"
        sock.close()
    # each server had half of them: the one with fewer unanswered gets the next
    d.log.wait_count(r"^preload-unavailable level=warning service=a .*fallback=exec starts=4$",
                     SERVERS)
    for server in servers:
        d.log.wait_for(rf"^preload-exited level=warning service=a pid={server} signal=SIGKILL")
    d.log.wait_count(r"^exit service=a .* status=0 ", 8)
    assert d.log.count(r"^start level=debug service=a .* preload=0$") == 8
    assert "started=8 failed=0" in d.wait_running("a", 0)
    d.log.wait_count(r"^preload-ready service=a ", 2 * SERVERS)   # new servers follow
    with connect(address) as sock:
        _, _, parent = served_by(sock, b"after")
    assert parent in ready_servers(d, "a")[SERVERS:]
    d.log.wait_count(r"^start level=debug service=a .* preload=1$", 1)
    d.log.wait_count(r"^exit service=a .* status=0 ", 9)
    d.wait_running("a", 0)
    assert fd_count(d.pid) == baseline, os.listdir(f"/proc/{d.pid}/fd")


def test_spawn_server_that_stops_answering_is_replaced(superd, answer, public_dir):
    d, servers = start_nobody(superd, answer, public_dir)
    with stopped(*servers):
        with connect(d.address("a"), timeout=TIMEOUT) as sock:
            sock.sendall(b"patient\n")
            line = d.log.wait_for(r"^preload-unavailable level=warning service=a "
                                  r'reason="no answer in 5 s"', timeout=TIMEOUT)
            assert "fallback=exec" in line
            assert read_all(sock).decode().split()[2] == "patient"
        # one server got it and is killed; the other owed nothing, so it stays
        late = "|".join(map(str, servers))
        d.log.wait_for(rf"^preload-exited level=warning service=a pid=({late}) "
                       r"signal=SIGKILL .* meanwhile=other-server$")
    assert d.log.count(r"^preload-exited ") == 1


def test_stop_waits_for_unanswered_starts(superd, answer, public_dir):
    d, servers = start_nobody(superd, answer, public_dir)
    with stopped(*servers):                      # they answer all three, then see EOF
        clients = [connect(d.address("a")) for _ in range(3)]
        d.wait_running("a", 3)
        d.send(signal.SIGTERM)
        d.log.wait_for(r"^stopping signal=SIGTERM")
    for i, sock in enumerate(clients):
        served(sock, b"s%d" % i)
        sock.close()
    assert d.proc.wait(TIMEOUT) == 0
    assert d.log.count(r"^exit service=a .* status=0 ") == 3
    assert d.log.count(r"^start level=debug service=a .* preload=1$") == 3


def test_full_control_socket_execs_the_overflow(superd, answer, public_dir):
    d, servers = start_nobody(superd, answer, public_dir, extra=", instances: 1200")
    with stopped(*servers):
        clients = [connect(d.address("a")) for _ in range(1000)]
        d.wait_running("a", 1000)
        for i, sock in enumerate(clients):
            sock.sendall(b"o%d\n" % i)
        # beyond what both sockets buffer, starts go by exec at once
        d.log.wait_for(r"^start level=debug service=a .* preload=0$")
    for i, sock in enumerate(clients):
        assert read_all(sock).decode().split()[2] == "o%d" % i
        sock.close()
    d.log.wait_count(r"^exit service=a .* status=0 ", 1000)
    assert d.log.count(r"^start level=debug service=a .* preload=1$") > 0, d.log.text()
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
    d.log.wait_count(r"^preload-ready service=w ", SERVERS)
    servers = ready_servers(d, "w")
    with stopped(*servers):
        first = connect(d.address("w"))
        d.wait_running("w", 1)                   # the listener went to a server
        if kill_server:
            for server in servers:
                os.kill(server, signal.SIGKILL)  # exec'd with the listener instead
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
    d, servers = start_nobody(superd, answer, public_dir, extra=", args: [not-a-file]")
    for i in range(3):
        with connect(d.address("a")) as sock:
            pid, _ = served(sock, b"with-args-%d" % i)
        d.log.wait_for(rf"^exit service=a .*pid={pid} status=0")
    assert d.log.count(r"^start level=debug service=a .* preload=1$") == 3
    assert d.log.count(r"^preload-(unavailable|exited|failed) ") == 0
    assert all(os.path.exists(f"/proc/{server}") for server in servers)


def test_one_dead_spawn_server_leaves_the_other_serving(superd, answer, public_dir):
    """A dead server is restarted in its own slot; meanwhile the other takes every start."""
    d, servers = start_nobody(superd, answer, public_dir)
    address = d.address("a")
    baseline = warmed_fd_count(d)
    dead, other = servers
    os.kill(dead, signal.SIGKILL)
    d.log.wait_for(rf"^preload-exited level=warning service=a pid={dead} signal=SIGKILL "
                   r"restart_in=0.5 meanwhile=other-server$")
    with connect(address) as sock:
        _, _, parent = served_by(sock, b"meanwhile")
    assert parent != d.pid, "a spawn server started it, not an exec"
    d.log.wait_count(r"^preload-ready service=a ", SERVERS + 1)
    new = ready_servers(d, "a")[-1]
    assert new not in servers
    assert parent == other or d.log.text().index(f"preload-starting service=a pid={new} ") < \
        d.log.text().index("preload=1\nexit service=a"), "only the other one was ready"
    # both serve again: the one with fewer unanswered gets each start
    with stopped(other, new):
        clients = [connect(address) for _ in range(4)]
        d.wait_running("a", 4)
    parents = [served_by(sock, b"both%d" % i)[2] for i, sock in enumerate(clients)]
    for sock in clients:
        sock.close()
    assert sorted(parents) == sorted([other, new] * 2)
    d.log.wait_count(r"^exit service=a .* status=0 ", 6)
    assert d.log.count(r"^start level=debug service=a .* preload=0$") == 0
    assert d.log.count(r"^preload-unavailable ") == 0
    assert "started=6 failed=0" in d.wait_running("a", 0)
    assert fd_count(d.pid) == baseline, os.listdir(f"/proc/{d.pid}/fd")


def test_reload_retires_both_spawn_servers(superd, answer, public_dir):
    """A reload starts fresh servers; the old ones finish and exit, none is restarted."""
    d, servers = start_nobody(superd, answer, public_dir)
    d.reload()
    d.log.wait_count(r"^preload-ready service=a ", 2 * SERVERS)
    gone, alive = psutil.wait_procs(_processes(servers), timeout=TIMEOUT)
    assert not alive, "the old servers finish and exit"
    fresh = ready_servers(d, "a")[SERVERS:]
    with stopped(*fresh):
        clients = [connect(d.address("a")) for _ in range(2)]
        d.wait_running("a", 2)
    assert sorted(served_by(sock, b"r%d" % i)[2] for i, sock in enumerate(clients)) == \
        sorted(fresh)
    for sock in clients:
        sock.close()
    assert d.log.count(r"^preload-(exited|unavailable) ") == 0
    d.send(signal.SIGTERM)
    assert d.proc.wait(TIMEOUT) == 0
    _, alive = psutil.wait_procs(_processes(fresh), timeout=TIMEOUT)   # they see EOF and exit
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), alive


def _processes(pids):
    return [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]


def test_reload_from_two_spawn_servers_to_one_warm_interpreter(superd, tmp_path):
    """The retired servers' slots are gone after the reload; reaping them is no error."""
    handler = python_handler(tmp_path, "p.py", "import os\nos.write(1, b'%d' % os.getppid())\n")
    spawned = f"""
services:
  p: {{listen: "127.0.0.1:0", server: {handler}, group: nogroup}}
"""
    d = superd(spawned)
    d.log.wait_count(r"^preload-ready service=p ", SERVERS)
    old = ready_servers(d, "p")
    d.reload(spawned.replace("group: nogroup", "group: nogroup, preload: true"))
    d.log.wait_for(r"^preload-starting service=p pid=\d+ mode=fork$")
    d.log.wait_count(r"^preload-ready service=p ", SERVERS + 1)
    _, alive = psutil.wait_procs(_processes(old), timeout=TIMEOUT)
    assert not alive, "the spawn servers finish and exit"
    warm = ready_servers(d, "p")[-1]
    with connect(d.address("p")) as sock:
        assert int(read_all(sock)) == warm
    assert d.log.count(r"^(internal-error|preload-exited|preload-unavailable) ") == 0, \
        d.log.text()
    assert d.log.count(r"^preload-starting ") == SERVERS + 1, "no retired slot restarted"


def test_a_spawned_handler_gets_only_its_socket_and_stderr(superd, public_dir):
    """fds 0-2 and nothing else: the fds the server received are close-on-exec."""
    d = superd(f"""
services:
  fds: {{listen: "127.0.0.1:0", server: /bin/ls, args: [/proc/self/fd], user: nobody,
        workdir: {public_dir}, stderr: log}}
""", args=["--log-level", "debug"])
    d.log.wait_count(r"^preload-ready service=fds ", SERVERS)
    for _ in range(3):
        with connect(d.address("fds")) as sock:
            listed = read_all(sock).decode().split()
        assert listed == ["0", "1", "2", "3"], listed     # 3: ls's own view of the folder
    d.log.wait_count(r"^exit service=fds ", 3)
    assert d.log.count(r"^start level=debug service=fds .* preload=1$") == 3, "all spawned"
