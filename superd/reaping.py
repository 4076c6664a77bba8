"""Turning wait statuses into what the log says.

`decode(status)` gives the fields of an exit line: `status=N` for an exit,
`signal=NAME` for a death by signal (with `core=1` when it dumped core).
"""

import os
import signal


def decode(status):
    if status is None:
        return {"status": "lost"}
    if os.WIFSIGNALED(status):
        fields = {"signal": signal_name(os.WTERMSIG(status))}
        if os.WCOREDUMP(status):
            fields["core"] = 1
        return fields
    return {"status": os.waitstatus_to_exitcode(status)}


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def reap_all():
    """Yield (pid, status) for every child that has ended, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status
