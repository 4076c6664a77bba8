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
HELLO_PY = OUT / "hello.py"
PYTHON = ROOT / ".venv" / "bin" / "python"     # superd's own interpreter
CONNLOAD = OUT / "connload"
SUPERD = ROOT / ".venv" / "bin" / "superd"
IS_ROOT = os.geteuid() == 0
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8"}
ALL_CPUS = sorted(os.sched_getaffinity(0))


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build():
    """Compile the load generator and the handler into bench/out/; write hello.py."""
    OUT.mkdir(exist_ok=True)
    for name in ("connload", "hello"):
        # to a name of its own, then renamed: a bench running meanwhile keeps
        # executing the old file instead of finding it half written (EACCES)
        partial = OUT / f".{name}.{os.getpid()}"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(partial),
                        str(BENCH / f"{name}.c")], check=True)
        os.replace(partial, OUT / name)
    HELLO.chmod(0o755)        # superd with user: nobody must run it too
    # The trivial Python handler: its #! names superd's interpreter (a path
    # of this checkout, hence written here rather than committed).
    HELLO_PY.write_text(f"#!{PYTHON}\n" + (BENCH / "hello.py").read_text())
    HELLO_PY.chmod(0o755)


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

    def start_on_a_free_port(self, argv_for, tries=5):
        """For a server that cannot bind port 0: take an ephemeral port, release
        it, start the server on it, and retry on a clash (bench code only)."""
        for _ in range(tries):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = self.popen(argv_for(port))
            try:
                self.port = wait_for(lambda: listening_port(proc.pid), self.name, proc)
                return
            except RuntimeError as e:
                log(f"{self.name}: {e}; trying another port")
                self.stop()
        raise RuntimeError(f"{self.name}: could not start")

    def pin(self, cpus):
        """Set the CPU affinity of the daemon and of every process it already runs
        (spawn servers, warm interpreters, workers); what starts later inherits it."""
        me = psutil.Process(self.proc.pid)
        for p in [me] + me.children(recursive=True):
            try:
                p.cpu_affinity(cpus or ALL_CPUS)
            except psutil.Error:
                pass                      # a handler that ended meanwhile

    def cpu(self):
        """(daemon CPU s, CPU s of every process it started, live or reaped) so far.

        Live descendants count with what they used and reaped; reaped ones
        through their parent: a preload fork server's handlers, nginx's
        workers and a wait-mode handler are all counted, each once.
        """
        me = psutil.Process(self.proc.pid)
        t = me.cpu_times()
        kids = t.children_user + t.children_system
        for p in me.children(recursive=True):
            try:
                k = p.cpu_times()
            except psutil.Error:
                continue
            kids += k.user + k.system + k.children_user + k.children_system
        return t.user + t.system, kids

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
            words = line.split()
            if words and words[0][:4].isdigit() and "T" in words[0]:
                words = words[1:]             # superd's RFC 3339 time first
            word = words[0][:40] if words else ""
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
    program = (str(HELLO),)           # what it runs per connection

    def start(self):
        proc = self.popen(["tcpserver", "-1", "-R", "-H", "-l", "0", "-b", "1024",
                           "-c", "1000", "127.0.0.1", "0", *self.program],
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
        self.start_on_a_free_port(lambda port: ["systemd-socket-activate", "--accept", "-l",
                                                f"127.0.0.1:{port}", str(HELLO)])


class Superd(Contender):
    """superd serving one service, "hello"; subclasses change its settings."""

    name = "superd"
    # The service's keys, as YAML text; a subclass's `settings` are added on top
    # (a value of None drops a key, e.g. `server` for an `internal:` service).
    base = {"listen": '"127.0.0.1:0"', "server": str(HELLO), "instances": "1000"}
    settings = {}
    ready_event = None        # a log event to wait for after the ready file
    per_connection = "posix_spawn per connection"

    def service(self):
        keys = {**self.base, **self.settings}
        return {k: v for k, v in keys.items() if v is not None}

    @property
    def describe(self):
        extra = "".join(f", `{k}: {v}`" for k, v in self.settings.items()
                        if v is not None and k != "server")
        program = self.settings.get("server")
        what = f" serving `{Path(program).name}`" if program else ""
        return (f"`.venv/bin/superd -f services.yaml --ready-file ready.json`{what} with "
                f"`listen: 127.0.0.1:0`, `instances: 1000`{extra}; {self.per_connection}; "
                f"logs one line per handler to stderr, a file here")

    def program(self):
        return [str(SUPERD)]

    def control_line(self):
        """Each superd its own control socket, as a user's has one: as root the
        default path (/run/superd/control) would be the first contender's only."""
        path = self.dir / "control.sock"
        return f"control: {path}\n" if len(str(path).encode()) <= 107 else "control: none\n"

    def start(self):
        conf = self.dir / "services.yaml"
        conf.write_text(self.control_line() + "services:\n  hello:\n" + "".join(
            f"    {k}: {v}\n" for k, v in self.service().items()))
        ready = self.dir / "ready.json"
        proc = self.popen([*self.program(), "-f", str(conf), "--ready-file", str(ready)])

        def bound():
            try:
                return json.loads(ready.read_text())["services"]["hello"][0]
            except (OSError, ValueError, KeyError, IndexError):
                return None

        host, _, port = wait_for(bound, self.name, proc).rpartition(":")
        if host != "127.0.0.1":
            raise RuntimeError(f"superd bound {host}, not 127.0.0.1")
        self.port = int(port)
        if self.ready_event:
            wait_for(lambda: self.ready_event in self.log_summary(),
                     f"{self.name}: {self.ready_event}", proc, timeout=30)


def superd_variant(name, settings, per_connection=None, ready_event=None):
    """A Superd contender class named `name` with these service settings."""
    attrs = {"name": name, "settings": settings}
    if per_connection:
        attrs["per_connection"] = per_connection
    if ready_event:
        attrs["ready_event"] = ready_event
    return type(name.title().replace("-", "").replace(".", ""), (Superd,), attrs)


SuperdNobody = superd_variant(
    "superd-nobody", {"user": "nobody"},
    "posix_spawn by superd's spawn server for the service, which runs as that user")


class SuperdBefore(Superd):
    """superd from another checkout (SUPERD_BEFORE=PATH, e.g. a `git worktree` of
    an earlier commit), under the same interpreter: before and after in one run."""

    name = "superd-before"

    def program(self):
        path = os.environ["SUPERD_BEFORE"]
        return [str(PYTHON), "-c",
                f"import sys; sys.path.insert(0, {path!r}); from superd.cli import main; main()"]


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
            if os.environ.get("SUPERD_BEFORE"):
                chosen.append(SuperdBefore)
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
    """One bounded connload run against a contender, with CPU accounting (measured())."""
    cmd = [str(CONNLOAD), "-a", "127.0.0.1", "-p", str(contender.port),
           "-c", str(concurrency), "-d", str(duration), "-n", str(maxconn), "-q"]
    out, cpu = measured(contender, cmd, load_cpus, timeout=duration + 90)
    res = json.loads(out)
    res["per_s"] = res["conn_per_s"]
    res.update(cpu_shares(cpu, res["completed"]))
    return res


def measured(contender, cmd, load_cpus, timeout):
    """Run a load generator (pinned to load_cpus) against a contender.

    Returns its stdout and the CPU seconds, during the run, of the daemon,
    of the processes it started, of the load generator, of the whole
    machine's tasks, and the CPU capacity (wall time × CPUs).
    """
    if load_cpus:
        cmd = ["taskset", "-c", ",".join(map(str, load_cpus))] + cmd
    cpu0, kids0 = contender.cpu()
    us0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys0, wall0 = psutil.cpu_times(), time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout)
    sys1, wall1 = psutil.cpu_times(), time.monotonic()
    us1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, kids1 = contender.cpu()
    return r.stdout, {
        "daemon": cpu1 - cpu0, "kids": kids1 - kids0,
        "loader": (us1.ru_utime + us1.ru_stime) - (us0.ru_utime + us0.ru_stime),
        "machine": _busy(sys1) - _busy(sys0), "capacity": (wall1 - wall0) * len(ALL_CPUS)}


def cpu_shares(cpu, completed):
    """measured()'s CPU seconds as µs per completed unit and shares of the machine.

    `foreign_cpu` is the share of the machine's task time that neither the
    contender, the processes it started nor the load generator used (another
    job on the machine: a run to distrust when it is high).
    """
    n = max(completed, 1)
    return {"daemon_cpu_us_per_conn": cpu["daemon"] / n * 1e6,
            "children_cpu_us_per_conn": cpu["kids"] / n * 1e6,
            "loader_cpu_s": cpu["loader"],
            "machine_busy": cpu["machine"] / cpu["capacity"],
            "foreign_cpu": max(0.0, (cpu["machine"] - cpu["daemon"] - cpu["kids"]
                                     - cpu["loader"]) / cpu["capacity"])}
