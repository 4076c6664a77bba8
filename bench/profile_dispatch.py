#!/usr/bin/env python3
"""Syscalls per connection on the accept-to-spawn path, and where superd waits.

For each contender: start it as bench/dispatch.py does, warm it up, attach
`strace -c -p PID` to the daemon alone (no -f: the handlers' own syscalls are
not counted) while connload makes N connections, then divide.  For superd,
also sample the daemon with py-spy (a bench-only tool: .venv/bin/pip install
py-spy) for a few seconds under load, idle time included, and list the
innermost frames.  strace slows the daemon a lot; the counts, not the rate,
are the result.  Writes bench/out/profile.md.

    bench/profile_dispatch.sh [N] [contender,...]

The contenders are the dispatch bench's; named ones may also come from
bench/protection.py (superd-checks, superd-rlimits) or
bench/python_handlers.py (python-preload, ...).
"""

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402

CONCURRENCY = 16
SAMPLE_S = 5


def strace_counts(pid, run, follow=False):
    """{syscall: calls} of one process (with follow: and the children it starts
    from now on) while run() goes."""
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt", dir=cs.OUT)[1])
    tracer = subprocess.Popen(["strace", "-c", *(["-f"] if follow else []), "-o", str(out),
                               "-p", str(pid)], stderr=subprocess.PIPE, text=True)
    tracer.stderr.readline()          # "strace: Process N attached": counting from here
    try:
        result = run()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    counts = {}
    for line in out.read_text().splitlines():
        parts = line.split()          # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    out.unlink()
    return counts, result


def pyspy_top(pid, run, path):
    """py-spy's samples of a Python daemon while run() goes, by innermost frame."""
    pyspy = cs.ROOT / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        return None, run()
    spy = subprocess.Popen([str(pyspy), "record", "-p", str(pid), "-d", str(SAMPLE_S),
                            "-r", "500", "--idle", "-f", "raw", "-o", str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)                   # py-spy attaches; it has no readiness signal
    result = run()
    spy.wait(timeout=SAMPLE_S + 30)
    leaves, total = {}, 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            leaf = stack.split(";")[-1]
            leaves[leaf] = leaves.get(leaf, 0) + int(n)
            total += int(n)
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return [f"    {n / total:6.1%}  {leaf}" for leaf, n in top], result


def profile(c, n):
    lines = []
    cs.load(c, CONCURRENCY, 1.0, 100_000)
    counts, res = strace_counts(c.proc.pid, lambda: cs.load(c, CONCURRENCY, 60, n))
    done = max(res["completed"], 1)
    lines += [f"## {c.name}: {sum(counts.values()) / done:.1f} syscalls per connection",
              "", f"{res['completed']} connections completed under strace, "
              f"{res['errors_total']} errors.", "",
              "| syscall | calls per connection |", "| --- | ---: |"]
    for name, k in sorted(counts.items(), key=lambda kv: -kv[1]):
        if k / done >= 0.01:
            lines.append(f"| {name} | {k / done:.2f} |")
    lines.append("")
    if c.name.startswith("superd"):
        raw = cs.OUT / f"pyspy-{c.name}.txt"
        top, res = pyspy_top(c.proc.pid, lambda: cs.load(c, CONCURRENCY, SAMPLE_S, 10**6), raw)
        if top is None:
            lines.append("(py-spy is not installed: no sample)")
        else:
            lines += [f"py-spy, {SAMPLE_S} s under load without strace "
                      f"({res['conn_per_s']:.0f} conn/s): share of wall-clock samples by "
                      f"innermost frame, idle included (stacks: bench/out/{raw.name}):", ""]
            lines += top
        lines.append("")
    return lines


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    cs.build()
    write_report([f"Syscalls of the dispatching process only (`strace -c -p PID`, no -f), "
                  f"over {n} connections at concurrency {CONCURRENCY}; "
                  f"{time.strftime('%Y-%m-%d %H:%M')}.", ""],
                 chosen(only), lambda c: profile(c, n), cs.OUT / "profile.md")


def chosen(only):
    """The dispatch contenders, or those named from any connload comparison."""
    if not only:
        return cs.kinds(True)
    import protection
    import python_handlers
    known = {k.name: k for k in cs.kinds(True) + protection.KINDS + python_handlers.KINDS}
    return [known[name] for name in only.split(",")]


def write_report(lines, kinds, profile_one, path):
    """Start each contender in turn, add profile_one(contender)'s lines, stop it;
    write the report to path and print it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{path.stem}-", dir=cs.OUT))
    for kind in kinds:
        c = kind(workdir)
        try:
            c.start()
            lines += profile_one(c)
        finally:
            c.stop()
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
