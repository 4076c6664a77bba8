"""The servers under test, the compiled helpers, and one measured load run.

Owns: bench/out/connload and bench/out/hello (built here with gcc -O2), and
each contender's process (started in its own session, stopped by killing
that process group).  Every contender listens on 127.0.0.1 on a port the
kernel picks, serves bench/out/hello once per connection, and keeps its
logs under its own folder of the run's work directory.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
HELLO = OUT / "hello"
CONNLOAD = OUT / "connload"
SUPERD = ROOT / ".venv" / "bin" / "superd"
IS_ROOT = os.geteuid() == 0
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8"}
ALL_CPUS = sorted(os.sched_getaffinity(0))


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build():
    """Compile the load generator and the handler into bench/out/."""
    OUT.mkdir(exist_ok=True)
    for name in ("connload", "hello"):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(OUT / name),
                        str(BENCH / f"{name}.c")], check=True)
    HELLO.chmod(0o755)        # superd with user: nobody must run it too


def wait_for(predicate, what, proc, timeout=10.0):
    """Poll until predicate() is truthy (bench code: a server start, not a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode} before it was ready")
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"{what}: not ready after {timeout} s")


def listening_port(pid):
    """The TCP port a process listens on, as the kernel reports it."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp4")
    except psutil.Error:
        return None
    ports = [c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN]
    return ports[0] if ports else None


class Contender:
    """One server under test: started once, loaded once per round, stopped at the end."""

    name = "?"
    describe = ""

    def __init__(self, workdir):
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True)
        self.errpath = self.dir / "stderr.log"
        self.proc = None
        self.port = None

    def popen(self, argv, stdout=None):
        with open(self.errpath, "ab") as err:
            self.proc = subprocess.Popen(
                argv, cwd=self.dir, env=CLEAN_ENV, stdin=subprocess.DEVNULL,
                stdout=stdout or subprocess.DEVNULL, stderr=err, start_new_session=True)
        return self.proc

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def pin(self, cpus):
        """Set the daemon's CPU affinity; handlers it starts from now on inherit it."""
        psutil.Process(self.proc.pid).cpu_affinity(cpus or ALL_CPUS)

    def cpu(self):
        """(daemon CPU s, CPU s of the children it has reaped) so far."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def health(self):
        """The daemon's children, zombies among them, and its resident memory now."""
        me = psutil.Process(self.proc.pid)
        kids = me.children()
        zombies = 0
        for k in kids:
            try:
                zombies += k.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                pass
        return {"children": len(kids), "zombies": zombies, "fds": me.num_fds(),
                "rss_mb": round(me.memory_info().rss / 2**20, 1),
                "log_lines": self.log_summary()}

    def log_summary(self):
        """Count of stderr lines by first word (superd: the event name)."""
        counts = {}
        try:
            text = self.errpath.read_text(errors="replace")
        except OSError:
            return counts
        for line in text.splitlines():
            word = line.split(None, 1)[0][:40] if line.strip() else ""
            if line.startswith("{"):
                try:
                    word = str(json.loads(line).get("event", "json"))
                except ValueError:
                    word = "json?"
            counts[word] = counts.get(word, 0) + 1
        return counts


class Tcpserver(Contender):
    name = "tcpserver"
    describe = ("ucspi-tcp `tcpserver -1 -R -H -l 0 -b 1024 -c 1000 127.0.0.1 0 hello`: "
                "fork + exec per connection; no DNS or ident look-ups; quiet (its default)")

    def start(self):
        proc = self.popen(["tcpserver", "-1", "-R", "-H", "-l", "0", "-b", "1024",
                           "-c", "1000", "127.0.0.1", "0", str(HELLO)],
                          stdout=subprocess.PIPE)
        line = proc.stdout.readline().decode().strip()    # -1: prints the bound port
        if not line.isdigit():
            raise RuntimeError(f"tcpserver printed {line!r}, not a port")
        self.port = int(line)


XINETD_CONF = """\
defaults
{{
    instances       = UNLIMITED
    cps             = 1000000 1
}}
service hello
{{
    type            = UNLISTED
    socket_type     = stream
    protocol        = tcp
    wait            = no
{user}    bind            = 127.0.0.1
    port            = 0
    server          = {server}
    instances       = UNLIMITED
    per_source      = UNLIMITED
    cps             = 1000000 1
    log_type        = FILE {logfile}
    log_on_success  = HOST PID EXIT DURATION
    log_on_failure  = HOST
}}
"""


class Xinetd(Contender):
    name = "xinetd"
    describe = ("xinetd `-dontfork`, `wait = no`, `instances = UNLIMITED`, "
                "`cps = 1000000 1`, `port = 0`; fork + exec per connection; logs "
                "HOST PID EXIT DURATION to a file (Debian's usual logging)")

    def start(self):
        conf = self.dir / "xinetd.conf"
        conf.write_text(XINETD_CONF.format(
            user="    user            = root\n" if IS_ROOT else "",
            server=HELLO, logfile=self.dir / "xinetd.log"))
        proc = self.popen(["xinetd", "-dontfork", "-f", str(conf),
                           "-pidfile", str(self.dir / "xinetd.pid")])
        self.port = wait_for(lambda: listening_port(proc.pid), self.name, proc)

    def log_summary(self):
        counts = super().log_summary()
        try:
            lines = (self.dir / "xinetd.log").read_text(errors="replace").splitlines()
        except OSError:
            return counts
        for line in lines:
            parts = line.split()
            word = "xinetd.log:" + (parts[2] if len(parts) > 2 else "?")
            counts[word] = counts.get(word, 0) + 1
        return counts


class SocketActivate(Contender):
    name = "systemd-socket-activate"
    describe = ("`systemd-socket-activate --accept -l 127.0.0.1:PORT hello` (systemd's "
                "Accept=yes tool; the connection on fd 3 with LISTEN_FDS; it logs four "
                "lines per connection to stderr, a file here; it refuses port 0, so the "
                "bench picks PORT)")

    def start(self):
        # It cannot bind port 0: take an ephemeral port, release it, retry on a clash.
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = self.popen(["systemd-socket-activate", "--accept", "-l",
                               f"127.0.0.1:{port}", str(HELLO)])
            try:
                self.port = wait_for(lambda: listening_port(proc.pid), self.name, proc)
                return
            except RuntimeError as e:
                log(f"{self.name}: {e}; trying another port")
                self.stop()
        raise RuntimeError(f"{self.name}: could not start")


class Superd(Contender):
    name = "superd"
    user = None

    @property
    def describe(self):
        extra = f", `user: {self.user}`" if self.user else ""
        return (f"`.venv/bin/superd -f services.yaml --ready-file ready.json` with "
                f"`listen: 127.0.0.1:0`, `instances: 1000`{extra}; posix_spawn per "
                f"connection; logs one line per connection to stderr, a file here")

    def start(self):
        conf = self.dir / "services.yaml"
        lines = ["services:", "  hello:", '    listen: "127.0.0.1:0"',
                 f"    server: {HELLO}", "    instances: 1000"]
        if self.user:
            lines.append(f"    user: {self.user}")
        conf.write_text("\n".join(lines) + "\n")
        ready = self.dir / "ready.json"
        proc = self.popen([str(SUPERD), "-f", str(conf), "--ready-file", str(ready)])

        def bound():
            try:
                return json.loads(ready.read_text())["services"]["hello"][0]
            except (OSError, ValueError, KeyError, IndexError):
                return None

        host, _, port = wait_for(bound, self.name, proc).rpartition(":")
        if host != "127.0.0.1":
            raise RuntimeError(f"superd bound {host}, not 127.0.0.1")
        self.port = int(port)


class SuperdNobody(Superd):
    name = "superd-nobody"
    user = "nobody"


PEERS = [Tcpserver, Xinetd, SocketActivate]


def superd_runs():
    """True when .venv/bin/superd exists and its --help works."""
    if not SUPERD.exists():
        return False
    try:
        r = subprocess.run([str(SUPERD), "--help"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def kinds(with_superd=True, only=""):
    """The contender classes for this run, in the order they are loaded."""
    chosen = list(PEERS)
    if with_superd:
        if superd_runs():
            chosen.append(Superd)
            if IS_ROOT:
                chosen.append(SuperdNobody)
        else:
            log("superd: `.venv/bin/superd --help` fails; running the peers only")
    if only:
        wanted = set(only.split(","))
        chosen = [k for k in chosen if k.name in wanted]
    return chosen


def wait_for_quiet(limit=0.10, patience=30.0):
    """Before a run: wait (at most `patience` s) until the machine is nearly idle.

    Other jobs on a shared machine come in bursts; a run that starts in one is
    skewed.  Returns the busy share of the last 0.5 s sample.
    """
    deadline = time.monotonic() + patience
    while True:
        busy = psutil.cpu_percent(interval=0.5) / 100
        if busy <= limit or time.monotonic() >= deadline:
            return busy


def _busy(t):
    """CPU seconds the machine spent in tasks (interrupt time left out)."""
    return t.user + t.nice + t.system + getattr(t, "steal", 0.0)


def load(contender, concurrency, duration, maxconn, load_cpus=None):
    """One bounded connload run against a contender, with CPU accounting.

    Returns connload's JSON plus: the daemon's and its reaped handlers' CPU
    per connection, and `foreign_cpu`, the share of the machine's task time
    that neither the contender, its handlers nor connload used (another job
    on the machine: a run to distrust when it is high).
    """
    cmd = [str(CONNLOAD), "-a", "127.0.0.1", "-p", str(contender.port),
           "-c", str(concurrency), "-d", str(duration), "-n", str(maxconn), "-q"]
    if load_cpus:
        cmd = ["taskset", "-c", ",".join(map(str, load_cpus))] + cmd
    cpu0, kids0 = contender.cpu()
    us0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys0, wall0 = psutil.cpu_times(), time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True,
                       timeout=duration + 90)
    sys1, wall1 = psutil.cpu_times(), time.monotonic()
    us1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, kids1 = contender.cpu()
    res = json.loads(r.stdout)
    n = max(res["completed"], 1)
    daemon, kids = cpu1 - cpu0, kids1 - kids0
    gen = (us1.ru_utime + us1.ru_stime) - (us0.ru_utime + us0.ru_stime)
    res["daemon_cpu_us_per_conn"] = daemon / n * 1e6
    res["children_cpu_us_per_conn"] = kids / n * 1e6
    res["connload_cpu_s"] = gen
    capacity = (wall1 - wall0) * len(ALL_CPUS)
    res["machine_busy"] = (_busy(sys1) - _busy(sys0)) / capacity
    res["foreign_cpu"] = max(0.0, (_busy(sys1) - _busy(sys0) - daemon - kids - gen) / capacity)
    return res
