#!/usr/bin/env python3
"""Every comparison of bench/ in one run, and issue 5's targets checked against it.

In order: dispatch (dispatch.py: superd against tcpserver, xinetd and
systemd-socket-activate), python_handlers (python_handlers.py: exec against
preload), protection (protection.py: the cost of the checks), memory
(memory.py: superd's footprint idle and after 100,000 connections) and http
(httpd_peers.py: superd-httpd against http.server, busybox httpd,
mini_httpd and nginx).  Each writes bench/out/NAME.md, NAME.json and a chart;
this writes bench/out/targets.md.  With --publish, every table goes into
bench/README.md (between its markers) and every chart into bench/results/.

The defaults (5 rounds of 2 s, waiting for a quiet machine at most 20 s per
run and 120 s in all) keep a run near 15 minutes on a 2-core machine.

    .venv/bin/python bench/run_all.py [--publish] [--comparisons dispatch,http]
    .venv/bin/python bench/run_all.py --tables-only [--publish]   # redo the targets table
"""

import argparse
import json
import operator
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import dispatch  # noqa: E402
import httpd_peers  # noqa: E402
import memory  # noqa: E402
import protection  # noqa: E402
import python_handlers  # noqa: E402
import suite  # noqa: E402

COMPARISONS = {          # name -> the function that makes it (memory is apart)
    "dispatch": dispatch.comparison,
    "python_handlers": python_handlers.comparison,
    "protection": protection.comparison,
    "memory": None,
    "http": httpd_peers.comparison,
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    suite.add_arguments(p, rounds=5, duration=2.0)
    p.set_defaults(patience=20.0, quiet_budget=120.0)
    p.add_argument("--comparisons", default=",".join(COMPARISONS),
                   help=f"comma-separated, from: {', '.join(COMPARISONS)}")
    p.add_argument("--tables-only", action="store_true",
                   help="run nothing: the targets table again from bench/out/*.json")
    p.add_argument("--connections", type=int, default=100_000,
                   help="memory: connections to superd (the preload daemon gets a fifth)")
    args = p.parse_args()
    args.comparisons = [c for c in args.comparisons.split(",") if c]
    for c in args.comparisons:
        if c not in COMPARISONS:
            p.error(f"unknown comparison {c!r}")
    return args


# -- issue 5's targets (and issue 4's Measure) -----------------------------------------
#
# Each ratio target is the median of the per-round ratios (a contender's run
# against its reference's run of the same round, seconds apart); the table
# shows their range and how many rounds met the target on their own, since
# between two runs of the whole suite a ratio moves by a few percent.

def rounds(results, comp, mode, a, b, value=lambda r: r["per_s"]):
    """a's value over b's in each round; None if either is missing."""
    runs = results.get(comp, {}).get("runs", {}).get(mode, {})
    if a not in runs or b not in runs:
        return None
    return [value(x) / value(y) if value(y) else suite.NAN for x, y in zip(runs[a], runs[b])]


def p99(run):
    return run["latency_us"]["p99"]


def targets(results):
    """[(target, measured, comparison operator, limit, per-round values or None)]."""
    ge, le = operator.ge, operator.le
    rows = []

    def add(what, per_round, op, limit):
        if per_round:
            rows.append((what, statistics.median(per_round), op, limit, per_round))

    for mode in results.get("dispatch", {}).get("runs", {}):
        def vs(a, b, value=lambda r: r["per_s"]):
            return rounds(results, "dispatch", mode, a, b, value)
        add(f"dispatch {mode}: superd / tcpserver", vs("superd", "tcpserver"), ge, 1.0)
        add(f"dispatch {mode}: superd / xinetd", vs("superd", "xinetd"), ge, 1.3)
        add(f"dispatch {mode}: superd with `user:` / superd", vs("superd-nobody", "superd"),
            ge, 0.8)
        add(f"dispatch {mode}: superd p99 / tcpserver p99", vs("superd", "tcpserver", p99),
            le, 1.0)
    for mode in results.get("python_handlers", {}).get("runs", {}):
        add(f"python handler {mode}: preload / exec",
            rounds(results, "python_handlers", mode, "python-preload", "python-exec"), ge, 8.0)
    add("http close: superd-httpd-preload / busybox httpd -i under tcpserver",
        rounds(results, "http", "close", "superd-httpd-preload", "busybox-httpd-i"), ge, 1.0)
    for name in ("superd-httpd", "superd-httpd-preload", "superd-httpd-wait"):
        add(f"http keep-alive: {name} / http.server",
            rounds(results, "http", "keep-alive", name, "http.server"), ge, 2.0)
    for mode in results.get("protection", {}).get("runs", {}):
        add(f"protection {mode}: every check / none (issue 4)",
            rounds(results, "protection", mode, "superd-checks", "superd"), ge, 0.9)
    for name, r in results.get("memory", {}).get("rows", {}).items():
        idle, after = r["idle"], r["after"]
        rows += [(f"memory {name}: RSS idle, MB", idle["rss_mb"], le, memory.IDLE_MB, None),
                 (f"memory {name}: RSS after {r['trail'][-1][0]} connections / idle",
                  after["rss_mb"] / idle["rss_mb"], le, 1 + memory.GROWTH, None),
                 (f"memory {name}: fds after - idle", after["fds"] - idle["fds"], le, 0, None),
                 (f"memory {name}: zombies after", after["zombies"], le, 0, None)]
    return rows


def targets_markdown(rows, meta):
    out = [f"{meta['date']}; superd at {meta['superd']}; the whole run took "
           f"{meta['minutes']:.1f} min; foreign CPU {meta['foreign']} (median of each "
           f"comparison's runs).  measured: the median of the rounds' ratios; rounds: "
           f"their range, and how many met the target alone.", "",
           "| target | measured | rounds | wanted | met |",
           "| --- | ---: | ---: | ---: | --- |"]
    for what, value, op, limit, per_round in rows:
        sign = "≥" if op is operator.ge else "≤"
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        spread = "–"
        if per_round:
            alone = sum(1 for v in per_round if op(v, limit))
            spread = f"{min(per_round):.2f}–{max(per_round):.2f}, {alone}/{len(per_round)}"
        out.append(f"| {what} | {shown} | {spread} | {sign} {limit:g} | "
                   f"{'yes' if op(value, limit) else '**no**'} |")
    return "\n".join(out) + "\n"


def saved_results(names):
    """What the last run of each comparison wrote to bench/out/NAME.json."""
    results = {}
    for name in names:
        path = cs.OUT / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results


def write_targets(results, meta, publish):
    rows = targets(results)
    md = targets_markdown(rows, meta)
    (cs.OUT / "targets.md").write_text(md)
    (cs.OUT / "targets.json").write_text(json.dumps(
        {"meta": meta, "targets": [(w, v, "≥" if op is operator.ge else "≤", lim, r)
                                   for w, v, op, lim, r in rows]}, indent=1))
    print(md)
    if publish:
        suite.publish("targets", md)


def main():
    args = parse_args()
    if args.tables_only:
        meta = json.loads((cs.OUT / "targets.json").read_text())["meta"]
        write_targets(saved_results(COMPARISONS), meta, args.publish)
        return
    t0 = time.monotonic()
    results = {}
    for name in args.comparisons:
        cs.log(f"== {name}")
        if name == "memory":
            mem_args = memory.parse_args(["-n", str(args.connections)]
                                         + (["--publish"] if args.publish else []))
            results[name] = memory.run(mem_args, results.get("dispatch", {}).get("health"))
        else:
            comp = COMPARISONS[name]()
            results[name] = suite.run(comp, args, suite.usable_modes(comp))
    foreign = {n: f"{r['meta']['foreign_cpu']:.0%}" for n, r in results.items()
               if "foreign_cpu" in r["meta"]}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "superd": suite.superd_version(),
            "minutes": (time.monotonic() - t0) / 60,
            "foreign": ", ".join(f"{n} {v}" for n, v in foreign.items()) or "–"}
    write_targets(results, meta, args.publish)
    cs.log(f"run_all: {meta['minutes']:.1f} min")


if __name__ == "__main__":
    main()
