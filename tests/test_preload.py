"""preload: true — a warm interpreter forks each handler; the contract holds."""

import array
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from conftest import connect, python_handler, read_all
from superd.warmserver import decode_message, decode_settings, encode_request, encode_settings

PROBE = r'''
import json, os, random, sys
print(json.dumps({
    "name": __name__, "argv": sys.argv, "pid": os.getpid(), "sid": os.getsid(0),
    "ppid": os.getppid(), "env": dict(os.environ),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd"))[:-1],
    "random": random.random(),
    "line": sys.stdin.readline(),
}))
'''


@pytest.fixture
def probe(tmp_path):
    return python_handler(tmp_path, "probe.py", PROBE)


def ask(address, line=b"hello\n"):
    with connect(address) as sock:
        sock.sendall(line)
        return json.loads(read_all(sock))


def warm_and_cold(superd, handler):
    """A daemon running handler twice: preloaded (warm) and exec'd (cold)."""
    d = superd(f"""
services:
  warm: {{listen: "127.0.0.1:0", server: {handler}, preload: true}}
  cold: {{listen: "127.0.0.1:0", server: {handler}}}
""")
    d.log.wait_for(r"^preload-ready service=warm")
    return d


def start_preloaded(superd, body, extra=""):
    d = superd(body)
    d.log.wait_for(r"^preload-ready service=")
    return d


def test_preloaded_handler_keeps_the_handler_contract(superd, probe, tmp_path):
    d = start_preloaded(superd, f"""
services:
  p:
    listen: 127.0.0.1:0
    server: {probe}
    args: [one, two]
    env: {{GREETING: hi}}
    preload: true
""")
    first = ask(d.address("p"))
    second = ask(d.address("p"))
    assert first["name"] == "__main__"
    assert first["argv"] == [str(probe), "one", "two"]
    assert first["line"] == "hello\n"
    assert first["fds"] == [0, 1, 2]
    assert first["sid"] == first["pid"], "its own session"
    env = first["env"]
    assert env["GREETING"] == "hi" and env["SUPERD_SERVICE"] == "p"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and "NOTIFY_SOCKET" not in env
    assert first["pid"] != second["pid"], "one process per connection"
    assert first["random"] != second["random"], "random is re-seeded in each child"
    line = d.log.wait_for(rf"^exit service=p .*pid={first['pid']} status=0")
    assert "client=127.0.0.1:" in line
    warm = int(d.log.wait_for(r"^preload-ready service=p").split("pid=")[1])
    assert first["ppid"] == warm, "forked by the warm interpreter, not exec'd by superd"


def test_environment_is_that_of_an_execd_handler(superd, probe):
    d = superd(f"""
services:
  warm: {{listen: "127.0.0.1:0", server: {probe}, env: {{GREETING: hi}}, preload: true}}
  cold: {{listen: "127.0.0.1:0", server: {probe}, env: {{GREETING: hi}}}}
""")
    d.log.wait_for(r"^preload-ready service=warm")
    warm, again, cold = (ask(d.address(name))["env"] for name in ("warm", "warm", "cold"))
    per_connection = {"SUPERD_SERVICE", "REMOTE_PORT", "TCPREMOTEPORT", "TCPLOCALPORT",
                      "SUPERD_CONN"}
    assert set(warm) == set(again) == set(cold)
    assert {k: v for k, v in warm.items() if k not in per_connection} == \
        {k: v for k, v in cold.items() if k not in per_connection}
    assert warm["REMOTE_PORT"] != again["REMOTE_PORT"], "each child its own connection's"
    ids = [int(env["SUPERD_CONN"]) for env in (warm, again, cold)]
    assert len(set(ids)) == 3, "each connection its own id, preloaded or exec'd"


def test_exit_status_signals_and_timeouts_as_for_exec(superd, tmp_path):
    fail = python_handler(tmp_path, "fail.py", "import sys\nsys.exit(7)\n")
    hang = python_handler(tmp_path, "hang.py", "import time\ntime.sleep(600)\n")
    d = superd(f"""
services:
  fail: {{listen: "127.0.0.1:0", server: {fail}, preload: true}}
  hang: {{listen: "127.0.0.1:0", server: {hang}, preload: true, timeout: 0.5}}
""")
    d.log.wait_count(r"^preload-ready ", 2)
    with connect(d.address("fail")) as sock:
        assert read_all(sock) == b""
    d.log.wait_for(r"^exit service=fail .*status=7")
    with connect(d.address("hang")) as sock:
        assert read_all(sock) == b""
    d.log.wait_for(r"^exit service=hang .*signal=SIGTERM .*timeout=1")


# Ends its main code at once, leaving work to a thread and to atexit; a
# fresh interpreter waits for the thread, then runs atexit, then exits 3.
AT_EXIT = r'''
import atexit, sys, threading
gate = threading.Event()
def late():
    gate.wait(10)
    print("thread done", flush=True)
atexit.register(print, "atexit ran")
threading.Thread(target=late).start()
print("main done", flush=True)
gate.set()
sys.exit(3)
'''


def test_the_exit_waits_for_threads_and_runs_atexit_as_for_exec(superd, tmp_path):
    handler = python_handler(tmp_path, "atexit.py", AT_EXIT)
    d = warm_and_cold(superd, handler)
    for name in ("warm", "cold"):
        with connect(d.address(name)) as sock:
            assert read_all(sock) == b"main done\nthread done\natexit ran\n", name
        d.log.wait_for(rf"^exit service={name} .*status=3")


def test_changed_handler_file_gets_a_fresh_warm_interpreter(superd, tmp_path):
    handler = python_handler(tmp_path, "v.py", "import os\nos.write(1, b'v1')\n")
    d = start_preloaded(superd, f"""
services:
  v: {{listen: "127.0.0.1:0", server: {handler}, preload: true}}
""")
    with connect(d.address("v")) as sock:
        assert read_all(sock) == b"v1"
    handler.write_text(handler.read_text().replace("v1", "version-2"))
    with connect(d.address("v")) as sock:
        assert read_all(sock) == b"version-2"          # served at once, by exec
    d.log.wait_for(r"^preload-unavailable level=warning service=v .*handler file changed")
    d.log.wait_count(r"^preload-ready service=v ", 2)
    with connect(d.address("v")) as sock:
        assert read_all(sock) == b"version-2"


def test_dead_warm_interpreter_falls_back_to_exec_and_restarts(superd, probe):
    d = start_preloaded(superd, f"""
services:
  p: {{listen: "127.0.0.1:0", server: {probe}, preload: true}}
""")
    warm = int(d.log.wait_for(r"^preload-ready service=p").split("pid=")[1])
    os.kill(warm, signal.SIGKILL)
    d.log.wait_for(rf"^preload-exited level=warning service=p pid={warm} signal=SIGKILL")
    served = ask(d.address("p"))
    assert served["name"] == "__main__"
    d.log.wait_count(r"^preload-ready service=p ", 2)
    after = ask(d.address("p"))
    assert after["ppid"] != warm and after["ppid"] != d.pid


def test_handlers_outlive_their_warm_interpreter_and_are_reaped(superd, tmp_path):
    gate = python_handler(tmp_path, "gate.py",
                          "import os, sys\nline = sys.stdin.readline()\nos.write(1, line.encode())\n")
    d = superd(f"""
services:
  g: {{listen: "127.0.0.1:0", server: {gate}, preload: true}}
""", args=["--log-level", "debug"])
    warm = int(d.log.wait_for(r"^preload-ready service=g").split("pid=")[1])
    client = connect(d.address("g"))
    client.sendall(b"")
    # the handler runs and superd knows its pid: a kill before that is the
    # next tests' (..._killed_at_a_fork..., ..._adopted_from_the_ledger)
    d.log.wait_for(r"^start .*service=g .*preload=1")
    os.kill(warm, signal.SIGKILL)
    d.log.wait_for(rf"^preload-exited level=warning service=g pid={warm}")
    client.sendall(b"still here\n")
    assert read_all(client) == b"still here\n"
    client.close()
    d.log.wait_for(r"^exit service=g .*status=0")   # superd (child subreaper) reaped it
    d.wait_running("g", 0)


@pytest.mark.parametrize("hook, preloaded", [("before", 0), ("after_in_parent", 1)])
def test_a_server_killed_at_a_fork_leaves_one_handler_on_the_connection(
        superd, tmp_path, hook, preloaded):
    """Killed just before a fork, the server made no handler and superd execs
    one; killed just after, before it could send the pid, its ledger names
    the child, which superd adopts and reaps, and execs nothing."""
    (tmp_path / "killer.py").write_text(   # imported by the warm interpreter: hooks its forks
        "import os, signal\n"
        f"os.register_at_fork({hook}=lambda: os.kill(os.getpid(), signal.SIGKILL))\n")
    handler = python_handler(tmp_path, "served.py",
                             "import os, sys, killer\nsys.stdin.readline()\n"
                             "os.write(1, b'%d\\n' % os.getpid())\n")
    d = superd(f"""
services:
  k: {{listen: "127.0.0.1:0", server: {handler}, preload: true}}
""", args=["--log-level", "debug"])
    warm = int(d.log.wait_for(r"^preload-ready service=k").split("pid=")[1])
    with connect(d.address("k")) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        answers = read_all(sock).split()
    assert len(answers) == 1, f"one handler on the connection, not {answers}"
    pid = int(answers[0])
    d.log.wait_for(rf"^preload-exited level=warning service=k pid={warm} signal=SIGKILL")
    d.log.wait_for(rf"^start level=debug service=k .*pid={pid} preload={preloaded}$")
    d.log.wait_for(rf"^exit service=k .*pid={pid} status=0")
    assert d.log.count(r"^preload-adopted ") == preloaded
    assert d.log.count(r"^start level=debug ") == 1
    d.wait_running("k", 0)


HOLD_SECOND_CHILD = r"""
import os, signal, socket
forks = [0]
def report(who):
    # tell the test, and wait until it says go
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(os.environ["REPORT"])
        sock.sendall(b"%s %d\n" % (who, os.getpid()))
        sock.recv(1)
def parent():
    forks[0] += 1
    if forks[0] == 1:
        report(b"parent")                   # a second request is queued meanwhile
    else:
        os.kill(os.getpid(), signal.SIGKILL)    # its second fork: die, telling no one
def child():
    if forks[0] == 1:
        report(b"child")                    # the second child: held before it records itself
os.register_at_fork(after_in_parent=parent, after_in_child=child)
"""


@contextlib.contextmanager
def server_dead_after_two_forks(superd, tmp_path):
    """superd whose warm interpreter forks two handlers in one wake-up and
    dies before it sends either pid, the second held before it records
    itself.  Yields (daemon, its two clients, the second's pid, a socket
    whose write lets it go on, superd's fd count before); the second is
    killed at the end."""
    (tmp_path / "killer.py").write_text(HOLD_SECOND_CHILD)
    handler = python_handler(tmp_path, "served.py",
                             "import os, killer\nos.write(1, b'%d\\n' % os.getpid())\n")
    report = socket.socket(socket.AF_UNIX)
    report.bind(str(tmp_path / "report"))
    report.listen()
    report.settimeout(30)
    d = superd(f"""
services:
  k: {{listen: "127.0.0.1:0", server: {handler}, preload: true,
       env: {{REPORT: {tmp_path / "report"}}}}}
""", args=["--log-level", "debug"])
    d.log.wait_for(r"^preload-ready service=k")
    fds = len(os.listdir(f"/proc/{d.pid}/fd"))
    clients = [connect(d.address("k"))]
    second, held = None, None
    try:
        server, _ = report.accept()
        with server:                            # the server, after its first fork
            server.settimeout(30)
            assert server.makefile("rb").readline().split()[0] == b"parent"
            clients.append(connect(d.address("k")))
            d.wait_running("k", 2)              # sent, so read in the same wake-up
            server.sendall(b"g")
        held, _ = report.accept()
        held.settimeout(30)
        who, pid = held.makefile("rb").readline().split()
        assert who == b"child"
        second = int(pid)
        yield d, clients, second, held, fds
    finally:
        for sock in clients + [report, held]:
            if sock is not None:
                sock.close()
        if second is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(second, signal.SIGKILL)


def test_an_orphan_reaped_before_its_server_is_adopted_from_the_ledger(superd, tmp_path):
    """The first handler runs, exits and is reaped by superd while the second,
    held, still holds the dead server's socket open: superd finds the
    first in the ledger and adopts it then; the second when that socket
    closes.  Each connection gets exactly one handler, and none is exec'd."""
    with server_dead_after_two_forks(superd, tmp_path) as (d, clients, second, held, fds):
        first = int(read_all(clients[0]))
        d.log.wait_for(rf"^preload-adopted service=k pid={first}$")
        d.log.wait_for(rf"^exit service=k .*pid={first} status=0")
        held.sendall(b"g")
        assert read_all(clients[1]).split() == [b"%d" % second], "one handler, the forked one"
        d.log.wait_for(rf"^preload-adopted service=k pid={second}$")
        d.log.wait_for(rf"^exit service=k .*pid={second} status=0")
    assert d.log.count(r"^start level=debug service=k .*preload=0") == 0, "nothing exec'd"
    assert "preload-unavailable" not in d.log.text()
    d.wait_running("k", 0)
    d.log.wait_count(r"^preload-ready service=k ", 2)
    assert len(os.listdir(f"/proc/{d.pid}/fd")) == fds, "the dead server's socket and ledger"


def test_a_dead_servers_socket_held_open_is_waited_for_5_s_only(superd, tmp_path):
    """The second handler stays held before it records itself: after 5 s
    superd stops waiting for the dead server's socket to close and execs the
    start it cannot find in the ledger (superd(8), BUGS: the held one, if
    let go, would be a second handler)."""
    with server_dead_after_two_forks(superd, tmp_path) as (d, clients, second, _, fds):
        first = int(read_all(clients[0]))
        d.log.wait_for(rf"^preload-adopted service=k pid={first}$")
        d.log.wait_for(r"^preload-unavailable level=warning service=k "
                       r'reason="no end of file in 5 s" fallback=exec starts=1$')
        os.kill(second, signal.SIGKILL)          # it holds the connection too
        [execd] = read_all(clients[1]).split()
    d.log.wait_for(rf"^start level=debug service=k .*pid={int(execd)} preload=0$")
    d.log.wait_for(rf"^exit service=k .*pid={int(execd)} status=0")
    d.wait_running("k", 0)


def test_a_server_that_lies_is_ended_and_its_starts_are_execd(superd, tmp_path):
    """A server's answers are believed only as replies: one that answers no
    request, or reports the exit of a process it did not start (a spawn
    server runs as a user superd does not trust), is ended and replaced."""
    (tmp_path / "liar.py").write_text(
        "import os, struct\n"
        "try:\n"
        "    os.write(3, b'x' + struct.pack('ii', 1, 0))    # the exit of pid 1\n"
        "    os.write(3, b'p' + struct.pack('i', 1))        # a pid, asked for nothing\n"
        "except OSError:\n"
        "    pass                                            # exec'd: no fd 3\n")
    handler = python_handler(tmp_path, "served.py",
                             "import os, liar\nos.write(1, b'served by %d' % os.getppid())\n")
    d = superd(f"""
services:
  l: {{listen: "127.0.0.1:0", server: {handler}, preload: true}}
""")
    d.log.wait_for(r"^preload-unavailable level=warning service=l "
                   r'reason="exit of a process it did not start"')
    with connect(d.address("l")) as sock:
        assert read_all(sock) == b"served by %d" % d.pid, "exec'd by superd meanwhile"
    assert d.pid in {p.pid for p in psutil.process_iter()}
    assert not [line for line in d.log.lines if line.startswith("internal-error")]


def test_a_pid_superd_knows_already_is_refused(superd, tmp_path):
    """A server that answers with the pid of another service's handler does
    not take that handler from its service: superd execs the start itself
    and ends the server."""
    (tmp_path / "liar.py").write_text(
        "import os, struct\n"
        "def parent():                   # before the true pid, a pid it read from a file\n"
        "    target = int(open(os.environ['TARGET']).read())\n"
        "    os.write(3, b'p' + struct.pack('i', target))\n"
        "os.register_at_fork(after_in_parent=parent)\n")
    held = python_handler(tmp_path, "held.py", "import os, sys\n"
                          "os.write(1, b'%d\\n' % os.getpid())\nsys.stdin.readline()\n")
    served = python_handler(tmp_path, "served.py", "import os, liar\nos.write(1, b'served')\n")
    d = superd(f"""
services:
  e: {{listen: "127.0.0.1:0", server: {held}}}
  l: {{listen: "127.0.0.1:0", server: {served}, preload: true,
       env: {{TARGET: {tmp_path / "target"}}}}}
""")
    d.log.wait_for(r"^preload-ready service=l")
    with connect(d.address("e")) as held_client:
        pid = int(held_client.makefile("rb").readline())
        (tmp_path / "target").write_text(str(pid))
        with connect(d.address("l")) as sock:
            assert b"served" in read_all(sock)
        d.log.wait_for(r"^preload-unavailable level=warning service=l "
                       r'reason="pid of a process superd knows"')
        held_client.sendall(b"bye\n")
        assert read_all(held_client) == b""
    d.log.wait_for(rf"^exit service=e .*pid={pid} status=0")
    d.wait_running("e", 0)
    d.wait_running("l", 0)


def test_reload_replaces_the_warm_interpreter(superd, probe):
    text = f"""
services:
  p: {{listen: "127.0.0.1:0", server: {probe}, preload: true}}
"""
    d = start_preloaded(superd, text)
    first = int(d.log.wait_for(r"^preload-ready service=p").split("pid=")[1])
    d.reload(text)
    d.log.wait_count(r"^preload-ready service=p ", 2)
    assert ask(d.address("p"))["ppid"] != first
    psutil.wait_procs([psutil.Process(first)], timeout=10) if psutil.pid_exists(first) else None


@pytest.mark.parametrize("name, payload, check", [
    ("echo", b"ping\n", lambda out: out == b"ping\n"),
    ("daytime", b"", lambda out: out.endswith(b"\r\n") and len(out) > 10),
])
def test_internal_services_under_preload(superd, name, payload, check):
    d = start_preloaded(superd, f"""
services:
  {name}: {{listen: "127.0.0.1:0", internal: {name}, preload: true}}
""")
    with connect(d.address(name)) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert check(read_all(sock))
    d.log.wait_for(rf"^exit service={name} .*status=0")


def test_each_kind_of_server_starts_as_its_handler_would(superd, tmp_path):
    """An internal handler's warm interpreter runs without `site` (-S, as its
    exec does) and its top level once (split_main); a preloaded script keeps
    `site` and runs whole in each child; a spawn server has no `site`."""
    script = python_handler(tmp_path, "script.py", "import os\nos.write(1, b'x')\n")
    spawned = ('  spawned: {listen: "127.0.0.1:0", server: /bin/echo, user: nobody}\n'
               if os.geteuid() == 0 else "")
    d = superd(f"""
services:
  inner: {{listen: "127.0.0.1:0", internal: echo, preload: true}}
  script: {{listen: "127.0.0.1:0", server: {script}, preload: true}}
""" + spawned)

    def server(name):
        line = d.log.wait_for(rf"^preload-ready service={name} pid=")
        argv = psutil.Process(int(re.search(r"pid=(\d+)", line).group(1))).cmdline()
        assert argv[-1] == name, "ps shows the service"
        return argv[1:-3], argv[-2]     # flags, role (what the settings it was sent say)

    flags, role = server("inner")
    assert flags == ["-S"] and role == "preload-internal"    # split_main
    flags, role = server("script")
    assert flags == [] and role == "preload"
    if spawned:
        flags, role = server("spawned")
        assert flags == ["-S"] and role == "spawn"


def test_httpd_under_preload(superd, tmp_path):
    import http.client
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<h1>warm</h1>\n")
    d = start_preloaded(superd, f"""
services:
  http: {{listen: "127.0.0.1:0", internal: httpd, args: [--root, www, --quiet], preload: true}}
""")
    host, port = d.address("http")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"<h1>warm</h1>\n"
    conn.close()


def test_wait_mode_under_preload_gets_its_own_pid(superd, tmp_path):
    handler = python_handler(tmp_path, "w.py", r'''
import json, os, socket
listener = socket.socket(fileno=3)
conn, _ = listener.accept()
conn.sendall(json.dumps([os.environ["LISTEN_PID"], os.getpid(), os.environ["LISTEN_FDS"]]).encode())
conn.close()
''')
    d = start_preloaded(superd, f"""
services:
  w: {{listen: "127.0.0.1:0", server: {handler}, mode: wait, preload: true}}
""")
    with connect(d.address("w")) as sock:
        listen_pid, pid, fds = json.loads(read_all(sock))
    assert int(listen_pid) == pid and fds == "1"


SIGNAL_PROBE = r'''
import os
fields = dict(line.split(":\t") for line in open("/proc/self/status").read().splitlines()
              if line.startswith(("SigIgn", "SigCgt", "SigBlk")))
os.write(1, repr(sorted(fields.items())).encode())
'''


def test_signal_dispositions_are_those_of_an_execd_handler(superd, tmp_path):
    probe = python_handler(tmp_path, "sig.py", SIGNAL_PROBE)
    d = warm_and_cold(superd, probe)
    with connect(d.address("cold")) as sock:
        cold = read_all(sock)
    with connect(d.address("warm")) as sock:
        warm = read_all(sock)
    assert b"SigIgn" in cold and warm == cold


STREAMS_PROBE = r"""
import sys
def described(stream):
    raw = getattr(stream.buffer, "raw", stream.buffer)
    return [stream.name, stream.mode, stream.encoding, stream.errors, stream.line_buffering,
            stream.write_through, stream.seekable(), raw.name, type(stream.buffer).__name__]
line = sys.stdin.readline()         # a CRLF line: kept as sent, as a fresh interpreter does
print(repr([line, described(sys.stdin), described(sys.stdout), described(sys.stderr)]))
"""


@pytest.mark.parametrize("stderr", ["inherit", "log", "null"])
def test_std_streams_are_those_of_an_execd_handler(superd, tmp_path, stderr):
    probe = python_handler(tmp_path, "streams.py", STREAMS_PROBE)
    same = f"server: {probe}, stderr: {stderr}, env: {{PYTHONIOENCODING: 'latin-1:replace'}}"
    d = superd(f"""
services:
  warm: {{listen: "127.0.0.1:0", {same}, preload: true}}
  cold: {{listen: "127.0.0.1:0", {same}}}
""")
    d.log.wait_for(r"^preload-ready service=warm")
    answers = {}
    for name in ("cold", "warm", "warm"):
        with connect(d.address(name)) as sock:
            sock.sendall(b"one\r\ntwo\n")
            answers.setdefault(name, []).append(read_all(sock))
    cold = answers["cold"][0]
    assert b"'one\\r\\n'" in cold and b"'iso8859-1'" in cold and b"'replace'" in cold
    assert answers["warm"] == [cold, cold]


# -- the fork server alone, driven over its control socket ------------------------------

FORKSERVER = os.path.join(os.path.dirname(__file__), os.pardir, "superd", "forkserver.py")
SPLIT_HANDLER = r'''
import os
with open(os.environ.get("TOP_LOG", "top.log"), "a") as log:
    log.write("top %d\n" % os.getpid())

def main():
    os.write(1, b"main %d %s" % (os.getpid(), __name__.encode()))

if __name__ == "__main__":
    main()
'''


class ForkServer:
    """forkserver.py started as superd starts it: settings in argv, control on fd 3,
    and a ledger of `ledger` slots on fd 4 (none if 0)."""

    def __init__(self, tmp_path, handler, split_main, ledger=0, spawn=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = {"argv": [str(handler)], "workdir": str(tmp_path), "rlimits": [],
                    "uid": -1, "gid": -1, "groups": [], "split_main": split_main}
        if spawn:                               # a spawn server: posix_spawns spawn's argv
            settings.update(spawn={"path": spawn[0], "argv": spawn}, env=[])
        self.stderr = open(tmp_path / "forkserver.err", "w+b")
        actions = [(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                   (os.POSIX_SPAWN_DUP2, self.stderr.fileno(), 2)]
        self.ledger = None
        if ledger:
            settings["ledger"] = ledger
            self.ledger = os.memfd_create("test-ledger")
            os.ftruncate(self.ledger, ledger * 8)
            actions.append((os.POSIX_SPAWN_DUP2, self.ledger, 4))
        ours.send(encode_settings(settings))   # the first message: its settings
        self.pid = os.posix_spawn(
            sys.executable, [sys.executable, "-S", FORKSERVER, "test", "test"],
            dict(os.environ), setsid=True, file_actions=actions)
        theirs.close()
        ours.settimeout(30)
        self.control = ours
        self.status = None

    def message(self):
        data = self.control.recv(65536)
        return decode_message(data) if data else None

    def send(self, env):
        """Ask for one handler on a fresh socketpair; returns the client's end."""
        client, handler_end = socket.socketpair()
        client.settimeout(30)
        request = encode_request(env, False, "inherit")
        with handler_end:
            self.control.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", [handler_end.fileno()]))])
        return client

    def pids(self):
        """The next answer's pids (exit reports skipped)."""
        reply = self.message()
        while "exits" in reply:
            reply = self.message()
        return reply["pids"]

    def start(self, env):
        """One handler on a fresh socketpair; returns (pid, its output)."""
        client = self.send(env)
        [pid] = self.pids()
        with client:
            return pid, read_all(client)

    def wait(self):
        _, self.status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(self.status)

    def ledger_slots(self):
        """[(number, pid), ...], one per slot of the ledger."""
        flat = array.array("i", os.pread(self.ledger, 1 << 16, 0))
        return list(zip(flat[::2], flat[1::2]))

    def close(self):
        self.control.close()
        if self.ledger is not None:
            os.close(self.ledger)
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.wait()
        self.stderr.close()


@pytest.fixture
def forkserver(tmp_path):
    started = []

    def start(handler, split_main, ledger=0, spawn=None):
        server = ForkServer(tmp_path, handler, split_main, ledger, spawn)
        started.append(server)
        return server
    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("split_main", [True, False])
def test_split_main_runs_the_top_level_once_in_the_warm_interpreter(
        forkserver, tmp_path, split_main):
    handler = tmp_path / "split.py"
    handler.write_text(SPLIT_HANDLER)
    server = forkserver(handler, split_main)
    ready = server.message()
    assert ready["ready"] is True
    env = {"TOP_LOG": str(tmp_path / "top.log")}
    pids = []
    for _ in range(3):
        pid, output = server.start(env)
        assert output == b"main %d __main__" % pid
        pids.append(pid)
    tops = (tmp_path / "top.log").read_text().split()[1::2]
    if split_main:
        assert tops == [str(ready["pid"])], "the top level ran once, before any fork"
    else:
        assert tops == [str(pid) for pid in pids], "every handler ran its whole file"


def test_requests_queued_at_once_are_answered_in_one_message_in_order(forkserver, tmp_path):
    handler = tmp_path / "split.py"
    handler.write_text(SPLIT_HANDLER)
    server = forkserver(handler, True)
    assert server.message()["ready"] is True
    env = {"TOP_LOG": str(tmp_path / "top.log")}
    os.kill(server.pid, signal.SIGSTOP)          # all three are queued before it reads one
    try:
        clients = [server.send(env) for _ in range(3)]
    finally:
        os.kill(server.pid, signal.SIGCONT)
    pids = server.pids()
    outputs = []
    for client in clients:
        with client:
            outputs.append(read_all(client))
    assert outputs == [b"main %d __main__" % pid for pid in pids], "each pid is its request's"
    assert len(set(pids)) == 3


def test_a_handler_that_does_not_compile_ends_the_fork_server(forkserver, tmp_path):
    handler = tmp_path / "broken.py"
    handler.write_text("def main(:\n")
    server = forkserver(handler, True)
    assert server.message() is None, "no ready message: the control socket closes"
    assert server.wait() == 1
    server.stderr.seek(0)
    errors = server.stderr.read()
    assert b"SyntaxError" in errors and b"cannot compile" in errors


def test_programs_a_preloaded_handler_runs_inherit_its_environment(superd, tmp_path):
    handler = python_handler(tmp_path, "env.py", r'''
import json, os, subprocess
seen = subprocess.run(["/usr/bin/env", "-0"], capture_output=True, check=True).stdout
inherited = dict(item.split("=", 1) for item in seen.decode().split("\0") if item)
os.write(1, json.dumps([dict(os.environ), inherited]).encode())
''')
    d = start_preloaded(superd, f"""
services:
  e: {{listen: "127.0.0.1:0", server: {handler}, env: {{GREETING: hi}}, preload: true}}
""")
    for _ in range(2):
        with connect(d.address("e")) as sock:
            mapping, inherited = json.loads(read_all(sock))
        assert mapping == inherited
        assert mapping["GREETING"] == "hi" and mapping["REMOTE_ADDR"] == "127.0.0.1"


def test_an_oversized_request_is_refused_and_the_next_one_served(forkserver, tmp_path):
    handler = tmp_path / "split.py"
    handler.write_text(SPLIT_HANDLER)
    server = forkserver(handler, True)
    assert server.message()["ready"] is True
    client, handler_end = socket.socketpair()
    with client, handler_end:
        huge = encode_request({"BIG": "x" * 100_000}, False, "inherit")
        server.control.sendmsg([huge], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", [handler_end.fileno()]))])
        reply = server.message()
    assert "larger than" in reply["error"]
    pid, output = server.start({"TOP_LOG": str(tmp_path / "top.log")})
    assert output == b"main %d __main__" % pid


@pytest.mark.parametrize("spawn", [None, ["/bin/sh", "-c", "echo spawned $$"]])
def test_the_ledger_numbers_every_request_read_and_records_each_pid(forkserver, tmp_path, spawn):
    """Request N (refused ones counted) is recorded in slot N % slots as (N, pid),
    by a forked child or by a spawn server."""
    handler = tmp_path / "split.py"
    handler.write_text(SPLIT_HANDLER)
    server = forkserver(handler, True, ledger=2, spawn=spawn)
    assert server.message()["ready"] is True
    client, handler_end = socket.socketpair()
    with client, handler_end:                   # request 0: refused, and counted
        huge = encode_request({"BIG": "x" * 100_000}, False, "inherit")
        server.control.sendmsg([huge], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [handler_end.fileno()]))])
        assert "larger than" in server.message()["error"]
    env = {"TOP_LOG": str(tmp_path / "top.log")}
    first, _ = server.start(env)                # request 1: slot 1
    assert server.ledger_slots() == [(0, 0), (1, first)]
    second, _ = server.start(env)               # request 2: slot 0 again
    assert server.ledger_slots() == [(2, second), (1, first)]


START_PROGRAM_ON_FD_3 = r"""
import fcntl, os, sys
from superd.spawn import Spawner
def high(fd):
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved
three_r, three_w, four_r, four_w = map(high, os.pipe() + os.pipe())
os.dup2(four_w, 3, inheritable=False)        # a source fd that the first dup2 overwrites
pid = Spawner().start_program("/bin/sh", ["sh", "-c", "echo three >&3; echo four >&4"],
                              (three_w, 3), "/")
os.close(three_w), os.close(four_w), os.close(3)
_, status = os.waitpid(pid, 0)
print(os.read(three_r, 100), os.read(four_r, 100), status)
"""


def test_a_server_gets_each_of_its_fds_even_one_numbered_like_another_target():
    """start_program's fd 4 is the fd 3 it was given, not the fd 3 it just made."""
    out = subprocess.run([sys.executable, "-c", START_PROGRAM_ON_FD_3], capture_output=True,
                         timeout=30, check=True).stdout
    assert out.split() == [b"b'three\\n'", b"b'four\\n'", b"0"]


def test_settings_travel_whole_and_name_the_role_ps_shows():
    from superd.warmserver import server_role
    settings = {"argv": ["/x.py"], "split_main": True, "env": [("A", "é")], "ledger": 1024}
    assert decode_settings(encode_settings(settings)) == settings
    assert server_role(settings) == "preload-internal"
    assert server_role({**settings, "split_main": False}) == "preload"
    assert server_role({**settings, "spawn": {"path": "/bin/echo", "argv": ["/bin/echo"]}}) == "spawn"
