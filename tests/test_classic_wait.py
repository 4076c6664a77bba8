"""handlers/classic.py in wait mode: it owns a bound UDP or listening TCP socket.

The socket reaches it on fd 0 (inetd, xinetd), on fd 3 through LISTEN_FDS with
LISTEN_PID set to its own pid by a shell trampoline (systemd), or on fds 0, 1
and 3 at once (superd).  It answers until idle for --idle-exit seconds.
"""

import os
import socket
import subprocess

import pytest

from test_classic_support import (FD3_ONLY, FD3_TOO, TIMEOUT, ask, check_chargen,
                                  check_daytime, check_time, connect, echo_roundtrip, errfile,
                                  handler, procs, readable, recv_exact, tcp_listener,
                                  load_classic, trampoline, udp_socket, CHARGEN)

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest

UTC = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC"}


def finished(proc, errfile):
    assert proc.wait(TIMEOUT) == 0
    assert errfile.text() == ""


# -- UDP

@pytest.mark.parametrize("service, check", [
    ("echo", lambda data: data == b"ping"),
    ("daytime", lambda data: check_daytime(data) is None),
    ("time", lambda data: check_time(data) is None),
    ("chargen", lambda data: check_chargen(data) is None and len(data) <= 512),
])
def test_udp_on_fd0_answers_then_exits_when_idle(procs, errfile, service, check):
    sock = udp_socket()
    proc = procs.start(handler(service, "--idle-exit", "0.5"), stdin=sock,
                       stderr=errfile.file, env=UTC)
    for _ in range(3):
        assert check(ask(sock.getsockname()))
    finished(proc, errfile)              # no datagram for 0.5 s: exit 0


def test_udp_discard_answers_nothing(procs, errfile):
    sock = udp_socket()
    proc = procs.start(handler("discard", "--idle-exit", "0.5"), stdin=sock,
                       stderr=errfile.file)
    with udp_socket() as client:
        client.sendto(b"into the void", sock.getsockname())
        finished(proc, errfile)
        assert not readable(client, 0)


def test_udp_on_fd3_via_listen_fds(procs, errfile):
    sock = udp_socket()
    proc = procs.start(trampoline(handler("echo", "--idle-exit", "0.5"), FD3_ONLY),
                       stdin=sock, stderr=errfile.file)
    assert ask(sock.getsockname(), b"on fd 3") == b"on fd 3"
    finished(proc, errfile)


def test_udp_as_superd_passes_it_on_fds_0_1_and_3(procs, errfile):
    sock = udp_socket()
    proc = procs.start(trampoline(handler("time", "--idle-exit", "0.5"), FD3_TOO, names="time"),
                       stdin=sock, stderr=errfile.file)
    check_time(ask(sock.getsockname()))
    finished(proc, errfile)


def test_listen_fds_for_another_pid_is_ignored(procs, errfile):
    """LISTEN_PID names someone else: the variables are not ours; fd 0 is used."""
    sock = udp_socket()
    env = dict(UTC, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    proc = procs.start(handler("echo", "--idle-exit", "0.5"), stdin=sock,
                       stderr=errfile.file, env=env)
    assert ask(sock.getsockname(), b"fd 0") == b"fd 0"
    finished(proc, errfile)


def test_udp_flood_is_bounded_and_the_service_recovers(procs, errfile):
    """Thousands of datagrams from a client that reads none: one answer each at
    most, the excess dropped by the kernel; a new client is answered after."""
    sock = udp_socket()
    proc = procs.start(handler("echo", "--idle-exit", "1"), stdin=sock, stderr=errfile.file)
    with udp_socket() as flooder:
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flooder.setblocking(False)
        sent = 0
        for _ in range(5000):
            try:
                flooder.sendto(b"f" * 1024, sock.getsockname())
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
        assert sent > 0
        with udp_socket() as probe:
            probe.settimeout(1.0)
            for _ in range(int(TIMEOUT)):     # UDP may drop a probe in the flood: ask again
                probe.sendto(b"probe", sock.getsockname())
                try:
                    if probe.recv(65536) == b"probe":
                        break
                except socket.timeout:
                    continue
            else:
                raise AssertionError("no answer after the flood")
        assert proc.poll() is None
    finished(proc, errfile)


# -- TCP

def test_tcp_wait_serves_clients_concurrently_then_exits_when_idle(procs, errfile):
    listener = tcp_listener()
    proc = procs.start(handler("chargen", "--idle-exit", "0.5"), stdin=listener,
                       stderr=errfile.file)
    stalled = connect(listener.getsockname())     # never reads: its thread blocks
    assert readable(stalled, TIMEOUT)
    with connect(listener.getsockname()) as reader:
        assert recv_exact(reader, 74 * 200) == (CHARGEN * 3)[:74 * 200]
    stalled.close()
    finished(proc, errfile)


def test_tcp_wait_does_not_exit_while_a_client_is_connected(procs, errfile):
    listener = tcp_listener()
    proc = procs.start(handler("echo", "--idle-exit", "0.2"), stdin=listener,
                       stderr=errfile.file)
    with connect(listener.getsockname()) as client:
        echo_roundtrip(client)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.0)                # five idle periods: still serving the client
        echo_roundtrip(client)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    finished(proc, errfile)


def test_tcp_wait_on_fd3_via_listen_fds(procs, errfile):
    listener = tcp_listener()
    proc = procs.start(trampoline(handler("daytime", "--idle-exit", "0.5"), FD3_ONLY),
                       stdin=listener, stderr=errfile.file, env=UTC)
    for _ in range(3):
        with connect(listener.getsockname()) as client:
            data = client.recv(100)
            check_daytime(data)
    finished(proc, errfile)


def test_tcp_wait_at_most_max_clients_then_the_backlog(procs, errfile):
    """At MAX_CLIENTS (64) connections the handler stops accepting; the next
    client waits in the kernel backlog and is served when one leaves."""
    listener = tcp_listener()
    proc = procs.start(handler("echo", "--idle-exit", "0.5"), stdin=listener,
                       stderr=errfile.file)
    clients = [connect(listener.getsockname()) for _ in range(64)]
    for client in clients:
        echo_roundtrip(client)
    waiting = connect(listener.getsockname())     # the kernel completes the handshake
    waiting.sendall(b"queued")
    assert not readable(waiting, 0.3)             # not accepted: no echo yet
    clients.pop().close()
    assert recv_exact(waiting, 6) == b"queued"
    for client in clients + [waiting]:
        client.close()
    finished(proc, errfile)


def test_tcp_wait_immediate_disconnects_and_resets(procs, errfile):
    listener = tcp_listener()
    proc = procs.start(handler("chargen", "--idle-exit", "0.5"), stdin=listener,
                       stderr=errfile.file)
    for i in range(30):
        client = connect(listener.getsockname())
        if i % 2:                                  # close with RST instead of FIN
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()
    with connect(listener.getsockname()) as client:
        assert recv_exact(client, 74) == CHARGEN[:74]
    finished(proc, errfile)


def test_tcp_and_udp_together_via_listen_fds(procs, errfile):
    """LISTEN_FDS=2 (a socket unit with a stream and a datagram listener): both served."""
    listener, dgram = tcp_listener(), udp_socket()
    prefix = "exec 3<&0 4<&1 0</dev/null 1>/dev/null;"
    proc = procs.start(trampoline(handler("echo", "--idle-exit", "0.5"), prefix, count=2),
                       stdin=listener, stdout=dgram, stderr=errfile.file)
    with connect(listener.getsockname()) as client:
        echo_roundtrip(client, b"over tcp")
        assert ask(dgram.getsockname(), b"over udp") == b"over udp"
    finished(proc, errfile)


def test_idle_exit_zero_never_exits(procs, errfile):
    sock = udp_socket()
    proc = procs.start(handler("echo", "--idle-exit", "0"), stdin=sock, stderr=errfile.file)
    assert ask(sock.getsockname()) == b"ping"
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(1.0)
    assert ask(sock.getsockname()) == b"ping"


def test_tcp_wait_leaks_no_descriptors(procs, errfile):
    """After many connections (ended every way) the handler holds as many fds as before."""
    import psutil
    listener = tcp_listener()
    proc = procs.start(handler("echo", "--idle-exit", "0"), stdin=listener,
                       stderr=errfile.file)
    with connect(listener.getsockname()) as client:
        echo_roundtrip(client)                     # it is up and serving
    with connect(listener.getsockname()) as client:
        echo_roundtrip(client)
        # the first client's socket may still be open in its thread: wait for its close
        for _ in range(int(TIMEOUT * 10)):
            if not [c for c in psutil.Process(proc.pid).net_connections("tcp")
                    if c.status == psutil.CONN_CLOSE_WAIT]:
                break
            readable(client, 0.1)                  # a bounded wait between looks
        before = psutil.Process(proc.pid).num_fds()   # the listener, the wake pipe, one client
    for i in range(40):
        client = connect(listener.getsockname())
        if i % 3 == 0:
            echo_roundtrip(client)
        elif i % 3 == 1:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()
    with connect(listener.getsockname()) as client:
        echo_roundtrip(client)                     # each earlier client has been accepted
        for _ in range(int(TIMEOUT * 10)):         # and its thread closes its socket soon
            if psutil.Process(proc.pid).num_fds() <= before:
                break
            readable(client, 0.1)                  # a bounded wait between looks
        assert psutil.Process(proc.pid).num_fds() == before
    assert errfile.text() == ""


def forged_udp(src_port, dst, payload):
    """Send one UDP datagram to dst from 127.0.0.1:src_port, a port another
    socket holds (a raw socket writes the UDP header itself; root only)."""
    import struct
    header = struct.pack("!HHHH", src_port, dst[1], 8 + len(payload), 0)  # no checksum: IPv4 allows it
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.sendto(header + payload, (dst[0], 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="forging a source port needs a raw socket")
@pytest.mark.parametrize("service", ["echo", "chargen"])
def test_a_datagram_from_its_own_port_is_not_answered(procs, errfile, service):
    """Otherwise one forged datagram makes the handler answer itself for ever
    (and it never goes idle)."""
    sock = udp_socket()
    proc = procs.start(handler(service, "--idle-exit", "0.5"), stdin=sock,
                       stderr=errfile.file, env=UTC)
    forged_udp(sock.getsockname()[1], sock.getsockname(), b"loop")
    assert ask(sock.getsockname(), b"ping")        # it still answers others
    finished(proc, errfile)                         # and goes idle: no loop


@pytest.mark.parametrize("peer, own, answer", [
    (("127.0.0.1", 8007), {8007}, False),
    (("127.0.0.1", 8007), {8019}, True),
    (("::1", 8019, 0, 0), {8007, 8019}, False),
])
def test_datagrams_are_not_answered_to_the_handlers_own_ports(peer, own, answer):
    assert load_classic().answerable(peer, own) is answer


def test_an_idle_exit_longer_than_poll_can_sleep_is_waited_in_steps(procs, errfile):
    """poll(2) takes an int of milliseconds (~24.8 days at most)."""
    sock = udp_socket()
    proc = procs.start(handler("echo", "--idle-exit", "3000000"), stdin=sock,
                       stderr=errfile.file)
    assert ask(sock.getsockname(), b"still here") == b"still here"
    assert ask(sock.getsockname(), b"and here") == b"and here"
    assert proc.poll() is None and errfile.text() == ""


@pytest.mark.parametrize("family, wildcard", [(socket.AF_INET, "0.0.0.0"),
                                              (socket.AF_INET6, "::")])
def test_a_wildcard_udp_socket_answers_from_the_address_asked(procs, errfile, family, wildcard):
    """A connected client takes answers only from the address it sent to; on a
    host with several (127.0.0.2 here) the routed source would be another."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # dual stack, as superd binds
    sock.bind((wildcard, 0))
    port = sock.getsockname()[1]
    proc = procs.start(handler("echo", "--idle-exit", "0.5"), stdin=sock, stderr=errfile.file)
    targets = [("127.0.0.2", port)] + ([("::1", port)] if family == socket.AF_INET6 else [])
    for target in targets:
        kind = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        with socket.socket(kind, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(target)
            client.send(b"from %s" % target[0].encode())
            assert client.recv(2048) == b"from %s" % target[0].encode()
    finished(proc, errfile)
