#!/usr/bin/env python3
"""Records bench: superd's memory as 10,000 connection records are made and ended.

Issue 14 asks that superd's memory stay flat while connection records come
and go.  bench/memory.py measures the daemon's footprint under load for
issue 5; this one follows the records: after every step of connections (by
default 10 steps of 1,000) it waits until superd's own answer says every
record is gone (the control socket: no live connection, nothing running),
then reads the daemon's resident memory in kB; after the last step it
scrapes the status service a few times (/metrics, /status.json and / in
turn, each on a new connection) and reads it again after each.

  superd          hello (bench/hello.c, exec'd per connection), hold
                  (/bin/cat: it lives until its client closes) and
                  `internal: status`; one client holds a hold connection open
                  for the whole run, as a long session does;
  superd-timeout  the same with `timeout: 3600` on hello and hold: every
                  handler gets a timer, cancelled when it is reaped.  The
                  held connection's timer is the earliest in the heap;
  superd-timeout-alone  as superd-timeout, but no connection is held open.

The steps interleave (superd's step i, then superd-timeout's step i), as
every bench here does.  Growth is the least-squares slope of RSS against
connections over the steps after the first (the first warms the
allocator), in bytes per connection.

Then, in this process and without a daemon, the same life of 10,000
records through superd's own classes (records.ConnectionTable, and
timers.Timers as children.watch arms them), beside one long-lived record,
under tracemalloc: what is still allocated after every short record has
closed, by the line that allocated it.  That names what holds memory, where
RSS only shows that something does.

Writes bench/out/records_memory.md and .json.

    .venv/bin/python bench/records_memory.py [-n CONNECTIONS] [--steps N] [--scrapes N]
"""

import argparse
import http.client
import json
import linecache
import statistics
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import socket

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import contenders as cs  # noqa: E402
import suite  # noqa: E402
from superd import ctl, records, timers  # noqa: E402

STATUS_SERVICE = 'status: {listen: "127.0.0.1:0", internal: status}'
HOLD = {"listen": '"127.0.0.1:0"', "server": "/bin/cat"}
SCRAPED = ("/metrics", "/status.json", "/")
TIMEOUT = 3600                    # the superd-timeout daemon's handler timeout, seconds
DRAIN_DEADLINE = 30.0             # seconds for a step's last handlers to be reaped


class RecordsSuperd(cs.Superd):
    """superd serving hello, hold and status, with a control socket of its own;
    one client holds a hold connection open from start to stop."""

    name = "superd"
    extra = {}                    # added to hello's and hold's keys
    holding = 1                   # hold connections open from start to stop
    status_port = control = None
    held = ()

    @property
    def describe(self):
        keys = "".join(f", `{k}: {v}`" for k, v in self.extra.items())
        held = "one connection held open all along" if self.holding else "no connection"
        return (f"hello (`{cs.HELLO.name}`, exec'd per connection, `instances: 1000`{keys}), "
                f"hold (`/bin/cat`{keys}, {held}) and `{STATUS_SERVICE}`")

    def start(self):
        self.control = self.dir / "control"
        hello = ", ".join(f"{k}: {v}" for k, v in {**self.service(), **self.extra}.items())
        hold = ", ".join(f"{k}: {v}" for k, v in {**HOLD, **self.extra}.items())
        conf = self.dir / "services.yaml"
        conf.write_text(f"control: {self.control}\nservices:\n  hello: {{{hello}}}\n"
                        f"  hold: {{{hold}}}\n  {STATUS_SERVICE}\n")
        ready = self.dir / "ready.json"
        proc = self.popen([*self.program(), "-f", str(conf), "--ready-file", str(ready)])

        def bound():
            try:
                services = json.loads(ready.read_text())["services"]
                return [int(services[s][0].rpartition(":")[2]) for s in ("hello", "hold", "status")]
            except (OSError, ValueError, KeyError, IndexError):
                return None

        self.port, hold_port, self.status_port = cs.wait_for(bound, self.name, proc)
        self.held = [socket.create_connection(("127.0.0.1", hold_port), timeout=10)
                     for _ in range(self.holding)]

    def stop(self):
        for sock in self.held:
            sock.close()
        super().stop()


class TimeoutSuperd(RecordsSuperd):
    name = "superd-timeout"
    extra = {"timeout": str(TIMEOUT)}


class TimeoutAloneSuperd(TimeoutSuperd):
    name = "superd-timeout-alone"
    holding = 0


KINDS = (RecordsSuperd, TimeoutSuperd, TimeoutAloneSuperd)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--connections", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=10, help="RSS readings along the way")
    p.add_argument("--scrapes", type=int, default=6, help="status scrapes after the last step")
    p.add_argument("--requests", type=int, default=3000,
                   help="then `status` requests on the control socket, in 10 batches")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    return p.parse_args(argv)


def rss_kb(c):
    return psutil.Process(c.proc.pid).memory_info().rss // 1024


def drained(c):
    """Block until superd says no record is left but the held ones (hello and
    status running 0, hold's connections only).

    Its own answer, not a guess: connload's last connection has ended when
    it returns, but its handler may not have been reaped yet."""
    deadline = time.monotonic() + DRAIN_DEADLINE
    while True:
        answer = ctl.ask(str(c.control), {"command": "status"}, timeout=10)
        running = {s["name"]: s["running"] for s in answer["services"]}
        if [x["service"] for x in answer["connections"]] == ["hold"] * c.holding \
                and running["hold"] == c.holding and running["hello"] == running["status"] == 0:
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.name}: records still live after {DRAIN_DEADLINE} s: "
                               f"{answer['connections'][:5]}")
        time.sleep(0.05)      # bench pacing between polls, not synchronisation


def step(c, n, concurrency):
    """n connections (connload, run to its end), then the RSS with no record left."""
    res = cs.load(c, concurrency, 300, n, suite.LOAD_CPU)
    drained(c)
    return {"completed": res["completed"], "errors": res["errors_total"] + res["unfinished"],
            "rss_kb": rss_kb(c)}


def scrape(port, path):
    web = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        web.request("GET", path)
        reply = web.getresponse()
        reply.read()
        return reply.status
    finally:
        web.close()


def soak(servers, args):
    """Interleaved steps, then the scrapes; {name: {"trail": [...], "scrapes": [...]}}."""
    out = {c.name: {"idle_kb": None, "trail": [], "scrapes": []} for c in servers}
    for c in servers:
        drained(c)
        out[c.name]["idle_kb"] = rss_kb(c)
    done = {c.name: 0 for c in servers}
    for i in range(args.steps):
        n = args.connections * (i + 1) // args.steps - args.connections * i // args.steps
        for c in servers:
            s = step(c, n, args.concurrency)
            done[c.name] += s["completed"]
            out[c.name]["trail"].append({**s, "connections": done[c.name]})
            cs.log(f"records {c.name:15} {done[c.name]:6} connections  {s['rss_kb']:7} kB  "
                   f"errors {s['errors']}")
    for k in range(args.scrapes):
        path = SCRAPED[k % len(SCRAPED)]
        for c in servers:
            status = scrape(c.status_port, path)
            drained(c)
            out[c.name]["scrapes"].append({"path": path, "status": status, "rss_kb": rss_kb(c)})
    for c in servers:
        out[c.name]["requests"] = asked(c, args.requests)
        out[c.name]["health"] = c.health()
        out[c.name]["describe"] = c.describe
    return out


def asked(c, total, batches=10):
    """RSS (kB) after each batch of `status` requests on the control socket."""
    trail = []
    for i in range(batches):
        for _ in range(total * (i + 1) // batches - total * i // batches):
            ctl.ask(str(c.control), {"command": "status"}, timeout=10)
        trail.append(rss_kb(c))
    return trail


def slope(points):
    """Least-squares bytes per connection over (connections, kB) points."""
    xs, ys = [x for x, _ in points], [y * 1024 for _, y in points]
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


# -- in-process: the records' own classes under tracemalloc ------------------

def fake_record(timeout):
    service = SimpleNamespace(proxy_protocol=None, proxy_timeout=10.0, timeout=timeout)
    return SimpleNamespace(service=service, name="hello")


class Watcher:
    """Stands for children.Children: its timers call a bound method on the connection."""

    def _timed_out(self, conn):
        pass


WATCHER = Watcher()


def life(table, heap, record, listener, now, timeout):
    """One connection's life in the records, as intake, starts and children live it."""
    conn = table.open(record, listener, None, ("127.0.0.1", 40000 + now % 20000))
    conn.env["SUPERD_CONN"] = str(conn.id)
    table.move(conn, records.STARTING)
    table.running(conn, 100000 + now)
    if timeout:                   # children.watch: the handler's timeout
        conn.timer = heap.at(conn.started + timeout, partial(WATCHER._timed_out, conn))
    table.move(conn, records.EXITING)
    table.close(conn)             # reaped: release() cancels the timer


def in_process(n, timeout, long_lived=True):
    """What is still allocated after n records lived and closed (beside one
    long-lived record, if asked), top lines first."""
    clock = iter(range(1, 10**9)).__next__
    table, heap = records.ConnectionTable(clock), timers.Timers()
    record, listener = fake_record(timeout), SimpleNamespace(text="127.0.0.1:1")
    for i in range(100):          # warm up: the dicts' tables, interned strings
        life(table, heap, record, listener, i, timeout)
    heap.delay(0)                 # as the loop does after every wake-up
    if long_lived:
        held = table.open(record, listener, None, ("127.0.0.1", 1))    # a long session
        table.running(held, 99999)
        if timeout:
            held.timer = heap.at(held.started + timeout, partial(WATCHER._timed_out, held))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        life(table, heap, record, listener, i, timeout)
    heap.delay(0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    top = [{"where": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
            "code": linecache.getline(s.traceback[0].filename, s.traceback[0].lineno).strip(),
            "bytes": s.size_diff, "blocks": s.count_diff}
           for s in stats if s.size_diff > 1024][:6]
    return {"records_live": len(table.live) - long_lived,
            "by_pid": len(table.by_pid) - long_lived,
            "timers_in_heap": len(heap._heap), "bytes": total, "top": top}


# -- report -------------------------------------------------------------------

def markdown(rows, tm, meta):
    steps = max(len(r["trail"]) for r in rows.values())
    head = ["| daemon | idle kB |"] + [f" {r['connections']:,} |"
                                        for r in next(iter(rows.values()))["trail"]]
    out = [f"{meta['date']}, {meta['host']}; superd at {meta['superd']}; load average "
           f"{meta['load_before']} before, {meta['load_after']} after.  Each daemon: "
           f"{meta['connections']:,} connections (connload, {meta['concurrency']} in flight) "
           f"in {steps} steps, interleaved; after each step superd's answer shows no "
           "record left, then its RSS (kB) is read.", "",
           "".join(head) + " slope B/conn | after scrapes kB | control requests: kB after "
           f"each tenth of {meta['requests']:,} |",
           "| --- |" + " ---: |" * (steps + 3) + " --- |"]
    for name, r in rows.items():
        trail = r["trail"]
        grow = slope([(t["connections"], t["rss_kb"]) for t in trail[1:]])
        scraped = " → ".join(str(s["rss_kb"]) for s in r["scrapes"]) or "–"
        asks = " → ".join(map(str, r["requests"])) or "–"
        out.append(f"| {name} | {r['idle_kb']} |" + "".join(f" {t['rss_kb']} |" for t in trail)
                   + f" {grow:.0f} | {scraped} | {asks} |")
    errors = {n: sum(t["errors"] for t in r["trail"]) for n, r in rows.items()}
    statuses = {n: sorted({s["status"] for s in r["scrapes"]}) for n, r in rows.items()}
    out += ["", f"Errors: {errors}; scrapes ({', '.join(SCRAPED)} in turn) answered {statuses}.",
            "", "Daemons:", ""] + [f"- **{n}**: {r['describe']}" for n, r in rows.items()]
    out += ["", f"In this process, {meta['connections']:,} records through "
            "records.ConnectionTable (open, starting, running, exiting, close) and, for "
            "`timeout`, a timer from timers.Timers as children.watch arms it, cancelled "
            "by release(), while one record opened before them stays running (its timer "
            "first in the heap); tracemalloc, after every short record closed (the long "
            "one not counted in the live columns):", "",
            "| handler timeout | live records | by_pid | timers in the heap | still allocated "
            "| bytes / record | allocated at (top lines) |", "| --- |" + " ---: |" * 5 + " --- |"]
    for label, t in tm.items():
        top = "; ".join(f"{x['where']} `{x['code'][:70]}` {x['bytes'] // 1024} kB"
                        for x in t["top"]) or "–"
        out.append(f"| {label} | {t['records_live']} | {t['by_pid']} | {t['timers_in_heap']} "
                   f"| {t['bytes'] // 1024} kB | {t['bytes'] / meta['connections']:.0f} | {top} |")
    return "\n".join(out) + "\n"


def load_average():
    return " ".join(f"{x:.2f}" for x in psutil.getloadavg())


def run(args):
    cs.build()
    import tempfile
    workdir = Path(tempfile.mkdtemp(prefix="records-", dir=cs.OUT))
    servers = [k(workdir) for k in KINDS]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": suite.machine(),
            "superd": suite.superd_version(), "connections": args.connections,
            "concurrency": args.concurrency, "requests": args.requests,
            "load_before": load_average()}
    try:
        for c in servers:
            c.start()
        rows = soak(servers, args)
    finally:
        for c in servers:
            c.stop()
    meta["load_after"] = load_average()
    tm = {"none, one long record": in_process(args.connections, 0),
          f"{TIMEOUT} s, one long record": in_process(args.connections, TIMEOUT),
          f"{TIMEOUT} s, no long record": in_process(args.connections, TIMEOUT, False)}
    md = markdown(rows, tm, meta)
    (cs.OUT / "records_memory.md").write_text(md)
    (cs.OUT / "records_memory.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "tracemalloc": tm}, indent=1))
    print(md)


if __name__ == "__main__":
    run(parse_args())
