"""reuse_port: several superds on one address (SO_REUSEPORT); and what a stop
does to the connections the kernel queued on a listener that closes."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import TIMEOUT, connect, read_all

SUPERDCTL = str(Path(sys.executable).with_name("superdctl"))


def ctl(d, *args):
    run = subprocess.run([SUPERDCTL, "--ready-file", str(d.ready_path), "--json", *args],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_two_instances_share_a_port_and_a_stop_serves_what_it_had_queued(superd, tmp_path):
    a = superd("""
services:
  shared: {listen: "127.0.0.1:0", server: /bin/cat, reuse_port: true, instances: 1}
""", name="a.yaml", args=["--grace", "10"])
    port = a.address("shared")[1]
    b = superd(f"""
services:
  shared: {{listen: "127.0.0.1:{port}", server: /bin/cat, reuse_port: true}}
""", name="b.yaml")
    ctl(b, "pause", "shared")               # b's share of the clients waits in its backlog
    held = []
    while not ctl(a, "list")["connections"]:   # until one of ours fills a's only slot
        held.append(connect(("127.0.0.1", port)))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not ctl(a, "list")["connections"]:
            pass
        assert len(held) < 40, "the kernel spreads connections over both sockets"
    clients = []
    for n in range(24):                     # a is full, b paused: all wait in a backlog
        sock = connect(("127.0.0.1", port))
        sock.sendall(b"%d" % n)
        sock.shutdown(socket.SHUT_WR)
        clients.append((b"%d" % n, sock))
    a.send(signal.SIGTERM)                  # a drains its queue: those are served, not reset
    drained = a.log.wait_for(r"^drained service=shared ")
    for sock in held:
        sock.shutdown(socket.SHUT_WR)       # its cat gets end of file and ends
    assert a.proc.wait(TIMEOUT) == 0
    ctl(b, "resume", "shared")
    answers = []
    for payload, sock in clients:
        try:
            answers.append(read_all(sock) == payload)
        except ConnectionResetError:
            answers.append("reset")
        sock.close()
    for sock in held:
        sock.close()
    assert answers == [True] * len(clients), answers
    assert int(drained.rsplit("connections=", 1)[1]) >= 1
    assert a.log.count(r"^refused ") == b.log.count(r"^refused ") == 0


def test_without_reuse_port_the_second_instance_cannot_bind(superd, tmp_path):
    a = superd("""
services:
  alone: {listen: "127.0.0.1:0", server: /bin/cat}
""", name="a.yaml")
    port = a.address("alone")[1]
    config = tmp_path / "b.yaml"
    config.write_text(f'services:\n  alone: {{listen: "127.0.0.1:{port}", server: /bin/cat, '
                      f'reuse_port: true}}\n')
    run = subprocess.run([sys.executable, "-m", "superd", "-f", str(config)],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env={"PATH": "/usr/bin:/bin", "RUNTIME_DIRECTORY": str(tmp_path)})
    assert run.returncode == 71 and "cannot-listen" in run.stderr and "EADDRINUSE" in run.stderr


def test_reuse_port_is_for_ip_addresses_only(tmp_path):
    config = tmp_path / "services.yaml"
    config.write_text(f'services:\n  u: {{listen: "unix:{tmp_path}/s", server: /bin/cat, '
                      'reuse_port: true}\n')
    run = subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(config)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 78
    assert f"{config}:2: services.u.reuse_port: only IP addresses can be shared" in run.stderr


def test_a_stop_serves_what_the_kernel_had_queued_on_any_listener(superd, tmp_path):
    """Not only reuse_port: closing any listener resets its queue, so a stop drains it."""
    d = superd("""
services:
  one: {listen: "127.0.0.1:0", server: /bin/cat, instances: 1}
""", args=["--grace", "10"])
    held = connect(d.address("one"))
    while not ctl(d, "list")["connections"]:
        pass
    clients = []
    for n in range(10):                     # the only slot is taken: they wait in the backlog
        sock = connect(d.address("one"))
        sock.sendall(b"%d" % n)
        sock.shutdown(socket.SHUT_WR)
        clients.append((b"%d" % n, sock))
    d.send(signal.SIGTERM)
    d.log.wait_for(r"^drained service=one .* connections=10$")
    held.shutdown(socket.SHUT_WR)
    assert d.proc.wait(TIMEOUT) == 0
    assert [read_all(sock) == payload for payload, sock in clients] == [True] * 10
    for _, sock in clients:
        sock.close()
    held.close()
