#!/usr/bin/env python3
"""HAProxy in front of three hosts: superd against tcpserver, and upgrades under load.

One private network of namespaces (tests/netns_support.py's Lab), 10.79.0.0/24:

    lb 10.79.0.1: HAProxy; connload runs here too, against HAProxy's
       |          frontends on the namespace's own loopback (connload
       |          refuses any other address)
    h1 10.79.0.11, h2 .12, h3 .13, each running, side by side:
        :7000  superd, `server: bench/out/hello`, instances 1000
        :7001  tcpserver -R -H -l 0 -c 1000, the same hello
        :7002  superd as :7000 with `proxy_protocol: v2` (HAProxy sends
               send-proxy-v2 there: the deployment superd(8) describes)

Frontend 127.0.0.1:800N balances round robin over the three hosts' :700N,
TCP checks every second.  Every connection is connect, read "hello", EOF.

Part 1, connections per second: rounds of one connload run per backend,
interleaved (the order rotates each round), each after waiting briefly for a
quiet machine; medians, and the median of each round's superd/tcpserver ratio.

Part 2, upgrades under load: connload against the superd frontend while h1's
superd is upgraded in place (`superdctl upgrade`, which waits for the
verdict) ten times in a row; the failed client connections (connload's
errors: refused, reset, closed before "hello") and HAProxy's own view of h1
(connection errors, retries, redispatches, from `show stat`).  The same for
tcpserver on h1 restarted (TERM to tcpserver alone, its handlers left to
finish, then start it again) ten times: what tcpserver has instead of an
upgrade.

Needs root (ip netns), haproxy, tcpserver, gcc.  Writes bench/out/haproxy_hosts.json
and .md; prints the tables and the load average (`uptime`) before and after.

    .venv/bin/python bench/haproxy_hosts.py [-r ROUNDS] [-d SECONDS] [-c CONCURRENCY]
"""

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
import contenders as cs  # noqa: E402
from netns_support import HAProxy, Lab  # noqa: E402

LB = "10.79.0.1"
HOSTS = {"h1": "10.79.0.11", "h2": "10.79.0.12", "h3": "10.79.0.13"}
SUPERDCTL = cs.SUPERD.with_name("superdctl")
PROGRAMS = {"hello": cs.HELLO, "connload": cs.CONNLOAD}    # main() puts private copies here

# backend name: (port on every host, HAProxy's server options, frontend port on lb's loopback)
BACKENDS = {
    "superd": (7000, "check inter 1s", 8000),
    "tcpserver": (7001, "check inter 1s", 8001),
    "superd-proxy": (7002, "send-proxy-v2 check inter 1s", 8002),
}

SUPERD_CONFIG = """\
services:
  hello:
    listen: {ip}:7000
    server: {hello}
    instances: 1000
  hello-proxy:
    listen: {ip}:7002
    server: {hello}
    instances: 1000
    proxy_protocol: v2
    proxy_from: [{lb}/32]
"""

# Sessions that end abnormally are logged (dontlog-normal): their termination
# state says whose side failed (a "S" first: the server's, "C": the client's).
HAPROXY_HEAD = """\
global
    stats socket {stats} mode 600 level admin
    log stdout format raw daemon
    maxconn 8192

defaults
    mode tcp
    log global
    option tcplog
    option dontlog-normal
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 1s
"""


def haproxy_config():
    parts = [HAPROXY_HEAD]
    for name, (port, options, front) in BACKENDS.items():
        parts.append(f"\nfrontend f-{name}\n    bind 127.0.0.1:{front}\n"
                     f"    default_backend {name}\n\nbackend {name}\n    balance roundrobin\n")
        parts += [f"    server {h} {a}:{port} {options}\n" for h, a in HOSTS.items()]
    return "".join(parts)


# a tcplog line: client [date] frontend backend/server Tw/Tc/Tt bytes STATE ...
TCPLOG = re.compile(r"^\S+ \[[^\]]*\] \S+ \S+/(\S+) \S+ \d+ (\S\S) ", re.M)


def abnormal_sessions(text):
    counts = {}
    for server, state in TCPLOG.findall(text):
        key = f"{server} {state}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Hosts:
    """The lab, superd and tcpserver on each host, HAProxy on lb (see the module doc)."""

    def __init__(self, work):
        self.work = work
        self.superd, self.tcpserver, self.haproxy = {}, {}, None
        self.lab = Lab(f"sdbh{os.getpid()}", "lb", LB)
        try:
            for host, address in HOSTS.items():
                self.lab.attach(host, [address])
                self.start_superd(host)
                self.start_tcpserver(host)
            self.haproxy = HAProxy(self.lab, "lb", work, haproxy_config())
            self.haproxy.wait_states({(b, h): "UP" for b in BACKENDS for h in HOSTS},
                                     timeout=30)
        except BaseException:
            self.close()
            raise

    def popen(self, host, argv, name):
        folder = self.work / host
        folder.mkdir(exist_ok=True)
        with open(folder / f"{name}.stderr", "ab") as err:
            return subprocess.Popen(self.lab.command(host, argv), cwd=folder, env=cs.CLEAN_ENV,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)

    def ready_file(self, host):
        return self.work / host / "ready.json"

    def start_superd(self, host):
        folder = self.work / host
        folder.mkdir(exist_ok=True)
        conf = folder / "services.yaml"
        conf.write_text(SUPERD_CONFIG.format(ip=HOSTS[host], hello=PROGRAMS["hello"], lb=LB))
        ready = self.ready_file(host)
        ready.unlink(missing_ok=True)
        env_run = folder / "run"
        env_run.mkdir(exist_ok=True)
        argv = ["env", f"RUNTIME_DIRECTORY={env_run}", str(cs.SUPERD), "-f", conf,
                "--ready-file", ready]
        proc = self.popen(host, argv, "superd")
        cs.wait_for(ready.exists, f"superd on {host}", proc, timeout=30)
        self.superd[host] = proc

    def start_tcpserver(self, host):
        argv = ["tcpserver", "-R", "-H", "-l", "0", "-b", "1024", "-c", "1000",
                HOSTS[host], "7001", PROGRAMS["hello"]]
        self.tcpserver[host] = self.popen(host, argv, "tcpserver")

    def stop_tcpserver(self, host):
        """TERM to tcpserver alone: the handlers it started finish their
        connections (what its listen queue held is reset by the kernel)."""
        proc = self.tcpserver.pop(host)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)

    def connload(self, backend, concurrency, duration, maxconn=2_000_000):
        """One connload run through that backend's frontend; its JSON, with
        `abnormal`: HAProxy's abnormal sessions meanwhile, by server and
        termination state (e.g. "h1 SC": h1 refused or reset the connection)."""
        front = BACKENDS[backend][2]
        argv = [PROGRAMS["connload"], "-a", "127.0.0.1", "-p", front, "-c", concurrency,
                "-d", duration, "-n", maxconn, "-t", 10, "-q"]
        mark = self.haproxy.log_path.stat().st_size
        run = subprocess.run(self.lab.command("lb", argv), capture_output=True, text=True,
                             timeout=duration + 60, check=True)
        result = json.loads(run.stdout)
        with open(self.haproxy.log_path, "rb") as f:
            f.seek(mark)
            result["abnormal"] = abnormal_sessions(f.read().decode(errors="replace"))
        return result

    def server_stats(self, backend, host):
        """HAProxy's counters for one server: connection and response errors,
        retries and redispatches (`show stat`)."""
        text = self.haproxy.ask("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == host:
                return {k: int(row[k] or 0) for k in ("econ", "eresp", "wretr", "wredis",
                                                      "stot")}
        raise KeyError((backend, host))

    def close(self):
        try:
            if self.haproxy:
                self.haproxy.stop()
        finally:
            self.lab.close()          # every process left in the namespaces, by pid


# -- part 1: connections per second -------------------------------------------------

def rate_rounds(hosts, rounds, duration, concurrency, patience):
    names = list(BACKENDS)
    runs = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            busy = cs.wait_for_quiet(limit=0.15, patience=patience)
            res = hosts.connload(name, concurrency, duration)
            res["busy_before"] = busy
            res["round"] = r
            runs[name].append(res)
            log(f"round {r + 1}/{rounds} {name}: {res['conn_per_s']:.0f}/s, "
                f"{res['errors_total']} errors, machine busy before {busy:.0%}"
                + (f"; HAProxy: {res['abnormal']}" if res["abnormal"] else ""))
    return runs


def rate_table(runs):
    ref = runs["tcpserver"]
    lines = ["| backend (3 hosts behind HAProxy) | conn/s (median) | rounds | p50 µs | "
             "p99 µs | failed (all rounds) | HAProxy's abnormal sessions | "
             "/ tcpserver (median of rounds) | rounds' range |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    summary = {}
    for name, rs in runs.items():
        rates = [x["conn_per_s"] for x in rs]
        ratios = [x["conn_per_s"] / t["conn_per_s"] for x, t in zip(rs, ref)
                  if t["conn_per_s"] > 0]
        summary[name] = {"conn_per_s": statistics.median(rates),
                         "ratio": statistics.median(ratios) if ratios else None}
        lines.append(
            f"| {name} | {statistics.median(rates):.0f} | {len(rs)} | "
            f"{statistics.median(x['latency_us']['p50'] for x in rs):.0f} | "
            f"{statistics.median(x['latency_us']['p99'] for x in rs):.0f} | "
            f"{sum(x['errors_total'] for x in rs)} | "
            f"{kinds(merged(x['abnormal'] for x in rs))} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} |")
    return "\n".join(lines), summary


def merged(dicts):
    total = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


# -- part 2: ten upgrades (superd) or restarts (tcpserver) under load ----------------

def under_load(hosts, backend, concurrency, act, times, chunk=2.0):
    """connload against backend, in runs of `chunk` seconds back to back,
    while act(i) runs `times` times one after another; (the runs' sums,
    HAProxy's counters for h1 meanwhile, the seconds each act took)."""
    before = hosts.server_stats(backend, "h1")
    took, runs = [], []
    acting = threading.Event()
    acting.set()

    def load():
        runs.append(hosts.connload(backend, concurrency, chunk))    # one before the first act
        while acting.is_set():
            runs.append(hosts.connload(backend, concurrency, chunk))

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)        # bench, not test: let the load reach its pace first
    try:
        for i in range(times):
            t = time.monotonic()
            act(i)
            took.append(time.monotonic() - t)
            time.sleep(0.5)    # bench: a moment of load between two acts
    finally:
        acting.clear()
        loader.join()
    after = hosts.server_stats(backend, "h1")
    total = {"completed": sum(r["completed"] for r in runs),
             "errors_total": sum(r["errors_total"] for r in runs), "errors": {},
             "seconds": sum(r["elapsed_s"] for r in runs), "runs": len(runs)}
    total["abnormal"] = {}
    for r in runs:
        for kind, n in r["errors"].items():
            total["errors"][kind] = total["errors"].get(kind, 0) + n
        for kind, n in r["abnormal"].items():
            total["abnormal"][kind] = total["abnormal"].get(kind, 0) + n
    return total, {k: after[k] - before[k] for k in after}, took


def upgrade(hosts):
    def act(i):
        run = subprocess.run([str(SUPERDCTL), "--ready-file", str(hosts.ready_file("h1")),
                              "--json", "upgrade"], capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            raise RuntimeError(f"upgrade {i + 1}: {run.stdout}{run.stderr}")
    return act


def restart_tcpserver(hosts):
    def act(i):
        hosts.stop_tcpserver("h1")
        hosts.start_tcpserver("h1")
    return act


def changes_table(rows):
    lines = ["| on h1, under load through HAProxy | connections | failed (client side) | "
             "failures by kind | HAProxy on h1: conn. errors / retries / redispatched | "
             "HAProxy's abnormal sessions | seconds per act (median) |",
             "| --- | ---: | ---: | --- | ---: | --- | ---: |"]
    for what, (res, stats, took) in rows.items():
        lines.append(f"| {what} | {res['completed'] + res['errors_total']} | "
                     f"{res['errors_total']} | {kinds(res['errors'])} | "
                     f"{stats['econ']} / {stats['wretr']} / {stats['wredis']} | "
                     f"{kinds(res['abnormal'])} | {statistics.median(took):.2f} |")
    return "\n".join(lines)


def kinds(counts):
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-r", "--rounds", type=int, default=5)
    p.add_argument("-d", "--duration", type=float, default=3.0, help="seconds per run")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="connections in flight")
    p.add_argument("--patience", type=float, default=10.0,
                   help="most seconds to wait for a quiet machine before each run")
    p.add_argument("--changes", type=int, default=10, help="upgrades (and restarts) in part 2")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("haproxy_hosts.py: needs root (ip netns)")
    cs.build()
    work = Path(cs.OUT) / f"haproxy_hosts-{os.getpid()}"
    work.mkdir(parents=True)
    # Copies of our own: another bench's build() rewrites bench/out/hello in
    # place, and a handler exec'd meanwhile fails (EACCES: seen, in both
    # superd, which then paused the service as looping, and tcpserver).
    for name in ("hello", "connload"):
        shutil.copy2(cs.OUT / name, work / name)
    PROGRAMS.update(hello=work / "hello", connload=work / "connload")
    load_before = uptime()
    log(load_before)
    hosts = Hosts(work)
    try:
        runs = rate_rounds(hosts, args.rounds, args.duration, args.concurrency, args.patience)
        changes = {
            f"superd: {args.changes} × `superdctl upgrade`":
                under_load(hosts, "superd", args.concurrency, upgrade(hosts), args.changes),
            f"tcpserver: {args.changes} × restart (TERM, start)":
                under_load(hosts, "tcpserver", args.concurrency, restart_tcpserver(hosts),
                           args.changes),
        }
    finally:
        hosts.close()
    load_after = uptime()
    rates, summary = rate_table(runs)
    text = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} rounds of "
            f"{args.duration:g} s, {args.concurrency} in flight; load before: `{load_before}`; "
            f"after: `{load_after}`\n\n{rates}\n\n{changes_table(changes)}\n")
    print(text)
    (cs.OUT / "haproxy_hosts.md").write_text(text)
    (cs.OUT / "haproxy_hosts.json").write_text(json.dumps(
        {"runs": runs, "summary": summary, "load_before": load_before, "load_after": load_after,
         "changes": {k: {"connload": r, "haproxy_h1": s, "seconds": t}
                     for k, (r, s, t) in changes.items()}}, indent=1))


if __name__ == "__main__":
    main()
