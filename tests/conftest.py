"""Shared fixtures: a real superd daemon driven from a test.

`superd` is a factory fixture.  `superd(config_text)` writes the YAML into the
test's tmp_path, starts `python -m superd` in its own session with stderr on
a pipe, waits for `READY=1` on a private NOTIFY_SOCKET (never a sleep), and
returns a `Daemon`.  Every daemon is killed by process group at teardown.

In the config text, `{python}` is replaced by this interpreter, `{handlers}`
by the handlers/ folder and `{tmp}` by tmp_path, so configs stay portable.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

# Fuzzing: a few hundred examples per property in the suite (seconds);
# HYPOTHESIS_PROFILE=long (bench/fuzz.sh) runs the same properties for minutes.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=50_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "handlers"
TIMEOUT = 10.0


# superd's text lines begin with their time (superd(8), LOGGING); tests match the rest
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(?:Z|[+-]\d\d:\d\d) ")


class LogReader(threading.Thread):
    """Collects a daemon's stderr lines; tests wait on them with a condition."""

    def __init__(self, stream, on_close=None):
        super().__init__(daemon=True)
        self.stream = stream
        self.on_close = on_close
        self.lines = []
        self.closed = False
        self.cond = threading.Condition()

    def run(self):
        for raw in self.stream:
            line = STAMP.sub("", raw.decode("utf-8", "replace").rstrip("\n"), count=1)
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.on_close:
            self.on_close()

    def wait_for(self, pattern, timeout=TIMEOUT, start=0):
        """Return the first line (from index `start`) matching regex `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(
                        f"no log line matching {pattern!r}; log was:\n" + "\n".join(self.lines))
                self.cond.wait(left)

    def wait_count(self, pattern, n, timeout=TIMEOUT):
        """Wait until at least n lines match regex pattern."""
        rx = re.compile(pattern)
        with self.cond:
            ok = self.cond.wait_for(
                lambda: sum(1 for l in self.lines if rx.search(l)) >= n or self.closed, timeout)
            if not ok or sum(1 for l in self.lines if rx.search(l)) < n:
                raise AssertionError(f"fewer than {n} lines match {pattern!r}; log:\n" + self.text())

    def count(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for line in self.lines if rx.search(line))

    def text(self):
        with self.cond:
            return "\n".join(self.lines)


class Daemon:
    """A running superd: its process, addresses, log and notify socket."""

    def __init__(self, proc, config_path, ready_path, notify, log):
        self.proc = proc
        self.pid = proc.pid
        self.config_path = config_path
        self.ready_path = ready_path
        self.notify = notify
        self.log = log

    # -- readiness ---------------------------------------------------------
    def wait_notify(self, word="READY=1", timeout=TIMEOUT):
        """Block (with a timeout) until superd sends a datagram containing word."""
        self.notify.settimeout(timeout)
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                raise AssertionError(f"superd never sent {word}; log:\n{self.log.text()}")
            if word in msg.split("\n"):
                return msg
            if msg == EXITED:
                self.proc.wait(TIMEOUT)
                raise AssertionError(f"superd exited ({self.proc.returncode}) before {word}; "
                                     f"log:\n{self.log.text()}")

    @property
    def ready(self):
        return json.loads(Path(self.ready_path).read_text())

    def addresses(self, service):
        return self.ready["services"][service]

    def address(self, service, index=0):
        """(host, port) or a unix path for the service's index-th listener."""
        return parse_address(self.addresses(service)[index])

    # -- control -----------------------------------------------------------
    def send(self, sig):
        os.kill(self.pid, sig)

    def current_pid(self):
        """The pid serving now (after an upgrade, the successor's): the ready file's."""
        return self.ready["pid"]

    def reload(self, new_text=None):
        """Optionally rewrite the config, send HUP, wait until it is done."""
        if new_text is not None:
            Path(self.config_path).write_text(expand(new_text, Path(self.config_path).parent))
        mark = len(self.log.lines)
        self.send(signal.SIGHUP)
        self.log.wait_for(r"^reload(ed|-failed)\b", start=mark)
        return self.log.lines[mark:]

    def wait_running(self, service, count, timeout=TIMEOUT):
        """Ask for status (USR1) until `service` reports `count` running handlers."""
        return self.wait_status(service, "running", count, timeout)

    def wait_status(self, service, field, count, timeout=TIMEOUT):
        """Ask for status (USR1) until `service` reports `field`=`count`.

        A connect returns before superd has accepted, so one status line may
        still show the old count; each round waits for a fresh line.
        """
        deadline = time.monotonic() + timeout
        rx = rf"^status service={re.escape(service)} .*\b{field}=(\d+)"
        while True:
            mark = len(self.log.lines)
            self.send(signal.SIGUSR1)
            line = self.log.wait_for(rx, timeout=max(0.1, deadline - time.monotonic()), start=mark)
            if int(re.search(rf"\b{field}=(\d+)", line).group(1)) == count:
                return line
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} never had {field}={count}; last: {line}")

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT):
        self.send(sig)
        return self.proc.wait(timeout)

    def kill(self):
        """SIGKILL superd and every handler it started.  Handlers run in
        sessions of their own, so killing superd's group alone would orphan
        the ones still running (a wait-mode handler accepts forever): the
        group is stopped first, so it forks no more while its tree is read."""
        # superd and the successors an upgrade started stay in its process group
        members = _group_members(self.pid)
        if self.proc.poll() is None or members:
            handlers = []
            try:
                os.killpg(self.pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            for member in members or [self.pid]:
                try:                  # one that ended meanwhile has no children to list
                    handlers += [_pidfd(p.pid) for p in psutil.Process(member).children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid, fd in filter(None, handlers):
                _kill_group_of(pid)
            self.proc.wait(TIMEOUT)
            for pid, fd in filter(None, handlers):
                # readable once it has exited; its reaping is init's business
                select.select([fd], [], [], TIMEOUT)
                os.close(fd)
        self.notify.close()


def _group_members(pgid):
    """Live processes in process group pgid (an upgraded superd's successors among them)."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _pidfd(pid):
    """(pid, a pidfd on it), or None if it has gone already."""
    try:
        return pid, os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _kill_group_of(pid):
    """SIGKILL pid's own group (the handler with its children), or pid alone
    when it leads no group."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            pass


EXITED = "SUPERD_TEST_EXITED=1"   # sent by the log reader when stderr closes


def _send_exited(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(EXITED.encode(), str(path))
        except OSError:
            pass


def parse_address(text):
    if text.startswith("unix:"):
        return text[5:]
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def expand(text, tmp):
    return (text.replace("{python}", sys.executable)
                .replace("{handlers}", str(HANDLERS))
                .replace("{tmp}", str(tmp)))


def start_superd(tmp_path, config_text, *, args=(), env=None, name="services.yaml",
                 wait=True, pass_fds=()):
    """Start superd on config_text; see the module docstring."""
    config = tmp_path / name
    config.write_text(expand(config_text, tmp_path))
    ready = tmp_path / (name + ".ready.json")
    notify_path = tmp_path / (name + ".notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    # as systemd's RuntimeDirectory= would: each daemon's control socket its own
    runtime = tmp_path / (name + ".run")
    runtime.mkdir(exist_ok=True)
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "NOTIFY_SOCKET": str(notify_path), "RUNTIME_DIRECTORY": str(runtime)}
    child_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "superd", "-f", str(config), "--ready-file", str(ready), *args],
        cwd=str(tmp_path), env=child_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, pass_fds=pass_fds)
    log = LogReader(proc.stderr, on_close=lambda: _send_exited(notify_path))
    log.start()
    daemon = Daemon(proc, config, ready, notify, log)
    if wait:
        try:
            daemon.wait_notify("READY=1")
        except AssertionError:
            daemon.kill()
            raise
    return daemon


@pytest.fixture
def superd(tmp_path):
    """Factory: superd(config_text, **kw) -> Daemon; all killed at teardown."""
    daemons = []

    def factory(config_text, **kw):
        daemon = start_superd(tmp_path, config_text, **kw)
        daemons.append(daemon)
        return daemon

    yield factory
    for daemon in daemons:
        daemon.kill()


@pytest.fixture
def public_dir():
    """A folder other users (nobody) can enter: pytest's tmp_path is private to root."""
    path = tempfile.mkdtemp(prefix="superd-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def connect(address, timeout=TIMEOUT):
    """A connected stream socket (with a timeout) to (host, port) or a unix path."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def read_all(sock, limit=64 << 20):
    """Read until EOF (the socket's timeout applies to every recv)."""
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def python_handler(tmp_path, name, body):
    """Write an executable Python handler script (runs under this interpreter)."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + body)
    path.chmod(0o755)
    return path
