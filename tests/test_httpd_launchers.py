"""superd-httpd without superd: under systemd-socket-activate (all three
modes), xinetd (wait = no and wait = yes), tcpserver, a listening socket on
fd 0 (inetd "wait" by hand) and --listen; with real clients (http.client and
curl) on loopback.

Ports: every listener binds port 0.  systemd-socket-activate refuses port 0,
so the test binds the socket itself and hands it over with LISTEN_FDS, which
systemd-socket-activate passes through (sd_listen_fds); xinetd binds port 0
and the real port is read from its socket table (psutil) once it has logged
"Started working"; tcpserver -1 prints its port.
"""

import http.client
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from test_httpd_support import (ALPHA, HANDLER, TIMEOUT, Lines, Reader, get, kill_group,
                                make_site, pid_exits, request, serves_side_by_side)


def need(program):
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    assert path, "%s is not installed (.ci/run installs it with apt)" % program
    return path


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "www")


@pytest.fixture
def procs():
    """start(argv, **popen) -> Popen in its own session; all killed at teardown."""
    started = []

    def start(argv, **kw):
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen([str(a) for a in argv], **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc)


def listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def handler_argv(site, *args):
    return [sys.executable, HANDLER, "--root", site, *args]


def http_get(port, path, conn=None, **kw):
    """(response, body) by http.client; conn reused for keep-alive."""
    return get(("127.0.0.1", port), path, conn, **kw)


def cgi_env(port, conn=None):
    response, body = http_get(port, "/cgi-bin/env.sh", conn)
    assert response.status == 200
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


def curl(*args):
    result = subprocess.run([need("curl"), "-sS", "--max-time", str(TIMEOUT), *map(str, args)],
                            capture_output=True, timeout=TIMEOUT * 2)
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_site(port):
    """What every launcher must get right: keep-alive, CGI with the client's
    address, a POST, a range, gzip; by http.client and by curl."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    response, body = http_get(port, "/alpha.txt", conn)
    assert (response.status, body) == (200, ALPHA)
    env = cgi_env(port, conn)                   # same connection: keep-alive
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(conn.sock.getsockname()[1])
    assert env["SERVER_PORT"] == str(port)
    response, body = http_get(port, "/cgi-bin/echo.sh", conn, method="POST", body=b"posted")
    assert body == b"posted"
    conn.close()
    assert curl("http://127.0.0.1:%d/alpha.txt" % port) == ALPHA
    assert curl("-r", "1-3", "http://127.0.0.1:%d/alpha.txt" % port) == b"bcd"
    assert curl("--data-binary", "x=1&y=2", "http://127.0.0.1:%d/cgi-bin/echo.sh" % port) == b"x=1&y=2"
    assert curl("--compressed", "http://127.0.0.1:%d/page.txt" % port).startswith(b"plain text")
    head = curl("-I", "--http1.0", "http://127.0.0.1:%d/sub" % port)
    assert head.startswith(b"HTTP/1.1 301") and b"Location: /sub/" in head


# -- systemd socket activation ----------------------------------------------

# Moves fd argv[1] to 3, names its own pid in LISTEN_PID and execs the rest:
# the pid stays, so systemd-socket-activate finds a socket passed to it.
TRAMPOLINE = """import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


def socket_activate(procs, listener, mode, argv):
    """systemd-socket-activate MODE ARGV, with our listener as its fd 3."""
    proc = procs([sys.executable, "-c", TRAMPOLINE, listener.fileno(),
                  need("systemd-socket-activate"), *mode, *argv],
                 pass_fds=(listener.fileno(),), stderr=subprocess.PIPE)
    return proc, Lines(proc.stderr)


@pytest.mark.parametrize("mode", [["--accept", "--inetd"], ["--accept"]], ids=["inetd", "accept"])
def test_systemd_accept_yes(procs, site, mode):
    """One handler per connection: the socket on fd 0 (--inetd) or fd 3."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc, log = socket_activate(procs, listener, mode, handler_argv(site))
    listener.close()
    check_site(port)
    log.wait_for(r'"GET /alpha.txt HTTP/1.1" 200 26')
    assert log.text().count("Spawned") >= 5        # one handler per connection


def test_systemd_accept_no(procs, site):
    """One handler for all: it accepts for itself, concurrently, then leaves
    after --idle-exit and gives the listener back in blocking mode."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc, log = socket_activate(procs, listener, [], handler_argv(site, "--idle-exit", "1", "--workers", "1"))
    check_site(port)
    serves_side_by_side(("127.0.0.1", port), site)
    first = handler_pid(port)
    assert handler_pid(port) == first == proc.pid   # s-s-a exec'd the handler itself
    assert proc.wait(TIMEOUT) == 0                  # idle for 1 s: it left
    assert os.get_blocking(listener.fileno())
    assert log.text().count("Execing") == 1
    listener.close()


def test_max_connections_leaves_clients_in_the_backlog(procs, site):
    listener = listening_socket()
    port = listener.getsockname()[1]
    socket_activate(procs, listener, [], handler_argv(site, "--max-connections", "1", "--workers", "1"))
    listener.close()
    first = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    first.sendall(request("/alpha.txt"))
    first_reader = Reader(first)
    assert first_reader.response().body == ALPHA        # first is being served, kept alive
    second = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    second.sendall(request("/alpha.txt"))
    with pytest.raises(socket.timeout):
        second.recv(1)                                  # waits in the backlog
    first.close()
    second.settimeout(TIMEOUT)
    assert Reader(second).response().body == ALPHA
    second.close()


# -- a listening socket on fd 0 (inetd "wait" by hand), and --listen ----------

def test_listening_socket_on_stdin(procs, site):
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc = procs(handler_argv(site, "--idle-exit", "0.5"), stdin=listener, stdout=listener,
                 stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    conns = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(4)]
    for i, conn in enumerate(conns):
        conn.sendall(request("/cgi-bin/env.sh" if i % 2 else "/alpha.txt"))
    for conn in conns:
        assert Reader(conn).response().status == 200
        conn.close()
    assert proc.wait(TIMEOUT) == 0
    assert log.text().count('"GET ') == 4
    assert os.get_blocking(listener.fileno())
    listener.close()


def test_idle_exit_beyond_24_days(procs, site):
    """--idle-exit past 2**31 ms (about 24.8 days) once overflowed poll() as
    soon as the handler started: every client was refused."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc = procs(handler_argv(site, "--idle-exit", "3000000", "--workers", "1"),
                 stdin=listener, stdout=listener, stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    listener.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    assert http_get(port, "/alpha.txt", conn)[1] == ALPHA      # kept alive: one active
    assert http_get(port, "/sub/file.txt")[1] == b"in sub\n"   # a second client meanwhile
    assert http_get(port, "/alpha.txt", conn)[1] == ALPHA
    conn.close()
    assert proc.poll() is None and "Traceback" not in log.text()


def test_zero_timeout_lets_a_slow_reader_finish(procs, site):
    """--timeout 0 is no limit.  It once meant the least timeout the kernel
    keeps (a jiffy): a download stopped, logged 200, as soon as the client's
    buffers stayed full that long.  Here they stay full while the server
    times out a second, silent client (--header-timeout 0.1)."""
    size = 20 << 20
    with open(site / "sparse.bin", "wb") as f:
        f.truncate(size)
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc = procs(handler_argv(site, "--timeout", "0", "--header-timeout", "0.1", "--workers", "1"),
                 stdin=listener, stdout=listener, stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    listener.close()
    slow = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    slow.sendall(request("/sparse.bin"))     # 20 MiB: more than the buffers hold
    silent = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    assert silent.recv(1) == b""             # 0.1 s later, by the server's clock
    silent.close()
    reader = Reader(slow)
    head = reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: %d" % size in head
    received = len(reader.buf)
    while received < size:
        data = slow.recv(1 << 20)
        assert data, "the answer ended after %d bytes" % received
        received += len(data)
    slow.close()
    log.wait_for(r'"GET /sparse.bin HTTP/1.1" 200 %d ' % size)


def worker_processes(pid):
    """The live workers under pid: one that has just ended (a zombie, or gone
    between listing and reading its command line) is not a worker any more."""
    workers = []
    for child in psutil.Process(pid).children():
        try:
            if str(HANDLER) in child.cmdline():
                workers.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass
    return workers


def test_workers_share_the_listener_and_leave_together(procs, site):
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc = procs(handler_argv(site, "--workers", "3", "--idle-exit", "0.5", "--quiet"),
                 stdin=listener, stdout=listener)
    pids = {handler_pid(port) for _ in range(20)}    # answered: the workers exist
    workers = worker_processes(proc.pid)
    assert len(workers) == 2
    assert pids <= {proc.pid} | {w.pid for w in workers}
    assert proc.wait(TIMEOUT) == 0           # all idle: the workers left first
    for worker in workers:
        assert pid_exits(worker.pid)
    assert os.get_blocking(listener.fileno())
    listener.close()


def test_workers_leave_when_their_parent_dies(procs, site):
    listener = listening_socket()
    port = listener.getsockname()[1]
    proc = procs(handler_argv(site, "--workers", "2", "--quiet"), stdin=listener, stdout=listener)
    listener.close()
    handler_pid(port)                        # answered: the worker exists
    workers = worker_processes(proc.pid)
    assert len(workers) == 1
    proc.kill()                              # the parent only, not the group
    assert pid_exits(workers[0].pid)


def test_listen_option(procs, site):
    proc = procs(handler_argv(site, "--listen", "127.0.0.1:0"), stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    port = int(log.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    check_site(port)
    os.killpg(proc.pid, signal.SIGINT)             # ^C: every worker leaves, quietly
    assert proc.wait(TIMEOUT) == 130
    assert log.wait_closed() and "Traceback" not in log.text()


# -- start-up errors: inetd and xinetd put the client on fds 0, 1 and 2 ----------

@pytest.mark.parametrize("args, status", [
    (["--bogus"], 64),
    (["--root", "{tmp}/missing"], 78),
    (["--root", "{site}", "--log", "{tmp}/missing/access.log"], 71),
    (["--root", "{site}", "--listen", "127.0.0.1:{busy}"], 71),
    (["--root", "{site}", "--listen", "127.0.0.1:65536"], 64),
], ids=["usage", "root", "log", "listen-busy", "listen-bad"])
def test_start_up_errors_never_reach_the_client(procs, site, tmp_path, args, status):
    """With the client's socket on fds 0, 1 and 2 (inetd, xinetd, systemd
    StandardInput=socket), a start-up error is not written to fd 2: the
    client reads nothing but the end, and the exit status says what failed."""
    busy = listening_socket()
    args = [a.format(tmp=tmp_path, site=site, busy=busy.getsockname()[1]) for a in args]
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = procs([sys.executable, HANDLER, *args], stdin=theirs, stdout=theirs, stderr=theirs)
    theirs.close()
    assert ours.recv(65536) == b""
    assert proc.wait(TIMEOUT) == status
    ours.close()
    busy.close()


def read_terminal(master, until):
    """What a terminal shows, up to the regex until or until no one has it open."""
    output = b""
    while not re.search(until, output):
        assert select.select([master], [], [], TIMEOUT)[0], output
        try:
            data = os.read(master, 4096)
        except OSError:                      # EIO: no one has the terminal open
            break
        if not data:
            break
        output += data
    return output


@pytest.mark.parametrize("args, says, status", [
    (["--root", "{tmp}/missing"], rb"superd-httpd: --root \S+: not a directory", 78),
    (["--root", "{site}", "--listen", "127.0.0.1:0"], rb"listening on 127\.0\.0\.1:\d+", None),
], ids=["root", "listen"])
def test_diagnostics_reach_a_terminal(procs, site, tmp_path, args, says, status):
    """A terminal on fds 0 and 2 (a shell) is no client: errors and the log show."""
    args = [a.format(tmp=tmp_path, site=site) for a in args]
    master, slave = os.openpty()
    proc = procs([sys.executable, HANDLER, *args], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        assert re.search(says, read_terminal(master, says))
    finally:
        os.close(master)
    if status is not None:
        assert proc.wait(TIMEOUT) == status


# -- tcpserver ------------------------------------------------------------------

def test_tcpserver(procs, site):
    proc = procs([need("tcpserver"), "-1", "-R", "-H", "-l", "0", "127.0.0.1", "0",
                  *handler_argv(site)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    port = int(proc.stdout.readline())
    check_site(port)
    env = cgi_env(port)
    assert env["SERVER_ADDR"] == "127.0.0.1"
    log.wait_for(r'^127\.0\.0\.1 - - .*"GET /cgi-bin/env.sh HTTP/1.1" 200')


STRAY = {"REMOTE_ADDR": "10.9.9.9", "REMOTE_PORT": "1234", "TCPREMOTEIP": "10.8.8.8",
         "TCPREMOTEPORT": "4321", "TCPLOCALIP": "10.7.7.7", "TCPLOCALPORT": "99"}


def test_tcpserver_addresses_beat_a_stray_environment(procs, site):
    """REMOTE_ADDR and REMOTE_PORT left in tcpserver's own environment (no
    SUPERD_SERVICE beside them) are not the client: TCPREMOTEIP is, which
    tcpserver sets with PROTO=TCP."""
    env = dict(os.environ, REMOTE_ADDR="10.9.9.9", REMOTE_PORT="1234")
    proc = procs([need("tcpserver"), "-1", "-R", "-H", "-l", "0", "127.0.0.1", "0",
                  *handler_argv(site)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    log = Lines(proc.stderr)
    port = int(proc.stdout.readline())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    env = cgi_env(port, conn)
    client = conn.sock.getsockname()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (client[0], str(client[1]))
    conn.close()
    log.wait_for(r'^127\.0\.0\.1 - - .*"GET /cgi-bin/env.sh HTTP/1.1" 200')
    assert "10.9.9.9" not in log.text()


def test_socket_addresses_beat_a_stray_environment(procs, site):
    """Under systemd-socket-activate --inetd, which sets none of them (-E
    passes them on as if left behind), the address variables are ignored:
    getpeername and getsockname name the ends."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    stray = ["-E%s=%s" % item for item in dict(STRAY, PROTO="UNIX").items()]
    proc, log = socket_activate(procs, listener, ["--accept", "--inetd", *stray],
                                handler_argv(site))
    listener.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    env = cgi_env(port, conn)
    client = conn.sock.getsockname()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (client[0], str(client[1]))
    assert (env["SERVER_ADDR"], env["SERVER_PORT"]) == ("127.0.0.1", str(port))
    conn.close()
    log.wait_for(r'^127\.0\.0\.1 - - .*"GET /cgi-bin/env.sh HTTP/1.1" 200')


# -- xinetd -----------------------------------------------------------------------

XINETD_CONF = """\
defaults
{{
}}
service superd-httpd
{{
    type        = UNLISTED
    socket_type = stream
    protocol    = tcp
    bind        = 127.0.0.1
    port        = 0
    wait        = {wait}
{user}    server      = {python}
    server_args = {handler} --root {root} --log {log} {extra}
    instances   = 20
}}
"""


def xinetd(procs, tmp_path, site, wait, extra=""):
    """Start xinetd on a private config and pidfile; return (proc, port, log path)."""
    conf = tmp_path / "xinetd.conf"
    access = tmp_path / ("access-%s.log" % wait)
    user = ""
    if os.geteuid() == 0:
        user = "    user        = %s\n" % pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(XINETD_CONF.format(wait=wait, user=user, python=sys.executable,
                                       handler=HANDLER, root=site, log=access, extra=extra))
    proc = procs([need("xinetd"), "-dontfork", "-filelog", "/dev/stderr", "-f", conf,
                  "-pidfile", tmp_path / "xinetd.pid"], stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    log.wait_for(r"Started working")
    ps = psutil.Process(proc.pid)
    listening = [c for c in ps.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert len(listening) == 1, listening
    return proc, listening[0].laddr.port, access


def test_xinetd_nowait(procs, tmp_path, site):
    """xinetd hands over the connection on fds 0, 1 and 2: the handler must
    not write its log to fd 2 (the client), so --log names a file."""
    proc, port, access = xinetd(procs, tmp_path, site, "no")
    check_site(port)
    response, body = http_get(port, "/nothing")
    assert response.status == 404 and b"GET /nothing" not in body
    assert '"GET /alpha.txt HTTP/1.1" 200 26' in access.read_text()


def test_xinetd_wait(procs, tmp_path, site):
    """wait = yes: one handler accepts for itself until --idle-exit, and
    xinetd starts a fresh one for the next client."""
    proc, port, access = xinetd(procs, tmp_path, site, "yes", extra="--idle-exit 0.5 --workers 1")
    check_site(port)
    first = handler_pid(port)
    assert handler_pid(port) == first          # the same process accepts again
    assert pid_exits(first)                    # idle: it leaves by itself
    second = handler_pid(port)                 # and xinetd starts another
    assert second != first


def handler_pid(port):
    """The pid of the handler that served a request (its CGI program's parent)."""
    response, body = http_get(port, "/cgi-bin/ppid.sh")
    assert response.status == 200
    return int(body)
