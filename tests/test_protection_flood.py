"""Hostile tests (issue 4): floods, failing handlers and file-descriptor exhaustion.

Every flood is bounded in count and time, on loopback; clients play
thousands of sources by binding to distinct addresses of 127.0.0.0/8.
Whether superd spins is judged by its CPU time (psutil), which a spinning
loop burns at once; nothing here measures speed.
"""

import resource
import signal
import socket

import psutil
import pytest

from test_protection_support import (cpu_seconds, env_handler, exit_line, line_index,
                                     open_fds, open_from, proxy_v1, read_until_eof,
                                     shell_handler, talk)

LOOP_PAUSE = 1       # seconds: tuning.Thresholds.looping_pause, set by SUPERD_THRESHOLDS


def sources(count, first=1):
    """count distinct loopback addresses 127.0.x.y (x from 1, y from 1 to 254)."""
    return [f"127.0.{n // 254 + 1}.{n % 254 + 1}" for n in range(first, first + count)]


def test_silent_flood_against_a_proxy_service(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  p:
    listen: "127.0.0.1:0"
    server: {env}
    instances: 10
    proxy_protocol: v1
    proxy_from: [127.0.0.0/8]
    proxy_timeout: 30
  plain: {{listen: "127.0.0.1:0", server: {env}}}
""")
    address = d.address("p")
    header = proxy_v1("192.0.2.1", "198.51.100.1", 1111, 11)
    baseline = open_fds(d.pid)
    cpu = cpu_seconds(d.pid)
    silent = []
    try:
        for wave in range(2):
            silent += [open_from(address, "127.0.0.9") for _ in range(150)]
            # served although 150 silent connections came first, long before
            # any of them could time out (proxy_timeout 30 s, our timeout 10 s)
            answer = talk(address, b"well behaved", "127.0.0.10", before=header)
            assert answer is not None and answer[1] == b"well behaved", f"wave {wave}"
            assert talk(d.address("plain"), b"plain")[1] == b"plain"
        evicted = 300 - 64      # pending.MIN_PENDING connections wait per service
        d.log.wait_count(r"^refused service=p client=127\.0\.0\.9:\d+ conn=\d+ reason=proxy_evicted ", evicted)
        assert open_fds(d.pid) <= baseline + 64 + 4, "superd holds a bounded number of them"
        assert cpu_seconds(d.pid) - cpu < 2.0
    finally:
        for sock in silent:
            sock.close()


def connect_batch(address, addrs):
    """Connect one socket from each address (the kernel completes them all)."""
    socks = []
    try:
        for ip in addrs:
            socks.append(open_from(address, ip))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def flood_from(address, addrs, batch=100):
    """One connection from each address, batch by batch; returns how many were served."""
    served = 0
    for i in range(0, len(addrs), batch):
        socks = connect_batch(address, addrs[i:i + batch])
        for sock in socks:
            with sock:
                served += read_until_eof(sock) == b"ok\n"
    return served


def test_flood_from_thousands_of_sources_keeps_memory_flat(superd, tmp_path):
    ok = shell_handler(tmp_path, "ok.sh", "echo ok\n")
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {ok}, per_source_rate: {{limit: 1, per: 60}}}}
""")
    address = d.address("svc")
    assert flood_from(address, sources(300)) == 300          # warm up: every path taken once
    proc = psutil.Process(d.pid)
    rss = proc.memory_info().rss
    flood = sources(3000, first=301)
    assert flood_from(address, flood) == 3000
    grown = proc.memory_info().rss - rss
    assert grown < 10 << 20, f"superd grew by {grown >> 20} MB for 3000 sources"
    # still serving: a new source is served, a flooding source is remembered
    with open_from(address, "127.0.200.1") as sock:
        assert read_until_eof(sock) == b"ok\n"
    with open_from(address, flood[-1]) as sock:
        assert read_until_eof(sock) == b""
    d.log.wait_for(rf"^refused service=svc client={flood[-1]}:\d+ conn=\d+ reason=per_source_rate$")


def test_loop_protection_pauses_a_failing_service_once(superd, tmp_path):
    fail = shell_handler(tmp_path, "fail.sh", "echo fail\nexit 1\n")
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  fail: {{listen: "127.0.0.1:0", server: {fail}}}
  other: {{listen: "127.0.0.1:0", server: {env}}}
""", env={"SUPERD_THRESHOLDS": f"looping_pause={LOOP_PAUSE}"})
    address = d.address("fail")
    paused = r"^service-paused level=warning service=fail reason=looping "
    for hit in range(40):
        with open_from(address) as sock:
            port = sock.getsockname()[1]
            assert read_until_eof(sock) == b"fail\n"
        # superd logs the pause (if this exit causes one) before the exit itself
        d.log.wait_for(exit_line(port))
        if d.log.count(paused):
            break
    d.log.wait_for(paused)
    waiting = [open_from(address, timeout=LOOP_PAUSE + 15) for _ in range(3)]
    ports = [sock.getsockname()[1] for sock in waiting]
    try:
        assert talk(d.address("other"), b"other")[1] == b"other", "other services are served"
        d.log.wait_for(r"^service-resumed service=fail reason=looping$", timeout=LOOP_PAUSE + 15)
        for sock in waiting:
            assert read_until_eof(sock) == b"fail\n", "waited in the backlog, then served"
    finally:
        for sock in waiting:
            sock.close()
    resumed = line_index(d.log, r"^service-resumed service=fail reason=looping$")
    for port in ports:
        d.log.wait_for(exit_line(port))
        assert line_index(d.log, exit_line(port)) > resumed
    assert d.log.count(r"^service-paused ") == 1, "one loud line, not one per failure"
    assert d.log.count(r"^refused ") == 0
    d.send(signal.SIGUSR1)
    line = d.log.wait_for(r"^status service=fail ")
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    assert int(fields["exited_nonzero"]) == int(fields["started"]) >= 29
    assert (fields["refused"], fields["failed"], fields["running"]) == ("0", "0", "0")


def test_tiny_nofile_flood_does_not_spin_and_recovers(superd, tmp_path):
    echo = shell_handler(tmp_path, "cat.sh", "exec cat\n")
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  hold: {{listen: "127.0.0.1:0", server: {echo}, stderr: log}}
  other: {{listen: "127.0.0.1:0", server: {env}}}
""")
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (40, 40))
    address = d.address("hold")
    assert talk(d.address("other"), b"before")[1] == b"before"
    cpu = cpu_seconds(d.pid)
    flood = []
    try:
        # each running handler costs superd one fd (its stderr pipe): 80 are
        # more than 40 fds allow; the rest wait in the backlog
        for _ in range(80):
            sock = open_from(address)
            sock.sendall(b"x")
            flood.append(sock)
        d.log.wait_for(r"^paused level=warning service=hold .*EMFILE")
        # rests of 1 s each, again and again while the flood lasts
        d.log.wait_count(r"^paused level=warning service=hold .*EMFILE", 3, timeout=6)
        spent = cpu_seconds(d.pid) - cpu
        assert spent < 2.0, f"superd used {spent:.2f} s of CPU while out of fds"
    finally:
        for sock in flood:
            sock.close()
    # the flood is over: the handlers see EOF and end, their fds come back
    with open_from(address) as sock:
        sock.sendall(b"after the flood")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"after the flood"
    assert talk(d.address("other"), b"after")[1] == b"after"
