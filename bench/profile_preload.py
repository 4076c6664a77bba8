#!/usr/bin/env python3
"""Where a preloaded connection's time goes, against exec and against busybox -i.

For each contender: start it as its comparison does, warm it up, then
  1. load it untraced and read, per connection, the CPU of the daemon, of
     the fork server itself (the fork) and of the handlers, and the handlers'
     minor page faults (copy-on-write after fork, or a new image after exec:
     cminflt in /proc/PID/stat of the process that reaps them);
  2. load it again under `strace -c -f -p` on the process that starts the
     handlers (the fork server, or the daemon for exec), handlers included,
     and divide the syscalls by the connections (strace slows everything: the
     counts, not the rate, are the result).
Contenders: python-exec and python-preload (bench/hello.py, connload),
superd-httpd-preload and busybox-httpd-i under tcpserver (one GET per
connection, wrk with `Connection: close`).  Writes bench/out/profile_preload.md.

    .venv/bin/python bench/profile_preload.py [N]
"""

import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import httpd_peers  # noqa: E402
import profile_dispatch  # noqa: E402
import python_handlers  # noqa: E402
import suite  # noqa: E402

CONCURRENCY = 16
SAMPLE_S = 5.0
BY_NAME = {k.name: k for k in python_handlers.KINDS + httpd_peers.KINDS}
CONTENDERS = ["python-exec", "python-preload", "superd-httpd-preload", "busybox-httpd-i"]


def loader(c, n):
    """A bounded load of at most n connections (HTTP ones: one GET each, for
    SAMPLE_S s: wrk runs to its duration even after its count)."""
    if c.name in (k.name for k in httpd_peers.KINDS):
        return lambda: httpd_peers.wrk(c, httpd_peers.MODES["close"], CONCURRENCY,
                                       SAMPLE_S, n)
    return lambda: suite.connload(c, suite.Mode(), CONCURRENCY, 60, n)


def starter(c):
    """The process that starts the handlers: the fork server if there is one."""
    me = psutil.Process(c.proc.pid)
    helpers = [p for p in me.children() if "forkserver" in " ".join(p.cmdline())]
    return helpers[0] if helpers else me


def faults_and_cpu(p):
    """(children's minor faults, own CPU s, reaped children's CPU s) of a process."""
    fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
    t = p.cpu_times()
    return int(fields[8]), t.user + t.system, t.children_user + t.children_system


def profile(c, n):
    load = loader(c, n)
    load()                                                  # warm up
    proc = starter(c)
    f0, own0, kids0 = faults_and_cpu(proc)
    res = load()
    f1, own1, kids1 = faults_and_cpu(proc)
    done = max(res["completed"], 1)
    counts, traced = profile_dispatch.strace_counts(proc.pid, load, follow=True)
    tdone = max(traced["completed"], 1)
    per = sum(counts.values()) / tdone
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:14]
    who = "fork server" if proc.pid != c.proc.pid else "daemon"
    lines = [f"## {c.name}", "",
             f"Untraced, {res['completed']} connections at {res['per_s']:.0f}/s: "
             f"{who} {(own1 - own0) / done * 1e6:.0f} µs CPU per connection, its handlers "
             f"{(kids1 - kids0) / done * 1e6:.0f} µs and {(f1 - f0) / done:.0f} minor "
             f"page faults each.", "",
             f"Under `strace -c -f -p` on the {who} ({traced['completed']} connections): "
             f"{per:.0f} syscalls per connection, handlers included; the most frequent:", "",
             "| syscall | per connection |", "| --- | ---: |"]
    lines += [f"| {name} | {k / tdone:.1f} |" for name, k in top]
    return lines + [""]


# Run by .venv/bin/python: what a fork of a warm interpreter costs before any
# handler code runs, and what resetting the signals costs in the child: with
# superd/forkserver.py's own _reset_signals() (signal.signal, the Python
# wrapper, for each signal) and with the C function underneath (_signal.signal).
FORK_FLOOR = r"""
import os, resource, socket, sys
import _signal
from superd import forkserver
path = sys.argv[1]
fresh = forkserver._signal_table()
forkserver._warm_up(path, [path], True)     # warm exactly as the fork server is
forkserver._event_sources(socket.socket())
forkserver._SIGNALS_TO_RESTORE[:] = forkserver._changed_signals(fresh)

def reset_c():
    for sig in range(1, _signal.NSIG):
        if sig not in (_signal.SIGKILL, _signal.SIGSTOP, 32, 33):
            try:
                _signal.signal(sig, _signal.SIG_DFL)
            except (OSError, ValueError):
                pass

def per_child(work, n=300):
    r0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                work()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    r1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = lambda a, b: (b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) / n * 1e6
    return cpu(s0, s1), cpu(r0, r1), (r1.ru_minflt - r0.ru_minflt) / n

for what, work in (("nothing", lambda: None),
                   ("forkserver._reset_signals()", forkserver._reset_signals),
                   ("the same loop with _signal.signal", reset_c)):
    print("| %s | %.0f | %.0f | %.0f |" % ((what,) + per_child(work)))
"""


def fork_floor():
    """The FORK_FLOOR table, measured with every process on CPU 0."""
    cmd = ["taskset", "-c", "0", str(cs.PYTHON), "-c", FORK_FLOOR,
           str(cs.ROOT / "handlers" / "httpd.py")]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    return ["## The floor: one fork of a warm interpreter (superd-httpd's, as `internal: httpd` has it), "
            "then `os._exit`", "",
            "| the child does, before `os._exit` | parent CPU µs | child CPU µs "
            "| child minor faults |",
            "| --- | ---: | ---: | ---: |"] + rows.splitlines() + [""]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    cs.build()
    httpd_peers.make_site()
    profile_dispatch.write_report(
        [f"Per connection, {n} connections at concurrency {CONCURRENCY}; "
         f"{time.strftime('%Y-%m-%d %H:%M')}; superd at {suite.superd_version()}.", ""]
        + fork_floor(),
        [BY_NAME[name] for name in CONTENDERS], lambda c: profile(c, n),
        cs.OUT / "profile_preload.md")

if __name__ == "__main__":
    main()
