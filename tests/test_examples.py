"""etc/examples/: the key-value store and the chat, under every launcher they name.

kvstore.py (nowait, state in a locked file) and chat.py (wait mode, one
process holding every client) run under a real superd with and without
`preload: true`, under a real xinetd (`port = 0`, its bound address read
from the kernel), and under systemd-socket-activate (given a socket bound
here on port 0 through LISTEN_FDS).  etc/examples/services.yaml passes
`superd --check`.  Every socket has a timeout; every process started here
is in its own group, killed at teardown.
"""

import getpass
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from conftest import connect, read_all
from test_classic_launchers import launcher, wait_for_output
from test_classic_support import FD3_ONLY, TIMEOUT, errfile, procs, tcp_listener, trampoline

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "etc" / "examples"
KVSTORE = EXAMPLES / "kvstore.py"
CHAT = EXAMPLES / "chat.py"
PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
ENV = {"PATH": PATH}


class Talk:
    """A client that sends lines and reads answers line by line, with a timeout."""

    def __init__(self, address):
        self.sock = connect(address)
        self.file = self.sock.makefile("rb")

    def say(self, *lines):
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def line(self):
        data = self.file.readline()
        assert data.endswith(b"\r\n"), "no whole line: %r" % data
        return data[:-2].decode()

    def ask(self, line, answers=1):
        self.say(line)
        return [self.line() for _ in range(answers)]

    def until(self, pattern):
        """Read lines until one matches; returns it (others in between are skipped)."""
        while True:
            line = self.line()
            if re.search(pattern, line):
                return line

    def close(self):
        self.file.close()
        self.sock.close()


# -- the shipped example file -----------------------------------------------------

def test_example_services_pass_check():
    run = subprocess.run([sys.executable, "-m", "superd", "--check", "-f",
                          str(EXAMPLES / "services.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 service(s) enabled" in run.stdout + run.stderr


def test_examples_need_only_the_standard_library():
    """Each imports the standard library and nothing else (the kit is pasted in)."""
    stdlib = set(sys.stdlib_module_names)
    for path in (KVSTORE, CHAT):
        names = set(re.findall(r"^\s*(?:import|from) (\w+)", path.read_text(), re.M))
        assert names and names <= stdlib, (path, names - stdlib)


# -- the key-value store ----------------------------------------------------------

def check_store(address):
    """Two connections see each other's changes; KEYS, DEL, errors, QUIT."""
    one, two = Talk(address), Talk(address)
    try:
        assert one.ask("SET greeting hello, world") == ["OK"]
        assert two.ask("GET greeting") == ["VALUE hello, world"]
        assert two.ask("SET other  two spaces ") == ["OK"]
        assert one.ask("GET other") == ["VALUE  two spaces "]
        assert one.ask("KEYS", 3) == ["KEY greeting", "KEY other", "END"]
        assert two.ask("DEL greeting") == ["OK"]
        assert one.ask("GET greeting") == ["NOTFOUND"]
        assert one.ask("FROB x")[0].startswith("ERROR unknown command")
        assert one.ask("GET")[0].startswith("ERROR GET needs a key")
        assert one.ask("QUIT") == ["BYE"]
        assert read_all(one.sock) == b""
    finally:
        one.close()
        two.close()


def check_concurrent_sets(address, count=12):
    """SETs from many connections at once all land: the file's lock serialises them."""
    errors = []

    def set_one(i):
        try:
            talk = Talk(address)
            try:
                assert talk.ask("SET k%02d v%d" % (i, i)) == ["OK"]
            finally:
                talk.close()
        except BaseException as exc:           # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=set_one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors
    talk = Talk(address)
    try:
        keys = talk.ask("KEYS", count + 2)
    finally:
        talk.close()
    assert ["KEY k%02d" % i for i in range(count)] == [k for k in keys if k.startswith("KEY k")]


KVSTORE_SERVICE = """
services:
  kv:
    listen: 127.0.0.1:0
    server: %s
    args: [--data, "{tmp}/kv.json", --timeout, "5"]
    stderr: log
    preload: %%s
""" % KVSTORE


@pytest.mark.parametrize("preload", ["false", "true"])
def test_kvstore_under_superd(superd, tmp_path, preload):
    d = superd(KVSTORE_SERVICE % preload)
    warm = warm_pid(d, "kv", preload)
    check_store(d.address("kv"))
    check_concurrent_sets(d.address("kv"))
    assert '"k03": "v3"' in (tmp_path / "kv.json").read_text()
    d.log.wait_for(r"^stderr service=kv .*done client=127\.0\.0\.1:\d+ commands=")
    talk = Talk(d.address("kv"))
    try:
        assert talk.ask("GET k01") == ["VALUE v1"]
        parent = psutil.Process(warm if warm else d.pid)   # forked warm, or spawned by superd
        assert "kv" in [child.name() for child in parent.children()]
    finally:
        talk.close()


def warm_pid(d, service, preload):
    """The warm interpreter's pid for a preloaded service (None otherwise)."""
    if preload != "true":
        return None
    ready = d.log.wait_for(r"^preload-ready service=%s " % service)
    return int(re.search(r"pid=(\d+)", ready).group(1))


def test_kvstore_idle_client_is_told_and_closed(superd):
    d = superd(KVSTORE_SERVICE.replace('"5"', '"0.3"') % "false")
    talk = Talk(d.address("kv"))
    try:
        talk.say("GET half")
        assert talk.line() == "NOTFOUND"
        talk.sock.sendall(b"GET never-finish")
        assert talk.line() == "ERROR timeout"
        assert read_all(talk.sock) == b""
    finally:
        talk.close()


def test_kvstore_refuses_a_listening_socket(procs, errfile, tmp_path):
    listener = tcp_listener()
    proc = procs.start([sys.executable, str(KVSTORE), "--data", str(tmp_path / "kv.json")],
                       stdin=listener, stderr=errfile.file, env=ENV)
    assert proc.wait(TIMEOUT) == 64
    assert "usage-error" in errfile.text() and "nowait" in errfile.text()


def test_kvstore_store_is_bounded(procs, errfile, tmp_path):
    run = subprocess.run([sys.executable, str(KVSTORE), "--data", str(tmp_path / "kv.json"),
                          "--max-bytes", "40"], input=b"SET a 1\nSET b " + b"x" * 50 + b"\nKEYS\n",
                         capture_output=True, timeout=TIMEOUT, env=ENV)
    assert run.stdout == b"OK\r\nERROR store full\r\nKEY a\r\nEND\r\n"


# -- the chat --------------------------------------------------------------------

def check_chat(address):
    """Two clients: arrivals, a line to the other, /nick, /who, a departure."""
    ann, bob = Talk(address), None
    try:
        welcome = ann.line()
        assert welcome.startswith("* welcome, guest-")
        ann_name = welcome.split()[2].rstrip(":")
        bob = Talk(address)
        bob_name = bob.line().split()[2].rstrip(":")
        assert ann.line() == "* %s joined" % bob_name
        ann.say("hello there")
        assert bob.line() == "<%s> hello there" % ann_name
        bob.say("/nick bob")
        assert bob.line() == "* %s is now bob" % bob_name
        assert ann.line() == "* %s is now bob" % bob_name
        assert sorted(ann.ask("/who", 2)) == sorted(["* here %s" % ann_name, "* here bob"])
        bob.say("/nick %s" % ann_name)
        assert bob.line() == "* %s is taken" % ann_name
        bob.say("/quit")
        assert read_all(bob.sock) == b""
        assert ann.line() == "* bob left"
    finally:
        ann.close()
        if bob:
            bob.close()


CHAT_SERVICE = """
services:
  chat:
    listen: 127.0.0.1:0
    mode: wait
    server: %s
    args: [--idle-exit, "0.5"]
    stderr: log
    preload: %%s
""" % CHAT


@pytest.mark.parametrize("preload", ["false", "true"])
def test_chat_under_superd_wait_mode(superd, preload):
    """One chat process holds both clients; idle, it leaves, and the next
    client starts a fresh one (named chat in top: the kit's doing)."""
    d = superd(CHAT_SERVICE % preload)
    warm = warm_pid(d, "chat", preload)
    check_chat(d.address("chat"))
    start = d.log.wait_for(r"^stderr service=chat .*text=\"?start ")
    pid = int(re.search(r"pid=(\d+)", start.split("text=")[1]).group(1))
    d.log.wait_for(r"^exit service=chat .*pid=%d\b" % pid)    # idle for 0.5 s: gone
    mark = len(d.log.lines)
    talk = Talk(d.address("chat"))                              # a new one starts
    try:
        assert talk.line().startswith("* welcome, guest-1")
        again = d.log.wait_for(r"^stderr service=chat .*text=\"?start ", start=mark)
        fresh = int(re.search(r"pid=(\d+)", again.split("text=")[1]).group(1))
        assert fresh != pid
        assert Path("/proc/%d/comm" % fresh).read_text() == "chat\n"
        # forked by the warm interpreter with preload, else spawned by superd itself
        assert psutil.Process(fresh).ppid() == (warm or d.pid)
    finally:
        talk.close()


def test_chat_refuses_a_connected_socket(procs, errfile):
    ours, theirs = socket.socketpair()
    proc = procs.start([sys.executable, str(CHAT)], stdin=theirs, stdout=theirs,
                       stderr=errfile.file, env=ENV)
    theirs.close()
    assert proc.wait(TIMEOUT) == 64
    assert "usage-error" in errfile.text() and "wait mode" in errfile.text()
    ours.close()


def test_chat_drops_a_line_too_long(superd):
    d = superd(CHAT_SERVICE % "false")
    ann, bob = Talk(d.address("chat")), None
    try:
        ann.line()
        bob = Talk(d.address("chat"))
        bob_name = bob.line().split()[2].rstrip(":")
        ann.line()
        bob.sock.sendall(b"y" * 5000)
        assert ann.line() == "* %s dropped: line too long" % bob_name
    finally:
        ann.close()
        if bob:
            bob.close()


def test_chat_drops_a_client_too_slow_and_serves_the_others(superd):
    """bob reads nothing while ann talks: his outbox fills, he is dropped,
    and ann is answered all along (the loop never waits for one client)."""
    d = superd(CHAT_SERVICE % "false")
    ann = Talk(d.address("chat"))
    bob = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bob.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window: he lags at once
    bob.settimeout(TIMEOUT)
    try:
        ann_name = ann.line().split()[2].rstrip(":")
        bob.connect(d.address("chat"))
        bob_name = ann.line().split()[1]
        chunk = ("z" * 999 + "\n").encode() * 256
        for _ in range(40):                                      # 10 MB: past every buffer
            ann.sock.sendall(chunk)
            ann.sock.settimeout(0)
            try:
                if ann.sock.recv(1, socket.MSG_PEEK):
                    break                                        # something for ann: the news
            except BlockingIOError:
                pass
            finally:
                ann.sock.settimeout(TIMEOUT)
        assert ann.line() == "* %s dropped: too slow" % bob_name
        assert ann.ask("/who") == ["* here %s" % ann_name]    # ann alone now, served still
    finally:
        ann.close()
        bob.close()


# -- under xinetd ------------------------------------------------------------------

XINETD_SERVICE = """
service %(name)s
{
	type        = UNLISTED
	id          = %(name)s
	socket_type = stream
	protocol    = tcp
	wait        = %(wait)s
	bind        = 127.0.0.1
	port        = 0
	server      = %(python)s
	server_args = %(args)s
	env         = PATH=%(path)s
%(user)s}
"""


def xinetd(procs, tmp_path, name, wait, args):
    """A real xinetd with one service on port 0; returns its (host, port)."""
    user = "\tuser        = %s\n" % getpass.getuser() if os.geteuid() == 0 else ""
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n\tinstances = 50\n}\n" + XINETD_SERVICE % dict(
        name=name, wait=wait, python=sys.executable, args=args, path=PATH, user=user))
    proc = procs.start([launcher("xinetd"), "-dontfork", "-f", str(conf),
                        "-pidfile", str(tmp_path / "xinetd.pid"), "-filelog", "/dev/stderr"],
                       stderr=subprocess.PIPE, env=ENV)
    wait_for_output(proc.stderr, b"Started working")
    (conn,) = [c for c in psutil.Process(proc.pid).net_connections(kind="tcp4")
               if c.status == psutil.CONN_LISTEN]
    return tuple(conn.laddr)


def test_kvstore_under_xinetd(procs, tmp_path):
    address = xinetd(procs, tmp_path, "kvstore", "no",
                     "%s --data %s" % (KVSTORE, tmp_path / "kv.json"))
    check_store(address)
    check_concurrent_sets(address, count=6)


def test_chat_under_xinetd(procs, tmp_path):
    """wait = yes: xinetd passes the listening socket (on fds 0, 1 and 2) to one chat."""
    address = xinetd(procs, tmp_path, "chat", "yes", "%s --idle-exit 0.5" % CHAT)
    check_chat(address)
    talk = Talk(address)             # the same one, or a fresh one after its idle exit
    try:
        assert talk.line().startswith("* welcome, guest-")
    finally:
        talk.close()


# -- under systemd-socket-activate ---------------------------------------------------

@pytest.mark.parametrize("options", [["--accept"], ["--accept", "--inetd"]],
                         ids=["accept-fd3", "accept-inetd"])
def test_kvstore_under_systemd_socket_activate(procs, errfile, tmp_path, options):
    listener = tcp_listener()
    argv = [launcher("systemd-socket-activate"), *options,
            sys.executable, str(KVSTORE), "--data", str(tmp_path / "kv.json")]
    procs.start(trampoline(argv, FD3_ONLY), stdin=listener, stderr=errfile.file, env=ENV)
    check_store(listener.getsockname())
    check_concurrent_sets(listener.getsockname(), count=6)


@pytest.mark.parametrize("options", [[], ["--inetd"]], ids=["listen-fd3", "listen-inetd"])
def test_chat_under_systemd_socket_activate(procs, errfile, options):
    """Accept=no: the listening socket on fd 3 (or fd 0 with --inetd), one chat
    for everyone; it exits when idle, as systemd-socket-activate exec'd it."""
    listener = tcp_listener()
    argv = [launcher("systemd-socket-activate"), *options,
            sys.executable, str(CHAT), "--idle-exit", "0.5"]
    proc = procs.start(trampoline(argv, FD3_ONLY), stdin=listener, stderr=errfile.file, env=ENV)
    check_chat(listener.getsockname())
    assert proc.wait(TIMEOUT) == 0
    assert "Traceback" not in errfile.text()
