#!/usr/bin/env python3
"""Status bench: what a status service scraped once a second costs superd.

Issue 14 asks that running with `internal: status`, scraped once a second,
cost no more than the noise.  Three superd daemons serve the compiled
bench/hello.c and are loaded in turn by connload, as in bench/dispatch.py:

  superd         one service, hello (the reference);
  superd-again   the same daemon again: its ratio to `superd`, round by
                 round, is the noise of this machine and this run (A/A);
  superd-status  hello plus `status: {internal: status}`, whose /metrics and
                 / this bench GETs alternately once a second, each on a new
                 connection (the worst case: a handler start per scrape, as
                 a scraper without keep-alive or a browser's reload does),
                 for the whole of each of its runs.

Every scrape must answer 200; their number and time to answer are kept.
The table gives conn/s, the ratio to `superd` and superd's own CPU per
connection (from /proc through psutil, user + system of the daemon's
process alone: the control-socket answers are in it, the status handlers
are not); the notes below it give each ratio's range over the rounds beside
the A/A range, which is what "within noise" is measured against.

Modes as dispatch.py's `spread` (every CPU) and `one-core` (servers and
handlers share CPU 0, so every CPU cycle of a scrape, handler included,
is taken from the load).  Writes bench/out/status_cost.md and .json.

    .venv/bin/python bench/status_cost.py [-r ROUNDS] [-d SECONDS] [--patience S]
"""

import argparse
import http.client
import itertools
import json
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import contenders as cs  # noqa: E402
import dispatch  # noqa: E402
import suite  # noqa: E402
from superd import ctl  # noqa: E402

EVERY = 1.0                         # seconds between scrapes
# scraped alternately; what each answer must hold: both services of this daemon
PATHS = {"/metrics": (b'service="hello"', b'service="status"'), "/": (b">hello<", b">status<")}
SCRAPE_TIMEOUT = 10.0
STATUS_SERVICE = 'status: {listen: "127.0.0.1:0", internal: status}'
MODES = {m: dispatch.MODES[m] for m in ("spread", "one-core")}


class SuperdStatus(cs.Superd):
    """superd serving hello and `internal: status`; scraped while it is loaded."""

    name = "superd-status"
    per_connection = ("posix_spawn per connection; also `status: {internal: status}`, "
                      "GET /metrics and / alternately once a second, a new connection each")
    more = {}                     # other services: name -> their keys as YAML flow text
    status_port = control = None
    ports = {}

    def start(self):
        self.control = self.dir / "control"
        hello = ", ".join(f"{k}: {v}" for k, v in self.service().items())
        others = "".join(f"  {name}: {{{keys}}}\n" for name, keys in self.more.items())
        conf = self.dir / "services.yaml"
        # a control socket of its own: the peers' default (/run/superd/control as
        # root) is one path for every daemon, and the status handler must ask this one
        conf.write_text(f"control: {self.control}\nservices:\n  hello: {{{hello}}}\n"
                        f"  {STATUS_SERVICE}\n{others}")
        ready = self.dir / "ready.json"
        proc = self.popen([*self.program(), "-f", str(conf), "--ready-file", str(ready)])
        names = ["hello", "status", *self.more]

        def bound():
            try:
                services = json.loads(ready.read_text())["services"]
                return {n: int(services[n][0].rpartition(":")[2]) for n in names}
            except (OSError, ValueError, KeyError, IndexError):
                return None

        self.ports = cs.wait_for(bound, self.name, proc)
        self.port, self.status_port = self.ports["hello"], self.ports["status"]


class HeldSuperd(SuperdStatus):
    """superd-status with `hold` (/bin/cat: a handler lives until its client closes)."""

    name = "superd-held"
    more = {"hold": '"listen": "127.0.0.1:0", server: /bin/cat, instances: 5000'}


SuperdAgain = cs.superd_variant("superd-again", {})


class Scraper(threading.Thread):
    """GETs PATHS in turn every EVERY seconds from its start until finish()."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stopping = threading.Event()
        self.took = []            # seconds per answered scrape
        self.failures = []        # what went wrong, per failed scrape

    def run(self):
        paths = itertools.cycle(PATHS)
        due = time.monotonic()
        while not self.stopping.wait(max(0.0, due - time.monotonic())):
            self.scrape(next(paths))
            due += EVERY

    def scrape(self, path):
        """One GET of path on a new connection; its time or its failure is kept."""
        t0 = time.monotonic()
        web = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SCRAPE_TIMEOUT)
        try:
            web.request("GET", path)
            reply = web.getresponse()
            body = reply.read()
            # this daemon's records: both its services are named
            if reply.status != 200 or not all(s in body for s in PATHS[path]):
                self.failures.append(f"{path}: {reply.status}")
                return
            self.took.append(time.monotonic() - t0)
        except (OSError, http.client.HTTPException) as err:
            self.failures.append(f"{path}: {err!r}")
        finally:
            web.close()

    def finish(self):
        """Stop scraping; summary()."""
        self.stopping.set()
        self.join(SCRAPE_TIMEOUT + EVERY)
        return self.summary()

    def summary(self):
        took = sorted(self.took)
        return {"scrapes": len(took), "failures": self.failures,
                "median_ms": statistics.median(took) * 1000 if took else None,
                "max_ms": took[-1] * 1000 if took else None}


def load(contender, mode, concurrency, duration, maxconn):
    """connload against contender; a status contender is scraped all along."""
    port = getattr(contender, "status_port", None)
    scraper = Scraper(port) if port else None
    if scraper:
        scraper.start()
    try:
        res = cs.load(contender, concurrency, duration, maxconn, suite.LOAD_CPU)
    finally:
        scrapes = scraper.finish() if scraper else None
    res["scrapes"] = scrapes
    return res


def comparison():
    return suite.Comparison(
        name="status_cost", title="Cost of a status service scraped once a second",
        kinds=[cs.Superd, SuperdAgain, SuperdStatus], modes=MODES,
        refs=(("vs superd", "superd"),), load=load,
        notes="superd-again is superd once more: its ratio is the noise.")


def per_round(runs, name, ref, key):
    """Each round's ratio of name's value to ref's."""
    return [a[key] / b[key] for a, b in zip(runs[name], runs[ref]) if b[key]]


def spread(values, fmt="{:.3f}"):
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def noise_notes(record):
    """The markdown under the suite's table: ratio ranges, A/A, CPU and the scrapes."""
    out = ["", "| mode | conn/s with status / without: median, rounds | A/A (noise): "
           "median, rounds | superd CPU µs/conn with / without: median, rounds | A/A CPU "
           "| scrapes answered (failed) | scrape median / max ms |",
           "| --- |" + " ---: |" * 6]
    for mode, runs in record["runs"].items():
        rate = per_round(runs, "superd-status", "superd", "per_s")
        aa = per_round(runs, "superd-again", "superd", "per_s")
        cpu = per_round(runs, "superd-status", "superd", "daemon_cpu_us_per_conn")
        aa_cpu = per_round(runs, "superd-again", "superd", "daemon_cpu_us_per_conn")
        scrapes = [r["scrapes"] for r in runs["superd-status"]]
        took = [s["median_ms"] for s in scrapes if s["median_ms"] is not None]
        worst = max((s["max_ms"] for s in scrapes if s["max_ms"] is not None), default=None)
        med = statistics.median
        answered = sum(s["scrapes"] for s in scrapes)
        failed = sum(len(s["failures"]) for s in scrapes)
        times = f"{med(took):.0f} / {worst:.0f}" if took else "–"
        out.append(
            f"| {mode} | {med(rate):.3f}, {spread(rate)} | {med(aa):.3f}, {spread(aa)} "
            f"| {med(cpu):.3f}, {spread(cpu)} | {med(aa_cpu):.3f}, {spread(aa_cpu)} "
            f"| {answered} ({failed}) | {times} |")
    out += ["", "Rounds: the smallest and largest of the per-round ratios.  \"Within noise\" "
            "means the with/without range overlaps the A/A range of the same mode."]
    return "\n".join(out) + "\n"


def room_for(count):
    """Raise this process's soft fd limit (superd started after inherits it) to
    hold count sockets and more, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY
                                                    else min(want, hard), hard))


def held_open(c, count):
    """count clients of c's hold service, each with its handler running; their sockets."""
    socks = [socket.create_connection(("127.0.0.1", c.ports["hold"]), timeout=SCRAPE_TIMEOUT)
             for _ in range(count)]
    settled(c, hold=count)
    return socks


def settled(c, **running):
    """Poll c's control socket until its services run these many handlers (status 0)."""
    want = {"status": 0, **running}
    deadline = time.monotonic() + 60
    while True:
        answer = ctl.ask(str(c.control), {"command": "status"}, timeout=SCRAPE_TIMEOUT)
        now = {s["name"]: s["running"] for s in answer["services"]}
        if all(now.get(k) == v for k, v in want.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.name}: running {now}, waiting for {want}")
        time.sleep(0.05)      # bench pacing between polls


def children(c):
    """The pids whose parent is c's daemon (zombies too: they are not reaped yet)."""
    return {p.pid for p in psutil.Process(c.proc.pid).children()}


def reaped(c, holders):
    """Wait until the daemon's children are the holders again: the scrape's
    handler, which has answered and so was started, is reaped.  Read from
    /proc, so that waiting costs superd nothing."""
    deadline = time.monotonic() + 30
    while children(c) != holders:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{c.name}: a status handler was not reaped in 30 s")
        time.sleep(0.01)      # bench pacing between reads of /proc


def scrape_cost(workdir, held, scrapes):
    """superd's CPU per scrape of each path, idle but for `held` live connections."""
    room_for(held)
    c = HeldSuperd(workdir / f"held-{held}")
    c.start()
    socks = []
    try:
        socks = held_open(c, held)
        holders = children(c)
        rows = {}
        for path in PATHS:
            scraper = Scraper(c.status_port)
            daemon0, kids0 = c.cpu()
            for _ in range(scrapes):
                scraper.scrape(path)
                reaped(c, holders)        # its CPU is counted, and nothing asked superd
            daemon1, kids1 = c.cpu()
            rows[path] = {"daemon_ms": (daemon1 - daemon0) / scrapes * 1000,
                          "handler_ms": (kids1 - kids0) / scrapes * 1000,
                          **scraper.summary()}
        return rows
    finally:
        for sock in socks:
            sock.close()
        c.stop()


def cost_notes(costs, scrapes):
    out = ["", f"One scrape's cost, measured apart: a superd serving hello (unloaded), the "
           f"status service and `hold` (/bin/cat) with that many connections held open; "
           f"{scrapes} scrapes of each path in a row, each on a new connection, each "
           "handler reaped (seen in /proc, superd is not asked) before the next.", "",
           "| live connections | path | superd CPU ms / scrape | status handler CPU ms / "
           "scrape | answer ms (median / max) | failed |", "| ---: | --- |" + " ---: |" * 4]
    for held, rows in costs.items():
        for path, r in rows.items():
            out.append(f"| {held} | `{path}` | {r['daemon_ms']:.2f} | {r['handler_ms']:.1f} "
                       f"| {r['median_ms']:.0f} / {r['max_ms']:.0f} | {len(r['failures'])} |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    suite.add_arguments(p, rounds=7, duration=5.0)
    p.add_argument("--held", default="0,2000",
                   help="live connections for the one-scrape cost, comma-separated")
    p.add_argument("--scrapes", type=int, default=20, help="scrapes per path for that cost")
    args = p.parse_args()
    if args.publish:
        cs.log("--publish: this bench's section of bench/README.md is written by hand; ignored")
        args.publish = False
    record = suite.run(comparison(), args)
    workdir = Path(record["meta"]["workdir"])
    costs = {n: scrape_cost(workdir, n, args.scrapes)
             for n in map(int, filter(None, args.held.split(",")))}
    notes = noise_notes(record) + cost_notes(costs, args.scrapes)
    saved = cs.OUT / "status_cost.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "scrape_cost": costs},
                                indent=1))
    (cs.OUT / "status_cost.md").write_text(record["markdown"] + notes)
    print(notes)


if __name__ == "__main__":
    main()
