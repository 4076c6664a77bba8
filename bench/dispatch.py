#!/usr/bin/env python3
"""Dispatch bench: connections per second of super-servers with a compiled handler.

One command starts every contender side by side (superd, superd with
`user: nobody` when run as root, xinetd, tcpserver, systemd-socket-activate),
each serving bench/hello.c (write one line, exit) per connection on a
loopback ephemeral port, and drives them in turn with bench/connload.c
(connect, read to EOF, close, again): A B C ... A B C ... for several rounds,
in each CPU placement ("mode").  It reports the median of the rounds and
ratios against tcpserver and xinetd, and writes bench/out/dispatch.md,
bench/out/dispatch.json and bench/out/dispatch.svg (matplotlib, if importable).

Modes, for this 2-core machine (connload on the last CPU in each):
  spread    the servers and their handlers may use every CPU: a dispatcher
            that waits for each exec serialises on it, one that forks does not;
  one-core  the servers and their handlers share CPU 0: the total CPU cost of
            a connection decides;
  serial    as spread, but one connection at a time: latency without queueing
            (under load, p99 is mostly time spent in the listen backlog).

Load is bounded in time (-d) and count (-n), and goes to 127.0.0.1 only
(connload refuses any other address).  Not run by CI.

    .venv/bin/python bench/dispatch.py
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402

LOAD_CPU = cs.ALL_CPUS[-1:]
MODES = {     # name -> (CPUs for the servers, None: all; CPUs for connload; concurrency)
    "spread": (None, LOAD_CPU, None),
    "one-core": (cs.ALL_CPUS[:1], LOAD_CPU, None),
    "serial": (None, LOAD_CPU, 1),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-r", "--rounds", type=int, default=7)
    p.add_argument("-d", "--duration", type=float, default=3.0, help="seconds per run")
    p.add_argument("-n", "--maxconn", type=int, default=200_000,
                   help="connections per run, at most")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unrecorded load per contender first")
    p.add_argument("--modes", default="spread,one-core,serial",
                   help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--patience", type=float, default=30.0,
                   help="seconds to wait before each run for the machine to fall quiet "
                   "(below 10%% busy); 0 to start at once")
    p.add_argument("--only", default="", help="comma-separated contender names")
    p.add_argument("--without-superd", action="store_true",
                   help="the peers only (superd is included when .venv/bin/superd runs)")
    p.add_argument("--publish", action="store_true",
                   help="copy the table into bench/README.md and the chart into bench/results/")
    args = p.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    if shutil.which("taskset") is None or len(cs.ALL_CPUS) < 2:
        cs.log("fewer than 2 CPUs or no taskset: nothing is pinned")
        args.modes = ["spread"]
        MODES["spread"] = (None, None, None)
    return args


def measure(servers, args):
    """Warm up, then the interleaved rounds; returns {mode: {name: [run, ...]}}."""
    runs = {m: {c.name: [] for c in servers} for m in args.modes}
    for c in servers:
        cs.load(c, args.concurrency, args.warmup, args.maxconn)
    for rnd in range(1, args.rounds + 1):
        for mode in args.modes:
            server_cpus, load_cpus, concurrency = MODES[mode]
            for c in servers:
                c.pin(server_cpus)
                before = cs.wait_for_quiet(patience=args.patience) if args.patience else None
                res = cs.load(c, concurrency or args.concurrency, args.duration, args.maxconn,
                              load_cpus)
                res["busy_before"] = before
                runs[mode][c.name].append(res)
                errs = f" {json.dumps(res['errors'])}" if res["errors"] else ""
                cs.log(f"round {rnd} {mode:8} {c.name:24} {res['conn_per_s']:6.0f} conn/s  "
                       f"p99 {res['latency_us']['p99'] / 1000:6.2f} ms  "
                       f"errors {res['errors_total']}{errs}  "
                       f"daemon {res['daemon_cpu_us_per_conn']:4.0f} µs/conn  "
                       f"busy {res['machine_busy']:4.0%}  foreign {res['foreign_cpu']:4.0%}")
    return runs


def summarise(runs):
    """Medians over the rounds and ratios of medians, per mode and contender."""
    med = statistics.median
    summary = {}
    for mode, by_name in runs.items():
        s = summary[mode] = {}
        for name, rs in by_name.items():
            rates = [r["conn_per_s"] for r in rs]
            kinds = {}
            for r in rs:
                for k, v in r["errors"].items():
                    kinds[k] = kinds.get(k, 0) + v
            s[name] = {
                "conn_per_s": med(rates), "min": min(rates), "max": max(rates),
                "p50_ms": med([r["latency_us"]["p50"] for r in rs]) / 1000,
                "p99_ms": med([r["latency_us"]["p99"] for r in rs]) / 1000,
                "completed": sum(r["completed"] for r in rs),
                "errors": sum(r["errors_total"] + r["unfinished"] for r in rs),
                "error_kinds": kinds,
                "daemon_cpu_us": med([r["daemon_cpu_us_per_conn"] for r in rs]),
                "children_cpu_us": med([r["children_cpu_us_per_conn"] for r in rs]),
                "foreign_cpu": med([r["foreign_cpu"] for r in rs]),
            }
        for ref in ("tcpserver", "xinetd"):      # paired: the runs of one round
            for name, row in s.items():
                row[f"vs_{ref}"] = (med([a["conn_per_s"] / b["conn_per_s"]
                                         for a, b in zip(by_name[name], by_name[ref])])
                                    if ref in by_name else float("nan"))
    return summary


def markdown(summary, meta, servers):
    out = [f"{meta['rounds']} interleaved rounds of {meta['duration']} s (at most "
           f"{meta['maxconn']} connections each) per mode, connload on CPU "
           f"{meta['load_cpu']}; {meta['date']}, {meta['host']}; superd at {meta['superd']}.", ""]
    for mode, s in summary.items():
        server_cpus, _, concurrency = MODES[mode]
        where = "every CPU" if server_cpus is None else f"CPU {','.join(map(str, server_cpus))}"
        out += [f"**{mode}**: {concurrency or meta['concurrency']} concurrent connections; "
                f"servers and handlers on {where}.", "",
                "| contender | conn/s (median) | min–max | vs tcpserver | vs xinetd "
                "| p50 ms | p99 ms | daemon CPU µs/conn | errors | foreign CPU |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in servers:
            r = s[c.name]
            out.append(f"| {c.name} | {r['conn_per_s']:.0f} | {r['min']:.0f}–{r['max']:.0f} "
                       f"| {r['vs_tcpserver']:.2f} | {r['vs_xinetd']:.2f} "
                       f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['daemon_cpu_us']:.0f} "
                       f"| {r['errors']} | {r['foreign_cpu']:.0%} |")
        out.append("")
    out += ["Contenders:", ""] + [f"- **{c.name}**: {c.describe}" for c in servers]
    out += ["", "conn/s: completed connections (each read to EOF) per second; latency: "
            "connect() to first byte; daemon CPU: user+system time of the dispatching "
            "process alone, not its handlers, per completed connection; foreign CPU: share "
            "of the machine's task time used by neither the contender, its handlers nor "
            "connload (other jobs on the machine: distrust a row where it is high).  "
            "Medians of the rounds; a ratio is the median of the per-round ratios "
            "(each against the run of the same round, seconds apart)."]
    return "\n".join(out) + "\n"


def chart(summary, meta, servers, path):
    """Bars per contender: conn/s and p99 under load per mode; latency one at a time."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        cs.log("matplotlib is not importable: no chart (.venv/bin/pip install matplotlib)")
        return None
    names = [c.name for c in servers]
    loaded = [m for m in summary if MODES[m][2] is None]
    serial = [m for m in summary if MODES[m][2] == 1]
    fig, axes = plt.subplots(1, 2 + bool(serial), figsize=(6 + 4 * (1 + bool(serial)), 4.8))

    def bars(ax, series, ylabel, title, errors=None):
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, values, width, label=label,
                   yerr=errors[i] if errors else None, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    rows = {m: [summary[m][n] for n in names] for m in loaded}
    bars(axes[0], [(m, [r["conn_per_s"] for r in rows[m]]) for m in loaded],
         "connections per second (median; bars: min–max)",
         f"Dispatch rate, {meta['concurrency']} in flight (higher is better)",
         [[[r["conn_per_s"] - r["min"] for r in rows[m]],
           [r["max"] - r["conn_per_s"] for r in rows[m]]] for m in loaded])
    bars(axes[1], [(m, [r["p99_ms"] for r in rows[m]]) for m in loaded],
         "milliseconds (median of rounds)", "p99 connect-to-first-byte under load")
    if serial:
        one = [summary[serial[0]][n] for n in names]
        bars(axes[2], [("p50", [r["p50_ms"] for r in one]), ("p99", [r["p99_ms"] for r in one])],
             "milliseconds (median of rounds)", "Connect-to-first-byte, one at a time")
    fig.suptitle(f"{meta['rounds']} interleaved rounds × {meta['duration']} s per mode; "
                 f"{meta['host']}; {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(path.with_suffix(".png"), dpi=90)     # for a quick look
    plt.close(fig)
    return path


def publish(md, svg):
    """Put the last run's table into bench/README.md (between markers) and its chart in results/."""
    readme = cs.BENCH / "README.md"
    text = readme.read_text()
    start, end = "<!-- dispatch:begin -->", "<!-- dispatch:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(f"{head}{start}\n{md}{end}{rest.split(end, 1)[1]}")
    if svg:
        (cs.BENCH / "results").mkdir(exist_ok=True)
        shutil.copy(svg, cs.BENCH / "results" / "dispatch.svg")


def superd_version():
    """The commit superd ran from, and whether superd/ had changes not committed."""
    def git(*a):
        r = subprocess.run(["git", "-C", str(cs.ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip()
    dirty = git("status", "--porcelain", "--", "superd")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in superd/" if dirty else "")


def main():
    args = parse_args()
    cs.build()
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-", dir=cs.OUT))
    servers = [k(workdir) for k in cs.kinds(not args.without_superd, args.only)]
    health = {}
    try:
        for c in servers:
            c.start()
            cs.log(f"{c.name}: pid {c.proc.pid}, 127.0.0.1:{c.port}, logs in {c.dir}")
        time.sleep(0.5)       # settled after start-up
        at_start = {c.name: c.health() for c in servers}
        runs = measure(servers, args)
        time.sleep(0.5)       # the last handlers exit and are reaped
        health = {c.name: c.health() for c in servers}
        for c in servers:
            health[c.name]["rss_mb_at_start"] = at_start[c.name]["rss_mb"]
            health[c.name]["fds_at_start"] = at_start[c.name]["fds"]
            health[c.name]["connections"] = sum(r["completed"] for m in runs.values()
                                                for r in m[c.name])
    finally:
        for c in servers:
            c.stop()
    meta = {"rounds": args.rounds, "duration": args.duration, "maxconn": args.maxconn,
            "concurrency": args.concurrency, "load_cpu": ",".join(map(str, LOAD_CPU)),
            "date": time.strftime("%Y-%m-%d %H:%M"), "workdir": str(workdir),
            "host": f"{os.cpu_count()} CPUs, Linux {os.uname().release}",
            "superd": superd_version()}
    summary = summarise(runs)
    md = markdown(summary, meta, servers)
    (cs.OUT / "dispatch.md").write_text(md)
    (cs.OUT / "dispatch.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "health": health, "runs": runs}, indent=1))
    svg = chart(summary, meta, servers, cs.OUT / "dispatch.svg")
    print(md)
    for name, h in health.items():
        print(f"{name} after the runs: {json.dumps(h)}")
    print(f"wrote {cs.OUT / 'dispatch.md'}, dispatch.json"
          + (", dispatch.svg" if svg else " (no chart: matplotlib is not installed)"))
    if args.publish:
        publish(md, svg)


if __name__ == "__main__":
    main()
