"""Many hosts behind real HAProxy (issue 15, item 5).

A private network of namespaces (tests/netns_support.py), 10.77.0.0/24:

    client 10.77.0.21, .22 (allowed), .40 (a stranger)
       |
    lb 10.77.0.1: HAProxy, frontends :80 (env) and :81 (limited)
       |   send-proxy-v2, check every 100 ms
    h1 10.77.0.11, h2 .12, h3 .13: one real superd each

Every host serves `env` (all three hosts; only_from the clients' /28, which
leaves out HAProxy's own address) and `limited` (per_source: 2; h1 only,
behind :81), both `proxy_protocol: v2` with `proxy_from` HAProxy alone, and
`internal: status` on its own loopback.  The handler writes the environment
superd gave it, a blank line, then echoes its input.  Clients connect from
their namespace with sockets made there, so the address HAProxy sees, and
names in its header, is known and differs from HAProxy's own.

One HAProxy and three superd hosts serve the whole module.  Under load from
client threads, one host is upgraded in place (superdctl upgrade), then hosts
are taken down (drained then stopped, stopped, killed), each started again
until HAProxy has it UP; each of those tests prints how many client
connections failed.
Teardown kills haproxy, every superd and handler (every pid left in the
namespaces) and deletes the namespaces, failed tests and set-up included.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TIMEOUT
from netns_support import HAPROXY_HEAD, HAProxy, Lab, socket_in, start_superd_in
from test_protection_support import proxy_v2

LB = "10.77.0.1"
HOSTS = {"h1": "10.77.0.11", "h2": "10.77.0.12", "h3": "10.77.0.13"}
CLIENT_A, CLIENT_B, STRANGER = "10.77.0.21", "10.77.0.22", "10.77.0.40"
ENV_FRONT, LIMITED_FRONT = (LB, 80), (LB, 81)

ENV_NAMES = ("HOST", "SUPERD_SERVICE", "SUPERD_CONN", "REMOTE_ADDR", "REMOTE_PORT",
             "TCPREMOTEIP", "TCPREMOTEPORT", "REMOTE_HOST", "TCPLOCALIP", "TCPLOCALPORT")
HANDLER = ("#!/bin/sh\nprintf '%s\\n' " + " ".join(f'"{n}=${n}"' for n in ENV_NAMES)
           + "\necho\nexec cat\n")

SUPERD = """\
services:
  env:
    listen: {ip}:7000
    server: {handler}
    env: {{HOST: {host}}}
    proxy_protocol: v2
    proxy_from: [{lb}/32]
    only_from: [10.77.0.16/28]
  limited:
    listen: {ip}:7001
    server: {handler}
    env: {{HOST: {host}}}
    proxy_protocol: v2
    proxy_from: [{lb}/32]
    per_source: 2
  status:
    listen: 127.0.0.1:9100
    internal: status
"""

CHECK = "send-proxy-v2 check inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2"
HAPROXY = HAPROXY_HEAD + f"""\
frontend env
    bind {LB}:80
    default_backend env

frontend limited
    bind {LB}:81
    default_backend limited

backend env
    balance roundrobin
""" + "".join(f"    server {h} {a}:7000 {CHECK}\n" for h, a in HOSTS.items()) + f"""
backend limited
    server h1 {HOSTS['h1']}:7001 {CHECK}
"""

ALL_UP = {**{("env", h): "UP" for h in HOSTS}, ("limited", "h1"): "UP"}


class Cluster:
    """The lab, the three superd hosts and HAProxy (see the module doc)."""

    def __init__(self, root):
        self.root = root
        self.handler = root / "env.sh"
        self.handler.write_text(HANDLER)
        self.handler.chmod(0o755)
        self.hosts = {}
        self.haproxy = None
        self.lab = Lab(f"sdha{os.getpid()}", "lb", LB)
        try:
            for host, address in HOSTS.items():
                self.lab.attach(host, [address])
            self.lab.attach("client", [CLIENT_A, CLIENT_B, STRANGER])
            for host in HOSTS:
                self.start(host)
            self.haproxy = HAProxy(self.lab, "lb", root, HAPROXY)
            self.haproxy.wait_states(ALL_UP)
        except BaseException:
            self.close()
            raise

    def start(self, host):
        if host in self.hosts:
            self.hosts[host].kill()       # gone already: this closes its notify socket
        text = SUPERD.format(ip=HOSTS[host], host=host, lb=LB, handler=self.handler)
        self.hosts[host] = start_superd_in(self.lab, host, self.root / host, text)

    def close(self):
        try:
            if self.haproxy:
                self.haproxy.stop()
            for daemon in self.hosts.values():
                daemon.kill()
        finally:
            self.lab.close()

    def status(self, host):
        """superdctl --json status of that host, by service name."""
        ctl = Path(sys.executable).with_name("superdctl")
        out = subprocess.run([str(ctl), "--ready-file", str(self.hosts[host].ready_path),
                              "--json", "status"],
                             capture_output=True, text=True, timeout=30, check=True)
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def settle(self, host):
        """Wait until the host runs no handler and has logged every exit it counted."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            status = self.status(host)
            exits = sum(sum(s["exits"].values()) for s in status.values())
            running = sum(s["running"] for s in status.values())
            if running == 0 and self.hosts[host].log.count(r"^exit ") == exits:
                return status
            assert time.monotonic() < deadline, f"{host} never settled: {status}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (.ci/run installs Debian's package)")
    cluster = None
    try:
        cluster = Cluster(tmp_path_factory.mktemp("haproxy"))
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()


# -- a client in its own namespace ------------------------------------------------

def open_from(lab, source, front):
    sock = socket_in(lab.ns("client"))
    try:
        sock.bind((source, 0))
        sock.connect(front)
    except BaseException:
        sock.close()
        raise
    return sock


def read_head(sock):
    """The handler's environment (up to its blank line), or None if closed unserved."""
    buf = b""
    try:
        while b"\n\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return None
            buf += data
    except ConnectionResetError:
        return None
    head, _, rest = buf.partition(b"\n\n")
    env = dict(line.split("=", 1) for line in head.decode().split("\n"))
    env[""] = rest               # echoed bytes that came with the head
    return env


def read_rest(sock):
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def talk(lab, source, front=ENV_FRONT, payload=b"ping\n"):
    """(env, the client's own port) of one served connection; env None if refused."""
    with open_from(lab, source, front) as sock:
        return converse(sock, payload), sock.getsockname()[1]


def converse(sock, payload=b"ping\n"):
    """Read the handler's head, send payload, half-close, check the echo; the env
    (None if the connection was closed unserved)."""
    env = read_head(sock)
    if env is not None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        echoed = env.pop("") + read_rest(sock)
        assert echoed == payload, f"echo {echoed!r}"
    return env


def hold(lab, source, front):
    """A connection whose handler runs (its head read), with its env; (None, None) if refused."""
    sock = open_from(lab, source, front)
    env = read_head(sock)
    if env is None:
        sock.close()
        return None, None
    return sock, env


def finish(sock):
    sock.shutdown(socket.SHUT_WR)
    read_rest(sock)
    sock.close()


# -- the tests ----------------------------------------------------------------------

def test_every_handler_sees_the_real_client_the_header_names(cluster):
    seen = {}
    for i in range(12):
        source = (CLIENT_A, CLIENT_B)[i % 2]
        env, port = talk(cluster.lab, source)
        assert env is not None, f"connection {i} from {source} refused"
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (source, str(port))
        assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["REMOTE_HOST"]) == (
            source, str(port), source)
        assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (LB, "80")
        assert env["SUPERD_SERVICE"] == "env" and env["SUPERD_CONN"].isdigit()
        seen.setdefault(env["HOST"], []).append((source, port, env["SUPERD_CONN"]))
    assert sorted(seen) == sorted(HOSTS), f"round robin over every host: {seen}"
    for host, served in seen.items():
        log = cluster.hosts[host].log
        for source, port, conn in served:
            log.wait_for(rf"^exit service=env client={re.escape(source)}:{port} conn={conn} ")


def test_only_from_refuses_the_real_client_not_haproxy(cluster):
    """HAProxy's own address is outside only_from: the clients above were let
    in on the header's client, and the stranger is refused on it."""
    env, port = talk(cluster.lab, STRANGER)
    assert env is None, "the stranger was served"
    refused = rf"^refused service=env client={re.escape(STRANGER)}:{port} conn=\d+ reason=only_from\b"
    deadline = time.monotonic() + TIMEOUT
    while not any(d.log.count(refused) for d in cluster.hosts.values()):
        assert time.monotonic() < deadline, "no host logged the refusal"
        time.sleep(0.05)
    # a client that talks to a host directly is not HAProxy: its header is not believed
    header = proxy_v2(CLIENT_A, LB, 1234, 80)
    with socket_in(cluster.lab.ns("client")) as sock:
        sock.bind((STRANGER, 0))
        sock.connect((HOSTS["h2"], 7000))
        port = sock.getsockname()[1]
        sock.sendall(header + b"forged\n")
        try:
            assert sock.recv(100) == b"", "a forged header was served"
        except ConnectionResetError:
            pass
    cluster.hosts["h2"].log.wait_for(
        rf"^refused service=env client={re.escape(STRANGER)}:{port} conn=\d+ reason=proxy_from\b")


def test_per_source_limits_the_real_client(cluster):
    """Every connection reaches h1 from HAProxy's address; per_source: 2 counts
    the header's client: B's third is refused while A is still served."""
    held = []
    try:
        for _ in range(2):
            sock, env = hold(cluster.lab, CLIENT_B, LIMITED_FRONT)
            assert sock is not None, "B refused below its limit"
            assert (env["HOST"], env["REMOTE_ADDR"]) == ("h1", CLIENT_B)
            held.append(sock)
        log = cluster.hosts["h1"].log
        third, _ = hold(cluster.lab, CLIENT_B, LIMITED_FRONT)
        assert third is None, "B's third connection was served"
        log.wait_for(rf"^refused service=limited client={re.escape(CLIENT_B)}:\d+ "
                     rf"conn=\d+ reason=per_source\b")
        sock, env = hold(cluster.lab, CLIENT_A, LIMITED_FRONT)
        assert sock is not None, "A refused for B's connections"
        assert env["REMOTE_ADDR"] == CLIENT_A
        held.append(sock)
        mark = len(log.lines)
        finish(held.pop(0))
        log.wait_for(rf"^exit service=limited client={re.escape(CLIENT_B)}:", start=mark)
        sock, env = hold(cluster.lab, CLIENT_B, LIMITED_FRONT)
        assert sock is not None, "B refused after one of its handlers ended"
        held.append(sock)
    finally:
        for sock in held:
            finish(sock)


def test_health_checks_start_no_handler_log_nothing_and_are_counted(cluster):
    before = {h: cluster.settle(h) for h in HOSTS}
    marks = {h: len(d.log.lines) for h, d in cluster.hosts.items()}
    deadline = time.monotonic() + TIMEOUT
    while True:        # HAProxy checks every 100 ms: wait for ten more on every service
        now = {h: cluster.status(h) for h in HOSTS}
        grown = [now[h][s]["health_checks"] - before[h][s]["health_checks"]
                 for h in HOSTS for s in ("env",) + (("limited",) if h == "h1" else ())]
        if min(grown) >= 10:
            break
        assert time.monotonic() < deadline, f"health checks not counted: {grown}"
        time.sleep(0.1)
    for host, daemon in cluster.hosts.items():
        for name in ("env", "limited"):
            assert now[host][name]["exits"] == before[host][name]["exits"], "a check got a handler"
            assert now[host][name]["running"] == 0
            assert now[host][name]["refused"] == before[host][name]["refused"]
        new = daemon.log.lines[marks[host]:]
        assert new == [], f"{host} logged at the default level during checks: {new}"
        assert daemon.log.count(rf"client={re.escape(LB)}:") == 0, "HAProxy's own connections logged"
    # the same figure as Prometheus reads it, from h1's internal: status
    metrics = scrape(cluster, "h1")
    counted = {s.labels["service"]: s.value for f in metrics if f.name == "superd_health_checks"
               for s in f.samples if s.name == "superd_health_checks_total"}
    assert counted["env"] >= now["h1"]["env"]["health_checks"]
    assert counted["limited"] >= now["h1"]["limited"]["health_checks"]


def scrape(cluster, host):
    with socket_in(cluster.lab.ns(host)) as sock:
        sock.connect(("127.0.0.1", 9100))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = read_rest(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return list(text_string_to_metric_families(body.decode()))


class Load:
    """Client threads that loop over connections through :80 until stopped."""

    def __init__(self, cluster, threads=6):
        self.cluster = cluster
        self.results = []         # (start, host or None for a failure, (source, port), detail)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=((CLIENT_A, CLIENT_B)[i % 2],))
                        for i in range(threads)]

    def run(self, source):
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                sock = open_from(self.cluster.lab, source, ENV_FRONT)
            except OSError as err:
                result = (None, (source, None), repr(err))
            else:
                with sock:
                    client = (source, sock.getsockname()[1])
                    try:
                        env = converse(sock)
                        result = (env["HOST"], client, "") if env else (None, client, "unserved")
                    except (OSError, AssertionError) as err:
                        result = (None, client, repr(err))
            with self.lock:
                self.results.append((began, *result))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(TIMEOUT)

    def wait_served(self, n, since, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.served(since) < n:
            assert time.monotonic() < deadline, f"load stalled: {self.results[-5:]}"
            time.sleep(0.05)

    def served(self, since):
        with self.lock:
            return sum(1 for t, host, *_ in self.results if t >= since and host)

    def between(self, start, end=float("inf")):
        with self.lock:
            return [r for r in self.results if start <= r[0] < end]


def routed(cluster, client):
    """The server HAProxy's log names for that client's connection."""
    rx = re.compile(rf"^{re.escape(client[0])}:{client[1]} \[[^\]]*\] env env/(\S+) ", re.M)
    deadline = time.monotonic() + TIMEOUT
    while not (found := rx.search(cluster.haproxy.log())):
        assert time.monotonic() < deadline, f"HAProxy logged no session for {client}"
        time.sleep(0.05)
    return found.group(1)


def take_down_under_load(cluster, host, take_down):
    """Load through :80, take_down(daemon) of one host, load until HAProxy has
    it DOWN and 30 more were served.  Returns the failed connections and when
    take_down returned: what began before then may have reached the host."""
    start = time.monotonic()
    others = {("env", h): "UP" for h in HOSTS if h != host}
    redispatched = len(REDISPATCHED.findall(cluster.haproxy.log()))
    with Load(cluster) as load:
        load.wait_served(30, start)
        signalled_at = time.monotonic()
        take_down(cluster.hosts[host])
        gone_at = time.monotonic()
        cluster.haproxy.wait_states({("env", host): "DOWN", **others})
        down_at = time.monotonic()
        load.wait_served(30, down_at)
    before, during, after = (load.between(start, signalled_at), load.between(signalled_at, down_at),
                             load.between(down_at))
    assert {h for _, h, *_ in before if h} == set(HOSTS), "every host served before"
    assert all(("env", h) in others for _, h, *_ in after), f"after DOWN: {after}"
    failed = [r for r in before + during + after if r[1] is None]
    redispatched = len(REDISPATCHED.findall(cluster.haproxy.log())) - redispatched
    print(f"\n{host} down under load: {len(failed)} failed of {len(before + during + after)};"
          f" {len(during)} began between the signal and DOWN, {redispatched} redispatched"
          f" by HAProxy: {failed}")
    return failed, gone_at, len(load.threads)


REDISPATCHED = re.compile(r" env env/\S+ .*/\+\d+ ")   # a tcplog line: retries "+N"


def bring_back(cluster, host):
    cluster.start(host)
    cluster.haproxy.wait_states(ALL_UP)
    assert {talk(cluster.lab, CLIENT_A)[0]["HOST"] for _ in range(6)} == set(HOSTS)


def test_an_upgraded_host_loses_nothing(cluster):
    """superdctl upgrade of h1 mid-load: its successor inherits the listeners
    (and the stderr the test reads; the namespace sweep at teardown ends it),
    HAProxy never sees h1 fail a check, and not one client fails."""
    ready = cluster.hosts["h1"].ready_path
    start = time.monotonic()
    with Load(cluster, threads=3) as load:
        load.wait_served(30, start)
        run = subprocess.run([str(Path(sys.executable).with_name("superdctl")), "--ready-file",
                              str(ready), "--json", "upgrade"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        successor = json.loads(run.stdout)["successor"]
        assert json.loads(ready.read_text())["pid"] == successor
        upgraded_at = time.monotonic()
        load.wait_served(30, upgraded_at)
    failed = [r for r in load.between(start) if r[1] is None]
    print(f"\nh1 upgraded under load: {len(failed)} failed of {len(load.between(start))}")
    assert failed == [], "the upgrade lost connections"
    assert "h1" in {h for _, h, *_ in load.between(upgraded_at)}, "the successor serves"
    assert "Server env/h1 is DOWN" not in cluster.haproxy.log()


def test_a_drained_host_stopped_loses_nothing(cluster):
    """The way to take a host out: drain it in HAProxy, then TERM superd."""
    def drain_and_stop(daemon):
        cluster.haproxy.ask("set server env/h2 state drain")
        cluster.haproxy.wait_stat("env", "h2", "scur", "0")
        daemon.stop()
    failed, _, _ = take_down_under_load(cluster, "h2", drain_and_stop)
    assert failed == [], "a drained host lost connections"
    cluster.haproxy.ask("set server env/h2 state ready")
    bring_back(cluster, "h2")


def test_a_stopped_host_is_routed_around_its_queue_lost(cluster):
    """TERM alone: superd closes its listener, and Linux resets what its
    accept queue held: connections HAProxy had already made, which superd
    never accepted (nothing in its log names them).  All the others are
    served: those in hand finish, later ones are redispatched."""
    failed, gone_at, threads = take_down_under_load(cluster, "h2", lambda d: d.stop())
    log = cluster.hosts["h2"].log
    for began, _, client, _ in failed:
        assert began < gone_at and routed(cluster, client) == "h2"
        assert log.count(rf"client={re.escape(client[0])}:{client[1]} ") == 0, (
            f"{client} was accepted by h2 and then lost")
    assert len(failed) <= threads
    bring_back(cluster, "h2")


def test_a_killed_host_is_routed_around_only_its_own_fail(cluster):
    """KILL of superd and its handlers, as a crash would: only connections in
    flight on that host may fail; those begun later are redispatched."""
    failed, gone_at, threads = take_down_under_load(cluster, "h3", lambda d: d.kill())
    assert all(t < gone_at for t, *_ in failed), "only those in flight at the kill may fail"
    assert len(failed) <= threads, "more failed than could be in flight"
    for _, _, client, _ in failed:
        assert routed(cluster, client) == "h3", f"{client} failed on another host"
    bring_back(cluster, "h3")
