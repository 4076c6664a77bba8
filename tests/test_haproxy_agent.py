"""superd-status --agent: HAProxy's agent-check from superd's own state (issue 15, item 6).

Three layers, fastest first:

- the verdict table in-process (handlers/status.py loaded from its path):
  every state a service can be in, and what the line says about it;
- the program on one end of a socketpair, with a fake control socket (a
  thread serving a canned document), and under a real superd on loopback
  (port 0, --ready-file): the line and the close, agent-send ignored, a
  daemon that is missing, late or silent, instances filling, a pause, a
  wait-mode service backing off, a service that is not there;
- real HAProxy in front of three superd hosts in namespaces of their own
  (tests/netns_support.py), 10.78.0.0/24:

      client 10.78.0.21
         |
      lb 10.78.0.1: HAProxy :80, agent-check every 200 ms (h1 with agent-send)
         |   send-proxy-v2, TCP check every 100 ms
      h1 10.78.0.11, h2 .12, h3 .13: superd with `web` on :7000 (instances 4)
                                      and `internal: status --agent web` on :7100
                                      (nowait, only_from HAProxy, as shipped)

  A pause drains a host and a resume readies it, with no client refused;
  connections held on a host lower its weight step by step; a service that
  fails as it starts (superd pauses it, `looping`) is taken DOWN by the agent
  alone, its listener still open, and comes back UP when superd resumes it;
  an upgrade in place is not seen at all (the agent waits out the moment
  when nobody holds the control socket).

HAProxy's state is read from its stats socket (`show stat`), polled against
a deadline.  Teardown kills haproxy, every superd and handler (every pid left
in the namespaces) and deletes the namespaces, failed tests and set-up
included.
"""

import csv
import importlib.util
import io
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TIMEOUT, connect
from netns_support import HAPROXY_HEAD, HAProxy, Lab, socket_in, start_superd_in
from test_protection_support import proxy_v2

ROOT = Path(__file__).resolve().parent.parent
STATUS = ROOT / "handlers" / "status.py"
SUPERDCTL = Path(sys.executable).with_name("superdctl")


def load_status():
    spec = importlib.util.spec_from_file_location("status_agent_under_test", STATUS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


status_py = load_status()


# -------------------------------------------------------------------------
# the verdict table, in-process
# -------------------------------------------------------------------------

def svc(name="web", running=0, instances=4, paused=(), mode="nowait",
        addresses=("10.0.0.1:7000",)):
    return {"name": name, "addresses": list(addresses), "mode": mode,
            "state": "paused" if paused else "serving", "paused": list(paused),
            "running": running, "instances": instances}


def doc(*services, daemon=None):
    return {"ok": True, "daemon": daemon or {"pid": 1, "version": "0.1.0"},
            "services": list(services), "connections": []}


@pytest.mark.parametrize("document, names, line", [
    # up: the weight is the free share of instances, rounded down, at least 1%
    (doc(svc(running=0)), ["web"], "up ready 100%\n"),
    (doc(svc(running=1)), ["web"], "up ready 75%\n"),
    (doc(svc(running=3)), ["web"], "up ready 25%\n"),
    (doc(svc(running=4)), ["web"], "up ready 1%\n"),
    (doc(svc(running=199, instances=200)), ["web"], "up ready 1%\n"),
    (doc(svc(running=1, instances=200)), ["web"], "up ready 99%\n"),
    (doc(svc(running=9, instances=4)), ["web"], "up ready 1%\n"),      # more than allowed
    (doc(svc(running=5, instances=None)), ["web"], "up ready 100%\n"),  # no limit
    (doc(svc(running=1, instances=1, mode="wait")), ["web"], "up ready 100%\n"),
    (doc(svc(running="many", instances=True)), ["web"], "up ready 100%\n"),  # wrong types
    # what a pause means
    (doc(svc(paused=["operator"])), ["web"], "up drain #web: paused (operator)\n"),
    (doc(svc(paused=["rate"])), ["web"], "up drain #web: paused (rate)\n"),
    (doc(svc(paused=["load"])), ["web"], "up drain #web: paused (load)\n"),
    (doc(svc(paused=["looping"])), ["web"], "down #web: paused (looping)\n"),
    (doc(svc(paused=["error"])), ["web"], "down #web: paused (error)\n"),
    (doc(svc(paused=["backoff"], mode="wait")), ["web"], "down #web: paused (backoff)\n"),
    (doc(svc(paused=["predecessor"], running=1)), ["web"], "up ready 75%\n"),
    (doc(svc(paused=["instances"], running=4)), ["web"], "up ready 1%\n"),
    (doc(svc(paused=["newer"])), ["web"], "up drain #web: paused (newer)\n"),
    (doc(svc(paused=["operator", "error", "rate"])), ["web"], "down #web: paused (error)\n"),
    (doc(svc(paused=["operator", "rate"])), ["web"], "up drain #web: paused (operator rate)\n"),
    # stopping or handed over: listeners closed, or a daemon that says so
    (doc(svc(addresses=())), ["web"], "up drain #web: superd is stopping\n"),
    (doc(svc(), daemon={"state": "stopping"}), ["web"], "up drain #superd is stopping\n"),
    (doc(svc(), daemon={"state": "serving"}), ["web"], "up ready 100%\n"),
    # not there: never configured, disabled, or gone in a reload
    (doc(svc()), ["api"], "down #api: no such service (disabled or not configured)\n"),
    (doc(), ["web"], "down #web: no such service (disabled or not configured)\n"),
    # several services: the worst, and every reason of that kind
    (doc(svc(running=2), svc("api", running=3)), ["web", "api"], "up ready 25%\n"),
    (doc(svc(paused=["operator"]), svc("api", running=3)), ["web", "api"],
     "up drain #web: paused (operator)\n"),
    (doc(svc(paused=["operator"]), svc("api", paused=["looping"])), ["web", "api"],
     "down #api: paused (looping)\n"),
    (doc(svc(paused=["error"]), svc("api", paused=["looping"])), ["web", "api"],
     "down #web: paused (error); api: paused (looping)\n"),
    # a reason is one line of printable ASCII without commas
    (doc(svc(paused=["a,b\nc\u00e9"])), ["web"], "up drain #web: paused (a?b?c?)\n"),
])
def test_the_line_for_each_state(document, names, line):
    assert status_py.agent_line(status_py.agent_verdicts(document, names)) == line


def test_a_long_reason_is_cut():
    names = ["s%03d" % i for i in range(100)]
    line = status_py.agent_line(status_py.agent_verdicts(doc(), names))
    assert line.startswith("down #s000: no such service") and line.endswith("\n")
    assert len(line) == len("down #") + status_py.MAX_REASON + 1


@pytest.mark.parametrize("arg, names", [
    ("web", ("web",)), ("web,api", ("web", "api")), (" web , api,web", ("web", "api"))])
def test_agent_takes_a_list_of_services(arg, names):
    assert status_py.parse_options(["--agent", arg]).agent == names


@pytest.mark.parametrize("arg", ["", ",", "web,,api"])
def test_agent_refuses_an_empty_name(arg):
    with pytest.raises(status_py.UsageError, match="--agent"):
        status_py.parse_options(["--agent=" + arg])


# -------------------------------------------------------------------------
# the program on a socketpair, with a fake control socket
# -------------------------------------------------------------------------

class FakeControl:
    """A control socket in a thread: each client gets `answer` and a close;
    with answer None, nothing (its connection is held until close()); with a
    list, the next one each time (the last one from then on)."""

    def __init__(self, path, answer):
        self.path, self.answer, self.held = str(path), answer, []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.stop_r, self.stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self.stop_r, selectors.EVENT_READ)
            while all(key.fileobj is self.listener for key, _ in selector.select()):
                conn, _ = self.listener.accept()
                answer = self.answer
                if isinstance(answer, list):
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                if answer is None:
                    self.held.append(conn)
                    continue
                conn.settimeout(TIMEOUT)
                try:
                    conn.recv(4096)
                    conn.sendall(answer)
                except OSError:
                    pass
                conn.close()

    def close(self):
        self.stop_w.send(b"x")
        self.thread.join(TIMEOUT)
        for sock in (self.listener, self.stop_r, self.stop_w, *self.held):
            sock.close()


class Agent:
    """handlers/status.py --agent ... on one end of a socketpair."""

    def __init__(self, control_path, args):
        ours, theirs = socket.socketpair()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "SUPERD_CONTROL": str(control_path)}
        self.proc = subprocess.Popen([sys.executable, str(STATUS), *args], stdin=theirs,
                                     stdout=theirs, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        theirs.close()
        ours.settimeout(TIMEOUT)
        self.sock = ours

    def exchange(self, send=b""):
        """(the line, seconds it took, the exit status, stderr): HAProxy's side."""
        began = time.monotonic()
        if send:
            self.sock.sendall(send)
        line = read_to_end(self.sock)
        took = time.monotonic() - began
        self.sock.close()
        code = self.proc.wait(TIMEOUT)
        return line.decode(), took, code, self.proc.stderr.read().decode()

    def kill(self):
        self.sock.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(TIMEOUT)
        self.proc.stderr.close()


def read_to_end(sock):
    chunks = []
    while data := sock.recv(4096):
        chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def agents(tmp_path):
    """Factory: agents(args, answer=bytes | None | absent) -> Agent; all ended at teardown."""
    made, controls = [], []

    def start(args, answer=b"", control="control"):
        path = tmp_path / control
        if answer != b"":
            controls.append(FakeControl(path, answer))
        agent = Agent(path, args)
        made.append(agent)
        return agent

    yield start
    for agent in made:
        agent.kill()
    for control in controls:
        control.close()


SERVING = json.dumps(doc(svc(running=1), svc("api", paused=["operator"]))).encode()


@pytest.mark.parametrize("send", [b"", b"web\n", b"api\n", b"x" * 100000])
def test_one_line_then_end_of_file_whatever_haproxy_sends(agents, send):
    """agent-send (any, or none) is read only to be dropped: the services
    are the command line's.  A large one is drained, not answered with a reset."""
    line, _, code, err = agents(["--agent", "web"], SERVING).exchange(send)
    assert (line, code, err) == ("up ready 75%\n", 0, "")


def test_several_services_report_the_worst(agents):
    line, _, code, _ = agents(["--agent", "web,api"], SERVING).exchange()
    assert (line, code) == ("up drain #api: paused (operator)\n", 0)


def test_no_daemon_is_down_after_waiting_out_control_timeout(agents):
    line, took, code, err = agents(["--agent", "web", "--control-timeout", "0.3"],
                                   answer=b"").exchange()
    assert line.startswith("down #superd not answering: control socket ")
    assert line.endswith(": No such file or directory\n") and code == 0
    assert took >= 0.25, "gave up before --control-timeout"
    assert "No such file or directory" in err


def test_a_silent_daemon_is_down(agents):
    line, took, _, _ = agents(["--agent", "web", "--control-timeout", "0.3"],
                              answer=None).exchange()
    assert line == "down #superd not answering: superd did not answer within 0.3 s\n"
    assert took < TIMEOUT / 2


@pytest.mark.parametrize("answer, says", [
    (b"garbage", "superd's answer is not JSON"),
    (b'{"ok": false, "error": "busy"}', "superd refused: busy")])
def test_a_daemon_talking_nonsense_is_down(agents, answer, says):
    line, _, _, _ = agents(["--agent", "web"], answer).exchange()
    assert line == f"down #superd not answering: {says}\n"


def test_a_control_socket_that_comes_late_is_waited_for(agents, tmp_path):
    """As in an upgrade: nobody on the socket for a moment, then the successor."""
    agent = agents(["--agent", "web", "--control-timeout", "5"], answer=b"")
    control = FakeControl(tmp_path / "control", SERVING)
    try:
        line, _, _, _ = agent.exchange()
    finally:
        control.close()
    assert line == "up ready 75%\n"


def test_a_superd_that_has_handed_over_is_asked_again(agents):
    """Its last answers, in the moment after its successor took the socket,
    say so: the successor, on the same socket, is the one to ask."""
    leaving = json.dumps(doc(svc(running=1, addresses=()),
                             daemon={"pid": 1, "version": "0.1.0", "state": "handed-over"}))
    line, _, _, _ = agents(["--agent", "web", "--control-timeout", "5"],
                           [leaving.encode(), leaving.encode(), SERVING]).exchange()
    assert line == "up ready 75%\n"


def test_a_stopping_superd_is_drained(agents):
    stopping = json.dumps(doc(svc(running=1),
                              daemon={"pid": 1, "version": "0.1.0", "state": "stopping"}))
    line, _, _, _ = agents(["--agent", "web"], stopping.encode()).exchange()
    assert line == "up drain #superd is stopping\n"


# -------------------------------------------------------------------------
# under a real superd on loopback
# -------------------------------------------------------------------------

HOLD = "#!/bin/sh\necho hi\nexec cat\n"
LOOPBACK = """\
services:
  web:
    listen: 127.0.0.1:0
    server: {tmp}/hold.sh
    instances: 2
  flaky:
    listen: 127.0.0.1:0
    mode: wait
    server: /bin/true
  agent:
    listen: 127.0.0.1:0
    internal: status
    args: [--agent, web]
    stderr: log
  agent_flaky:
    listen: 127.0.0.1:0
    internal: status
    args: [--agent, flaky]
    stderr: log
  agent_missing:
    listen: 127.0.0.1:0
    mode: wait
    internal: status
    args: [--agent, "web,gone"]
    stderr: log
"""


def ask(address, send=b""):
    with connect(address) as sock:
        if send:
            sock.sendall(send)
        return read_to_end(sock).decode()


def ask_until(address, want, timeout=TIMEOUT):
    """Ask the agent until its line is want (superd's state changes as we go)."""
    deadline = time.monotonic() + timeout
    while (line := ask(address)) != want:
        assert time.monotonic() < deadline, f"agent said {line!r}, never {want!r}"
        time.sleep(0.05)        # polled against the deadline


def superdctl(daemon, *args):
    return subprocess.run([str(SUPERDCTL), "--ready-file", str(daemon.ready_path), *args],
                          capture_output=True, text=True, timeout=30)


def test_under_superd_every_state(superd, tmp_path):
    hold = tmp_path / "hold.sh"
    hold.write_text(HOLD)
    hold.chmod(0o755)
    daemon = superd(LOOPBACK)
    agent = daemon.address("agent")
    assert ask(agent) == "up ready 100%\n"
    assert ask(agent, b"anything\n") == "up ready 100%\n"
    held = []
    try:
        for want in ("up ready 50%\n", "up ready 1%\n"):       # instances: 2
            sock = connect(daemon.address("web"))
            held.append(sock)
            assert sock.recv(10) == b"hi\n"
            ask_until(agent, want)
        assert superdctl(daemon, "pause", "web").returncode == 0
        assert ask(agent) == "up drain #web: paused (operator)\n"
        assert superdctl(daemon, "resume", "web").returncode == 0
        assert ask(agent) == "up ready 1%\n"
    finally:
        for sock in held:
            sock.close()
    ask_until(agent, "up ready 100%\n")
    assert ask(daemon.address("agent_missing")) == (
        "down #gone: no such service (disabled or not configured)\n")
    # a wait-mode handler that ends at once while a client waits: superd backs off
    with connect(daemon.address("flaky")):
        ask_until(daemon.address("agent_flaky"), "down #flaky: paused (backoff)\n")


# -------------------------------------------------------------------------
# behind real HAProxy, three hosts in namespaces
# -------------------------------------------------------------------------

LB = "10.78.0.1"
HOSTS = {"h1": "10.78.0.11", "h2": "10.78.0.12", "h3": "10.78.0.13"}
CLIENT = "10.78.0.21"
FRONT = (LB, 80)
INSTANCES = 4
# superd pauses a service after 2 fast failures in 10 s (`looping`), for 6 s
THRESHOLDS = "failures=2,looping_pause=6"

HANDLER = """\
#!/bin/sh
# fails at once while the flag file is there; else says which host, then echoes
[ -e {flag} ] && exit 1
echo {host}
exec cat
"""

SUPERD = """\
services:
  web:
    listen: {ip}:7000
    server: {handler}
    instances: {instances}
    proxy_protocol: v2
    proxy_from: [{lb}/32]
  agent:
    listen: {ip}:7100
    internal: status
    args: [--agent, web, --control-timeout, 5]
    only_from: [{lb}/32]
    stderr: log
"""

CHECK = ("weight 100 send-proxy-v2 check inter 100ms fastinter 100ms downinter 100ms "
         "fall 2 rise 2 agent-check agent-port 7100 agent-inter 200ms")
HAPROXY = HAPROXY_HEAD + f"""\
frontend web
    bind {LB}:80
    default_backend web

backend web
    balance roundrobin
    server h1 {HOSTS['h1']}:7000 {CHECK} agent-send "web\\n"
""" + "".join(f"    server {h} {a}:7000 {CHECK}\n" for h, a in HOSTS.items() if h != "h1")


class ThresholdLab(Lab):
    """A Lab whose superds run with THRESHOLDS (start_superd_in passes its own environment)."""

    def command(self, role, argv):
        if argv and argv[0] == sys.executable:
            argv = ["env", f"SUPERD_THRESHOLDS={THRESHOLDS}", *argv]
        return super().command(role, argv)


class Cluster:
    """The lab, three superd hosts and HAProxy (see the module doc)."""

    def __init__(self, root):
        self.root = root
        self.hosts, self.haproxy = {}, None
        self.lab = ThresholdLab(f"sdag{os.getpid()}", "lb", LB)
        try:
            for host, address in HOSTS.items():
                self.lab.attach(host, [address])
            self.lab.attach("client", [CLIENT])
            for host, address in HOSTS.items():
                handler = root / f"{host}.sh"
                handler.write_text(HANDLER.format(flag=self.flag(host), host=host))
                handler.chmod(0o755)
                text = SUPERD.format(ip=address, handler=handler, lb=LB, instances=INSTANCES)
                self.hosts[host] = start_superd_in(self.lab, host, root / host, text)
            self.haproxy = HAProxy(self.lab, "lb", root, HAPROXY)
            self.wait(lambda s: all(s[h] == ("UP", "100") for h in HOSTS))
        except BaseException:
            self.close()
            raise

    def flag(self, host):
        return self.root / f"{host}.fail"

    def close(self):
        try:
            if self.haproxy:
                self.haproxy.stop()
            for daemon in self.hosts.values():
                daemon.kill()
        finally:
            self.lab.close()

    def servers(self):
        """{server: (status, weight)} of backend web, from `show stat` read as CSV
        (the agent's reason is a quoted field there when it has a comma)."""
        text = self.haproxy.ask("show stat").lstrip("# ")
        return {row["svname"]: (row["status"], row["weight"])
                for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "web" and row["svname"] in HOSTS}

    def wait(self, done, timeout=TIMEOUT):
        """Poll HAProxy until done(servers) holds; the servers then."""
        deadline = time.monotonic() + timeout
        servers = None
        while time.monotonic() < deadline:
            if self.haproxy.proc.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.haproxy.log()}")
            try:
                servers = self.servers()
            except (FileNotFoundError, ConnectionRefusedError):
                servers = None         # not listening yet
            if servers and done(servers):
                return servers
            time.sleep(0.05)           # polled against the deadline
        raise AssertionError(f"HAProxy never got there; last {servers}\n{self.haproxy.log()}")

    def agent_said(self, host):
        """What HAProxy last heard from that host's agent (its stats' last_agt)."""
        text = self.haproxy.ask("show stat").lstrip("# ")
        rows = [r for r in csv.DictReader(io.StringIO(text))
                if r["pxname"] == "web" and r["svname"] == host]
        return rows[0]["last_agt"]

    def ctl(self, host, *args):
        run = subprocess.run([str(SUPERDCTL), "--ready-file", str(self.hosts[host].ready_path),
                              *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    def through_haproxy(self, n):
        """n connections through HAProxy, one after another: the hosts that
        served them, None for one that failed (refused, reset, unserved)."""
        served = []
        for _ in range(n):
            try:
                with socket_in(self.lab.ns("client")) as sock:
                    sock.bind((CLIENT, 0))
                    sock.connect(FRONT)
                    host = sock.recv(16).decode().strip() or None
                    if host:
                        sock.sendall(b"ping\n")
                        sock.shutdown(socket.SHUT_WR)
                        if read_to_end(sock) != b"ping\n":
                            host = None
            except OSError:
                host = None
            served.append(host)
        return served

    def direct(self, host):
        """A connection straight to host's web, from HAProxy's address with a
        PROXY header naming the client, as HAProxy would make it."""
        sock = socket_in(self.lab.ns("lb"))
        try:
            sock.bind((LB, 0))
            sock.connect((HOSTS[host], 7000))
            sock.sendall(proxy_v2(CLIENT, LB, 4000, 80))
        except BaseException:
            sock.close()
            raise
        return sock


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (.ci/run installs Debian's package)")
    cluster = None
    try:
        cluster = Cluster(tmp_path_factory.mktemp("agent"))
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()


def test_a_paused_host_is_drained_and_a_resumed_one_ready(cluster):
    cluster.ctl("h1", "pause", "web")
    cluster.wait(lambda s: s["h1"][0] == "DRAIN (agent)" and s["h2"][0] == s["h3"][0] == "UP")
    assert cluster.agent_said("h1") == "via agent : up (web: paused (operator))"
    served = cluster.through_haproxy(12)
    assert None not in served, f"a client failed while h1 was drained: {served}"
    assert set(served) == {"h2", "h3"}, served
    cluster.ctl("h1", "resume", "web")
    cluster.wait(lambda s: all(s[h] == ("UP", "100") for h in HOSTS))
    assert set(cluster.through_haproxy(6)) == set(HOSTS)


def test_weight_falls_as_the_instances_fill(cluster):
    held = []
    try:
        for n, weight in ((1, "75"), (2, "50"), (3, "25"), (4, "1")):
            sock = cluster.direct("h2")
            held.append(sock)
            assert sock.recv(16) == b"h2\n", f"handler {n} did not start"
            cluster.wait(lambda s: s["h2"] == ("UP", weight))
    finally:
        for sock in held:
            sock.close()
    cluster.wait(lambda s: s["h2"] == ("UP", "100"))


def test_a_service_failing_at_once_is_taken_down_by_the_agent_alone(cluster):
    """h3's handler fails as it starts: after three, superd pauses the
    service (looping).  Its listener stays open, so HAProxy's TCP check
    passes; the agent says down, and HAProxy takes h3 out.  When superd
    resumes it (looping_pause) and the handler works again, h3 is UP."""
    cluster.flag("h3").touch()
    for _ in range(3):
        with cluster.direct("h3") as sock:
            assert read_to_end(sock) == b"", "the failing handler answered"
    servers = cluster.wait(lambda s: s["h3"][0] == "DOWN (agent)")
    cluster.flag("h3").unlink()     # paused, it starts nothing: resumed, it serves
    assert servers["h1"][0] == servers["h2"][0] == "UP"
    assert cluster.agent_said("h3") == "via agent : down (web: paused (looping))"
    served = cluster.through_haproxy(6)
    assert None not in served and set(served) == {"h1", "h2"}, served
    cluster.wait(lambda s: all(s[h] == ("UP", "100") for h in HOSTS))
    assert set(cluster.through_haproxy(6)) == set(HOSTS)


def test_an_upgrade_is_not_seen_by_haproxy(cluster):
    """superdctl upgrade of h1: its control socket changes hands (the agent
    waits for the successor to bind it rather than say down; waiting longer
    than HAProxy's check timeout changes nothing there), and HAProxy sees h1
    UP at full weight throughout; afterwards the agent reports the
    successor's state (a pause there drains h1)."""
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(cluster.servers()["h1"])
            stop.wait(0.02)            # a sampling interval, not a synchronisation

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        successor = json.loads(cluster.ctl("h1", "--json", "upgrade"))["successor"]
    finally:
        stop.set()
        watcher.join(TIMEOUT)
    assert json.loads(cluster.hosts["h1"].ready_path.read_text())["pid"] == successor
    assert seen and set(seen) == {("UP", "100")}, f"HAProxy saw h1 as {set(seen)}"
    cluster.ctl("h1", "pause", "web")
    cluster.wait(lambda s: s["h1"][0] == "DRAIN (agent)")
    cluster.ctl("h1", "resume", "web")
    cluster.wait(lambda s: s["h1"] == ("UP", "100"))
