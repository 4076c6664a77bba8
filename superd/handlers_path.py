"""Where the bundled handlers are, and how `internal: NAME` runs them.

The handlers are standalone files in handlers/ (installed as the package
superd_handlers).  `internal: NAME` is a row of INTERNAL: the file and the
arguments that select the service.  They run under the interpreter running
superd, with -S (they use only the standard library, and skipping site saves
start-up time on every connection), and from bytecode: at load, superd
compiles each one it uses into a private cache, because a Python script run
by path is compiled anew at every start (superd-httpd: some 25 ms) and
__pycache__ may be read-only or disabled (PYTHONDONTWRITEBYTECODE).  A
reload compiles again; if the cache cannot be written, the source runs.
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
    "status": ("status.py", ()),
}


def handlers_dir():
    """The installed package's folder, else handlers/ beside superd/ in a checkout."""
    try:
        import superd_handlers
        return Path(superd_handlers.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "handlers"


def internal_source(name):
    return str(handlers_dir() / INTERNAL[name][0])


def internal_argv(name, bytecode=True):
    """(interpreter, -S, program, service args...) for `internal: name`."""
    source = internal_source(name)
    program = compiled(source) if bytecode else source
    return (os.path.realpath(sys.executable), "-S", program) + INTERNAL[name][1]


def compiled(source):
    """A current .pyc of source in superd's cache, or source itself if that fails."""
    import hashlib        # here, not above: ~5 MB of superd's memory when unused
    import py_compile
    try:
        cache = _cache_dir()
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        target = cache / f"{Path(source).stem}-{digest}.{sys.implementation.cache_tag}.pyc"
        if not target.exists() or target.stat().st_mtime_ns < os.stat(source).st_mtime_ns:
            py_compile.compile(source, cfile=str(target), doraise=True)
        return str(target)
    except (OSError, py_compile.PyCompileError):
        return source


def _cache_dir():
    """$XDG_CACHE_HOME/superd, ~/.cache/superd, else a private folder in /tmp."""
    import tempfile
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else "")
    candidates = [Path(base, "superd")] if base else []
    candidates.append(Path(tempfile.gettempdir(), f"superd-{os.geteuid()}"))
    for folder in candidates:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
            if st.st_uid == os.geteuid() and not st.st_mode & 0o022 and os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise OSError("no private cache folder for compiled handlers")
