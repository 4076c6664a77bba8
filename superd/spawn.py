"""Starting handler programs: argv, environment, fds, credentials.

This module owns the recipe for a handler process and nothing that outlives
the call: it never waits for, signals or remembers a child.  It promises:

- Rule 1: no fork() of the Python daemon.  Every handler starts through
  os.posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) and exec), so the cost
  of a start does not grow with the daemon's memory.
- Rule 2: a handler sees fds 0, 1 and 2 (and 3 in wait mode) and nothing
  else: everything superd holds is close-on-exec, and the file actions dup
  exactly the fds named here.
- Rule 3: a handler starts in its own session, with default dispositions for
  signals 1-31 and the real-time signals and an empty signal mask (Python
  ignores SIGPIPE and SIGXFSZ, and an ignored signal survives exec).
- Rule 4: its environment is built afresh from the service's base (resolved
  at load) and the connection; superd's own environment never leaks.

What posix_spawn cannot do itself is done by exec'ing a small trampoline
first: `prlimit` (util-linux) sets resource limits, so they hold from the
handler's first instruction; `setpriv` (util-linux) switches uid, gid and
groups; `/bin/sh` puts the handler's own pid in LISTEN_PID for wait mode.  The working directory is
set by changing superd's own (single-threaded, so nothing else sees it).

`Spawner.send` hands the same start (environment, socket, stderr) to a
service's spawn server or warm interpreter instead (preload.py); it returns
at once, and the pid comes later on that server's control socket.
"""

import fcntl
import os
import shutil
import signal
import socket
import struct
from dataclasses import dataclass

SH = "/bin/sh"
SET_LISTEN_PID = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'

_SIGDEF = frozenset(
    [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP)]
    + list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)))


class SpawnSetupError(Exception):
    """A service cannot be started at all on this machine (found at load)."""


@dataclass(frozen=True)
class Recipe:
    """Everything per service that a start needs, computed once per config."""

    path: str          # what posix_spawn execs (the program, or a trampoline)
    argv: tuple        # its argv
    env: tuple         # base (NAME, value) pairs
    workdir: str
    stderr: str        # "inherit" | "log" | "null"
    service: str


def recipe(service, credentials=True):
    """Build the Recipe for a config.Service; raises SpawnSetupError.

    credentials=False leaves out the switch of user and group: for a spawn
    server that already runs as that user.
    """
    argv = tuple(service.argv)
    if service.mode == "wait":
        argv = (SH, "-c", SET_LISTEN_PID, "superd-wait") + argv
    if credentials and (service.uid != -1 or service.gid != -1):
        argv = _setpriv(service) + argv
    if service.rlimits:
        argv = _prlimit(service) + argv     # outermost: as root it may raise limits too
    env = service.base_env + (("SUPERD_SERVICE", service.name),)
    if service.mode == "wait":
        env += (("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", service.name))
    return Recipe(argv[0], argv, env, service.workdir, service.stderr, service.name)


def _setpriv(service):
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if setpriv is None:
        raise SpawnSetupError("'user'/'group' need setpriv (util-linux), which is not installed")
    argv = [setpriv]
    if service.gid != -1:
        argv.append(f"--regid={service.gid}")
        groups = ",".join(str(g) for g in service.groups) or str(service.gid)
        argv.append(f"--groups={groups}")
    if service.uid != -1:
        argv.append(f"--reuid={service.uid}")
    return tuple(argv) + ("--",)


def _prlimit(service):
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if prlimit is None:
        raise SpawnSetupError("'rlimits' needs prlimit (util-linux), which is not installed")
    return (prlimit,) + tuple(f"--{name}={value}" for name, value in service.rlimits) + ("--",)


class Spawner:
    """Starts handlers.  Holds /dev/null open for `stderr: null`."""

    def __init__(self):
        self._devnull = None

    def start(self, recipe, sock_fd, extra_env, wait_mode=False):
        """posix_spawn one handler on sock_fd; returns (pid, stderr read fd or None).

        Raises OSError (EAGAIN: out of processes; ENOENT/EACCES: the program);
        nothing is left open then.
        """
        env = self._environment(recipe, extra_env)
        actions = [(os.POSIX_SPAWN_DUP2, sock_fd, 0), (os.POSIX_SPAWN_DUP2, sock_fd, 1)]
        if wait_mode:
            actions.append((os.POSIX_SPAWN_DUP2, sock_fd, 3))
        err_read, err_child = self._stderr(recipe)
        if err_child is not None:
            actions.append((os.POSIX_SPAWN_DUP2, err_child, 2))
        try:
            self._chdir(recipe.workdir)
            pid = os.posix_spawn(recipe.path, recipe.argv, env, file_actions=actions,
                                 setsid=True, setsigmask=(), setsigdef=_SIGDEF)
        except BaseException:
            self._close_read_end(err_read)
            raise
        finally:
            self._close_write_end(err_read, err_child)
        return pid, err_read

    def send(self, warm, recipe, sock_fd, extra_env, wait_mode, token):
        """Ask warm (a warmserver.WarmInterpreter) to start one handler on sock_fd.

        extra_env is the connection's part only: the server holds the
        service's.  Returns the stderr read fd (or None) at once; the pid
        comes later, with token, on warm's control socket.  Raises
        warmserver.WarmUnavailable (or its kind WarmBusy), and nothing is left
        open then.  The pipe's write end is closed here: the message carries
        it, and a start that is never answered is exec'd with a pipe of its own.
        """
        err_read, err_child = self._stderr(recipe)
        try:
            warm.send(sock_fd, extra_env, err_child, wait_mode, recipe.stderr, token)
        except BaseException:
            self._close_read_end(err_read)
            raise
        finally:
            self._close_write_end(err_read, err_child)
        return err_read

    @staticmethod
    def _environment(recipe, extra_env):
        env = dict(recipe.env)
        env.update(extra_env)
        return env

    def _stderr(self, recipe):
        """(read end we keep or None, fd the handler gets as its fd 2 or None)."""
        if recipe.stderr == "log":
            err_read, err_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(err_write, True)
            return err_read, err_write
        if recipe.stderr == "null":
            return None, self.devnull()
        return None, None

    @staticmethod
    def _close_read_end(err_read):
        if err_read is not None:
            os.close(err_read)

    @staticmethod
    def _close_write_end(err_read, err_child):
        if err_read is not None:          # a pipe of this start's own (not /dev/null)
            os.close(err_child)

    def start_program(self, path, argv, fds, workdir, env=None):
        """posix_spawn a helper of superd's own (a fork or spawn server).

        fds become its fds 3, 4, ...; fds 0 and 1 are /dev/null, fd 2 superd's
        stderr; its environment env (NAME, value) pairs, or only superd's PATH.
        """
        self._chdir(workdir)
        actions = [(os.POSIX_SPAWN_DUP2, self.devnull(), 0), (os.POSIX_SPAWN_DUP2, self.devnull(), 1)]
        moved = []           # an fd an earlier dup2 would overwrite is copied above them all
        for target, fd in enumerate(fds, 3):
            if 3 <= fd < target:
                fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds))
                moved.append(fd)
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        env = dict(env) if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True,
                                  setsigmask=(), setsigdef=_SIGDEF)
        finally:
            for fd in moved:
                os.close(fd)

    @staticmethod
    def _chdir(workdir):
        os.chdir(workdir)     # every time: a folder may be replaced while superd runs

    def devnull(self):
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self._devnull


def connection_env(peer, local):
    """The environment a nowait handler gets for one IP connection (DESIGN.md)."""
    rip, rport = plain_ip(peer[0]), str(peer[1])
    lip, lport = plain_ip(local[0]), str(local[1])
    return {
        "REMOTE_ADDR": rip, "REMOTE_PORT": rport, "REMOTE_HOST": rip,
        "PROTO": "TCP", "TCPREMOTEIP": rip, "TCPREMOTEPORT": rport,
        "TCPLOCALIP": lip, "TCPLOCALPORT": lport,
    }


def unix_peer_env(fd):
    """UNIXREMOTEPID/EUID/EGID from SO_PEERCRED, as ucspi-unix sets them."""
    sock = socket.socket(fileno=fd)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    finally:
        sock.detach()
    pid, uid, gid = struct.unpack("3i", creds)
    return {"PROTO": "UNIX", "UNIXREMOTEPID": str(pid),
            "UNIXREMOTEEUID": str(uid), "UNIXREMOTEEGID": str(gid)}


def plain_ip(ip):
    """An IPv4-mapped IPv6 address (dual-stack listener) as plain IPv4."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip.split("%", 1)[0]
