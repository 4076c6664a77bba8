#!/usr/bin/env python3
"""Dispatch bench: connections per second of super-servers with a compiled handler.

One command starts every contender side by side, each serving bench/hello.c
(write one line, exit) per connection on a loopback ephemeral port, and drives
them in turn with bench/connload.c (connect, read to EOF, close, repeat):
A B C ... A B C ... for several rounds.  It reports the median of the rounds,
ratios against tcpserver and xinetd, and writes bench/out/dispatch.{md,json}
and a chart (bench/out/dispatch.svg, when matplotlib is importable).

Load is bounded in time (-d) and count (-n) and goes to 127.0.0.1 only
(connload refuses anything else).  Not run by CI.

    .venv/bin/python bench/dispatch.py            # the whole comparison
    .venv/bin/python bench/dispatch.py --help     # knobs
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
SUPERD = ROOT / ".venv" / "bin" / "superd"
IS_ROOT = os.geteuid() == 0
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build():
    """Compile the load generator and the handler into bench/out/."""
    OUT.mkdir(exist_ok=True)
    for name in ("connload", "hello"):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(OUT / name), str(BENCH / f"{name}.c")],
                       check=True)
    # superd with user: nobody must be able to reach and run it
    (OUT / "hello").chmod(0o755)


def wait_for(predicate, what, proc, timeout=10.0):
    """Poll until predicate() returns something truthy (bench code, not a test)."""
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
    """The TCP port a process listens on, read from the kernel (psutil)."""
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

    def __init__(self, workdir, pin_server):
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True)
        self.prefix = ["taskset", "-c", pin_server] if pin_server else []
        self.proc = None
        self.port = None

    def popen(self, argv, stdout=None):
        self.errpath = self.dir / "stderr.log"
        self.proc = subprocess.Popen(
            self.prefix + argv, cwd=self.dir, env=CLEAN_ENV, stdin=subprocess.DEVNULL,
            stdout=stdout or subprocess.DEVNULL, stderr=open(self.errpath, "wb"),
            start_new_session=True)
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

    def cpu(self):
        """(daemon cpu s, reaped children cpu s) so far."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def health(self):
        """Zombies and live children of the daemon right now."""
        kids = psutil.Process(self.proc.pid).children()
        zombies = 0
        for k in kids:
            try:
                zombies += k.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                pass
        return {"children": len(kids), "zombies": zombies}

    def log_summary(self):
        """Count of log lines by their first word (superd: the event name)."""
        counts = {}
        try:
            text = self.errpath.read_text(errors="replace")
        except OSError:
            return counts
        for line in text.splitlines():
            word = line.split(None, 1)[0] if line.strip() else ""
            if line.startswith("{"):
                try:
                    word = str(json.loads(line).get("event", "json"))
                except ValueError:
                    word = "json?"
            counts[word[:40]] = counts.get(word[:40], 0) + 1
        return counts


class Tcpserver(Contender):
    name = "tcpserver"
    describe = ("ucspi-tcp `tcpserver -1 -R -H -l 0 -b 1024 -c 1000 127.0.0.1 0 hello`: "
                "fork+exec per connection, no DNS/ident lookups, quiet (its default)")

    def start(self):
        proc = self.popen(["tcpserver", "-1", "-R", "-H", "-l", "0", "-b", "1024", "-c", "1000",
                           "127.0.0.1", "0", str(OUT / "hello")], stdout=subprocess.PIPE)
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
    describe = ("xinetd `-dontfork`, `wait = no`, `instances = UNLIMITED`, `cps = 1000000 1`, "
                "port 0; logs HOST PID EXIT DURATION to a file (Debian's usual logging)")

    def start(self):
        conf = self.dir / "xinetd.conf"
        conf.write_text(XINETD_CONF.format(
            user="    user            = root\n" if IS_ROOT else "",
            server=OUT / "hello", logfile=self.dir / "xinetd.log"))
        self.errpath = self.dir / "stderr.log"
        proc = self.popen(["xinetd", "-dontfork", "-f", str(conf),
                           "-pidfile", str(self.dir / "xinetd.pid")])
        self.port = wait_for(lambda: listening_port(proc.pid), "xinetd", proc)

    def log_summary(self):
        counts = super().log_summary()
        try:
            for line in (self.dir / "xinetd.log").read_text(errors="replace").splitlines():
                parts = line.split()
                word = "xinetd.log:" + (parts[2] if len(parts) > 2 else "?")
                counts[word] = counts.get(word, 0) + 1
        except OSError:
            pass
        return counts


class SocketActivate(Contender):
    name = "systemd-socket-activate"
    describe = ("`systemd-socket-activate --accept -l 127.0.0.1:PORT hello` (systemd's "
                "Accept=yes test tool; it cannot bind port 0, so PORT is picked by the bench)")

    def start(self):
        # It refuses port 0: pick an ephemeral port, release it, retry on a clash.
        for attempt in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = self.popen(["systemd-socket-activate", "--accept", "-l",
                               f"127.0.0.1:{port}", str(OUT / "hello")])
            try:
                self.port = wait_for(lambda: listening_port(proc.pid), self.name, proc)
                return
            except RuntimeError as e:
                log(f"{self.name}: {e}; retrying on another port")
                self.stop()
        raise RuntimeError(f"{self.name}: could not start")


class Superd(Contender):
    name = "superd"
    user = None

    @property
    def describe(self):
        extra = f", `user: {self.user}`" if self.user else ""
        return (f"`.venv/bin/superd -f services.yaml --ready-file ready.json`, "
                f"`listen: 127.0.0.1:0`, `instances: 1000`{extra}; logs to a file")

    def start(self):
        conf = self.dir / "services.yaml"
        lines = ["services:", "  hello:", '    listen: "127.0.0.1:0"',
                 f"    server: {OUT / 'hello'}", "    instances: 1000"]
        if self.user:
            lines.append(f"    user: {self.user}")
        conf.write_text("\n".join(lines) + "\n")
        ready = self.dir / "ready.json"
        proc = self.popen([str(SUPERD), "-f", str(conf), "--ready-file", str(ready)])

        def read_ready():
            try:
                info = json.loads(ready.read_text())
            except (OSError, ValueError):
                return None
            return info["services"]["hello"][0]

        addr = wait_for(read_ready, self.name, proc)
        host, _, port = addr.rpartition(":")
        assert host == "127.0.0.1", addr
        self.port = int(port)


class SuperdNobody(Superd):
    name = "superd-nobody"
    user = "nobody"


def superd_runs():
    if not SUPERD.exists():
        return False
    r = subprocess.run([str(SUPERD), "--help"], capture_output=True, timeout=30)
    return r.returncode == 0


def load(contender, args, duration, maxconn):
    """One connload run against a contender; returns its JSON plus CPU accounting."""
    cmd = [str(OUT / "connload"), "-a", "127.0.0.1", "-p", str(contender.port),
           "-c", str(args.concurrency), "-d", str(duration), "-n", str(maxconn), "-q"]
    if args.pin_load:
        cmd = ["taskset", "-c", args.pin_load] + cmd
    cpu0, kids0 = contender.cpu()
    sys0 = psutil.cpu_times()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True,
                       timeout=duration + 90)
    cpu1, kids1 = contender.cpu()
    sys1 = psutil.cpu_times()
    res = json.loads(r.stdout)
    n = max(res["completed"], 1)
    res["daemon_cpu_us_per_conn"] = (cpu1 - cpu0) / n * 1e6
    res["children_cpu_us_per_conn"] = (kids1 - kids0) / n * 1e6
    busy = sum(sys1) - sum(sys0)
    idle = (sys1.idle + sys1.iowait) - (sys0.idle + sys0.iowait)
    res["machine_busy"] = (busy - idle) / busy if busy > 0 else 0.0
    return res


def med(values):
    return statistics.median(values) if values else float("nan")


def summarise(runs, names):
    summary = {}
    for name in names:
        rs = runs[name]
        summary[name] = {
            "conn_per_s": med([r["conn_per_s"] for r in rs]),
            "conn_per_s_min": min(r["conn_per_s"] for r in rs),
            "conn_per_s_max": max(r["conn_per_s"] for r in rs),
            "p50_us": med([r["latency_us"]["p50"] for r in rs]),
            "p99_us": med([r["latency_us"]["p99"] for r in rs]),
            "completed": sum(r["completed"] for r in rs),
            "errors": sum(r["errors_total"] + r["unfinished"] for r in rs),
            "error_kinds": merge_counts(r["errors"] for r in rs),
            "daemon_cpu_us": med([r["daemon_cpu_us_per_conn"] for r in rs]),
            "children_cpu_us": med([r["children_cpu_us_per_conn"] for r in rs]),
            "machine_busy": med([r["machine_busy"] for r in rs]),
        }
    for ref in ("tcpserver", "xinetd"):
        if ref in summary:
            for s in summary.values():
                s[f"vs_{ref}"] = s["conn_per_s"] / summary[ref]["conn_per_s"]
    return summary


def merge_counts(dicts):
    total = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def markdown(summary, meta, contenders):
    lines = [
        f"Dispatch, compiled handler: {meta['rounds']} interleaved rounds of "
        f"{meta['duration']} s (at most {meta['maxconn']} connections), "
        f"{meta['concurrency']} concurrent connections, load pinned to CPU "
        f"{meta['pin_load'] or 'none'}, servers pinned to CPU {meta['pin_server'] or 'none'}; "
        f"{meta['date']}, {meta['host']}.",
        "",
        "| contender | conn/s (median) | min–max | vs tcpserver | vs xinetd | p50 ms | p99 ms "
        "| daemon CPU µs/conn | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in contenders:
        s = summary[c.name]
        lines.append(
            f"| {c.name} | {s['conn_per_s']:.0f} | {s['conn_per_s_min']:.0f}–"
            f"{s['conn_per_s_max']:.0f} | {s.get('vs_tcpserver', float('nan')):.2f} | "
            f"{s.get('vs_xinetd', float('nan')):.2f} | {s['p50_us'] / 1000:.2f} | "
            f"{s['p99_us'] / 1000:.2f} | {s['daemon_cpu_us']:.0f} | {s['errors']} |")
    lines += ["", "Contenders:", ""]
    lines += [f"- **{c.name}**: {c.describe}" for c in contenders]
    lines += ["", "daemon CPU: user+system time of the dispatching process alone "
              "(not its handlers), divided by completed connections."]
    return "\n".join(lines) + "\n"


def chart(summary, contenders, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not importable: no chart (pip install matplotlib into .venv)")
        return None
    names = [c.name for c in contenders]
    s = [summary[n] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    med_ = [x["conn_per_s"] for x in s]
    lo = [x["conn_per_s"] - x["conn_per_s_min"] for x in s]
    hi = [x["conn_per_s_max"] - x["conn_per_s"] for x in s]
    colors = ["#d95f02" if n.startswith("superd") else "#7570b3" for n in names]
    ax1.bar(names, med_, yerr=[lo, hi], color=colors, capsize=4)
    ax1.set_ylabel("connections / s (median, min–max)")
    ax1.set_title("Dispatch rate, compiled handler")
    if "tcpserver" in summary:
        ax1.axhline(summary["tcpserver"]["conn_per_s"], color="grey", ls="--", lw=0.8)
    ax2.bar(names, [x["p99_us"] / 1000 for x in s], color=colors)
    ax2.set_ylabel("ms (median of rounds)")
    ax2.set_title("p99 connect-to-first-byte latency")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=25)
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
    fig.suptitle(f"{meta['rounds']} rounds × {meta['duration']} s, {meta['concurrency']} "
                 f"concurrent connections, {meta['host']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-r", "--rounds", type=int, default=5)
    p.add_argument("-d", "--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("-n", "--maxconn", type=int, default=200_000, help="connections per run, at most")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load first")
    p.add_argument("--pin-load", default="1", help="CPU list for connload ('' for none)")
    p.add_argument("--pin-server", default="", help="CPU list for the servers and, by "
                   "inheritance, their handlers ('' for none: the default)")
    p.add_argument("--only", default="", help="comma-separated contender names")
    p.add_argument("--without-superd", action="store_true",
                   help="run the peers only (superd is included when .venv/bin/superd runs)")
    p.add_argument("--publish", action="store_true",
                   help="copy the table and chart into bench/README.md and bench/results/")
    return p.parse_args()


def main():
    args = parse_args()
    if shutil.which("taskset") is None:
        args.pin_load = args.pin_server = ""
    build()
    kinds = [Tcpserver, Xinetd, SocketActivate]
    if not args.without_superd:
        if superd_runs():
            kinds.append(Superd)
            if IS_ROOT:
                kinds.append(SuperdNobody)
        else:
            log("superd: `.venv/bin/superd --help` fails; running the peers only")
    if args.only:
        wanted = set(args.only.split(","))
        kinds = [k for k in kinds if k.name in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-", dir=OUT))
    contenders = [k(workdir, args.pin_server) for k in kinds]
    runs = {c.name: [] for c in contenders}
    health = {}
    try:
        for c in contenders:
            c.start()
            log(f"{c.name}: pid {c.proc.pid}, port {c.port}")
        for c in contenders:
            load(c, args, args.warmup, args.maxconn)
        for rnd in range(1, args.rounds + 1):
            for c in contenders:
                res = load(c, args, args.duration, args.maxconn)
                runs[c.name].append(res)
                log(f"round {rnd} {c.name:24} {res['conn_per_s']:8.0f} conn/s  "
                    f"p99 {res['latency_us']['p99'] / 1000:6.2f} ms  errors {res['errors_total']}"
                    f"{' ' + json.dumps(res['errors']) if res['errors'] else ''}  "
                    f"daemon cpu {res['daemon_cpu_us_per_conn']:.0f} µs/conn  "
                    f"busy {res['machine_busy']:.0%}")
        time.sleep(0.5)       # let the last handlers be reaped
        for c in contenders:
            health[c.name] = dict(c.health(), log_lines=c.log_summary(),
                                  rss_mb=psutil.Process(c.proc.pid).memory_info().rss / 2**20)
    finally:
        for c in contenders:
            c.stop()
    meta = {"rounds": args.rounds, "duration": args.duration, "maxconn": args.maxconn,
            "concurrency": args.concurrency, "pin_load": args.pin_load,
            "pin_server": args.pin_server, "date": time.strftime("%Y-%m-%d %H:%M"),
            "host": f"{os.cpu_count()} CPUs, Linux {os.uname().release}",
            "workdir": str(workdir)}
    summary = summarise(runs, [c.name for c in contenders])
    md = markdown(summary, meta, contenders)
    (OUT / "dispatch.md").write_text(md)
    (OUT / "dispatch.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": runs, "health": health}, indent=1))
    svg = chart(summary, contenders, meta, OUT / "dispatch.svg")
    print(md)
    for name, h in health.items():
        print(f"{name}: after the runs: {h}")
    if svg is None:
        print("no chart: matplotlib is not installed in this venv")
    if args.publish:
        publish(md, svg)


def publish(md, svg):
    """Put the last run's table (and chart) into bench/README.md between markers."""
    readme = BENCH / "README.md"
    text = readme.read_text()
    start, end = "<!-- dispatch:begin -->", "<!-- dispatch:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{md}{end}{tail}")
    if svg:
        (BENCH / "results").mkdir(exist_ok=True)
        shutil.copy(svg, BENCH / "results" / "dispatch.svg")


if __name__ == "__main__":
    main()
