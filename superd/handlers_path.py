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


def internal_argv(name, bytecode=True, service=""):
    """(interpreter, -S, program, service args...) for `internal: name`.

    The bytecode's file is named after the service and the handler
    (SERVICE-superd-NAME-FILE-...pyc), so `ps` tells which handler serves what."""
    source = internal_source(name)
    program = compiled(source, f"{service}-superd-{name}" if service else "") if bytecode else source
    return (os.path.realpath(sys.executable), "-S", program) + INTERNAL[name][1]


def compiled(source, label=""):
    """A current .pyc of source in superd's cache (its name begins with label),
    or source itself if that fails."""
    import hashlib        # here, not above: ~5 MB of superd's memory when unused
    import py_compile
    try:
        cache = _cache_dir()
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        name = f"{label}-{Path(source).stem}" if label else Path(source).stem
        target = cache / f"{name}-{digest}.{sys.implementation.cache_tag}.pyc"
        if not target.exists() or target.stat().st_mtime_ns < os.stat(source).st_mtime_ns:
            py_compile.compile(source, cfile=str(target), doraise=True)
        return str(target)
    except (OSError, py_compile.PyCompileError):
        return source


def _cache_dir():
    """The first usable of $CACHE_DIRECTORY (systemd's CacheDirectory=, the first
    if it names several), $XDG_CACHE_HOME/superd, $HOME/.cache/superd and
    superd-UID in the temporary folder.  Usable: superd's own user owns it, no
    one else may write to it.  Only the parts below an existing folder are made
    (mode 0700): $XDG_CACHE_HOME itself if its parent exists, as the XDG spec
    asks, but never a $HOME that does not exist (a daemon's user often has a
    home that is not there, such as /nonexistent): it is passed over."""
    import tempfile
    environ = os.environ
    candidates = []               # (a folder that must exist, the parts below it to make)
    if environ.get("CACHE_DIRECTORY"):
        candidates.append((environ["CACHE_DIRECTORY"].split(":")[0], ()))
    if environ.get("XDG_CACHE_HOME"):
        xdg = Path(environ["XDG_CACHE_HOME"])
        candidates.append((xdg.parent, (xdg.name, "superd")))
    if environ.get("HOME"):
        candidates.append((environ["HOME"], (".cache", "superd")))
    candidates.append((tempfile.gettempdir(), (f"superd-{os.geteuid()}",)))
    for root, parts in candidates:
        folder = _private_folder(Path(root), parts)
        if folder is not None:
            return folder
    raise OSError("no private cache folder for compiled handlers")


def _private_folder(root, parts):
    """root/parts..., made (mode 0700) part by part below root, if it is superd's alone."""
    if not root.is_absolute() or not root.is_dir():
        return None
    folder = root
    try:
        for part in parts:
            folder = folder / part
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                pass
        st = folder.stat()
    except OSError:
        return None
    if st.st_uid == os.geteuid() and not st.st_mode & 0o022 and os.access(folder, os.W_OK):
        return folder
    return None
