"""handlers/classic.py as a Unix filter: one connection over a socketpair, or stdio pipes.

The handler runs as `sys.executable handlers/classic.py SERVICE` with one end of
a socket.socketpair() as its stdin and stdout, exactly as inetd's nowait mode
hands it a connection.  Pure parts (arguments, the loop guard, the datagram
answers) are checked table-driven against the module loaded from its path.
"""

import hashlib
import os
import socket
import subprocess
import sys
import threading

import pytest

from test_classic_support import (CHARGEN, CLASSIC, TIMEOUT, check_chargen, check_daytime,
                                  check_time, errfile, handler, load_classic, procs,
                                  read_all, readable, recv_exact)

__all__ = ["errfile", "procs"]   # fixtures, imported for pytest

SERVICES = ["echo", "discard", "chargen", "daytime", "time"]
UTC = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC"}


def filter_pair(procs, errfile, service, *args, env=UTC):
    """Start the handler on one end of a socketpair; return (our end, process)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = procs.start(handler(service, *args), stdin=theirs, stdout=theirs,
                       stderr=errfile.file, env=env)
    theirs.close()
    return ours, proc


def finished(proc, errfile):
    """The handler exited 0 and wrote nothing to stderr."""
    assert proc.wait(TIMEOUT) == 0
    assert errfile.text() == ""


# -- each service over a socketpair

def test_echo_returns_everything_then_closes_after_half_close(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "echo")
    payload = b"".join(b"line %d\r\n" % i for i in range(1000))
    ours.sendall(payload)
    ours.shutdown(socket.SHUT_WR)        # the client is done sending, still reading
    assert read_all(ours) == payload     # everything, then EOF from the handler
    finished(proc, errfile)


def test_echo_huge_stream_in_both_directions(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "echo")
    block = os.urandom(1 << 16)
    count = 256                          # 16 MiB, far beyond any socket buffer
    sent = hashlib.sha256()

    def writer():
        for _ in range(count):
            ours.sendall(block)
            sent.update(block)
        ours.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    got, size = hashlib.sha256(), 0
    while True:
        data = ours.recv(1 << 16)
        if not data:
            break
        got.update(data)
        size += len(data)
    thread.join(TIMEOUT)
    assert size == len(block) * count
    assert got.digest() == sent.digest()
    finished(proc, errfile)


def test_echo_pushes_back_on_a_client_that_never_reads(procs, errfile):
    """The handler holds at most one chunk: a client that only writes soon blocks."""
    ours, proc = filter_pair(procs, errfile, "echo")
    ours.setblocking(False)
    total, chunk = 0, b"x" * 65536
    while total < (64 << 20):
        try:
            total += ours.send(chunk)
        except BlockingIOError:
            # The handler reads again only when its echo is taken; wait a
            # while for room, and call it blocked when none comes.
            import select
            if not select.select([], [ours], [], 1.0)[1]:
                break
    assert total < (64 << 20), "the handler took 64 MiB without any of it being read"
    assert proc.poll() is None
    ours.close()                         # the blocked handler gets EPIPE and ends quietly
    finished(proc, errfile)


def test_discard_reads_everything_and_answers_nothing(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "discard")
    for _ in range(64):
        ours.sendall(os.urandom(1 << 14))
    ours.shutdown(socket.SHUT_WR)
    assert read_all(ours) == b""
    finished(proc, errfile)


def test_chargen_sends_the_rotating_pattern(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "chargen")
    data = recv_exact(ours, 74 * 300)    # more than three turns of the 95 lines
    assert data[:74] == (b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         b"[\\]^_`abcdefg\r\n")       # RFC 864's first line
    assert data[74 * 95:74 * 96] == data[:74]   # the 96th line starts the turn again
    assert data == (CHARGEN * 4)[:len(data)]
    ours.close()                         # chargen stops when the client goes away
    finished(proc, errfile)


def test_chargen_client_that_never_reads_then_leaves(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "chargen")
    assert readable(ours, TIMEOUT)       # chargen has filled what the kernel lets it
    ours.sendall(b"input is thrown away\r\n")
    assert proc.poll() is None
    ours.close()
    finished(proc, errfile)


def test_chargen_timeout_drops_a_stalled_client(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "chargen", "--timeout", "0.5")
    assert readable(ours, TIMEOUT)
    finished(proc, errfile)              # no progress for 0.5 s: the handler gives up
    ours.close()


def test_daytime_is_one_ctime_line(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "daytime")
    check_daytime(read_all(ours))
    finished(proc, errfile)


def test_time_is_four_bytes_since_1900(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "time")
    check_time(read_all(ours))
    finished(proc, errfile)


@pytest.mark.parametrize("service", SERVICES)
def test_immediate_disconnect_is_quiet(procs, errfile, service):
    ours, proc = filter_pair(procs, errfile, service)
    ours.close()
    finished(proc, errfile)


@pytest.mark.parametrize("service", SERVICES)
def test_stderr_on_the_socket_gets_no_diagnostics(procs, service):
    """Under inetd and xinetd fd 2 is the client socket: a usage error stays off it."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = procs.start(handler(service, "--idle-exit", "bogus"),
                       stdin=theirs, stdout=theirs, stderr=theirs)
    theirs.close()
    assert proc.wait(TIMEOUT) == 64
    assert read_all(ours) == b""


def test_usage_error_goes_to_a_separate_stderr(procs, errfile):
    ours, proc = filter_pair(procs, errfile, "bogus")
    assert proc.wait(TIMEOUT) == 64
    assert "unknown service 'bogus'" in errfile.text()
    assert "usage:" in errfile.text()
    assert read_all(ours) == b""


def test_usage_error_reaches_a_terminal_on_fds_0_and_2(procs):
    """Only a socket shared by fds 0 and 2 silences diagnostics, not a terminal."""
    import pty
    master, slave = pty.openpty()
    try:
        proc = procs.start(handler("bogus"), stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        assert proc.wait(TIMEOUT) == 64
        seen = b""
        while b"usage:" not in seen and readable(master, TIMEOUT):
            try:
                chunk = os.read(master, 4096)
            except OSError:              # EIO: the terminal's last user has gone
                break
            if not chunk:
                break
            seen += chunk
        assert b"unknown service 'bogus'" in seen
    finally:
        os.close(master)


# -- stdin/stdout that are not sockets: a run by hand

def run_stdio(service, data=b"", **kw):
    return subprocess.run(handler(service), input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=TIMEOUT, env=UTC, **kw)


@pytest.mark.parametrize("service, data, check", [
    ("echo", b"one\ntwo\n", lambda out: out == b"one\ntwo\n"),
    ("discard", b"gone\n", lambda out: out == b""),
    ("daytime", b"", lambda out: check_daytime(out) is None),
    ("time", b"", lambda out: check_time(out) is None),
])
def test_stdio_pipes(service, data, check):
    result = run_stdio(service, data)
    assert result.returncode == 0
    assert result.stderr == b""
    assert check(result.stdout)


def test_stdio_chargen_stops_quietly_on_a_closed_pipe(procs, errfile):
    proc = procs.start(handler("chargen"), stdout=subprocess.PIPE, stderr=errfile.file)
    data = b""
    while len(data) < 74 * 100 and readable(proc.stdout, TIMEOUT):   # never an unbounded wait
        chunk = os.read(proc.stdout.fileno(), 74 * 100 - len(data))
        if not chunk:
            break
        data += chunk
    assert data == (CHARGEN * 2)[:74 * 100]
    proc.stdout.close()                  # EPIPE: no traceback, status 0
    finished(proc, errfile)


# -- the console-script entry points

ENTRY = """import importlib.util, sys
spec = importlib.util.spec_from_file_location("classic", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
main = getattr(module, sys.argv[2] + "_main")
sys.argv[:] = ["superd-" + sys.argv[2], "--timeout", "30"]
sys.exit(main())
"""


# daytime and time read nothing: input they never read would make their
# exit reset the socketpair (ECONNRESET instead of EOF), so they get none.
@pytest.mark.parametrize("service, payload, check", [
    ("echo", b"ping", lambda out: out == b"ping"),
    ("discard", b"ping", lambda out: out == b""),
    ("daytime", b"", lambda out: check_daytime(out) is None),
    ("time", b"", lambda out: check_time(out) is None),
])
def test_entry_points_name_their_service(procs, errfile, service, payload, check):
    """superd-echo and the others: main([SERVICE] + sys.argv[1:])."""
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = procs.start([sys.executable, "-c", ENTRY, str(CLASSIC), service],
                       stdin=theirs, stdout=theirs, stderr=errfile.file, env=UTC)
    theirs.close()
    ours.sendall(payload)
    ours.shutdown(socket.SHUT_WR)
    assert check(read_all(ours))
    finished(proc, errfile)


def test_chargen_entry_point(procs, errfile):
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    proc = procs.start([sys.executable, "-c", ENTRY, str(CLASSIC), "chargen"],
                       stdin=theirs, stdout=theirs, stderr=errfile.file)
    theirs.close()
    assert recv_exact(ours, 74) == CHARGEN[:74]
    ours.close()
    finished(proc, errfile)


# -- pure parts, table-driven

@pytest.fixture(scope="module")
def classic():
    return load_classic()


@pytest.mark.parametrize("argv, expected", [
    (["echo"], ("echo", 10.0, None)),
    (["time", "--idle-exit", "0"], ("time", 0.0, None)),
    (["chargen", "--idle-exit=2.5", "--timeout", "30"], ("chargen", 2.5, 30.0)),
    (["--timeout=0", "daytime"], ("daytime", 10.0, None)),
])
def test_parse_args(classic, argv, expected):
    assert classic.parse_args(argv) == expected


@pytest.mark.parametrize("argv, message", [
    ([], "no service"),
    (["qotd"], "unknown service 'qotd'"),
    (["echo", "discard"], "unexpected argument 'discard'"),
    (["echo", "--idle-exit"], "needs a value"),
    (["echo", "--idle-exit", "-1"], "'-1'"),
    (["echo", "--timeout", "nan"], "'nan'"),
    (["echo", "--bogus"], "'--bogus'"),
])
def test_parse_args_errors(classic, argv, message):
    with pytest.raises(ValueError, match=message):
        classic.parse_args(argv)


@pytest.mark.parametrize("peer, answer", [
    (("127.0.0.1", 40000), True),
    (("127.0.0.1", 1024), True),
    (("::1", 5353, 0, 0), True),
    (("127.0.0.1", 0), False),           # nobody to answer
    (("127.0.0.1", 7), False),           # echo
    (("127.0.0.1", 9), False),           # discard
    (("127.0.0.1", 13), False),          # daytime
    (("127.0.0.1", 19), False),          # chargen
    (("::1", 37, 0, 0), False),          # time
    ("/run/client.sock", True),          # a bound UNIX datagram client
    ("", False),                         # an unbound one
    (None, False),
])
def test_datagrams_are_not_answered_to_loop_ports(classic, peer, answer):
    assert classic.answerable(peer) is answer


def test_chargen_datagram_lengths_and_pattern(classic):
    answers = [classic.chargen_dgram(b"") for _ in range(2000)]
    assert all(len(a) <= 512 for a in answers)
    assert max(len(a) for a in answers) > 400 and min(len(a) for a in answers) < 100
    for answer in answers[:200]:
        check_chargen(answer)


def test_datagram_answers(classic):
    assert classic.echo_dgram(b"\x00abc") == b"\x00abc"
    assert classic.discard_dgram(b"abc") is None
    check_time(classic.time_dgram(b""))
    assert classic.daytime_dgram(b"").endswith(b"\r\n")


def test_builtins_table(classic):
    assert {name: row[0] for name, row in classic.BUILTINS.items()} == {
        "echo": 7, "discard": 9, "daytime": 13, "chargen": 19, "time": 37}
    assert classic.LOOP_PORTS == {7, 9, 13, 19, 37}


# -- start-up cost: what gets imported (a behaviour, not a timing)

def imported_modules(procs, tmp_path, argv, **kw):
    log = tmp_path / "importtime"
    with open(log, "wb") as err:
        proc = procs.start([sys.executable, "-S", "-X", "importtime", *argv[1:]],
                           stderr=err, **kw)
        assert proc.wait(TIMEOUT) == 0
    return {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
            if line.startswith("import time:") and "|" in line}


HEAVY = {"socket", "selectors", "enum", "threading", "argparse", "random", "struct"}


@pytest.mark.parametrize("service", SERVICES)
def test_one_connection_imports_nothing_heavy(procs, tmp_path, service):
    ours, theirs = socket.socketpair()
    ours.close()                         # the handler meets EOF or EPIPE and ends
    modules = imported_modules(procs, tmp_path, handler(service), stdin=theirs, stdout=theirs)
    theirs.close()
    assert "_socket" in modules
    assert not modules & HEAVY, modules & HEAVY


@pytest.mark.parametrize("service", SERVICES)
def test_each_console_script_names_itself_in_help_and_version(service):
    script = os.path.join(os.path.dirname(sys.executable), "superd-" + service)
    help_ = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert help_.returncode == 0
    assert help_.stdout == f"usage: superd-{service} [--idle-exit SECONDS] [--timeout SECONDS]\n"
    version = subprocess.run([script, "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert version.returncode == 0 and version.stdout.startswith(f"superd-{service} ")
