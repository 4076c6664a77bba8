#!/usr/bin/env python3
"""Memory bench: superd's own footprint idle and after many connections.

For each daemon: start it, let it settle, read its resident memory, open
fds, children and zombies (psutil on the daemon's pid), make the
connections with connload in steps (16 in flight, each step bounded in count
and time) reading the resident memory after each, let the last handlers
exit, and read everything again.  Issue 5 asks for at most 30 MB idle, flat
within 5 % after 100,000 connections, and no fd or zombie growth.

  superd          the compiled bench/hello.c, exec'd per connection (-n, 100,000);
  python-preload  bench/hello.py with `preload: true`: the daemon's side of
                  the warm interpreter (a message, an fd passed and a reply
                  per connection, exit reports); a fifth as many connections,
                  since it is slower.  The fork server's own memory is shown
                  apart.

Writes bench/out/memory.md, memory.json and memory.svg.

    .venv/bin/python bench/memory.py [-n CONNECTIONS] [--publish]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import python_handlers  # noqa: E402
import suite  # noqa: E402

KINDS = [(cs.Superd, 1.0), (python_handlers.KINDS[1], 0.2)]   # (daemon, share of -n)
IDLE_MB, GROWTH = 30.0, 0.05                                  # issue 5's limits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--connections", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=10, help="memory readings along the way")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds after start and after the load before reading")
    p.add_argument("--publish", action="store_true",
                   help="copy the table into bench/README.md and the chart into bench/results/")
    return p.parse_args(argv)


def helpers_rss_mb(c):
    """Resident memory of the daemon's long-lived children (a fork server), in MB."""
    total = 0
    for k in psutil.Process(c.proc.pid).children():
        try:
            total += k.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def soak(c, total, steps, concurrency):
    """total connections in steps; returns [(connections so far, RSS MB)], errors, conn/s."""
    trail = [(0, c.health()["rss_mb"])]
    done = errors = 0
    t0 = time.monotonic()
    for i in range(steps):
        n = total * (i + 1) // steps - total * i // steps
        res = cs.load(c, concurrency, 300, n, suite.LOAD_CPU)
        done += res["completed"]
        errors += res["errors_total"] + res["unfinished"]
        trail.append((done, c.health()["rss_mb"]))
        cs.log(f"memory {c.name:16} {done:7} connections  {trail[-1][1]:5.1f} MB  "
               f"errors {errors}")
    return trail, errors, done / (time.monotonic() - t0)


def measure(args):
    cs.build()
    workdir = Path(tempfile.mkdtemp(prefix="memory-", dir=cs.OUT))
    rows = {}
    for kind, share in KINDS:
        c = kind(workdir)
        c.start()
        try:
            time.sleep(args.settle)
            idle, helpers_idle = c.health(), helpers_rss_mb(c)
            trail, errors, rate = soak(c, int(args.connections * share), args.steps,
                                       args.concurrency)
            time.sleep(args.settle)
            after = c.health()
            rows[c.name] = {"idle": idle, "after": after, "trail": trail, "errors": errors,
                            "conn_per_s": rate, "describe": c.describe,
                            "helpers_mb": (helpers_idle, helpers_rss_mb(c))}
        finally:
            c.stop()
    return rows


def markdown(rows, meta, peers=None):
    out = [f"{meta['date']}, {meta['host']}; superd at {meta['superd']}.  Each daemon "
           f"started, settled {meta['settle']} s, loaded with connload (16 in flight, on "
           f"CPU {meta['load_cpu']}) in {meta['steps']} steps, settled again.", "",
           "| daemon | connections | errors | RSS idle MB | RSS after MB | after / idle "
           "| max along the way MB | fds idle → after | children idle → after "
           "| zombies idle → after | fork server RSS MB |",
           "| --- |" + " ---: |" * 10]
    for name, r in rows.items():
        i, a = r["idle"], r["after"]
        helpers = "–" if name == "superd" else "{} → {}".format(*r["helpers_mb"])
        out.append(f"| {name} | {r['trail'][-1][0]} | {r['errors']} | {i['rss_mb']:.1f} "
                   f"| {a['rss_mb']:.1f} | {a['rss_mb'] / i['rss_mb']:.3f} "
                   f"| {max(mb for _, mb in r['trail']):.1f} | {i['fds']} → {a['fds']} "
                   f"| {i['children']} → {a['children']} | {i['zombies']} → {a['zombies']} "
                   f"| {helpers} |")
    out += ["", "Daemons:", ""] + [f"- **{n}**: {r['describe']}" for n, r in rows.items()]
    if peers:
        out += ["", "For scale, every contender of the dispatch run above (same run, "
                "its own load): resident memory and fds at start and after.", "",
                "| contender | connections | RSS at start MB | RSS after MB | fds at start → after "
                "| children / zombies after |", "| --- |" + " ---: |" * 5]
        out += [f"| {n} | {h['connections']} | {h['rss_mb_at_start']:.1f} | {h['rss_mb']:.1f} "
                f"| {h['fds_at_start']} → {h['fds']} | {h['children']} / {h['zombies']} |"
                for n, h in peers.items()]
    out += ["", f"RSS: resident set of the daemon's own process (psutil), the handlers and "
            f"the fork server not included; children: processes whose parent is the daemon "
            f"(a preload fork server is one).  Issue 5: at most {IDLE_MB:.0f} MB idle, "
            f"after / idle at most {1 + GROWTH:.2f}."]
    return "\n".join(out) + "\n"


def chart(rows, meta, path):
    plt = suite.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in rows.items():
        xs, ys = zip(*r["trail"])
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(IDLE_MB, color="grey", linestyle=":", label=f"{IDLE_MB:.0f} MB (issue 5)")
    ax.set_ylim(0, IDLE_MB * 1.2)
    ax.set_xlabel("connections served")
    ax.set_ylabel("daemon resident memory, MB")
    ax.set_title("superd's memory as connections go by (flat is good)", fontsize=10)
    ax.legend(fontsize=8)
    return suite.save(fig, path, f"{meta['host']}; {meta['date']}")


def run(args, peers=None):
    rows = measure(args)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "superd": suite.superd_version(),
            "host": suite.machine(), "settle": args.settle, "steps": args.steps,
            "load_cpu": suite.LOAD_CPU and ",".join(map(str, suite.LOAD_CPU))}
    md = markdown(rows, meta, peers)
    (cs.OUT / "memory.md").write_text(md)
    (cs.OUT / "memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    svg = chart(rows, meta, cs.OUT / "memory.svg")
    print(md)
    if args.publish:
        suite.publish("memory", md, svg)
    return {"meta": meta, "rows": rows, "markdown": md, "chart": svg}


if __name__ == "__main__":
    run(parse_args())
