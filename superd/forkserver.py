"""The warm interpreter behind `preload: true`, and the spawn server behind
`user:` (run as a program, stdlib only).

superd starts one per preloaded service: `python forkserver.py ROLE SERVICE`
with a SOCK_SEQPACKET control socket on fd 3 whose first message is the
settings (a marshalled dict).  ROLE (preload, preload-internal or spawn)
and SERVICE are there for `ps` only; the settings say everything.  It compiles the handler once (in a throwaway child, so the warm heap
stays small), imports every module the handler names anywhere in its source
(lazy imports inside functions included) or, for internal handlers, runs
their top level once (settings["split_main"]), says it is ready, and then,
for each request, forks a child that becomes the handler exactly as a fresh
interpreter would:

- fds 0 and 1 (and 3 in wait mode) are the socket passed with the request,
  fd 2 per `stderr`; every other fd is closed;
- its own session; signals as a new Python process has them (SIGPIPE and
  SIGXFSZ ignored, SIGINT raising KeyboardInterrupt, the rest default) and
  an empty mask; rlimits, groups, gid and uid set as the service says;
- the environment superd built, sys.argv = [handler, *args], sys.std*
  objects as a fresh interpreter makes them (made once, unused until then),
  `random` re-seeded (its at-fork hook), and the handler's code run as
  __main__.

In spawn mode (settings["spawn"], for services with `user`/`group` that
are not preloaded) it drops to that user once, at start, and then starts
each handler with posix_spawn: no per-connection credential switch, and no
moment at which superd itself runs as another user.

The handler's environment is settings["env"] (the service's, sent once)
with each request's connection variables on top.  superd starts a warm
interpreter in settings["env"], as it would exec the handler, so that what
Python does with it at start-up (the locale, and LC_CTYPE's coercion in
the C locale) is done alike; a child only adds the connection's, and sees
what the handler's top level set.

Nothing here imports json, socket, signal or array: with what they pull in
(enum, re, collections) they were a quarter of the warm heap, whose pages
every fork copies the tables of and every child faults on.  The two
messages of every connection are kept small, since both ends are Python and
pay per byte and per object (warmserver.py writes and reads the same
format):

- a request: one byte "w" (wait mode) or "n", one byte for stderr ("l" a
  pipe, "0" /dev/null, "i" inherit), then NAME=value entries separated by
  NUL bytes; the socket (and stderr's fd) come with it as SCM_RIGHTS;
- the answers: "p" and then the pids as native ints, in the order of the
  requests: one message for every request read in one wake-up (a burst of
  starts costs superd one read, not one each).

Rarer replies: "r" and its pid in decimal once warm, "e" and the reason
when a start failed, "s" (and exit) when the handler file changed: superd
then starts a fresh warm interpreter.  Exit reports, for the children it
reaped (superd cannot wait for a grandchild), are "x" and then (pid,
status) pairs as native ints, sent after the pids of the same wake-up, so
that superd always learns a pid before its exit.

The ledger (fd 4, when settings["ledger"] gives its number of slots) is
how superd learns the pids a server that died never sent.  The Nth
request read (N from 0) is recorded in slot N % slots as N and the
handler's pid, two native ints, by the forked child itself before
anything else, or by a spawn server as soon as posix_spawn returns.  A
child closes fd 3 only after that, so once superd has seen this server
exit and its socket reach end of file, the ledger holds every handler it
forked.

Vocabulary as in preload.py: this one program is every helper server, the
warm interpreter of a preloaded service and the spawn server of a `user:`
service alike.
"""

import _signal
import _socket
import atexit            # built in: costs the warm heap nothing
import marshal
import os
import select            # here: a spawn server cannot import once it runs as its user
import sys

CONTROL_FD = 3
LEDGER_FD = 4
MAX_MESSAGE = 1 << 16        # a request: the connection's environment; larger is refused
MAX_SETTINGS = 1 << 20       # the first message: the service's settings
STDERR_MODES = {b"l": "log", b"0": "null", b"i": "inherit"}
MAX_BATCH = 64               # requests served in one wake-up before looking at exits again


def main():
    _name_process(sys.argv[-1])
    fresh_signals = _signal_table()          # as a freshly started interpreter has them
    os.set_inheritable(CONTROL_FD, False)    # no handler may inherit it
    control = _socket.socket(fileno=CONTROL_FD)
    settings = marshal.loads(control.recv(MAX_SETTINGS))
    ledger = _Ledger(settings.get("ledger", 0))
    os.chdir(settings["workdir"])
    if settings.get("rlimits"):
        import resource                      # here, not in each child (a shared library)
    if settings.get("spawn"):
        settings["base_env"] = {_fs_encode(k): _fs_encode(v) for k, v in settings.get("env", ())}
        _apply_limits(settings)              # as that user for good: no root left here
        path, program = None, None           # each exec reads the program afresh
        serve = _spawn
    else:
        path = settings["argv"][0]
        program = _warm_up(path, settings["argv"], settings.get("split_main"))
        _make_std_streams()
        serve = _serve
    stamp = _stamp(path)
    poller, wake_r = _event_sources(control)
    _SIGNALS_TO_RESTORE[:] = _changed_signals(fresh_signals)
    import gc
    gc.freeze()            # the warm heap is never collected in children: fewer copied pages
    control.sendall(b"r%d" % os.getpid())
    wake_fd = wake_r.fileno()
    replies = _Replies(control)

    def start(data, fds):
        serve(replies, program, settings, data, fds, ledger)

    while True:
        for fd, _ in poller.poll():
            if fd == wake_fd:
                _drain(wake_r)
                _reap(replies)
            elif not _answer(control, replies, ledger, path, stamp, start):
                try:
                    replies.flush()       # answers owed for what it read before EOF
                except OSError:
                    pass                  # superd is gone: nobody to tell
                return
        replies.flush()


class _Replies:
    """What one wake-up has to say, sent at its end: pids first, then exits."""

    def __init__(self, control):
        self.control = control
        self.pids = bytearray()           # native ints (C int), as superd reads them
        self.exits = bytearray()          # pid, status, pid, status, ...

    def other(self, message):
        """A refusal ("e" and why, or "s" for stale), after the pids answered before it."""
        self._send_pids()
        self.control.sendall(message)

    def flush(self):
        self._send_pids()
        if self.exits:
            self.control.sendall(b"x" + self.exits)
            del self.exits[:]

    def _send_pids(self):
        if self.pids:
            self.control.sendall(b"p" + self.pids)
            del self.pids[:]


class _Ledger:
    """Slots in superd's memfd on fd 4 (see the module docstring); none when
    slots is 0 (a test's server)."""

    def __init__(self, slots):
        self.slots = slots
        self.read = 0                     # requests read so far: the next one's number
        if slots:
            os.set_inheritable(LEDGER_FD, False)

    def record(self, number, pid):
        if self.slots:
            try:
                os.pwrite(LEDGER_FD, _native(number & 0x7FFFFFFF) + _native(pid),
                          number % self.slots * 8)
            except OSError:
                pass                      # then superd execs it, as before the ledger


def _answer(control, replies, ledger, path, stamp, start):
    """Start a handler for every request queued now; False when this server must end."""
    for queued in range(MAX_BATCH):
        try:
            data, fds = _receive(control, _socket.MSG_DONTWAIT if queued else 0)
        except (BlockingIOError, InterruptedError):
            return True
        if data is None:
            return False                               # superd went away
        ledger.read += 1
        if not data:
            _close(fds)
            replies.other(b"erequest larger than %d bytes" % MAX_MESSAGE)
            continue
        if not queued and _stamp(path) != stamp:
            _close(fds)
            replies.other(b"s")                        # superd starts a fresh one
            return False
        start(data, fds)             # parsed by whoever uses it (see _serve)
    return True


def _request(data):
    """A request's bytes as {"wait", "stderr", "env": [(name, value), ...] as bytes}."""
    entries = data[2:].split(b"\0") if len(data) > 2 else ()
    return {"wait": data[:1] == b"w", "stderr": STDERR_MODES.get(data[1:2], "inherit"),
            "env": [entry.partition(b"=")[::2] for entry in entries]}


def _environment(settings, request):
    """Spawn mode: the service's environment with the connection's on top, as
    bytes, which posix_spawn takes as they are."""
    env = settings["base_env"].copy()
    env.update(request["env"])
    return env


def _event_sources(control):
    """An epoll on the control socket and on a wake-up socket that SIGCHLD writes to.

    select.epoll itself, not selectors: its Python layer would run (and, with
    children alive, copy the pages of) several frames per wake-up.
    """
    wake_r, wake_w = _socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    _signal.set_wakeup_fd(wake_w.detach(), warn_on_full_buffer=False)   # open for good
    _signal.signal(_signal.SIGCHLD, lambda *_: None)    # all work happens in the loop
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    poller = select.epoll()
    poller.register(control.fileno(), select.EPOLLIN)
    poller.register(wake_r.fileno(), select.EPOLLIN)
    return poller, wake_r


def _drain(sock):
    """Empty the wake-up socket: one read holds 4096 signals; more wake us again."""
    try:
        sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        pass


def _serve(replies, program, settings, data, fds, ledger):
    """Fork one handler for a request's bytes.

    The child parses them: every object this loop makes lands on a page
    shared with the children still running, and costs a copy.
    """
    try:
        pid = os.fork()
    except OSError as err:
        _close(fds)
        replies.other(b"e" + _fs_encode(err.strerror or str(err)))
        return
    if pid == 0:
        ledger.record(ledger.read - 1, os.getpid())      # first: see the module docstring
        _become_handler(program, settings, data, fds)   # never returns
    _close(fds)
    replies.pids += _native(pid)


def _spawn(replies, program, settings, data, fds, ledger):
    """Spawn mode: posix_spawn the (non-Python) handler as this server's user."""
    request = _request(data)
    sock = fds[0]
    actions = [(os.POSIX_SPAWN_DUP2, sock, 0), (os.POSIX_SPAWN_DUP2, sock, 1)]
    if request["wait"]:
        actions.append((os.POSIX_SPAWN_DUP2, sock, 3))
    if len(fds) > 1:
        actions.append((os.POSIX_SPAWN_DUP2, fds[1], 2))
    program = settings["spawn"]
    try:
        pid = os.posix_spawn(program["path"], program["argv"], _environment(settings, request),
                             file_actions=actions, setsid=True, setsigmask=(),
                             setsigdef=_SIGDEF)
    except OSError as err:
        replies.other(b"e" + _fs_encode(err.strerror or str(err)))
    else:
        ledger.record(ledger.read - 1, pid)
        replies.pids += _native(pid)
    finally:
        _close(fds)


_SIGDEF = [s for s in range(1, 32) if s not in (_signal.SIGKILL, _signal.SIGSTOP)] + \
    list(range(_signal.SIGRTMIN, _signal.SIGRTMAX + 1))


def _become_handler(program, settings, data, fds):
    status = 1
    try:
        request = _request(data)
        _signal.set_wakeup_fd(-1)
        os.setsid()
        _arrange_fds(fds, request["wait"], request["stderr"])
        _reset_signals()
        _apply_limits(settings)
        env = request["env"]
        if request["wait"]:
            env.append((b"LISTEN_PID", b"%d" % os.getpid()))
        _add_environ(env)
        _take_std_streams(request["stderr"])
        sys.argv = list(settings["argv"])
        status = _run_main(program, settings["argv"][0])
    except BaseException:                              # report, never return to the loop
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(status)


def _add_environ(pairs):
    """(name, value) pairs (bytes) into os.environ and the C environment.

    Through the mapping's own store and the C function: os.environ's
    MutableMapping methods run a Python frame per variable, and every frame
    touched in a forked child copies pages of the warm interpreter.
    """
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):            # not CPython's os._Environ: the slow way
        os.environ.update({os.fsdecode(k): os.fsdecode(v) for k, v in pairs})
        return
    for key, value in pairs:
        os.putenv(key, value)
        data[key] = value               # CPython keeps it as bytes on POSIX, as given here


def _fs_encode(text, encoding=sys.getfilesystemencoding()):
    return text.encode(encoding, "surrogateescape")


def _arrange_fds(fds, wait, stderr_mode):
    sock = fds[0]
    err = fds[1] if len(fds) > 1 else None
    os.dup2(sock, 0)
    os.dup2(sock, 1)
    keep = 3
    if wait:
        os.dup2(sock, 3)
        keep = 4
    if err is not None:
        os.dup2(err, 2)
    os.closerange(keep, 1 << 20)


def _signal_table():
    table = {}
    for sig in _signal.valid_signals():
        try:
            table[sig] = _signal.getsignal(sig)
        except (OSError, ValueError):
            pass
    return table


def _changed_signals(fresh):
    """(signal number, handler) pairs of what differs from `fresh` now."""
    return [(sig, handler) for sig, handler in fresh.items()
            if handler is not None and _signal.getsignal(sig) != handler]


_SIGNALS_TO_RESTORE = []      # (signal, handler): what differs from a fresh interpreter


def _reset_signals():
    """Back to a fresh interpreter's dispositions and an empty mask.

    The differences (the helper server's own SIGCHLD handler, any a warm import
    set) are listed once, before the first fork; walking every signal in
    each child would copy the pages of every handler object it touches.
    The C functions of _signal, because signal's wrappers build enums.
    """
    for sig, handler in _SIGNALS_TO_RESTORE:
        _signal.signal(sig, handler)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def _apply_limits(settings):
    if settings.get("rlimits"):
        import resource
        for name, value in settings["rlimits"]:
            which = getattr(resource, "RLIMIT_" + name.upper())
            limit = resource.RLIM_INFINITY if value == "unlimited" else int(value)
            resource.setrlimit(which, (limit, limit))
    if settings.get("gid", -1) != -1:
        os.setgroups(settings.get("groups") or [settings["gid"]])
        os.setgid(settings["gid"])
    if settings.get("uid", -1) != -1:
        os.setuid(settings["uid"])


_STD_STREAMS = {}     # made once before the first fork: see _make_std_streams


def _make_std_streams():
    """sys.stdin and sys.stdout for a socket, and sys.stderr for each stderr
    mode, made as CPython's start-up makes them (create_stdio, POSIX).

    Each is made on an fd of the kind a child will have there (a socket, a
    pipe, /dev/null, or this server's own stderr for "inherit"), so what a
    stream learns of its fd when made (seekable, tty, block size) holds in
    the child.  A child only takes its three: making them in each child
    copied ~80 pages of the warm heap, a tenth of a connection's faults.
    """
    pair = _socket.socketpair()
    pipe_r, pipe_w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        sock = pair[0].fileno()
        _STD_STREAMS.update(
            stdin=_made_on(0, sock, sys.__stdin__, writing=False),
            stdout=_made_on(1, sock, sys.__stdout__, writing=True),
            log=_made_on(2, pipe_w, sys.__stderr__, writing=True),
            null=_made_on(2, null, sys.__stderr__, writing=True),
            inherit=_std_stream(2, sys.__stderr__, writing=True))
    finally:
        _close([pipe_r, pipe_w, null])
        pair[0].close()
        pair[1].close()


def _made_on(fd, stand_in, like, writing):
    """_std_stream(fd, ...) made while fd is a duplicate of stand_in; fd is
    then what it was."""
    saved = os.dup(fd)
    try:
        os.dup2(stand_in, fd)
        return _std_stream(fd, like, writing)
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _std_stream(fd, like, writing):
    """A text stream on fd with the encoding, errors and buffering of `like`,
    a standard stream this interpreter made at start-up."""
    import io
    buffered = not like.write_through                # not -u
    buf = io.open(fd, "wb" if writing else "rb", buffering=-1 if buffered or not writing else 0,
                  closefd=False)
    raw = getattr(buf, "raw", buf)
    raw.name = like.name
    line_buffering = buffered and (fd == 2 or raw.isatty())
    stream = io.TextIOWrapper(buf, like.encoding, like.errors, "\n", line_buffering,
                              not buffered)
    stream.mode = "w" if writing else "r"
    return stream


def _take_std_streams(stderr_mode):
    sys.stdin = _STD_STREAMS["stdin"]
    sys.stdout = _STD_STREAMS["stdout"]
    sys.stderr = _STD_STREAMS[stderr_mode]


def _run_main(program, path):
    """Run the handler's code as __main__; returns its exit status."""
    module, codes = program
    if module is None:
        module = _main_module(path)
    sys.modules["__main__"] = module
    status = 0
    try:
        for code in codes:
            exec(code, module.__dict__)
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    _finalize()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return status


def _finalize():
    """What a fresh interpreter does at exit before it flushes its streams
    (Py_FinalizeEx): wait for the threads that are not daemons, then run
    the atexit functions.  Neither changes the exit status.  Each only when
    there is something to do: what it touches costs a child copied pages."""
    threading = sys.modules.get("threading")
    if threading is not None and len(threading._active) > 1:   # more than this one
        try:
            threading._shutdown()
        except BaseException:
            import traceback
            traceback.print_exc()
    if atexit._ncallbacks():
        atexit._run_exitfuncs()


def _main_module(path):
    module = type(sys)("__main__")
    module.__dict__.update({"__file__": path, "__builtins__": __builtins__, "__cached__": None,
                            "__loader__": None, "__package__": None, "__spec__": None})
    return module


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _warm_up(path, argv, split_main):
    """Import what the handler needs, so its children start warm.

    Returns the program each child runs: (module or None, code objects).
    With split_main (internal handlers, written to be imported), the top
    level above the final `if __name__ == "__main__":` runs here, once, and
    each child runs only that block in the module made here; what such a
    handler imports inside functions stays lazy, as it chose (threading,
    for one, costs every fork 0.4 ms in its at-fork hook).  Otherwise every
    module the handler names anywhere, lazy imports included, is imported.
    """
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    top, main, names = _compile_aside(path, split_main)
    if top is not None:
        module = _main_module(path)
        try:
            exec(top, module.__dict__)
            return module, (main,)
        except BaseException:          # then each child runs it all, and meets the error
            pass
    for name in names:
        try:
            __import__(name)
        except BaseException:
            pass                       # the handler will meet the same error itself
    return None, (main,) if top is None else (top, main)


def _compile_aside(path, split_main):
    """(top or None, main code, imported names), compiled in a throwaway child.

    Parsing and compiling a large handler leave megabytes of freed but
    fragmented heap behind (12 MB for superd-httpd); every fork would copy
    its page tables and every exit tear them down.  The warm interpreter
    only loads the marshalled result.  A file that does not compile ends
    the helper server, with the error on stderr: superd then uses exec.
    """
    import marshal
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(readable)
        status = 1
        try:
            data = marshal.dumps(_compile(path, split_main))
            with open(writable, "wb") as out:
                out.write(data)
            status = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(writable)
    with open(readable, "rb") as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        sys.exit(f"forkserver: cannot compile {path}")
    return marshal.loads(data)


def _compile(path, split_main):
    import ast
    tree = ast.parse(open(path, "rb").read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    guard = tree.body[-1] if tree.body else None
    if split_main and _is_main_guard(guard):
        top = ast.Module(body=tree.body[:-1], type_ignores=[])
        main = ast.Module(body=guard.body, type_ignores=[])
        return (compile(top, path, "exec", dont_inherit=True),
                compile(main, path, "exec", dont_inherit=True), names)
    return None, compile(tree, path, "exec", dont_inherit=True), names


def _is_main_guard(node):
    """`if __name__ == "__main__":` with no else."""
    import ast
    return (isinstance(node, ast.If) and not node.orelse
            and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__")


def _name_process(service):
    """What top shows (comm, 15 bytes): the service, not python3.11.  A preloaded
    handler inherits it at fork; one that names itself (the kit) may rename."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(("superd:" + service)[:15])
    except OSError:
        pass                                  # not Linux, or no /proc: the name is cosmetic


def _stamp(path):
    if path is None:
        return None
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _receive(control, extra_flags=0):
    """(request bytes or None at EOF, fds); b"" for a request cut at MAX_MESSAGE.

    Raises BlockingIOError with extra_flags=MSG_DONTWAIT when none is queued.
    """
    # close-on-exec as they arrive: dup'd where wanted, never leaked, no fcntl each
    data, ancdata, flags, _ = control.recvmsg(MAX_MESSAGE, _socket.CMSG_SPACE(8 * 4),
                                              _socket.MSG_CMSG_CLOEXEC | extra_flags)
    if not data:
        return None, []
    if flags & _socket.MSG_TRUNC:
        data = b""
    fds = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder)
                       for i in range(0, len(payload) - len(payload) % 4, 4))
    return data, fds


def _reap(replies):
    """Reap every child that ended; replies reports them at the wake-up's end."""
    exits = replies.exits
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        exits += _native(pid) + _native(status)


def _native(value):
    """value as a C int: superd reads replies with array("i"), and array here would
    import collections."""
    return value.to_bytes(4, sys.byteorder, signed=True)


def _close(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


if __name__ == "__main__":
    main()
