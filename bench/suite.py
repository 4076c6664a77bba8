"""What every comparison in bench/ shares: interleaved rounds, medians, paired
ratios, the markdown table, the chart, and publishing them.

A Comparison names its contenders (contenders.py classes), its modes (ways
of loading them: where the servers run, how many connections are in flight,
what the load generator asks for, which contenders take part) and the
contenders its ratio columns are taken against.  run() starts every
contender once, loads them in turn (A B C ... A B C ...) for several rounds,
each run after the machine has fallen quiet, stops them, and writes
bench/out/NAME.md, NAME.json and NAME.svg (+ .png for a quick look).

A ratio is the median of per-round ratios, each against the reference's run
of the same round, seconds apart: a burst of other work on the machine spoils
one round of one pair rather than a contender.  The load generator always
runs on the last CPU; everything here goes to loopback only.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import contenders as cs

PINNED = shutil.which("taskset") is not None and len(cs.ALL_CPUS) >= 2
LOAD_CPU = tuple(cs.ALL_CPUS[-1:]) if PINNED else None
NAN = float("nan")


@dataclass(frozen=True)
class Mode:
    """One way of loading every contender of a comparison."""

    describe: str = ""              # added to the sentence above this mode's table
    server_cpus: tuple = None       # CPUs of the servers and their handlers; None: every CPU
    concurrency: int = None         # connections in flight; None: the run's -c
    options: tuple = ()             # (key, value) pairs for the comparison's load function
    only: tuple = None              # the contenders this mode loads; None: every one

    def option(self, key, default=None):
        return dict(self.options).get(key, default)


def connload(contender, mode, concurrency, duration, maxconn):
    """The default load: connload (connect, read to EOF, close, again)."""
    return cs.load(contender, concurrency, duration, maxconn, LOAD_CPU)


@dataclass
class Comparison:
    name: str                  # file stem in bench/out and results/, README markers
    title: str                 # chart title: what is compared
    kinds: list                # contender classes, in load order
    modes: dict                # mode name -> Mode
    refs: tuple = ()           # ratio columns: (label, contender name | {name: its reference})
    load: object = connload    # (contender, mode, concurrency, duration, maxconn) -> run
    unit: str = "conn/s"
    legend: str = ("conn/s: completed connections (each read to EOF) per second; "
                   "latency: connect() to first byte")
    notes: str = ""            # after the table: what else the reader must know
    log_scale: bool = False    # rates that span orders of magnitude
    appendix: object = None    # () -> markdown added below the table, measured after the runs


def command(make, doc, rounds=7, duration=3.0):
    """A comparison's own command line: parse the options, run it."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_arguments(p, rounds, duration)
    return run(make(), p.parse_args())


def add_arguments(p, rounds=7, duration=3.0):
    """The options every comparison's command line has."""
    p.add_argument("-r", "--rounds", type=int, default=rounds)
    p.add_argument("-d", "--duration", type=float, default=duration, help="seconds per run")
    p.add_argument("-n", "--maxconn", type=int, default=200_000,
                   help="connections (HTTP: requests) per run, at most")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unrecorded load per contender first")
    p.add_argument("--patience", type=float, default=30.0,
                   help="seconds to wait before each run for the machine to fall quiet "
                   "(below 10%% busy); 0 to start at once")
    p.add_argument("--quiet-budget", type=float, default=900.0,
                   help="seconds of such waiting in all; then runs start after one sample")
    p.add_argument("--only", default="", help="comma-separated contender names")
    p.add_argument("--publish", action="store_true",
                   help="copy the table into bench/README.md and the chart into bench/results/")


def usable_modes(comparison, wanted=None):
    """The modes to run: those asked for, less the pinned ones where nothing can be pinned."""
    names = wanted or list(comparison.modes)
    unknown = [m for m in names if m not in comparison.modes]
    if unknown:
        raise SystemExit(f"{comparison.name}: unknown mode(s) {', '.join(unknown)}")
    if not PINNED:
        cs.log("fewer than 2 CPUs or no taskset: nothing is pinned")
        names = [m for m in names if comparison.modes[m].server_cpus is None]
    return {m: comparison.modes[m] for m in names}


def run(comparison, args, modes=None):
    """Start, measure, stop, summarise and write one comparison; returns its record."""
    modes = modes or usable_modes(comparison)
    cs.build()
    workdir = Path(tempfile.mkdtemp(prefix=f"{comparison.name}-", dir=cs.OUT))
    only = set(filter(None, args.only.split(",")))
    servers = [k(workdir) for k in comparison.kinds if not only or k.name in only]
    health = {}
    try:
        for c in servers:
            c.start()
            cs.log(f"{c.name}: pid {c.proc.pid}, 127.0.0.1:{c.port}, logs in {c.dir}")
        time.sleep(0.5)       # settled after start-up
        at_start = {c.name: c.health() for c in servers}
        runs = measure(comparison, servers, modes, args)
        time.sleep(0.5)       # the last handlers exit and are reaped
        for c in servers:
            h = health[c.name] = c.health()
            h["rss_mb_at_start"] = at_start[c.name]["rss_mb"]
            h["fds_at_start"] = at_start[c.name]["fds"]
            h["connections"] = sum(r["completed"] for m in runs.values()
                                   for r in m.get(c.name, ()))
    finally:
        for c in servers:
            c.stop()
    summary = summarise(comparison, runs)
    meta = {"rounds": args.rounds, "duration": args.duration, "maxconn": args.maxconn,
            "concurrency": args.concurrency, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_cpu": ",".join(map(str, LOAD_CPU)) if LOAD_CPU else "any",
            "host": machine(), "superd": superd_version(), "workdir": str(workdir),
            "foreign_cpu": statistics.median(
                [r["foreign_cpu"] for m in runs.values() for rs in m.values() for r in rs])}
    md = markdown(comparison, summary, meta, servers, modes)
    if comparison.appendix:
        md += "\n" + comparison.appendix()
    out = cs.OUT / comparison.name
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "health": health, "runs": runs}, indent=1))
    svg = chart(comparison, summary, meta, servers, modes, out.with_suffix(".svg"))
    print(md)
    for name, h in health.items():
        print(f"{name} after the runs: {json.dumps(h)}")
    if args.publish:
        publish(comparison.name, md, svg)
    return {"meta": meta, "summary": summary, "health": health, "runs": runs,
            "markdown": md, "chart": svg}


def quiet(args):
    """Wait for a quiet machine, within what is left of the waiting budget."""
    if args.patience <= 0:
        return None
    t0 = time.monotonic()
    busy = cs.wait_for_quiet(patience=max(0.0, min(args.patience, args.quiet_budget)))
    args.quiet_budget -= time.monotonic() - t0
    return busy


def measure(comparison, servers, modes, args):
    """Warm up, then the interleaved rounds; returns {mode: {name: [run, ...]}}."""
    runs = {m: {c.name: [] for c in servers if mode.only is None or c.name in mode.only}
            for m, mode in modes.items()}
    for c in servers:
        mode = next(modes[m] for m in modes if c.name in runs[m])
        comparison.load(c, mode, mode.concurrency or args.concurrency, args.warmup, args.maxconn)
    for rnd in range(1, args.rounds + 1):
        for m, mode in modes.items():
            for c in servers:
                if c.name not in runs[m]:
                    continue
                c.pin(mode.server_cpus)
                before = quiet(args)
                res = comparison.load(c, mode, mode.concurrency or args.concurrency,
                                      args.duration, args.maxconn)
                res["busy_before"] = before
                runs[m][c.name].append(res)
                errs = f" {json.dumps(res['errors'])}" if res["errors"] else ""
                cs.log(f"{comparison.name} round {rnd} {m:10} {c.name:26} "
                       f"{res['per_s']:7.0f} {comparison.unit}  "
                       f"p99 {res['latency_us']['p99'] / 1000:7.2f} ms  "
                       f"errors {res['errors_total']}{errs}  "
                       f"daemon {res['daemon_cpu_us_per_conn']:5.0f} µs  "
                       f"busy {res['machine_busy']:4.0%}  foreign {res['foreign_cpu']:4.0%}")
    return runs


def paired_ratio(runs, ref_runs, value=lambda r: r["per_s"]):
    """Median of the per-round ratios of two contenders' rates (or other value)."""
    return statistics.median(value(a) / value(b) if value(b) else NAN
                             for a, b in zip(runs, ref_runs))


def summarise(comparison, runs):
    """Medians over the rounds and paired ratios, per mode and contender."""
    med = statistics.median
    summary = {}
    for mode, by_name in runs.items():
        s = summary[mode] = {}
        for name, rs in by_name.items():
            rates = [r["per_s"] for r in rs]
            kinds = {}
            for r in rs:
                for k, v in r["errors"].items():
                    kinds[k] = kinds.get(k, 0) + v
            s[name] = {
                "per_s": med(rates), "min": min(rates), "max": max(rates),
                "p50_ms": med([r["latency_us"]["p50"] for r in rs]) / 1000,
                "p99_ms": med([r["latency_us"]["p99"] for r in rs]) / 1000,
                "completed": sum(r["completed"] for r in rs),
                "errors": sum(r["errors_total"] + r["unfinished"] for r in rs),
                "error_kinds": kinds,
                "daemon_cpu_us": med([r["daemon_cpu_us_per_conn"] for r in rs]),
                "children_cpu_us": med([r["children_cpu_us_per_conn"] for r in rs]),
                "foreign_cpu": med([r["foreign_cpu"] for r in rs]),
                "ratios": {},
            }
            for label, ref in comparison.refs:
                ref_name = ref if isinstance(ref, str) else ref.get(name)
                s[name]["ratios"][label] = (paired_ratio(rs, by_name[ref_name])
                                            if ref_name in by_name else NAN)
    return summary


def _num(x, fmt="{:.2f}"):
    return "–" if x != x else fmt.format(x)


def markdown(comparison, summary, meta, servers, modes):
    unit = comparison.unit
    each = unit.split("/")[0]
    out = [f"{meta['rounds']} interleaved rounds of {meta['duration']} s (at most "
           f"{meta['maxconn']} {each} each) per mode, load generator on CPU "
           f"{meta['load_cpu']}; {meta['date']}, {meta['host']}; superd at {meta['superd']}; "
           f"foreign CPU {meta['foreign_cpu']:.0%} (median of every run).", ""]
    labels = [label for label, _ in comparison.refs]
    for m, s in summary.items():
        mode = modes[m]
        where = ("every CPU" if mode.server_cpus is None
                 else f"CPU {','.join(map(str, mode.server_cpus))}")
        out += [f"**{m}**: {mode.concurrency or meta['concurrency']} concurrent connections; "
                f"servers and handlers on {where}{'; ' + mode.describe if mode.describe else ''}.",
                "",
                f"| contender | {unit} (median) | min–max | "
                + "".join(f"{label} | " for label in labels)
                + f"p50 ms | p99 ms | daemon CPU µs/{each} | children CPU µs/{each} "
                "| errors | foreign CPU |",
                "| --- |" + " ---: |" * (8 + len(labels))]
        for c in servers:
            if c.name not in s:
                continue
            r = s[c.name]
            out.append(f"| {c.name} | {r['per_s']:.0f} | {r['min']:.0f}–{r['max']:.0f} | "
                       + "".join(f"{_num(r['ratios'][label])} | " for label in labels)
                       + f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['daemon_cpu_us']:.0f} "
                       f"| {r['children_cpu_us']:.0f} | {r['errors']} | {r['foreign_cpu']:.0%} |")
        out.append("")
    out += ["Contenders:", ""] + [f"- **{c.name}**: {c.describe}" for c in servers]
    out += ["", f"{comparison.legend}; daemon CPU: user+system "
            "time of the process the bench started, per completed one; children CPU: of every "
            "process it started (handlers, workers, a fork server), reaped or not; foreign "
            "CPU: share of the machine's task time used by neither the contender, its "
            "children nor the load generator (other jobs on the machine: distrust a row "
            "where it is high).  Medians of the rounds; a ratio is the median of the "
            "per-round ratios (each against the run of the same round, seconds apart)."
            + (f"  {comparison.notes}" if comparison.notes else "")]
    return "\n".join(out) + "\n"


def chart(comparison, summary, meta, servers, modes, path):
    """Grouped bars per contender: rate and p99 per loaded mode; latency one at a time."""
    plt = pyplot()
    if plt is None:
        return None
    names = [c.name for c in servers]
    loaded = [m for m in summary if modes[m].concurrency != 1]
    serial = [m for m in summary if modes[m].concurrency == 1]
    fig, axes = plt.subplots(1, 2 + bool(serial),
                             figsize=(6 + 4 * (1 + bool(serial)) + 0.3 * len(names), 5))

    def value(m, n, key):
        return summary[m][n][key] if n in summary[m] else NAN

    def bars(ax, series, ylabel, title, errors=None):
        if not series:                 # e.g. --modes serial: no mode under load
            ax.set_axis_off()
            return
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, values, width, label=label,
                   yerr=errors[i] if errors else None, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if comparison.log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    spread = [[[0 if n not in summary[m] else summary[m][n]["per_s"] - summary[m][n]["min"]
                for n in names],
               [0 if n not in summary[m] else summary[m][n]["max"] - summary[m][n]["per_s"]
                for n in names]] for m in loaded]
    bars(axes[0], [(m, [value(m, n, "per_s") for n in names]) for m in loaded],
         f"{comparison.unit} (median; bars: min–max)",
         f"{comparison.title}, {meta['concurrency']} in flight (higher is better)", spread)
    bars(axes[1], [(m, [value(m, n, "p99_ms") for n in names]) for m in loaded],
         "milliseconds (median of rounds)", "p99 latency under load (lower is better)")
    if serial:
        m = serial[0]
        bars(axes[2], [("p50", [value(m, n, "p50_ms") for n in names]),
                       ("p99", [value(m, n, "p99_ms") for n in names])],
             "milliseconds (median of rounds)", "Latency, one at a time")
    return save(fig, path, f"{meta['rounds']} interleaved rounds × {meta['duration']} s "
                f"per mode; {meta['host']}; {meta['date']}")


def pyplot():
    """matplotlib.pyplot without a display, or None (and say so) when not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        cs.log("matplotlib is not importable: no chart (.venv/bin/pip install matplotlib)")
        return None
    return plt


def save(fig, path, title):
    """Write the chart as SVG (published) and PNG (for a quick look); returns path."""
    import matplotlib.pyplot as plt
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(path.with_suffix(".png"), dpi=90)
    plt.close(fig)
    return path


def machine():
    return f"{os.cpu_count()} CPUs, Linux {os.uname().release}"


def publish(name, md, chart_path=None):
    """Put a table into bench/README.md (between its markers) and its chart in results/."""
    readme = cs.BENCH / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(f"{head}{start}\n{md}{end}{rest.split(end, 1)[1]}")
    else:
        cs.log(f"bench/README.md has no {start} ... {end} markers: {name} not published")
    if chart_path:
        (cs.BENCH / "results").mkdir(exist_ok=True)
        shutil.copy(chart_path, cs.BENCH / "results" / Path(chart_path).name)


def superd_version():
    """The commit superd ran from, and whether superd/ had changes not committed."""
    def git(*a):
        r = subprocess.run(["git", "-C", str(cs.ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip()
    dirty = git("status", "--porcelain", "--", "superd", "handlers")
    return git("rev-parse", "--short", "HEAD") + (
        " + uncommitted changes in superd/ or handlers/" if dirty else "")
