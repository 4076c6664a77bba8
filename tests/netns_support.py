"""Private networks of network namespaces for tests with several hosts (no tests here).

A `Lab` builds a star: one hub namespace holding a bridge with an address on
it, and one namespace per host, each joined to the bridge by a veth pair
whose two ends are created inside the namespaces (`ip link add ... netns`),
so the machine's own interfaces, addresses and routes are never touched.
`Lab.close()` kills every process still in its namespaces, by pid (`ip netns
pids`: only what the test started can be there), and deletes the namespaces,
which deletes their veths; it runs at teardown even when a test failed.

`socket_in(ns)` makes a socket inside a namespace: the calling thread enters
it (setns(2) changes only that thread), creates the socket and comes back;
the socket keeps its namespace for life, so the test process connects from
any namespace without a helper process.  `start_superd_in` runs a real
`superd` under `ip netns exec` with conftest's log reader and Daemon, and
`HAProxy` runs a real haproxy in the foreground with its stats socket.
"""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import EXITED, TIMEOUT, Daemon, LogReader

CLONE_NEWNET = 0x40000000

# The global and defaults sections of the tests' haproxy.cfg: TCP, logs to
# stdout (the test reads them), the stats socket at {stats} (HAProxy() fills
# it in), short timeouts; a test adds its frontends and backends.
HAPROXY_HEAD = """\
global
    log stdout format raw daemon
    stats socket {stats} mode 600 level admin
    maxconn 512

defaults
    mode tcp
    log global
    option tcplog
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 1s

"""
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name):
    """Run the block in network namespace `name` (this thread only)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def socket_in(name, kind=socket.SOCK_STREAM, timeout=TIMEOUT):
    """An IPv4 socket (with a timeout) that lives in namespace `name`."""
    with entered(name):
        sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(timeout)
    return sock


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=TIMEOUT)


class Lab:
    """Namespaces PREFIX-ROLE on one bridge in the hub namespace (see the module doc)."""

    def __init__(self, prefix, hub, hub_address, prefixlen=24):
        """prefix: unique to this test process, e.g. NAME + its pid."""
        self.prefix = prefix
        self.names = {}              # role -> namespace name, in creation order
        self.prefixlen = prefixlen
        try:
            self.hub = self._add(hub)
            ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            ip("-n", self.hub, "addr", "add", f"{hub_address}/{prefixlen}", "dev", "br0")
            ip("-n", self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add(self, role):
        name = f"{self.prefix}-{role}"
        ip("netns", "add", name)
        self.names[role] = name
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, role, addresses):
        """A namespace for `role` with the addresses on its end of a veth to the bridge."""
        name = self._add(role)
        port = f"p-{role}"[:15]
        ip("link", "add", port, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
           "netns", name)
        ip("-n", self.hub, "link", "set", port, "master", "br0")
        ip("-n", self.hub, "link", "set", port, "up")
        for address in addresses:
            ip("-n", name, "addr", "add", f"{address}/{self.prefixlen}", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        return name

    def ns(self, role):
        return self.names[role]

    def command(self, role, argv):
        return ["ip", "netns", "exec", self.names[role], *map(str, argv)]

    def close(self):
        """Kill what is left in the namespaces, delete them; raise if anything stayed."""
        problems = []
        for name in reversed(list(self.names.values())):
            left = kill_all_in(name)
            if left:
                problems.append(f"{name}: pids {left} outlived SIGKILL")
            try:
                ip("netns", "del", name)
            except subprocess.CalledProcessError as err:
                problems.append(f"{name}: {err.stderr.decode().strip()}")
        self.names.clear()
        assert not problems, "; ".join(problems)


def pids_in(name):
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         timeout=TIMEOUT)
    return [int(p) for p in out.stdout.split()]


def kill_all_in(name, timeout=TIMEOUT):
    """SIGKILL every process in namespace `name`; the pids still there after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_in(name)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)   # a kill's effect is polled, with the deadline above


# -- superd in a namespace --------------------------------------------------------

def start_superd_in(lab, role, folder, config_text, args=()):
    """conftest.start_superd, but under `ip netns exec` in role's namespace."""
    folder.mkdir(exist_ok=True)
    config = folder / "services.yaml"
    config.write_text(config_text)
    ready = folder / "ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    notify_path = folder / "notify"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    runtime = folder / "run"
    runtime.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "NOTIFY_SOCKET": str(notify_path), "RUNTIME_DIRECTORY": str(runtime)}
    argv = [sys.executable, "-m", "superd", "-f", config, "--ready-file", ready, *args]
    proc = subprocess.Popen(lab.command(role, argv), cwd=str(folder), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    log = LogReader(proc.stderr, on_close=lambda: _tell(notify_path))
    log.start()
    daemon = Daemon(proc, config, ready, notify, log)
    try:
        daemon.wait_notify("READY=1")
    except AssertionError:
        daemon.kill()
        raise
    return daemon


def _tell(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        with contextlib.suppress(OSError):
            sock.sendto(EXITED.encode(), str(path))


# -- HAProxy ---------------------------------------------------------------------

class HAProxy:
    """A foreground haproxy (-db) in role's namespace; stdout/stderr in a file."""

    def __init__(self, lab, role, folder, config_text):
        self.folder = folder
        self.stats_path = folder / "stats.sock"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config_text.replace("{stats}", str(self.stats_path)))
        self.log_path = folder / "haproxy.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(lab.command(role, ["haproxy", "-f", self.config, "-db"]),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def ask(self, command):
        """One runtime API command on the stats socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(self.stats_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def stat(self):
        """{(backend, server): row} from `show stat` (CSV: status, scur, ...)."""
        lines = self.ask("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            if line:
                row = dict(zip(head, line.split(",")))
                if row["svname"] not in ("FRONTEND", "BACKEND"):
                    rows[row["pxname"], row["svname"]] = row
        return rows

    def states(self):
        """{(backend, server): status}: UP, DOWN, DRAIN, UP 1/2, ..."""
        return {key: row["status"] for key, row in self.stat().items()}

    def wait_stat(self, backend, server, field, value, timeout=TIMEOUT):
        """Poll `show stat` until that server's field has that value."""
        deadline = time.monotonic() + timeout
        while (got := self.stat()[backend, server][field]) != value:
            assert time.monotonic() < deadline, f"{backend}/{server} {field}={got}, never {value}"
            time.sleep(0.02)           # polled against the deadline

    def wait_states(self, want, timeout=TIMEOUT):
        """Poll until every (backend, server) in want has that status."""
        deadline = time.monotonic() + timeout
        states = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited {self.proc.returncode}:\n{self.log()}")
            try:
                states = self.states()
            except (FileNotFoundError, ConnectionRefusedError):
                states = None          # not listening yet
            if states and all(states.get(k) == v for k, v in want.items()):
                return states
            time.sleep(0.05)           # polled against the deadline
        raise AssertionError(f"haproxy never reached {want}; last {states}\n{self.log()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
