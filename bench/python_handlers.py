#!/usr/bin/env python3
"""Python handlers bench: superd's `preload: true` against exec, per connection.

Four superd daemons, one service each, loaded in turn (A B C D ...) by
connload as in bench/dispatch.py:

  python-exec      bench/hello.py (write one line, exit) exec'd per connection
                   through its #! line, .venv/bin/python: a whole interpreter
                   start-up, site included, per connection;
  python-preload   the same service with `preload: true`: superd's warm
                   interpreter forks per connection;
  daytime-exec     `internal: daytime` (handlers/classic.py under python -S);
  daytime-preload  the same with `preload: true`.

Each preload daemon is loaded only once its log says `preload-ready`.
Ratios: each preload row against its exec row of the same round (issue 5
asks python-preload >= 8 x python-exec).  Modes: 16 in flight on every CPU
(`spread`) and one at a time (`serial`).

    .venv/bin/python bench/python_handlers.py [-r ROUNDS] [-d SECONDS] [--publish]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import suite  # noqa: E402

EXEC = "exec'd per connection"
PRELOAD = "forked per connection by the warm interpreter (`preload-ready` awaited)"
KINDS = [
    cs.superd_variant("python-exec", {"server": str(cs.HELLO_PY)}, EXEC),
    cs.superd_variant("python-preload", {"server": str(cs.HELLO_PY), "preload": "true"},
                      PRELOAD, ready_event="preload-ready"),
    cs.superd_variant("daytime-exec", {"server": None, "internal": "daytime"}, EXEC),
    cs.superd_variant("daytime-preload", {"server": None, "internal": "daytime",
                                          "preload": "true"},
                      PRELOAD, ready_event="preload-ready"),
]
MODES = {"spread": suite.Mode(), "serial": suite.Mode(concurrency=1)}


def comparison():
    pairs = {k.name: k.name.replace("preload", "exec") for k in KINDS}
    return suite.Comparison(
        name="python_handlers", title="Python handlers, exec vs preload", kinds=KINDS,
        modes=MODES, refs=(("vs exec", pairs),), log_scale=True,
        notes="Each handler writes one short line and exits; `vs exec` pairs each "
              "preload row with the exec row of the same handler.")


if __name__ == "__main__":
    suite.command(comparison, __doc__)
