"""handlers/kit.py: its blocks, their copies, and kit.py run under every launcher.

Every file under handlers/ and etc/examples/ that holds a `# --- kit: NAME`
block holds it byte for byte as kit.py does (the copies are how single-file
handlers share it).  The pure parts (LineBuffer, log_quote) are tested in
process, table-driven; the launch rules by running kit.py (a line echo that
logs what it found) on a socketpair, with the fds and variables each
launcher sets, under systemd-socket-activate, and under a real superd,
where /proc/PID/comm names the service.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hypothesis import given, strategies as st

from conftest import connect, read_all
from test_classic_support import FD3_ONLY, TIMEOUT, errfile, procs, tcp_listener, trampoline

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "handlers" / "kit.py"
MARK = re.compile(r"^# --- kit: (\S+) \(copied from handlers/kit\.py; tests/test_kit\.py "
                  r"keeps the copies identical\) ---\n", re.M)
PATH = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])


def blocks(text):
    """{name: the block's text, from its first marker line through its end line}."""
    found = {}
    for mark in MARK.finditer(text):
        name = mark.group(1)
        end = "# --- end kit: %s ---\n" % name
        stop = text.find(end, mark.start())
        assert stop > 0, "block %s has no end marker" % name
        assert name not in found, "block %s twice" % name
        found[name] = text[mark.start():stop + len(end)]
    return found


def copies():
    files = sorted((ROOT / "handlers").glob("*.py")) + sorted((ROOT / "etc" / "examples").glob("*"))
    return [p for p in files if p != KIT and p.is_file() and "# --- kit: " in p.read_text()]


# -- the copies ---------------------------------------------------------------

def test_kit_has_its_blocks():
    assert set(blocks(KIT.read_text())) == {"launch", "io"}


def test_the_handlers_and_examples_carry_the_kit():
    names = {p.relative_to(ROOT).as_posix() for p in copies()}
    assert {"handlers/classic.py", "handlers/httpd.py",
            "etc/examples/kvstore.py", "etc/examples/chat.py"} <= names


@pytest.mark.parametrize("path", copies(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_copy_is_byte_identical(path):
    ours = blocks(KIT.read_text())
    theirs = blocks(path.read_text())
    assert theirs, "%s mentions the kit but holds no whole block" % path
    for name, text in theirs.items():
        assert name in ours, "%s: no block %r in kit.py" % (path, name)
        assert text == ours[name], "%s: block %r differs from kit.py's: paste it again" % (path, name)
    # no stray start or end marker outside a whole block
    text = path.read_text()
    assert text.count("# --- kit: ") == len(theirs)
    assert text.count("# --- end kit: ") == len(theirs)


# -- pure parts, in process -----------------------------------------------------

def load_kit():
    import importlib.util
    spec = importlib.util.spec_from_file_location("kit_under_test", KIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kit = load_kit()


@pytest.mark.parametrize("chunks, lines, rest", [
    ([b"a\nb\n"], ["a", "b"], None),
    ([b"a\r\nb"], ["a"], "b"),
    ([b"he", b"llo\r", b"\n"], ["hello"], None),
    ([b"\n\n"], ["", ""], None),
    ([b"caf\xc3\xa9\n"], ["caf\u00e9"], None),
    ([b"\xff\n"], ["\udcff"], None),                 # undecodable: kept, to write back as it came
    ([b"x\ry\n"], ["x\ry"], None),                   # only a CR before the LF goes
], ids=["two", "crlf-and-rest", "split", "empty", "utf8", "undecodable", "inner-cr"])
def test_line_buffer(chunks, lines, rest):
    buf = kit.LineBuffer(limit=16)
    got = []
    for chunk in chunks:
        got += buf.feed(chunk)
    assert got == lines
    assert buf.rest() == rest


@pytest.mark.parametrize("chunks", [[b"x" * 17], [b"x" * 17 + b"\n"], [b"x" * 10, b"x" * 10]],
                         ids=["unfinished", "finished", "in-pieces"])
def test_line_buffer_refuses_a_line_past_its_limit(chunks):
    buf = kit.LineBuffer(limit=16)
    with pytest.raises(kit.LineTooLong):
        for chunk in chunks:
            buf.feed(chunk)


def test_line_buffer_holds_exactly_its_limit():
    buf = kit.LineBuffer(limit=16)
    assert buf.feed(b"x" * 16) == []
    assert buf.feed(b"\n") == ["x" * 16]


def superd_quote(value):
    from superd.logs import quote
    return quote(value)


@pytest.mark.parametrize("value", [
    "plain", "", "two words", 'a"quote', "k=v", "tab\there", "new\nline", "back\\slash",
    "caf\u00e9", "\x00\x1f\x7f", "\udcff", 3, 1.5, 2.0, 0.0, None, True,
])
def test_log_quote_is_superds(value):
    assert kit.log_quote(value) == superd_quote(value)


@given(st.text())
def test_log_quote_is_superds_for_any_text(text):
    assert kit.log_quote(text) == superd_quote(text)


def test_lines_write_sends_at_once_and_reads_with_a_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(TIMEOUT)
        lines = kit.Lines(theirs, timeout=0.2)
        lines.write("one", "two")                     # no flush: it is on the wire now
        assert ours.recv(100) == b"one\r\ntwo\r\n"
        ours.sendall(b"half a line")
        with pytest.raises(TimeoutError):
            lines.readline()
        ours.sendall(b" and the rest\nnext")
        ours.shutdown(socket.SHUT_WR)
        assert list(lines) == ["half a line and the rest", "next"]
        assert lines.readline() is None


def test_lines_refuse_a_line_past_the_limit():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(b"y" * 100)
        with pytest.raises(kit.LineTooLong):
            kit.Lines(theirs, timeout=TIMEOUT, limit=50).readline()


# -- kit.py run by each launcher's rules ---------------------------------------

def run_kit(procs, errfile, env=None, prefix="", stderr=None, args=(), **kw):
    """kit.py started as a launcher would: `prefix` moves fds (see trampoline)."""
    argv = [sys.executable, str(KIT), *args]
    if prefix is not None and "LISTEN" in prefix:
        argv = ["/bin/sh", "-c", prefix + ' exec "$0" "$@"', *argv]
    child_env = {"PATH": PATH, **(env or {})}
    return procs.start(argv, env=child_env, stderr=stderr or errfile.file, **kw)


def echo_over(sock, text=b"hello\nworld\n"):
    sock.sendall(text)
    sock.shutdown(socket.SHUT_WR)
    return read_all(sock)


def test_inetd_style_connection_on_fd0(procs, errfile):
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = run_kit(procs, errfile, stdin=theirs, stdout=theirs)
    theirs.close()
    assert echo_over(ours) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0
    assert re.search(r"^connect client=unix::0 local=unix::0 service=\"\" conn=\"\" "
                     r"names=unknown pid=%d$" % proc.pid, errfile.text(), re.M)


def test_xinetd_style_stderr_is_the_client_and_stays_silent(procs, errfile):
    """fds 0, 1 and 2 are the client: log() writes nothing, the client reads only its lines."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = run_kit(procs, errfile, stdin=theirs, stdout=theirs, stderr=theirs,
                   env={"REMOTE_HOST": "192.0.2.9"})
    theirs.close()
    assert echo_over(ours) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0


def test_tcpserver_variables_name_the_ends(procs, errfile):
    listener = tcp_listener()
    client = connect(listener.getsockname())
    conn, _ = listener.accept()
    env = {"PROTO": "TCP", "TCPREMOTEIP": "192.0.2.1", "TCPREMOTEPORT": "4444",
           "TCPLOCALIP": "198.51.100.2", "TCPLOCALPORT": "79"}
    proc = run_kit(procs, errfile, env=env, stdin=conn, stdout=conn)
    conn.close()
    assert echo_over(client) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0
    assert "connect client=192.0.2.1:4444 local=198.51.100.2:79 " in errfile.text()


def test_variables_without_their_launchers_mark_name_no_one(procs, errfile):
    """REMOTE_ADDR without SUPERD_SERVICE, TCPREMOTEIP without PROTO=TCP: the socket says."""
    listener = tcp_listener()
    client = connect(listener.getsockname())
    conn, _ = listener.accept()
    env = {"REMOTE_ADDR": "192.0.2.1", "REMOTE_PORT": "1", "TCPREMOTEIP": "192.0.2.2",
           "TCPREMOTEPORT": "2", "REMOTE_HOST": "192.0.2.3"}
    proc = run_kit(procs, errfile, env=env, stdin=conn, stdout=conn)
    conn.close()
    assert echo_over(client) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0
    assert "connect client=127.0.0.1:%d " % client.getsockname()[1] in errfile.text()


def test_systemd_accept_yes_connection_on_fd3_with_names(procs, errfile):
    listener = tcp_listener()
    client = connect(listener.getsockname())
    conn, _ = listener.accept()
    prefix = FD3_ONLY + " LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=kitconn"
    proc = run_kit(procs, errfile, prefix=prefix, stdin=conn)
    conn.close()
    assert echo_over(client) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0
    assert re.search(r"connect client=127\.0\.0\.1:%d .* names=kitconn " % client.getsockname()[1],
                     errfile.text())


def test_systemd_accept_no_listening_socket_on_fd3(procs, errfile):
    listener = tcp_listener()
    prefix = FD3_ONLY + " LISTEN_FDS=1 LISTEN_PID=$$"
    proc = run_kit(procs, errfile, prefix=prefix, stdin=listener, args=["0.5"])
    for word in (b"first\n", b"second\n"):
        with connect(listener.getsockname()) as client:
            assert echo_over(client, word) == word.replace(b"\n", b"\r\n")
    assert proc.wait(TIMEOUT) == 0                   # idle: it leaves
    assert errfile.text().count("done client=127.0.0.1:") == 2


def test_listen_pid_of_another_process_is_ignored(procs, errfile):
    """LISTEN_* meant for someone else: fd 0 is the socket, and no child sees them."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"}
    proc = run_kit(procs, errfile, env=env, stdin=theirs, stdout=theirs)
    theirs.close()
    assert echo_over(ours) == b"hello\r\nworld\r\n"
    assert proc.wait(TIMEOUT) == 0
    assert "names=unknown " in errfile.text()


def test_by_hand_on_a_pipe(procs, errfile):
    proc = subprocess.run([sys.executable, str(KIT)], input=b"a\nb", capture_output=True,
                          timeout=TIMEOUT, env={"PATH": PATH})
    assert proc.returncode == 0
    assert proc.stdout == b"a\r\nb\r\n"
    assert proc.stderr.startswith(b"connect client=-:0 ")


def test_process_name_is_the_service(procs, errfile):
    """SUPERD_SERVICE names the process (comm), cut to 15 bytes; the echo still works."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = run_kit(procs, errfile, env={"SUPERD_SERVICE": "a-very-long-service-name"},
                   stdin=theirs, stdout=theirs)
    theirs.close()
    ours.sendall(b"ping\n")
    assert ours.recv(100) == b"ping\r\n"
    assert Path("/proc/%d/comm" % proc.pid).read_text() == "a-very-long-ser\n"
    ours.shutdown(socket.SHUT_WR)
    assert read_all(ours) == b""
    assert proc.wait(TIMEOUT) == 0


def test_under_systemd_socket_activate(procs, errfile):
    tool = shutil.which("systemd-socket-activate", path=PATH)
    assert tool, "systemd-socket-activate is not installed (.ci/run installs it)"
    listener = tcp_listener()
    argv = [tool, "--accept", "--fdname=kitsock", sys.executable, str(KIT)]
    procs.start(trampoline(argv, FD3_ONLY), stdin=listener, stderr=errfile.file,
                env={"PATH": PATH})
    with connect(listener.getsockname()) as client:
        assert echo_over(client) == b"hello\r\nworld\r\n"
    with connect(listener.getsockname()) as client:
        assert echo_over(client, b"again") == b"again\r\n"


# -- under a real superd ----------------------------------------------------------

KIT_SERVICE = """
services:
  kit-echo:
    listen: 127.0.0.1:0
    server: %s
    stderr: log
    preload: %s
    proxy_protocol: v1
    proxy_from: [127.0.0.0/8]
""" % (KIT, "%s")


@pytest.mark.parametrize("preload", ["false", "true"])
def test_under_superd_comm_and_client(superd, preload):
    """superd names the process through the kit (top shows kit-echo, not python3),
    and the client is the one the PROXY header named."""
    d = superd(KIT_SERVICE % preload)
    if preload == "true":
        d.log.wait_for(r"^preload-ready service=kit-echo ")
    with connect(d.address("kit-echo")) as client:
        client.sendall(b"PROXY TCP4 192.0.2.5 198.51.100.1 5555 8443\r\nping\n")
        assert client.recv(100) == b"ping\r\n"
        line = d.log.wait_for(r"^stderr service=kit-echo .*connect client=192\.0\.2\.5:5555 ")
        pid = int(re.search(r"pid=(\d+)\b", line.split("text=")[1]).group(1))
        assert Path("/proc/%d/comm" % pid).read_text() == "kit-echo\n"
        assert psutil.Process(pid).name() == "kit-echo"
        assert "service=kit-echo conn=" in line
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""
    d.log.wait_for(r"^stderr service=kit-echo .*done client=192\.0\.2\.5:5555")


def test_log_lines_parse_back(superd):
    """A value with spaces and quotes comes back whole from superd's own log line."""
    d = superd(KIT_SERVICE % "false")
    with connect(d.address("kit-echo")) as client:
        client.sendall(b"PROXY TCP4 192.0.2.6 198.51.100.1 5556 8443\r\n")
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""
    line = d.log.wait_for(r"^stderr service=kit-echo .*connect client=192\.0\.2\.6")
    text = json.loads(line.split("text=", 1)[1])
    assert re.fullmatch(r'connect client=192\.0\.2\.6:5556 local=198\.51\.100\.1:8443 '
                        r'service=kit-echo conn=\d+ names=kit-echo pid=\d+', text)


# -- `import kit` beside a handler, and print() made safe -------------------------

UPPER = """#!%s
import kit

kit.launch()
kit.stdout_line_buffered()          # print() to the client: sent at each newline
for line in kit.Lines(None, timeout=5.0):
    print(line.upper())             # no flush=True: the kit's line buffering sends it
"""

UPPER_SERVICE = """
services:
  upper:
    listen: 127.0.0.1:0
    server: {tmp}/upper.py
    stderr: log
    preload: %s
"""


@pytest.mark.parametrize("preload", ["false", "true"])
def test_import_kit_beside_a_handler(superd, tmp_path, preload):
    """kit.py copied next to a handler is importable (the warm interpreter of
    `preload: true` too: it puts the handler's folder on sys.path), and
    stdout_line_buffered() answers each print() while the client waits."""
    shutil.copy(KIT, tmp_path / "kit.py")
    handler = tmp_path / "upper.py"
    handler.write_text(UPPER % sys.executable)
    handler.chmod(0o755)
    d = superd(UPPER_SERVICE % preload)
    if preload == "true":
        d.log.wait_for(r"^preload-ready service=upper ")
    with connect(d.address("upper")) as client:
        client.sendall(b"shout\n")
        assert client.recv(100) == b"SHOUT\n"       # while the handler still reads
        client.sendall(b"again\n")
        assert client.recv(100) == b"AGAIN\n"
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""
    assert "Traceback" not in d.log.text()
