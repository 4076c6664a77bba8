"""Where the bundled handlers are, and how `internal: NAME` runs them.

The handlers are standalone files in handlers/ (installed as the package
superd_handlers).  `internal: NAME` is a row of INTERNAL: the file and the
arguments that select the service.  They run under the interpreter running
superd, with -S: they use only the standard library, and skipping site
saves start-up time on every connection.
"""

import os
import sys
from pathlib import Path

# name: (file in handlers/, arguments before the service's own args)
INTERNAL = {
    "echo": ("classic.py", ("echo",)),
    "discard": ("classic.py", ("discard",)),
    "chargen": ("classic.py", ("chargen",)),
    "daytime": ("classic.py", ("daytime",)),
    "time": ("classic.py", ("time",)),
    "httpd": ("httpd.py", ()),
}


def handlers_dir():
    """The installed package's folder, else handlers/ beside superd/ in a checkout."""
    try:
        import superd_handlers
        return Path(superd_handlers.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "handlers"


def internal_argv(name):
    filename, args = INTERNAL[name]
    return (os.path.realpath(sys.executable), "-S", str(handlers_dir() / filename)) + args
