"""The control socket: one bounded request per client, answered in the loop.

A UNIX stream socket, mode 0600 (0660 with `control_group:`), so the
kernel refuses other users.  Each client sends one line of JSON, at most
MAX_REQUEST bytes, and gets one line of JSON back; then superd closes it.
Nothing here blocks: every socket is non-blocking and watched in the loop's
selector, and a client has DEADLINE seconds from its connect to its last
byte read (a client that says nothing, sends too much or reads nothing is
dropped then); at most MAX_CLIENTS are served at once, more are closed at
once.  What a request means is the `answer` callback's business
(commands.Commands); this module only moves bytes.

Where the socket is (`default_path`): `control:` in services.yaml, else
$RUNTIME_DIRECTORY/control (systemd's RuntimeDirectory=), else
/run/superd/control as root, else $XDG_RUNTIME_DIR/superd/control, else
beside the ready file (READY.control), else $TMPDIR/superd-UID/control
(/tmp by default), in a folder made 0700 and refused unless it is superd's
user's own and closed to others (as tmux does: another user could have made
it first).
"""

import errno
import json
import os
import selectors
import socket
import stat
from functools import partial

from superd.listeners import remove_stale
from superd.sysutil import errname

MAX_REQUEST = 64 << 10
DEADLINE = 5.0            # seconds (tuning.Thresholds.control_deadline)
LATER_DEADLINE = 60.0      # seconds an answer that comes later (upgrade) may take
MAX_CLIENTS = 32
BACKLOG = 16


def default_path(environ, euid, ready_file):
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "control")
    if euid == 0:
        return "/run/superd/control"
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "superd", "control")
    if ready_file:
        return ready_file + ".control"
    return os.path.join(_private_folder(environ, euid), "control")


def _private_folder(environ, euid):
    return os.path.join(environ.get("TMPDIR") or "/tmp", f"superd-{euid}")


def _check_private(folder):
    """The fallback folder in a shared /tmp must be ours and closed to others."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{folder} is not this user's own private folder "
                      f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")


class Client:
    __slots__ = ("sock", "got", "out", "timer")

    def __init__(self, sock):
        self.sock = sock
        self.got = b""
        self.out = None           # the answer, once there is one
        self.timer = None


class ControlServer:
    def __init__(self, selector, timers, clock, log, answer, deadline=DEADLINE):
        self.selector = selector
        self.timers = timers
        self.clock = clock
        self.log = log
        self.answer = answer      # (request, respond) -> answer dict, or None: respond() later
        self.deadline = deadline
        self.sock = None
        self.path = None
        self.inode = None
        self.owns_path = False    # whether closing removes the socket's file
        self.clients = set()

    def open(self, path, gid=None):
        """Bind path (0600, or 0660 for gid); OSError says why it cannot."""
        folder = os.path.dirname(path)
        private = folder == _private_folder(os.environ, os.geteuid())
        if folder and not os.path.isdir(folder):
            shared = os.geteuid() == 0 and not private
            os.makedirs(folder, mode=0o755 if shared else 0o700, exist_ok=True)
        if private:
            _check_private(folder)
        remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)     # never, even for an instant, open to others
        try:
            sock.bind(path)
            if gid is not None:
                os.chown(path, -1, gid)
                os.chmod(path, 0o660)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        self._serve(sock, path, owns_path=True)

    def adopt(self, fd, path):
        """Serve the listening socket an upgrade's predecessor passed as fd, if
        it is bound to path; True then.  The file stays the predecessor's until
        `own_path()` (a successor that fails must not remove it)."""
        sock = socket.socket(fileno=fd)
        try:
            bound = sock.family == socket.AF_UNIX and sock.getsockname() == path
        except OSError:
            bound = False
        if not bound:
            sock.close()
            return False
        self._serve(sock, path, owns_path=False)
        return True

    def listening(self):
        """(fd, path) of the listening socket, for an upgrade to pass on; or None."""
        return (self.sock.fileno(), self.path) if self.sock is not None else None

    def own_path(self):
        """The predecessor has handed over: the socket's file is ours to remove."""
        self.owns_path = self.sock is not None

    def _serve(self, sock, path, owns_path):
        sock.setblocking(False)
        st = os.lstat(path)
        self.sock, self.path, self.inode = sock, path, (st.st_dev, st.st_ino)
        self.owns_path = owns_path
        self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def close(self):
        for client in list(self.clients):
            self._drop(client)
        self.close_listener()

    def close_listener(self, hand_over=False):
        """Stop taking clients (the ones connected are still answered).  The
        socket's file goes too, if it is ours and still this socket's; not when
        it is handed over (the successor serves the same socket at that path)."""
        if self.sock is None:
            return
        self.selector.unregister(self.sock)
        if self.owns_path and not hand_over:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self.inode:
                    os.unlink(self.path)
            except OSError:
                pass
        self.sock.close()
        self.sock = None
        self.owns_path = False

    def _accept(self):
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:        # EMFILE and the like: the loop must not spin
                self.log.warning("control-accept-failed", error=errname(err))
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(sock)
            self.clients.add(client)
            client.timer = self.timers.at(self.clock() + self.deadline,
                                      partial(self._expired, client))
            self.selector.register(sock, selectors.EVENT_READ, partial(self._readable, client))

    def _readable(self, client):
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.got))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(client)
        if not data:
            return self._drop(client)
        client.got += data
        line, newline, _ = client.got.partition(b"\n")
        if newline:
            answer = self._answer(line, partial(self._reply_later, client))
            if answer is None:         # it will come: the command runs on in the loop
                self.selector.unregister(client.sock)
                client.timer.cancel()
                client.timer = self.timers.at(self.clock() + LATER_DEADLINE,
                                              partial(self._expired, client))
                return
            self._reply(client, answer)
        elif len(client.got) > MAX_REQUEST:
            self._reply(client, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})

    def _reply_later(self, client, answer):
        if client in self.clients:
            self.selector.register(client.sock, selectors.EVENT_WRITE,
                                   partial(self._writable, client))
            client.out = memoryview((json.dumps(answer) + "\n").encode())
            self._writable(client)

    def _answer(self, line, respond):
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
            return {"ok": False, "error": "the request is not one line of JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'a request is an object with a "command"'}
        return self.answer(request, respond)

    def _reply(self, client, answer):
        client.out = memoryview((json.dumps(answer) + "\n").encode())
        self.selector.modify(client.sock, selectors.EVENT_WRITE, partial(self._writable, client))
        self._writable(client)

    def _writable(self, client):
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(client)
        client.out = client.out[sent:]
        if not client.out:
            _discard_unread(client.sock)
            self._drop(client)

    def _expired(self, client):
        if client in self.clients:
            self.log.info("control-dropped", reason="deadline",
                          answered=int(client.out is not None))
            self._drop(client)

    def _drop(self, client):
        if client not in self.clients:
            return
        self.clients.discard(client)
        if client.timer is not None:
            client.timer.cancel()
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def _discard_unread(sock):
    """Read what the client sent past its request (more lines, say), up to a
    bound: a UNIX socket closed with bytes unread resets its peer, which would
    then lose the answer it was sent."""
    left = MAX_REQUEST
    while left > 0:
        try:
            data = sock.recv(min(left, 65536))
        except OSError:                   # nothing more queued (EAGAIN), or gone
            return
        if not data:
            return
        left -= len(data)
