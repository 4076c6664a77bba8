"""superd's end of one helper server (forkserver.py): start it, send it starts, read it.

A `WarmInterpreter` is one server process, a warm interpreter or a spawn
server, and superd's end of its SOCK_SEQPACKET control socket.  It sends
each start without waiting and remembers, in order, whose answer is owed;
it never blocks and never decides anything: preload.WarmPool owns the
servers of every service and what happens when one fails.  The messages
are the ones forkserver.py's docstring describes: the service's environment
goes once, in the server's settings, and each start sends only the
connection's variables.

Vocabulary as in preload.py: a helper server (forkserver.py) is a warm
interpreter (`preload: true`) or a spawn server (`user:` services); this is
superd's end of either.
"""

import array
import marshal
import os
import socket
import sys
from collections import deque
from pathlib import Path

from superd.handlers_path import internal_source
from superd.spawn import recipe

STDERR_CODES = {"log": b"l", "null": b"0", "inherit": b"i"}
LEDGER_SLOTS = 1024      # starts a server may owe at once: one ledger slot each

FORKSERVER = str(Path(__file__).with_name("forkserver.py"))


class WarmUnavailable(Exception):
    """The warm interpreter cannot start this handler; use exec."""


class WarmBusy(WarmUnavailable):
    """Too many starts wait for its answers already; exec this one (no trouble)."""


def handler_argv(service):
    """The handler's own argv (script first) without interpreter or trampolines."""
    argv = list(service.argv)
    if service.internal:                 # the source, not the interpreter, -S and bytecode
        return [internal_source(service.internal)] + argv[3:]
    return argv


class WarmInterpreter:
    """One server process and superd's end of its control socket.

    Requests go out without waiting; `pending` remembers, in order, whose
    answer is still owed, since the server answers every request in turn.
    Each request has a number, its place in the order sent (the server
    counts them as it reads), under which the server's ledger records the
    pid it started for it (forkserver.py's docstring).
    """

    def __init__(self, service, slot=0):
        self.service = service
        self.slot = slot                 # its place among the service's servers
        self.control = None              # our end of the socketpair
        self.pid = 0
        self.ready = False
        self.eof = False                 # the server closed its end: nothing more will come
        self.ledger = None               # our fd of the server's ledger (a memfd)
        self.pending = deque()           # (number, token) of each start not answered, oldest first
        self.sent = 0                    # requests sent so far: the next one's number
        self.answered = 0                # answers so far (the pool's watchdog compares them)
        self.children = set()            # pids it answered with whose exit it has not reported
        self.watchdog = None             # the pool's timer while starts wait

    def start(self, spawner, workdir):
        """Spawn the helper server; returns its pid.  Raises OSError."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        plain = recipe(self.service, credentials=False)
        settings = {"argv": handler_argv(self.service), "workdir": workdir,
                    "rlimits": list(self.service.rlimits), "uid": self.service.uid,
                    "gid": self.service.gid, "groups": list(self.service.groups),
                    "env": list(plain.env),
                    # internal handlers are written to be imported: their top level runs once
                    "split_main": bool(self.service.internal), "ledger": LEDGER_SLOTS}
        # A warm interpreter starts in the handler's environment, as an exec'd
        # one would: its locale, PYTHONIOENCODING and the like are read at start-up.
        own_env = plain.env if self.service.preload else None
        if not self.service.preload:
            settings["spawn"] = {"path": plain.path, "argv": list(plain.argv)}
        ledger = None
        try:
            ours.send(encode_settings(settings))   # queued for it before it runs
            ledger = _new_ledger()
            self.pid = spawner.start_program(
                sys.executable, server_argv(self.service, settings), (theirs.fileno(), ledger),
                workdir, own_env)
        except OSError:
            ours.close()
            if ledger is not None:
                os.close(ledger)
            raise
        finally:
            theirs.close()
        self.ledger = ledger
        ours.setblocking(False)          # the loop reads it and never waits on it
        self.control = ours
        self.ready = False
        return self.pid

    def send(self, sock_fd, env, err_fd, wait_mode, stderr_mode, token):
        """Ask for one handler on sock_fd, with the connection's env on top of
        the service's; its answer comes later, for token.

        The message carries duplicates of the fds (SCM_RIGHTS): the caller
        keeps its own.  Raises WarmBusy when the socket's buffer is full,
        WarmUnavailable when the server cannot serve (and then it is not
        `ready` any more).
        """
        if not self.ready or self.control is None:
            raise WarmUnavailable("not ready")
        if len(self.pending) >= LEDGER_SLOTS:
            raise WarmBusy("every ledger slot taken")
        fds = [sock_fd] + ([err_fd] if err_fd is not None else [])
        message = encode_request(env, wait_mode, stderr_mode)
        try:
            self.control.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
        except BlockingIOError:
            raise WarmBusy("control socket full") from None
        except OSError as err:
            self.ready = False
            raise WarmUnavailable(f"control socket: {err}") from None
        self.pending.append((self.sent, token))
        self.sent += 1

    def recorded(self, number):
        """The pid the server's ledger holds for request `number`, or 0."""
        if self.ledger is None:
            return 0
        try:
            entry = os.pread(self.ledger, 8, number % LEDGER_SLOTS * 8)
        except OSError:
            return 0
        flat = _ints(b"-" + entry)
        return flat[1] if len(flat) == 2 and flat[0] == number & 0x7FFFFFFF else 0

    def messages(self):
        """Yield each message the server sent, as a dict, until none is queued.

        Never blocks.  At end of file, `eof` becomes True.
        """
        while self.control is not None and not self.eof:
            try:
                data = self.control.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            yield decode_message(data)

    def stop(self):
        """Close the control socket: the helper server exits when it sees EOF."""
        self.ready = False
        if self.control is not None:
            self.control.close()
            self.control = None

    def gone(self):
        self.stop()
        self.pid = 0
        if self.ledger is not None:
            os.close(self.ledger)
            self.ledger = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None


def _new_ledger():
    """A zeroed memfd of LEDGER_SLOTS slots, for fd 4 of a server."""
    fd = os.memfd_create("superd-ledger", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, LEDGER_SLOTS * 8)
    except OSError:
        os.close(fd)
        raise
    return fd


def server_argv(service, settings):
    """The helper server's command line.

    Without `site` (-S) where the handler would have none either: an
    internal handler is exec'd with -S, and a spawn server runs no Python
    handler.  `site` costs ~2 MB of the server's memory (45 modules here),
    which every fork copies the page tables of.  A preloaded script keeps
    it: exec'd, its interpreter would import site too.
    """
    flags = ("-S",) if service.internal or not service.preload else ()
    return (sys.executable,) + flags + (FORKSERVER, server_role(settings), service.name)


def server_role(settings):
    """What `ps` shows a helper server as: spawn, preload-internal or preload."""
    if "spawn" in settings:
        return "spawn"
    return "preload-internal" if settings.get("split_main") else "preload"


def encode_settings(settings):
    """The settings message, the first on the control socket (forkserver.py
    reads it with what Python has loaded at start-up: marshal)."""
    return marshal.dumps(settings)


def decode_settings(data):
    return marshal.loads(data)


def encode_request(env, wait_mode, stderr_mode):
    """A start request (forkserver.py): mode bytes, then NAME=value entries split by NUL."""
    head = (b"w" if wait_mode else b"n") + STDERR_CODES[stderr_mode]
    return head + "\0".join([f"{k}={v}" for k, v in env.items()]).encode(
        "utf-8", "surrogateescape")


def decode_message(data):
    """A server's message as a dict: {"pids": [N, ...]}, {"exits": [(pid, status), ...]},
    {"ready": True, "pid": N}, {"stale": True} or {"error": text}."""
    kind = data[:1]
    if kind == b"p":
        return {"pids": _ints(data)}
    if kind == b"x":
        flat = _ints(data)
        return {"exits": list(zip(flat[::2], flat[1::2]))}
    if kind == b"r" and data[1:].isdigit():
        return {"ready": True, "pid": int(data[1:])}
    if kind == b"s":
        return {"stale": True}
    if kind == b"e":
        return {"error": data[1:].decode("utf-8", "replace")}
    return {"error": f"unreadable message {data[:16]!r}"}


def _ints(data):
    """The native ints after a message's kind byte."""
    flat = array.array("i")
    flat.frombytes(data[1:len(data) - (len(data) - 1) % flat.itemsize])
    return flat

