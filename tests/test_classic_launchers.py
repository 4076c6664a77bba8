"""handlers/classic.py unchanged under the launchers users run it with:
systemd-socket-activate (with and without --accept and --inetd, and --datagram),
xinetd (wait = no for TCP, wait = yes for UDP) and ucspi-tcp's tcpserver.

Ports are never guessed.  systemd-socket-activate refuses port 0, so the test
binds the socket itself on port 0 and hands it over through LISTEN_FDS, which
systemd-socket-activate passes through to the handler at the same position.
xinetd binds `port = 0` itself: the test waits for its "Started working" line
and reads the bound address from the kernel with psutil.  tcpserver -1 prints
its port.  Every launcher runs in its own process group, killed at teardown.
"""

import getpass
import os
import select
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from test_classic_support import (CHARGEN, CLASSIC, FD3_ONLY, TIMEOUT, ask, check_daytime,
                                  check_time, connect, echo_roundtrip, errfile, handler, procs,
                                  read_all, recv_exact, tcp_listener, trampoline, udp_socket)

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest

# The launchers' children find `python3` (the handler's #! line) next to this interpreter.
PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
ENV = {"PATH": PATH, "TZ": "UTC"}


def launcher(name):
    path = shutil.which(name, path=PATH)
    assert path, "%s is not installed (.ci/run installs it)" % name
    return path


def wait_for_output(stream, needle, timeout=TIMEOUT):
    """Read a pipe until `needle` appears; returns all read.  Blocks in select, never sleeps."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError("no %r within %s s; got %r" % (needle, timeout, seen))
        data = os.read(stream.fileno(), 4096)
        if not data:
            raise AssertionError("EOF before %r; got %r" % (needle, seen))
        seen += data
    return seen


# -- systemd-socket-activate

def socket_activate(procs, errfile, sock, options, service, *args):
    """systemd-socket-activate OPTIONS classic.py SERVICE ARGS, given `sock` on fd 3."""
    argv = [launcher("systemd-socket-activate"), *options, *handler(service, *args)]
    return procs.start(trampoline(argv, FD3_ONLY), stdin=sock, stderr=errfile.file, env=ENV)


@pytest.mark.parametrize("options", [["--accept"], ["--accept", "--inetd"]],
                         ids=["accept-fd3", "accept-inetd"])
def test_socket_activate_accept_tcp(procs, errfile, options):
    """One handler per connection: on fd 3 with LISTEN_FDS, or on fd 0/1 (--inetd)."""
    listener = tcp_listener()
    socket_activate(procs, errfile, listener, options, "echo")
    for _ in range(3):
        with connect(listener.getsockname()) as client:
            echo_roundtrip(client)
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == b""


@pytest.mark.parametrize("options", [[], ["--inetd"]], ids=["listen-fd3", "listen-inetd"])
def test_socket_activate_wait_tcp(procs, errfile, options):
    """Accept=no: the handler gets the listening socket (fd 3, or fd 0 with --inetd),
    accepts for itself, and exits when idle."""
    listener = tcp_listener()
    proc = socket_activate(procs, errfile, listener, options, "echo", "--idle-exit", "0.5")
    first, second = connect(listener.getsockname()), connect(listener.getsockname())
    echo_roundtrip(first, b"first")
    echo_roundtrip(second, b"second")              # both at once: wait mode uses threads
    first.close()
    second.close()
    assert proc.wait(TIMEOUT) == 0                  # systemd-socket-activate exec'd the handler
    assert "Traceback" not in errfile.text()


@pytest.mark.parametrize("options", [["--datagram"], ["--datagram", "--inetd"]],
                         ids=["datagram-fd3", "datagram-inetd"])
def test_socket_activate_datagram(procs, errfile, options):
    sock = udp_socket()
    proc = socket_activate(procs, errfile, sock, options, "time", "--idle-exit", "0.5")
    check_time(ask(sock.getsockname()))
    check_time(ask(sock.getsockname()))
    assert proc.wait(TIMEOUT) == 0
    assert "Traceback" not in errfile.text()


def test_socket_activate_accept_daytime_and_chargen(procs, errfile):
    listener = tcp_listener()
    socket_activate(procs, errfile, listener, ["--accept"], "daytime")
    with connect(listener.getsockname()) as client:
        check_daytime(read_all(client))
    chargen = tcp_listener()
    socket_activate(procs, errfile, chargen, ["--accept", "--inetd"], "chargen")
    with connect(chargen.getsockname()) as client:
        assert recv_exact(client, 74 * 100) == (CHARGEN * 2)[:74 * 100]


# -- xinetd

XINETD_SERVICE = """
service classic-%(name)s
{
	type        = UNLISTED
	id          = classic-%(name)s
	socket_type = %(socket_type)s
	protocol    = %(protocol)s
	wait        = %(wait)s
	bind        = 127.0.0.1
	port        = 0
	server      = %(server)s
	server_args = %(args)s
	env         = PATH=%(path)s TZ=UTC
%(user)s}
"""


def xinetd(procs, tmp_path, services):
    """Start xinetd on `services` (dicts for XINETD_SERVICE); returns {name: (host, port)}."""
    user = "\tuser        = %s\n" % getpass.getuser() if os.geteuid() == 0 else ""
    text = "defaults\n{\n\tinstances = 50\n}\n" + "".join(
        XINETD_SERVICE % dict(svc, server=CLASSIC, path=PATH, user=user) for svc in services)
    conf = tmp_path / "xinetd.conf"
    conf.write_text(text)
    proc = procs.start([launcher("xinetd"), "-dontfork", "-f", str(conf),
                        "-pidfile", str(tmp_path / "xinetd.pid"), "-filelog", "/dev/stderr"],
                       stderr=subprocess.PIPE, env=ENV)
    wait_for_output(proc.stderr, b"Started working")
    bound = {}
    for conn in psutil.Process(proc.pid).net_connections(kind="inet4"):
        kind = "udp" if conn.type == socket.SOCK_DGRAM else "tcp"
        bound.setdefault(kind, []).append(tuple(conn.laddr))
    return bound


def test_xinetd_tcp_nowait(procs, tmp_path):
    """xinetd hands each connection over on fds 0, 1 and 2: fd 2 is the client too."""
    bound = xinetd(procs, tmp_path, [
        dict(name="echo", socket_type="stream", protocol="tcp", wait="no", args="echo"),
    ])
    (address,) = bound["tcp"]
    for _ in range(2):
        with connect(address) as client:
            echo_roundtrip(client)
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == b""       # nothing but the echo on the socket


def test_xinetd_tcp_nowait_time(procs, tmp_path):
    bound = xinetd(procs, tmp_path, [
        dict(name="time", socket_type="stream", protocol="tcp", wait="no", args="time"),
    ])
    (address,) = bound["tcp"]
    with connect(address) as client:
        check_time(read_all(client))


def test_xinetd_udp_wait(procs, tmp_path):
    """wait = yes: the handler gets the UDP socket on fds 0, 1, 2 and keeps it until idle."""
    bound = xinetd(procs, tmp_path, [
        dict(name="udp-echo", socket_type="dgram", protocol="udp", wait="yes",
             args="echo --idle-exit 0.5"),
    ])
    (address,) = bound["udp"]
    assert ask(address, b"one") == b"one"
    assert ask(address, b"two") == b"two"


def test_xinetd_udp_wait_daytime(procs, tmp_path):
    bound = xinetd(procs, tmp_path, [
        dict(name="udp-daytime", socket_type="dgram", protocol="udp", wait="yes",
             args="daytime --idle-exit 0.5"),
    ])
    (address,) = bound["udp"]
    check_daytime(ask(address))


# -- tcpserver

def test_tcpserver(procs, errfile):
    proc = procs.start([launcher("tcpserver"), "-1", "-q", "-R", "-H", "127.0.0.1", "0",
                        *handler("echo")], stdout=subprocess.PIPE, stderr=errfile.file, env=ENV)
    port = int(wait_for_output(proc.stdout, b"\n").split()[0])
    for _ in range(2):
        with connect(("127.0.0.1", port)) as client:
            echo_roundtrip(client)
            client.shutdown(socket.SHUT_WR)
            assert read_all(client) == b""
    assert errfile.text() == ""
