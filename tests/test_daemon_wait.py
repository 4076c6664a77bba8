"""Wait mode (one handler owns the listener) and superd under socket activation."""

import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from conftest import TIMEOUT, connect, python_handler, read_all, start_superd

# A wait-mode TCP handler: reports what it was given, then serves `count`
# connections itself (each gets its pid), then exits.
TCP_WAIT = r'''
import json, os, socket, stat, sys
count = int(sys.argv[1])
listener = socket.socket(fileno=3)
info = {
    "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    "pid": os.getpid(),
    "acceptconn": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    "same03": os.fstat(0).st_ino == os.fstat(3).st_ino == os.fstat(1).st_ino,
    "blocking": listener.getblocking(),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
}
for _ in range(count):
    conn, _ = listener.accept()
    conn.sendall(json.dumps(info).encode())
    conn.close()
'''

# A wait-mode UDP handler: answers each datagram with its pid until idle.
UDP_WAIT = r'''
import os, socket
sock = socket.socket(fileno=0)
sock.settimeout(float(os.environ.get("IDLE", "0.5")))
try:
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(b"%d %s" % (os.getpid(), data), peer)
except socket.timeout:
    pass
'''


def test_tcp_wait_mode_gets_listener_on_0_1_3(superd, tmp_path):
    handler = python_handler(tmp_path, "tcpwait.py", TCP_WAIT)
    d = superd(f"""
services:
  owner: {{listen: "127.0.0.1:0", server: {handler}, args: ["2"], mode: wait}}
""")
    address = d.address("owner")
    with connect(address) as a:
        first = json.loads(read_all(a))
    with connect(address) as b:
        second = json.loads(read_all(b))
    assert first["pid"] == second["pid"], "one handler serves both while it owns the socket"
    assert first["env"] == {"LISTEN_FDS": "1", "LISTEN_PID": str(first["pid"]),
                            "LISTEN_FDNAMES": "owner"}
    assert first["acceptconn"] == 1 and first["same03"] and first["blocking"]
    assert max(first["fds"]) <= 4      # 0-3 and the fd listdir itself used
    d.log.wait_for(rf"^exit service=owner .*pid={first['pid']} status=0")
    with connect(address) as c:        # watched again: a new handler starts
        third = json.loads(read_all(c))
    assert third["pid"] != first["pid"]


def udp_ask(address, payload, timeout=TIMEOUT):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, address)
        return sock.recvfrom(2048)[0]


def test_udp_wait_mode_and_restart_after_idle(superd, tmp_path):
    handler = python_handler(tmp_path, "udpwait.py", UDP_WAIT)
    d = superd(f"""
services:
  dgram: {{listen: "127.0.0.1:0", protocol: udp, server: {handler}, env: {{IDLE: "0.3"}}}}
""")
    address = d.address("dgram")
    pid1, data = udp_ask(address, b"one").split(b" ")
    assert data == b"one"
    pid2, _ = udp_ask(address, b"two").split(b" ")
    assert pid1 == pid2
    d.log.wait_for(rf"^exit service=dgram .*pid={pid1.decode()} status=0")
    pid3, data = udp_ask(address, b"three").split(b" ")
    assert data == b"three" and pid3 != pid1


def test_wait_handler_exiting_at_once_backs_off_instead_of_spinning(superd, tmp_path):
    # It never reads, so the datagram stays queued and the socket stays readable.
    handler = python_handler(tmp_path, "quitter.py", "")
    d = superd(f"""
services:
  quitter: {{listen: "127.0.0.1:0", protocol: udp, server: {handler}}}
""")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"x", d.address("quitter"))
    d.log.wait_for(r"^wait-backoff level=warning service=quitter .*fast_exits=3")
    d.log.wait_for(r"^wait-backoff level=warning service=quitter .*fast_exits=4")
    starts_before = d.log.count(r"^exit service=quitter")
    cpu = psutil.Process(d.pid).cpu_times()
    assert cpu.user + cpu.system < 2.0, "superd must not spin on a looping wait service"
    assert starts_before <= 6


def test_superd_adopts_a_socket_passed_by_systemd(tmp_path):
    """LISTEN_FDS/LISTEN_PID with a TCP socket bound by the 'service manager'."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    config = tmp_path / "services.yaml"
    config.write_text(f"services:\n  cat: {{listen: '127.0.0.1:{port}', server: /bin/cat}}\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(TIMEOUT)
    # as systemd does: the socket on fd 3, LISTEN_PID the daemon's own pid
    trampoline = ("import os, sys; os.dup2(int(os.environ.pop('SOCKFD')), 3); "
                  "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", trampoline, sys.executable, "-m", "superd",
         "-f", str(config), "--ready-file", str(tmp_path / "ready.json")],
        env={"PATH": os.environ["PATH"], "LISTEN_FDS": "1", "LISTEN_FDNAMES": "cat",
             "SOCKFD": str(listener.fileno()), "NOTIFY_SOCKET": str(tmp_path / "notify")},
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        pass_fds=(listener.fileno(),))
    try:
        try:
            assert b"READY=1" in notify.recv(4096)
        except socket.timeout:
            os.killpg(proc.pid, 9)
            raise AssertionError(proc.stderr.read().decode())
        listener.close()                       # only superd holds it now
        with connect(("127.0.0.1", port)) as sock:
            sock.sendall(b"adopted\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"adopted\n"
        ready = json.loads((tmp_path / "ready.json").read_text())
        assert ready["services"] == {"cat": [f"127.0.0.1:{port}"]}
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(TIMEOUT)
        notify.close()
    assert "adopted=1" in proc.stderr.read().decode()


def test_superd_under_systemd_socket_activate(tmp_path):
    """The real systemd-socket-activate binds a unix socket; superd adopts it."""
    path = tmp_path / "sa.sock"
    config = tmp_path / "services.yaml"
    config.write_text(f"services:\n  cat: {{listen: 'unix:{path}', server: /bin/cat}}\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(TIMEOUT)
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(path), "--fdname=cat",
         "-E", f"NOTIFY_SOCKET={tmp_path / 'notify'}", "-E", f"PATH={os.environ['PATH']}",
         sys.executable, "-m", "superd", "-f", str(config)],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_line(proc.stderr, b"Listening on")
        # systemd-socket-activate starts superd on the first connection
        with connect(str(path)) as sock:
            sock.sendall(b"activated\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"activated\n"
        assert b"READY=1" in notify.recv(4096)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(TIMEOUT)
        notify.close()
    assert "adopted=1" in proc.stderr.read().decode()


def wait_for_line(stream, needle, timeout=TIMEOUT):
    """Read stream until a line containing needle (select bounds the wait)."""
    import select
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = stream.readline()
        if needle in line:
            return line
        if not line:
            break
    raise AssertionError(f"no line with {needle!r}")


# Serves every connection with its pid, for ever; ignores TERM when told to.
FOREVER_WAIT = r'''
import os, signal, socket, sys
if sys.argv[1:] == ["stubborn"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    conn.sendall(b"%d" % os.getpid())
    conn.close()
'''


@pytest.mark.parametrize("stubborn", [False, True])
def test_a_reload_that_drops_a_wait_listener_ends_its_handler(superd, tmp_path, stubborn):
    """The handler owns the listening socket: unless superd ends it, the
    removed service would go on accepting on its old address."""
    handler = python_handler(tmp_path, "forever.py", FOREVER_WAIT)
    args = '["stubborn"]' if stubborn else "[]"
    d = superd(f"""
services:
  moving: {{listen: "127.0.0.1:0", server: {handler}, args: {args}, mode: wait}}
  going: {{listen: "127.0.0.1:0", server: {handler}, args: {args}, mode: wait}}
""", args=["--grace", "0.5"])
    old = {name: d.address(name) for name in ("moving", "going")}
    pids = {}
    for name, address in old.items():
        with connect(address) as sock:
            pids[name] = int(read_all(sock))
    lines = d.reload(f"""
services:
  moving: {{listen: "127.0.0.2:0", server: {handler}, mode: wait}}
""")
    for name in ("moving", "going"):
        assert any(l.startswith(f"closed service={name} ") and f"handler={pids[name]}" in l
                   for l in lines), lines
        signal_name = "SIGKILL" if stubborn else "SIGTERM"
        d.log.wait_for(rf"^exit service={name} .*pid={pids[name]} signal={signal_name}")
        with pytest.raises(OSError):
            connect(old[name], timeout=2)      # nobody accepts there any more
    assert d.address("moving") != old["moving"]
    with connect(d.address("moving")) as sock:
        assert int(read_all(sock)) not in pids.values(), "the new address gets a new handler"
