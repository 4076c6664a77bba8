"""An imported service answers under superd as it does under xinetd.

Side by side in one test: a real xinetd runs an xinetd.conf, `superd import`
converts that same file, a real superd runs the result, and one client asks
both the same questions.  Every service binds port 0 (xinetd and superd
alike); xinetd's ports are read from the kernel (psutil), superd's from its
ready file.  xinetd is started with test_classic_launchers' helpers and
superd with conftest's `superd` fixture; both are killed at teardown.
"""

import errno
import socket
import subprocess
import sys

import psutil
import yaml

from test_classic_launchers import ENV, launcher, wait_for_output, xinetd
from test_classic_support import (CHARGEN, ask, connect, errfile, procs,  # noqa: F401
                                  read_all, recv_exact)

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest


def imported(path, tmp_path):
    result = subprocess.run([sys.executable, "-m", "superd", "import", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def answer(address, payload):
    """What a TCP service sends back to payload before it closes: bytes, or 'reset'
    when it closed before reading (a refusal may reset the connection)."""
    with connect(address) as client:
        try:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            return read_all(client)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError as err:
            if err.errno == errno.ENOTCONN:
                return "reset"
            raise


def test_imported_server_services_answer_as_under_xinetd(procs, superd, tmp_path):
    """classic.py as `server` (TCP nowait, UDP wait), with env, user and defaults."""
    bound = xinetd(procs, tmp_path, [
        dict(name="echo", socket_type="stream", protocol="tcp", wait="no", args="echo"),
        dict(name="udp-echo", socket_type="dgram", protocol="udp", wait="yes",
             args="echo --idle-exit 0.5"),
    ])
    text = imported(tmp_path / "xinetd.conf", tmp_path)
    services = yaml.safe_load(text)["services"]
    assert services["classic-echo"]["env"]["TZ"] == "UTC"
    daemon = superd(text)
    (tcp,), (udp,) = bound["tcp"], bound["udp"]
    for payload in (b"hello, world\r\n", bytes(range(256)) * 40):
        assert answer(daemon.address("classic-echo"), payload) == answer(tcp, payload) == payload
    for payload in (b"one", b"two"):
        assert ask(daemon.address("classic-udp-echo"), payload) == ask(udp, payload) == payload


INTERNAL = """\
defaults
{
	instances	= 20
}
service echo
{
	type		= INTERNAL UNLISTED
	socket_type	= stream
	wait		= no
	bind		= 127.0.0.1
	port		= 0
}
service chargen
{
	type		= INTERNAL UNLISTED
	socket_type	= stream
	wait		= no
	bind		= 127.0.0.2
	port		= 0
}
service echo
{
	type		= INTERNAL UNLISTED
	id		= echo-dgram
	socket_type	= dgram
	wait		= yes
	bind		= 127.0.0.3
	port		= 0
}
service guarded
{
	type		= UNLISTED
	socket_type	= stream
	wait		= no
	bind		= 127.0.0.4
	port		= 0
	only_from	= 192.0.2.1
	server		= /bin/cat
	user		= nobody
	log_on_success	= HOST PID
}
"""


def chargen_lines(data):
    """RFC 864: lines of 72 printable characters, each ending in CRLF."""
    lines = data.split(b"\r\n")
    assert lines.pop() == b"" and len(lines) > 94
    assert all(len(line) == 72 and 32 <= min(line) and max(line) < 127 for line in lines)
    return True


def start_xinetd(procs, conf):
    """xinetd on conf: {(protocol, bound ip): (ip, port)}; each service binds its own ip."""
    proc = procs.start([launcher("xinetd"), "-dontfork", "-f", str(conf), "-pidfile",
                        str(conf.with_suffix(".pid")), "-filelog", "/dev/stderr"],
                       stderr=subprocess.PIPE, env=ENV)
    wait_for_output(proc.stderr, b"Started working")
    kinds = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
    return {(kinds[c.type], c.laddr[0]): tuple(c.laddr)
            for c in psutil.Process(proc.pid).net_connections(kind="inet4")}


def test_imported_internal_services_answer_as_under_xinetd(procs, superd, tmp_path):
    """xinetd's own echo and chargen, and a refusal by only_from, against superd's."""
    conf = tmp_path / "internal.conf"
    conf.write_text(INTERNAL)
    bound = start_xinetd(procs, conf)
    text = imported(conf, tmp_path)
    assert "# not imported: log_on_success = HOST PID" in text
    daemon = superd(text)

    payload = b"the same bytes back\r\n" * 100
    assert answer(daemon.address("echo"), payload) == answer(bound["tcp", "127.0.0.1"], payload) == payload

    def chargen(address):
        with connect(address) as client:
            return recv_exact(client, 74 * 150)
    # both RFC 864 lines, but not the same ring: superd's is the 95 printable
    # characters from ' ' (as BSD inetd's); xinetd's starts at '!', leaves out '~'
    # and starts again whenever it refills its buffer
    ours, theirs = chargen(daemon.address("chargen")), chargen(bound["tcp", "127.0.0.2"])
    assert ours[:74 * 95] == CHARGEN
    assert chargen_lines(ours) and chargen_lines(theirs)
    assert theirs[:74] == ours[74:148]

    assert ask(daemon.address("echo-dgram"), b"ping") == ask(bound["udp", "127.0.0.3"], b"ping") == b"ping"

    # only_from: neither lets 127.0.0.1 in, and neither runs the program
    assert answer(daemon.address("guarded"), b"let me in") in (b"", "reset")
    assert answer(bound["tcp", "127.0.0.4"], b"let me in") in (b"", "reset")
    daemon.log.wait_for(r"^refused service=guarded ")
