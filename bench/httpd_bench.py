"""superd-httpd against its peers, side by side in one run (not run by CI).

    .venv/bin/python bench/httpd_bench.py [-r ROUNDS] [-d SECONDS] [-c CONNS]
                                          [-t THREADS] [--new-conn-c CONNS]
                                          [--old REV] [--only NAME,...] [--pin]

A script from the httpd author, with the suite's start-up helpers
(bench/contenders.py); bench/httpd_peers.py is the bench suite's own take on
the same comparison, on its shared framework.

Loads, each with wrk (-t threads) on loopback for -d seconds and -c
connections (--new-conn-c for the one-connection-per-request loads):

    keep-alive   GET of a small file (1 KiB) on persistent connections
    new-conn     the same with "Connection: close": one connection per request
    cgi          GET of a /bin/sh CGI program, keep-alive where the server allows
    cgi-new-conn the same, one connection per request

Contenders (each started once, on a port the kernel picks where it can):

    superd            superd-httpd under superd, nowait (internal: httpd)
    superd-preload    the same with preload: true (a warm interpreter forks)
    superd-wait       superd-httpd under superd, mode: wait (default --workers)
    listen            superd-httpd --listen (default --workers)
    listen-w1         superd-httpd --listen --workers 1
    *-old             the same four superd-httpd ways (superd, superd-preload,
                      superd-wait, listen) with the handler of --old REV (git
                      show REV:handlers/httpd.py; default: the last commit
                      before the event-driven worker), so that a change is
                      measured against what it replaced in the same run;
                      superd finds it first on its PYTHONPATH, as the
                      package superd_handlers
    http.server       python -m http.server (--cgi for the CGI loads)
    busybox           busybox httpd -f (standalone)
    busybox-i         busybox httpd -i under tcpserver (one process per connection)
    mini_httpd        mini_httpd -D (CGI only; it cannot bind port 0, so the
                      bench picks a free port: a benign race, bench code only)
    nginx             nginx, the ceiling (files only; handed a socket bound
                      here through its NGINX variable)
    nginx-ofc         the same with open_file_cache (max=1000, valid 1 s)

Rounds interleave the contenders, load by load (keep-alive: A B C, new-conn:
A B C, ...; then the next round), so that the figures a round's ratios
compare were measured seconds apart; a load starts once the
machine is quiet (or after --patience seconds of waiting for it, noted with
the load average).  Each figure is the median over rounds; each ratio is the
median of per-round ratios against a contender measured seconds apart:
nginx (the ceiling, files only), the same way with the old handler, and the
reference (keep-alive and new-conn against http.server, cgi against busybox).  Start-up: one request over a socketpair from a fresh
interpreter, against `python -S -c pass`.

Writes bench/out/httpd_bench.md and bench/out/httpd_bench.json, prints the table.
"""

import argparse
import json
import os
import py_compile
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from contenders import listening_port, wait_for  # the suite's own (bench/ is on sys.path)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
HANDLER = ROOT / "handlers" / "httpd.py"
PY = sys.executable
LOADS = ("keep-alive", "new-conn", "cgi", "cgi-new-conn")
REFS = {"keep-alive": "http.server", "new-conn": "http.server",
        "cgi": "busybox", "cgi-new-conn": "busybox"}
OLD_REV = "d6e0d36"           # the last commit before superd-httpd's event-driven worker
CGI = '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nhello from cgi\\n"\n'


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def need(program):
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not path:
        raise SystemExit("%s is not installed" % program)
    return path


def quiet(patience=20.0):
    """Wait (up to patience s) for the machine to fall below 15 % busy."""
    if patience <= 0:
        return psutil.cpu_percent(interval=0.2) < 15
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if psutil.cpu_percent(interval=0.5) < 15:
            return True
    return False


# -- the site ------------------------------------------------------------------

def make_site(work):
    site = work / "www"
    (site / "cgi-bin").mkdir(parents=True)
    (site / "small.txt").write_bytes(b"0123456789abcdef" * 64)          # 1 KiB
    (site / "index.html").write_text("<!DOCTYPE html><title>bench</title>\n")
    hello = site / "cgi-bin" / "hello.sh"
    hello.write_text(CGI)
    hello.chmod(0o755)
    return site


# -- contenders ------------------------------------------------------------------

class Contender:
    name = "?"
    loads = LOADS

    def __init__(self, work, site, pin):
        self.dir = work / self.name.replace("/", "-")
        self.dir.mkdir()
        self.site = site
        self.pin = pin
        self.proc = None
        self.port = None

    def popen(self, argv, **kw):
        argv = [str(a) for a in argv]
        if self.pin:
            argv = ["taskset", "-c", self.pin] + argv
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", open(self.dir / "stderr.log", "wb"))
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("cwd", self.dir)
        self.proc = subprocess.Popen(argv, start_new_session=True, **kw)
        return self.proc

    def url(self, load):
        path = "/cgi-bin/hello.sh" if load.startswith("cgi") else "/small.txt"
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        """TERM first: superd starts each handler in a session of its own, so
        only superd itself can end them; then KILL whatever is left."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class Superd(Contender):
    name = "superd"
    extra = ""
    old = False                   # run the handler of --old REV (see old_handler)

    def start(self):
        config = self.dir / "services.yaml"
        config.write_text(
            "services:\n  http:\n    listen: 127.0.0.1:0\n    internal: httpd\n"
            "    args: [--root, %s, --quiet]\n    instances: 1000\n%s" % (self.site, self.extra))
        ready = self.dir / "ready.json"
        env = dict(os.environ)
        if self.old:
            env["PYTHONPATH"] = str(OLD_PACKAGE)
        proc = self.popen([PY, "-m", "superd", "-f", config, "--ready-file", ready],
                          cwd=ROOT, env=env)
        text = wait_for(lambda: ready.exists() and ready.read_text(), self.name, proc,
                        timeout=15.0)
        self.port = int(json.loads(text)["services"]["http"][0].rsplit(":", 1)[1])
        if "preload" in self.extra:
            log_path = self.dir / "stderr.log"
            wait_for(lambda: b"preload-ready" in log_path.read_bytes(), self.name, proc,
                     timeout=15.0)


class SuperdPreload(Superd):
    name = "superd-preload"
    extra = "    preload: true\n"


class SuperdWait(Superd):
    name = "superd-wait"
    extra = "    mode: wait\n"


class SuperdOld(Superd):
    name = "superd-old"
    old = True


class SuperdPreloadOld(SuperdPreload):
    name = "superd-preload-old"
    old = True


class SuperdWaitOld(SuperdWait):
    name = "superd-wait-old"
    old = True


class Listen(Contender):
    name = "listen"
    args = ()
    old = False

    def start(self):
        err = self.dir / "stderr.log"
        handler = OLD_PACKAGE / "superd_handlers" / "httpd.py" if self.old else HANDLER
        proc = self.popen([PY, "-S", handler, "--root", self.site, "--quiet",
                           "--listen", "127.0.0.1:0", *self.args])
        found = wait_for(lambda: re.search(rb"listening on 127\.0\.0\.1:(\d+)", err.read_bytes()),
                         self.name, proc, timeout=15.0)
        self.port = int(found.group(1))


class ListenOneWorker(Listen):
    name = "listen-w1"
    args = ("--workers", "1")


class ListenOld(Listen):
    name = "listen-old"
    old = True


class HttpServer(Contender):
    name = "http.server"

    def start(self):
        self.ports = {}
        self.procs = []
        for cgi in (False, True):
            self.proc = None
            argv = [PY, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                    "--directory", self.site] + (["--cgi"] if cgi else [])
            proc = self.popen(argv, stdout=subprocess.PIPE)
            line = proc.stdout.readline().decode()
            self.ports[cgi] = int(re.search(r"port (\d+)", line).group(1))
            self.procs.append(proc)

    def url(self, load):
        self.port = self.ports[load.startswith("cgi")]
        return super().url(load)

    def stop(self):
        for proc in self.procs:
            self.proc = proc
            super().stop()


class Busybox(Contender):
    name = "busybox"

    def start(self):
        proc = self.popen([need("busybox"), "httpd", "-f", "-p", "127.0.0.1:0", "-h", self.site])
        self.port = wait_for(lambda: listening_port(proc.pid), self.name, proc, timeout=15.0)


class BusyboxInetd(Contender):
    name = "busybox-i"

    def start(self):
        proc = self.popen([need("tcpserver"), "-1", "-R", "-H", "-l", "0", "-b", "1024",
                           "-c", "1000", "127.0.0.1", "0",
                           need("busybox"), "httpd", "-i", "-h", self.site],
                          stdout=subprocess.PIPE)
        self.port = int(proc.stdout.readline())


class MiniHttpd(Contender):
    name = "mini_httpd"
    loads = ("cgi", "cgi-new-conn")

    def start(self):
        with socket.socket() as probe:        # bench code: a benign race, see the docstring
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        user = ["-u", "root"] if os.geteuid() == 0 else []
        proc = self.popen([need("mini_httpd"), "-D", "-h", "127.0.0.1", "-p", self.port,
                           "-d", self.site, "-c", "cgi-bin/*", "-l", "/dev/null", *user])
        wait_for(lambda: listening_port(proc.pid), self.name, proc, timeout=15.0)


class Nginx(Contender):
    name = "nginx"
    loads = ("keep-alive", "new-conn")
    extra = ""                    # more of the http block

    def start(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port = listener.getsockname()[1]
        conf = self.dir / "nginx.conf"
        conf.write_text(
            "daemon off;\nmaster_process on;\nworker_processes auto;\npid %s/nginx.pid;\n"
            "error_log %s/error.log;\nevents { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
            "  keepalive_requests 1000000;\n  default_type application/octet-stream;\n%s"
            "  client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s;\n"
            "  uwsgi_temp_path %s; scgi_temp_path %s;\n"
            "  server { listen 127.0.0.1:%d; root %s; }\n}\n"
            % (self.dir, self.dir, self.extra, *[self.dir] * 5, self.port, self.site))
        env = dict(os.environ, NGINX="%d;" % listener.fileno())
        proc = self.popen([need("nginx"), "-c", conf, "-p", self.dir], env=env,
                          pass_fds=(listener.fileno(),))
        listener.close()
        wait_for(lambda: (self.dir / "nginx.pid").exists(), self.name, proc, timeout=15.0)


class NginxCached(Nginx):
    """nginx with its open file cache, the counterpart of superd-httpd's
    remembered answers: open descriptors and stat results are kept, and
    checked again at most once a second."""
    name = "nginx-ofc"
    extra = "  open_file_cache max=1000 inactive=20s;\n  open_file_cache_valid 1s;\n"


KINDS = [Superd, SuperdOld, SuperdPreload, SuperdPreloadOld, SuperdWait, SuperdWaitOld,
         Listen, ListenOld, ListenOneWorker, HttpServer, Busybox, BusyboxInetd, MiniHttpd,
         Nginx, NginxCached]
OLD_TWIN = {"superd": "superd-old", "superd-preload": "superd-preload-old",
            "superd-wait": "superd-wait-old", "listen": "listen-old",
            "listen-w1": "listen-old"}
OLD_PACKAGE = None              # set by old_handler(): a folder with superd_handlers/httpd.py


def old_handler(work, rev):
    """Write the handler of git revision rev as the package superd_handlers
    under work/old (superd's handlers_dir() imports it first)."""
    global OLD_PACKAGE
    package = work / "old" / "superd_handlers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source = subprocess.run(["git", "-C", str(ROOT), "show", "%s:handlers/httpd.py" % rev],
                            capture_output=True, check=True).stdout
    (package / "httpd.py").write_bytes(source)
    OLD_PACKAGE = work / "old"


# -- loads -----------------------------------------------------------------------

def wrk(url, load, conns, duration, cpu, threads=1):
    threads = min(threads, conns)
    argv = [need("wrk"), "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
            "--timeout", "5s", url]
    if load.endswith("new-conn"):
        argv[1:1] = ["-H", "Connection: close"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rate": rate, "requests": count, "non2xx": int(bad.group(1)) if bad else 0,
            "errors": errors.group(1) if errors else ""}


def tree_cpu(contender):
    """CPU seconds (user and system) of a contender's processes so far:
    each live one's own and its reaped children's (handlers, CGI programs)."""
    procs = getattr(contender, "procs", None) or [contender.proc]
    total = 0.0
    for proc in procs:
        try:
            root = psutil.Process(proc.pid)
            family = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for member in family:
            try:
                t = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def check(contender, load):
    """One request by curl must succeed before a server is loaded."""
    result = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                             "--max-time", "10", contender.url(load)],
                            capture_output=True, text=True)
    if result.stdout != "200":
        raise RuntimeError("%s %s: %s %s" % (contender.name, load, result.stdout, result.stderr))


# -- start-up ----------------------------------------------------------------------

def startup(work, site, runs=40):
    """Median ms to serve one request from a fresh interpreter, over a socketpair."""
    cached = work / "cached"
    cached.mkdir()
    shutil.copy(HANDLER, cached / "httpd.py")
    py_compile.compile(str(cached / "httpd.py"), doraise=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argvs = {
        "python -S -c pass": [PY, "-S", "-c", "pass"],
        "httpd.py as a script": [PY, "-S", HANDLER, "--root", site, "--quiet"],
        "httpd from bytecode": [PY, "-S", "-c", "import sys; sys.path.insert(0, %r); import httpd;"
                                " sys.exit(httpd.main())" % str(cached), "--root", site, "--quiet"],
    }
    result = {}
    for name, argv in argvs.items():
        times = []
        for _ in range(runs):
            ours, theirs = socket.socketpair()
            ours.settimeout(10)
            start = time.perf_counter()
            proc = subprocess.Popen([str(a) for a in argv], stdin=theirs, stdout=theirs,
                                    stderr=subprocess.DEVNULL, env=env)
            theirs.close()
            if "pass" not in name:
                ours.sendall(b"GET /small.txt HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                while ours.recv(65536):
                    pass
            proc.wait()
            times.append((time.perf_counter() - start) * 1000)
            ours.close()
        result[name] = statistics.median(times)
    return result


# -- the run -------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("-d", "--duration", type=int, default=3)
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-t", "--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--new-conn-c", type=int, default=8,
                        help="connections for the one-connection-per-request loads")
    parser.add_argument("--old", default=OLD_REV, help="git revision of the old handler")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait for a quiet machine before each load")
    parser.add_argument("--only", help="comma-separated contender names")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="comma-separated loads (default: all of %s)" % ", ".join(LOADS))
    parser.add_argument("--pin", action="store_true",
                        help="servers on the first CPUs, wrk on the last")
    args = parser.parse_args()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # stop the contenders too
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = load_cpu = None
    if args.pin and len(cpus) >= 2:
        server_cpus = ",".join(map(str, cpus[:-1]))
        load_cpu = str(cpus[-1])
    kinds = [k for k in KINDS if not args.only or k.name in args.only.split(",")]
    loads = [load for load in LOADS if load in args.loads.split(",")]
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="httpd-", dir=OUT))
    work.chmod(0o755)                 # nginx's workers run as another user
    site = make_site(work)
    old_handler(work, args.old)
    started = []
    loads_seen = []
    runs = {}
    try:
        for kind in kinds:
            contender = kind(work, site, server_cpus)
            contender.start()
            started.append(contender)
            for load in contender.loads:
                if load in loads:
                    check(contender, load)
            log("started", contender.name)
        for rnd in range(args.rounds):
            # load by load, every contender in turn: the ratios of a round
            # compare figures measured seconds apart, not minutes
            for load, contender in [(load, c) for load in loads for c in started
                                    if load in c.loads]:
                busy = not quiet(args.patience)
                conns = args.new_conn_c if load.endswith("new-conn") else args.connections
                before = tree_cpu(contender)
                res = wrk(contender.url(load), load, conns, args.duration, load_cpu,
                          args.threads)
                res["cpu_us"] = (tree_cpu(contender) - before) * 1e6 / max(res["requests"], 1)
                res["load1"] = os.getloadavg()[0]
                res["busy"] = busy
                runs.setdefault((contender.name, load), []).append(res)
                log("round %d %-18s %-13s %8.0f req/s %6.0f µs CPU/req load %.2f%s %s" % (
                    rnd + 1, contender.name, load, res["rate"], res["cpu_us"], res["load1"],
                    " (busy)" if busy else "", res["errors"]))
        boot = startup(work, site)
    finally:
        for contender in started:
            contender.stop()
    report(runs, boot, args, started, server_cpus, load_cpu)


def ratios(runs, name, other, load):
    """The per-round ratios name/other for load (empty if either is missing)."""
    got, base = runs.get((name, load)), runs.get((other, load))
    if not got or not base:
        return []
    return [r["rate"] / b["rate"] for r, b in zip(got, base)]


def cpu_ratios(runs, name, load):
    """Per round, nginx's CPU per request over this contender's."""
    got, base = runs.get((name, load)), runs.get(("nginx", load))
    if not got or not base:
        return []
    return [b["cpu_us"] / r["cpu_us"] for r, b in zip(got, base) if r["cpu_us"] > 0]


def shown(values):
    """A ratio's median and, over several rounds, its range."""
    if not values:
        return ""
    if len(values) == 1:
        return "%.2f" % values[0]
    return "%.2f (%.2f–%.2f)" % (statistics.median(values), min(values), max(values))


def report(runs, boot, args, started, server_cpus, load_cpu):
    names = [c.name for c in started]
    loads1 = [r["load1"] for got in runs.values() for r in got]
    busy = sum(r["busy"] for got in runs.values() for r in got)
    lines = ["# superd-httpd against its peers", "",
             "%d rounds of %d s, wrk -t%d -c%d (-c%d for the new-conn loads), %s; medians "
             "in requests/s; a ratio is the median of per-round ratios against a contender "
             "of the same round.  Load average during the run: %.2f to %.2f; %d of %d "
             "loads began on a busy machine (over 15%% CPU)." % (
                 args.rounds, args.duration, args.threads, args.connections, args.new_conn_c,
                 "servers on CPUs %s, wrk on %s" % (server_cpus, load_cpu) if server_cpus
                 else "no CPU pinning", min(loads1, default=0), max(loads1, default=0),
                 busy, len(loads1)), ""]
    for load in LOADS:
        ref = REFS[load]
        if not any(runs.get((name, load)) for name in names):
            continue
        lines += ["## %s" % load, "",
                  "| contender | req/s | min–max | × nginx | × old handler | × %s "
                  "| CPU µs/req | nginx CPU/req ÷ its | errors |" % ref,
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name in names:
            got = runs.get((name, load))
            if not got:
                continue
            rates = [r["rate"] for r in got]
            errors = "; ".join(sorted({r["errors"] for r in got if r["errors"]}
                                      | {"non-2xx %d" % r["non2xx"] for r in got if r["non2xx"]}))
            cpu = [r["cpu_us"] for r in got]
            lines.append("| %s | %.0f | %.0f–%.0f | %s | %s | %s | %.0f | %s | %s |" % (
                name, statistics.median(rates), min(rates), max(rates),
                shown(ratios(runs, name, "nginx", load)),
                shown(ratios(runs, name, OLD_TWIN[name], load)) if name in OLD_TWIN else "",
                shown(ratios(runs, name, ref, load)), statistics.median(cpu),
                shown(cpu_ratios(runs, name, load)), errors))
        lines.append("")
    lines += ["## start-up (one request from a fresh interpreter, median ms)", "",
              "| run | ms | over bare |", "| --- | ---: | ---: |"]
    bare = boot["python -S -c pass"]
    for name, ms in boot.items():
        lines.append("| %s | %.1f | %+.1f |" % (name, ms, ms - bare))
    text = "\n".join(lines) + "\n"
    (OUT / "httpd_bench.md").write_text(text)
    (OUT / "httpd_bench.json").write_text(json.dumps(
        {"runs": {"%s %s" % k: v for k, v in runs.items()}, "startup_ms": boot,
         "args": vars(args)}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
