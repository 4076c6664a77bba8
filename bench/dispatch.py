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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import suite  # noqa: E402

ONE_CORE = tuple(cs.ALL_CPUS[:1])
MODES = {
    "spread": suite.Mode(),
    "one-core": suite.Mode(server_cpus=ONE_CORE),
    "serial": suite.Mode(concurrency=1),
}


def comparison(with_superd=True):
    return suite.Comparison(
        name="dispatch", title="Dispatch rate", kinds=cs.kinds(with_superd), modes=MODES,
        refs=(("vs tcpserver", "tcpserver"), ("vs xinetd", "xinetd")))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    suite.add_arguments(p, rounds=7, duration=3.0)
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--without-superd", action="store_true",
                   help="the peers only (superd is included when .venv/bin/superd runs)")
    return p.parse_args(argv)


def main():
    args = parse_args()
    comp = comparison(not args.without_superd)
    suite.run(comp, args, suite.usable_modes(comp, [m for m in args.modes.split(",") if m]))


if __name__ == "__main__":
    main()
