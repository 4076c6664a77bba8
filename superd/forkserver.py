"""The warm interpreter behind `preload: true`, and the spawn server behind
`user:` (run as a program, stdlib only).

superd starts one per preloaded service: `python forkserver.py SETTINGS_JSON`
with a SOCK_SEQPACKET control socket on fd 3.  It compiles the handler once,
imports every module the handler names anywhere in its source (lazy imports
inside functions included), says {"ready": true}, and then, for each request,
forks a child that becomes the handler exactly as a fresh interpreter would:

- fds 0 and 1 (and 3 in wait mode) are the socket passed with the request,
  fd 2 per `stderr`; every other fd is closed;
- its own session; signals as a new Python process has them (SIGPIPE and
  SIGXFSZ ignored, SIGINT raising KeyboardInterrupt, the rest default) and
  an empty mask; rlimits, groups, gid and uid set as the service says;
- the environment superd built, sys.argv = [handler, *args], new
  sys.std* objects, `random` re-seeded (its at-fork hook), and the handler's
  code run as __main__.

In spawn mode (settings["spawn"], for services with `user`/`group` that
are not preloaded) it drops to that user once, at start, and then starts
each handler with posix_spawn: no per-connection credential switch, and no
moment at which superd itself runs as another user.

Replies on the control socket: {"pid": N} for a start, {"error": text} when
the fork failed, {"stale": true} (and exit) when the handler file changed:
superd then starts a fresh warm interpreter.  {"exit": pid, "status": N}
reports each child it reaped, since superd cannot wait for a grandchild.
"""

import ast
import json
import os
import signal
import socket
import sys

CONTROL_FD = 3
MAX_MESSAGE = 1 << 20


def main():
    settings = json.loads(sys.argv[1])
    os.set_inheritable(CONTROL_FD, False)    # no handler may inherit it
    control = socket.socket(fileno=CONTROL_FD)
    os.chdir(settings["workdir"])
    if settings.get("spawn"):
        _apply_limits(settings)              # as that user for good: no root left here
        path, code = settings["spawn"]["argv"][-1], None
        serve = _spawn
    else:
        path = settings["argv"][0]
        code = compile(open(path, "rb").read(), path, "exec")
        _warm_up(code, path, settings["argv"])
        serve = _serve
    stamp = _stamp(path)
    import gc
    gc.freeze()            # the warm heap is never collected in children: fewer copied pages
    import selectors
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)    # all work happens in the loop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    _send(control, {"ready": True, "pid": os.getpid()})
    while True:
        for key, _ in selector.select():
            if key.fileobj is wake_r:
                _drain(wake_r)
                _reap(control)
                continue
            data, fds = _receive(control)
            if data is None:
                return                                 # superd went away
            if _stamp(path) != stamp:
                _close(fds)
                _send(control, {"stale": True})
                return
            serve(control, code, settings, json.loads(data), fds)


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _serve(control, code, settings, request, fds):
    try:
        pid = os.fork()
    except OSError as err:
        _close(fds)
        _send(control, {"error": f"{err.strerror or err}", "errno": err.errno})
        return
    if pid == 0:
        _become_handler(code, settings, request, fds)   # never returns
    _close(fds)
    _send(control, {"pid": pid})


def _spawn(control, code, settings, request, fds):
    """Spawn mode: posix_spawn the (non-Python) handler as this server's user."""
    sock = fds[0]
    actions = [(os.POSIX_SPAWN_DUP2, sock, 0), (os.POSIX_SPAWN_DUP2, sock, 1)]
    if request["wait"]:
        actions.append((os.POSIX_SPAWN_DUP2, sock, 3))
    if len(fds) > 1:
        actions.append((os.POSIX_SPAWN_DUP2, fds[1], 2))
    program = settings["spawn"]
    try:
        pid = os.posix_spawn(program["path"], program["argv"], dict(request["env"]),
                             file_actions=actions, setsid=True, setsigmask=(),
                             setsigdef=_SIGDEF)
    except OSError as err:
        _send(control, {"error": f"{err.strerror or err}", "errno": err.errno})
    else:
        _send(control, {"pid": pid})
    finally:
        _close(fds)


_SIGDEF = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP)] + \
    list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))


def _become_handler(code, settings, request, fds):
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        os.setsid()
        _arrange_fds(fds, request["wait"], request["stderr"])
        _reset_signals()
        _apply_limits(settings)
        env = dict(request["env"])
        if request["wait"]:
            env["LISTEN_PID"] = str(os.getpid())
        os.environ.clear()
        os.environ.update(env)
        _fresh_std_streams()
        sys.argv = list(settings["argv"])
        status = _run_main(code, settings["argv"][0])
    except BaseException:                              # report, never return to the loop
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(status)


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


def _reset_signals():
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP) or sig in (32, 33):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    # as a freshly started Python interpreter has them
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


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


def _fresh_std_streams():
    import io
    sys.stdin = io.open(0, "r", closefd=False)
    sys.stdout = io.open(1, "w", closefd=False)
    sys.stderr = io.open(2, "w", buffering=1, closefd=False, errors="backslashreplace")


def _run_main(code, path):
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__,
                 "__cached__": None, "__doc__": None, "__loader__": None,
                 "__package__": None, "__spec__": None}
    sys.modules["__main__"] = type(sys)("__main__")
    sys.modules["__main__"].__dict__.update(namespace)
    status = 0
    try:
        exec(code, sys.modules["__main__"].__dict__)
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return status


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


def _warm_up(code, path, argv):
    """Import every module the handler names, so its children start warm."""
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        tree = ast.parse(open(path, "rb").read(), path)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            try:
                __import__(name)
            except BaseException:
                pass                       # the handler will meet the same error itself


def _stamp(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _receive(control):
    data, ancdata, _, _ = control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(8 * 4))
    if not data:
        return None, []
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder)
                       for i in range(0, len(payload) - len(payload) % 4, 4))
    for fd in fds:
        os.set_inheritable(fd, False)        # dup'd where wanted, never leaked
    return data, fds


def _send(control, message):
    control.sendall(json.dumps(message).encode())


def _reap(control):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"exit": pid, "status": status})


def _close(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


if __name__ == "__main__":
    main()
