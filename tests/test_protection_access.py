"""Hostile tests (issue 4): access lists, per-source limits, rate and load pauses, rlimits.

A real superd on loopback; clients play several sources by binding to
127.0.0.2, 127.0.0.3, ... before they connect.  Handlers are shell scripts
(see test_protection_support) so that starts are cheap.
"""

import os
import re
import signal
import time

import pytest

from conftest import python_handler
from test_protection_support import (answer_of, env_handler, exit_line, finish, hold,
                                     line_index, open_from, read_until_eof, shell_handler,
                                     talk)


def refused_line(service, client_ip, reason):
    return rf"^refused service={service} client={re.escape(client_ip)}:\d+ conn=\d+ reason={re.escape(reason)}$"


def test_only_from_and_no_access_on_ipv4(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  allow: {{listen: "127.0.0.1:0", server: {env}, only_from: [127.0.0.2/31]}}
  deny:
    listen: "127.0.0.1:0"
    server: {env}
    only_from: [127.0.0.0/8]
    no_access: [127.0.0.4, 127.0.0.8/29]
""")
    table = [  # service, source, refusal reason (None: served)
        ("allow", "127.0.0.2", None),
        ("allow", "127.0.0.3", None),
        ("allow", "127.0.0.1", "only_from"),
        ("allow", "127.0.0.4", "only_from"),
        ("deny", "127.0.0.4", "no_access:127.0.0.4/32"),
        ("deny", "127.0.0.9", "no_access:127.0.0.8/29"),
        ("deny", "127.0.0.15", "no_access:127.0.0.8/29"),
        ("deny", "127.0.0.5", None),
        ("deny", "127.0.0.16", None),
    ]
    for service, source, reason in table:
        answer = talk(d.address(service), b"payload", source)
        if reason is None:
            assert answer is not None, (service, source)
            assert answer[0]["REMOTE_ADDR"] == source
            assert answer[1] == b"payload"
        else:
            assert answer is None, (service, source)
            d.log.wait_for(refused_line(service, source, reason))
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=allow .*started=2 .*refused=2 refused_only_from=2$")
    d.log.wait_for(r"^status service=deny .*started=2 .*refused=3 refused_no_access=3$")


def test_access_lists_on_ipv6_loopback(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  v6ok: {{listen: "[::1]:0", server: {env}, only_from: ["::1"]}}
  v4only: {{listen: "[::1]:0", server: {env}, only_from: [127.0.0.0/8]}}
  nov6: {{listen: "[::1]:0", server: {env}, no_access: ["::1/128"]}}
  netv6: {{listen: "[::1]:0", server: {env}, only_from: ["::/64"]}}
""")
    answer = talk(d.address("v6ok"), b"six")
    assert answer[0]["REMOTE_ADDR"] == "::1" and answer[0]["TCPLOCALIP"] == "::1"
    assert answer[1] == b"six"
    assert talk(d.address("netv6"))[0]["REMOTE_ADDR"] == "::1"
    assert talk(d.address("v4only")) is None
    d.log.wait_for(refused_line("v4only", "[::1]", "only_from"))
    assert talk(d.address("nov6")) is None
    d.log.wait_for(refused_line("nov6", "[::1]", "no_access:::1/128"))


def test_ipv4_mapped_client_matches_its_ipv4_rule(superd, tmp_path):
    """A bare port listens dual-stack: 127.0.0.1 arrives as ::ffff:127.0.0.1."""
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  lo8: {{listen: 0, server: {env}, only_from: [127.0.0.0/8]}}
  mapped_rule: {{listen: 0, server: {env}, only_from: ["::ffff:127.0.0.0/104"]}}
  deny2: {{listen: 0, server: {env}, no_access: [127.0.0.2]}}
""")
    port = d.address("lo8")[1]
    answer = talk(("127.0.0.1", port), b"mapped", "127.0.0.1")
    assert answer is not None, "127.0.0.1 through a dual-stack listener matches 127.0.0.0/8"
    assert answer[0]["REMOTE_ADDR"] == "127.0.0.1"       # plain IPv4, not ::ffff:...
    assert answer[0]["TCPLOCALIP"] == "127.0.0.1"
    assert answer[1] == b"mapped"
    assert talk(("::1", port)) is None, "a real IPv6 client is not in 127.0.0.0/8"
    d.log.wait_for(refused_line("lo8", "[::1]", "only_from"))

    assert talk(("127.0.0.1", d.address("mapped_rule")[1]), b"", "127.0.0.3") is not None

    port = d.address("deny2")[1]
    assert talk(("127.0.0.1", port), b"", "127.0.0.2") is None
    d.log.wait_for(refused_line("deny2", "127.0.0.2", "no_access:127.0.0.2/32"))
    assert talk(("127.0.0.1", port), b"", "127.0.0.3") is not None


def test_per_source_greedy_client_does_not_starve_others(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, per_source: 2}}
""")
    address = d.address("svc")
    greedy = [hold(address, "127.0.0.2") for _ in range(2)]
    assert all(greedy), "the first per_source connections are served"
    try:
        for _ in range(3):
            assert hold(address, "127.0.0.2") is None, "over per_source: closed at once"
        d.log.wait_count(r"^refused service=svc client=127\.0\.0\.2:\d+ conn=\d+ reason=per_source$", 3)
        other = talk(address, b"still served", "127.0.0.3")
        assert other == (other[0], b"still served") and other[0]["REMOTE_ADDR"] == "127.0.0.3"
        # one greedy handler ends: its slot is free again
        port = greedy[0].getsockname()[1]
        finish(greedy.pop(0))
        d.log.wait_for(exit_line(port))
        assert talk(address, b"again", "127.0.0.2")[1] == b"again"
    finally:
        for sock in greedy:
            sock.close()
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=svc .*refused=3 refused_per_source=3$")


def served_after_retries(address, source, within):
    """A client that retries at a polite pace until it is served (or `within` s pass)."""
    deadline = time.monotonic() + within
    while True:
        answer = talk(address, b"retry", source)
        if answer is not None:
            return answer
        assert time.monotonic() < deadline, f"{source} still refused after {within} s"
        time.sleep(0.25)    # the retrying client's own pace, not a synchronisation


def test_per_source_rate_refuses_then_recovers(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, per_source_rate: {{limit: 2, per: 2}}}}
""")
    address = d.address("svc")
    assert talk(address, b"1", "127.0.0.2") and talk(address, b"2", "127.0.0.2")
    assert talk(address, b"3", "127.0.0.2") is None, "the third connection within 2 s is refused"
    d.log.wait_for(refused_line("svc", "127.0.0.2", "per_source_rate"))
    assert talk(address, b"other", "127.0.0.3")[1] == b"other", "another source is still served"
    assert talk(address, b"other", "127.0.0.3")[1] == b"other"
    assert served_after_retries(address, "127.0.0.2", within=12)[1] == b"retry"


def test_rate_pauses_once_clients_wait_then_recover(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, rate: {{limit: 3, per: 2, pause: 3}}}}
  other: {{listen: "127.0.0.1:0", server: {env}}}
""")
    address = d.address("svc")
    for i in range(3):
        assert talk(address, b"burst")[1] == b"burst"
    d.log.wait_for(r"^service-paused level=warning service=svc reason=rate seconds=3 limit=3 per=2$")
    waiting = [open_from(address) for _ in range(2)]     # fewer than limit: one pause only
    for sock in waiting:
        sock.sendall(b"waited")
        sock.shutdown(1)
    assert talk(d.address("other"), b"other")[1] == b"other", "other services are not paused"
    d.log.wait_for(r"^service-resumed service=svc reason=rate$")
    ports = [sock.getsockname()[1] for sock in waiting]
    for sock in waiting:
        with sock:
            answer = answer_of(sock)
            assert answer is not None and answer[1] == b"waited", "waited in the backlog, then served"
    resumed = line_index(d.log, r"^service-resumed service=svc reason=rate$")
    for port in ports:
        d.log.wait_for(exit_line(port))
        assert line_index(d.log, exit_line(port)) > resumed
    assert d.log.count(r"^service-paused .*service=svc") == 1, d.log.text()
    assert d.log.count(r"^refused ") == 0


def write_load(path, load):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{load} {load} {load} 1/100 4242\n")
    os.replace(tmp, path)


def test_rate_holds_a_burst_already_waiting_in_the_backlog(superd, tmp_path):
    """Clients piled up in the backlog (here while the load was high) are started
    no faster than `rate` allows: the rest wait for the pause to end."""
    env = env_handler(tmp_path)
    load = tmp_path / "loadavg"
    write_load(load, 9.0)
    d = superd(f"""
services:
  svc:
    listen: "127.0.0.1:0"
    server: {env}
    max_load: 4
    rate: {{limit: 3, per: 2, pause: 3}}
""", env={"SUPERD_LOADAVG_FILE": str(load)})
    d.log.wait_for(r"^service-paused level=warning service=svc reason=load ")
    burst = [open_from(d.address("svc")) for _ in range(6)]
    for sock in burst:
        sock.sendall(b"burst")
        sock.shutdown(1)
    write_load(load, 0.1)
    d.log.wait_for(r"^service-resumed service=svc reason=load$")
    d.log.wait_for(r"^service-paused level=warning service=svc reason=rate ")
    d.log.wait_for(r"^service-resumed service=svc reason=rate$")
    ports = [sock.getsockname()[1] for sock in burst]
    for sock in burst:
        with sock:
            assert answer_of(sock)[1] == b"burst"
    for port in ports:
        d.log.wait_for(exit_line(port))
    resumed = line_index(d.log, r"^service-resumed service=svc reason=rate$")
    early = [p for p in ports if line_index(d.log, exit_line(p)) < resumed]
    assert len(early) == 3, f"{len(early)} of the burst started before the rate pause ended"


def test_max_load_pauses_and_resumes_with_injected_load(superd, tmp_path):
    env = env_handler(tmp_path)
    load = tmp_path / "loadavg"
    write_load(load, 0.1)
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, max_load: 4}}
  other: {{listen: "127.0.0.1:0", server: {env}}}
""", env={"SUPERD_LOADAVG_FILE": str(load)})
    address = d.address("svc")
    assert talk(address, b"calm")[1] == b"calm"
    write_load(load, 9.0)
    d.log.wait_for(r"^service-paused level=warning service=svc reason=load load=9 max_load=4$")
    queued = open_from(address)
    queued.sendall(b"queued")
    queued.shutdown(1)
    assert talk(d.address("other"), b"other")[1] == b"other", "other services are not paused"
    mark = len(d.log.lines)
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=svc .*accepted=1 .*refused=0$", start=mark)
    write_load(load, 0.1)
    d.log.wait_for(r"^service-resumed service=svc reason=load$")
    with queued:
        assert answer_of(queued)[1] == b"queued", "the queued client is served after the load falls"
    assert d.log.count(r"^service-paused .*service=svc") == 1
    assert d.log.count(r"^refused ") == 0


LIMITS = r'''
import os
with open("/proc/self/limits", "rb") as f:
    os.write(1, b"pid %d\n" % os.getpid() + f.read())
'''

# /proc/self/limits row name -> (rlimits key, value in the file, expected number)
RLIMIT_ROWS = {
    "Max open files": ("nofile", "77", 77),
    "Max processes": ("nproc", "4321", 4321),
    "Max address space": ("as", "1G", 1 << 30),
    "Max data size": ("data", "768M", 768 << 20),
    "Max stack size": ("stack", "4M", 4 << 20),
    "Max cpu time": ("cpu", "33", 33),
    "Max file size": ("fsize", "5M", 5 << 20),
    "Max core file size": ("core", "64K", 64 << 10),
}


def test_every_rlimit_is_in_force_inside_the_handler(superd, tmp_path):
    handler = python_handler(tmp_path, "limits.py", LIMITS)
    rlimits = ", ".join(f"{key}: {value}" for key, value, _ in RLIMIT_ROWS.values())
    d = superd(f"""
services:
  lim: {{listen: "127.0.0.1:0", server: {handler}, rlimits: {{{rlimits}}}}}
""")
    with open_from(d.address("lim")) as sock:
        text = read_until_eof(sock).decode()
    first, *rows = text.splitlines()
    pid = int(first.split()[1])
    seen = {}
    for row in rows:
        m = re.match(r"(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", row)
        if m:
            seen[m.group(1)] = (m.group(2), m.group(3))
    for name, (_, _, expected) in RLIMIT_ROWS.items():
        assert seen[name] == (str(expected), str(expected)), (name, seen.get(name))
    # prlimit execs the handler: the pid superd tracks is the handler's own
    d.log.wait_for(rf"^exit service=lim client=\S+ conn=\d+ pid={pid} status=0 ")


def test_fsize_limit_stops_a_handler_that_writes_too_much(superd, tmp_path):
    """fsize is enforced, and SIGXFSZ has its default action (superd ignores nothing for it)."""
    writer = shell_handler(tmp_path, "writer.sh", f"exec head -c 3000000 /dev/zero > {tmp_path}/big\n")
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  writer: {{listen: "127.0.0.1:0", server: {writer}, rlimits: {{fsize: 1M}}}}
  other: {{listen: "127.0.0.1:0", server: {env}}}
""")
    talk(d.address("writer"))
    d.log.wait_for(r"^exit service=writer .*signal=SIGXFSZ")
    assert (tmp_path / "big").stat().st_size == 1 << 20
    assert talk(d.address("other"), b"fine")[1] == b"fine"


def test_per_source_still_counts_running_handlers_after_a_reload(superd, tmp_path):
    env = env_handler(tmp_path)
    config = f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, per_source: 1}}
"""
    d = superd(config)
    address = d.address("svc")
    first = hold(address, "127.0.0.2")
    try:
        assert first is not None
        assert hold(address, "127.0.0.2") is None
        d.reload(config)                       # the same file: nothing should change
        second = hold(address, "127.0.0.2")
        if second is not None:
            second.close()
        assert second is None, "per_source 1, yet a second handler for 127.0.0.2 runs"
    finally:
        first.close()


def test_a_per_source_refusal_does_not_use_up_the_per_source_rate(superd, tmp_path):
    """Refused attempts do not count: only the two that started do."""
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  svc: {{listen: "127.0.0.1:0", server: {env}, per_source: 1, per_source_rate: {{limit: 2, per: 600}}}}
""")
    address = d.address("svc")
    first = hold(address, "127.0.0.2")
    assert first is not None
    for _ in range(3):
        assert talk(address, b"no", "127.0.0.2") is None
    d.log.wait_count(refused_line("svc", "127.0.0.2", "per_source"), 3)
    finish(first)
    d.wait_running("svc", 0)
    assert talk(address, b"second", "127.0.0.2")[1] == b"second"
    d.wait_running("svc", 0)                   # reaped: per_source has room again
    assert talk(address, b"third", "127.0.0.2") is None
    d.log.wait_for(refused_line("svc", "127.0.0.2", "per_source_rate"))
