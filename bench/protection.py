#!/usr/bin/env python3
"""Protection bench: what superd's checks cost on the accept-to-spawn path.

Three superd daemons serving the compiled bench/hello.c, loaded in turn by
connload as in bench/dispatch.py (issue 4, "Measure"):

  superd          no check configured;
  superd-checks   every check that runs in the daemon, each set so that no
                  connection is refused: only_from, no_access, per_source,
                  per_source_rate, rate and max_load;
  superd-rlimits  rlimits alone, measured apart because superd applies them
                  by exec'ing prlimit (util-linux) before the handler: one more
                  exec per connection, not a check in the loop.

Ratios against plain superd in the same round; issue 4 asks superd-checks
to stay above 0.9.  Modes as dispatch.py's `spread` and `one-core`.

    .venv/bin/python bench/protection.py [-r ROUNDS] [-d SECONDS] [--publish]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import dispatch  # noqa: E402
import suite  # noqa: E402

CHECKS = {
    "only_from": "[127.0.0.0/8]",
    "no_access": "[10.0.0.0/8]",
    "per_source": "1000",
    "per_source_rate": "{limit: 1000000, per: 1}",
    "rate": "{limit: 1000000, per: 1, pause: 1}",
    "max_load": "1000",
}
KINDS = [
    cs.Superd,
    cs.superd_variant("superd-checks", CHECKS),
    cs.superd_variant("superd-rlimits", {"rlimits": "{nofile: 1024, core: 0}"},
                      "posix_spawn of prlimit, which sets the limits and execs the handler"),
]
MODES = {m: dispatch.MODES[m] for m in ("spread", "one-core")}


def comparison():
    return suite.Comparison(
        name="protection", title="Cost of the protection checks", kinds=KINDS, modes=MODES,
        refs=(("vs superd", "superd"),),
        notes="No connection is refused in any row: every limit is set above the load.")


if __name__ == "__main__":
    suite.command(comparison, __doc__)
