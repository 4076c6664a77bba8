"""superd-httpd running CGI programs (RFC 3875), over a socketpair.

The meta-variables (and httpoxy), request bodies (plain, chunked, large,
100-continue), the answer (Status, Location: client and local redirects,
Content-Length or chunked or close, nph-), failures (502, 500, 403, 404),
the CGI timeout, a client that leaves, and what the program inherits.
"""

import os
import re
import signal
import socket

import pytest

from test_httpd_support import (ALPHA, TIMEOUT, handler, pid_exits, request, script,  # noqa: F401
                                serve, site)


def env_of(response):
    assert response.status == 200, response
    return dict(line.split("=", 1) for line in response.body.decode().splitlines() if "=" in line)


# -- the environment ---------------------------------------------------------

def test_meta_variables(serve, site):
    r = serve().get("/cgi-bin/env.sh/extra/path%20x?a=1&b=%20", method="POST", body=b"12345",
                    headers=[("Content-Type", "text/plain"), ("X-Custom", "yes"),
                             ("Authorization", "Basic dXNlcjpwdw==")])
    env = env_of(r)
    root = str(site.resolve())
    expected = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/cgi-bin/env.sh",
        "SCRIPT_FILENAME": root + "/cgi-bin/env.sh",
        "PATH_INFO": "/extra/path x",
        "PATH_TRANSLATED": root + "/extra/path x",
        "QUERY_STRING": "a=1&b=%20",
        "REQUEST_URI": "/cgi-bin/env.sh/extra/path%20x?a=1&b=%20",
        "CONTENT_LENGTH": "5",
        "CONTENT_TYPE": "text/plain",
        "AUTH_TYPE": "Basic",
        "SERVER_NAME": "test",
        "REMOTE_ADDR": "unix:",
        "REMOTE_HOST": "unix:",
        "DOCUMENT_ROOT": root,
        "HTTP_HOST": "test",
        "HTTP_X_CUSTOM": "yes",
    }
    assert {k: env.get(k) for k in expected} == expected
    for name in ("SERVER_PORT", "REMOTE_PORT", "SERVER_SOFTWARE", "PATH"):
        assert name in env
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env


def test_no_path_info_and_empty_query(serve):
    env = env_of(serve().get("/cgi-bin/env.sh"))
    assert env["QUERY_STRING"] == ""
    assert "PATH_INFO" not in env and "CONTENT_LENGTH" not in env


def test_httpoxy_and_underscore_headers(serve):
    """A Proxy header must never become HTTP_PROXY; X_Foo may not pose as X-Foo."""
    env = env_of(serve().get("/cgi-bin/env.sh", headers=[
        ("Proxy", "http://evil.example:8080"), ("X-Real", "1"), ("X_Real", "2")]))
    assert "HTTP_PROXY" not in env
    assert env["HTTP_X_REAL"] == "1"


def test_field_bytes_reach_the_program_unchanged(serve):
    """A field value's bytes above 0x7F arrive as they were sent (not
    re-encoded as UTF-8), in HTTP_* as in CONTENT_TYPE."""
    r = serve().get("/cgi-bin/env.sh", method="POST", body=b"x",
                    headers=[("X-Lat", "caf\xe9 \xff"), ("Content-Type", "text/x; n=\xe9")])
    assert r.status == 200
    lines = r.body.split(b"\n")
    assert b"HTTP_X_LAT=caf\xe9 \xff" in lines
    assert b"CONTENT_TYPE=text/x; n=\xe9" in lines


def test_content_type_only_with_a_body(serve):
    """RFC 3875 4.1.3: CONTENT_TYPE (like CONTENT_LENGTH) only with a body."""
    h = serve()
    env = env_of(h.get("/cgi-bin/env.sh", headers=[("Content-Type", "text/plain")]))
    assert "CONTENT_TYPE" not in env and "HTTP_CONTENT_TYPE" not in env
    assert "CONTENT_LENGTH" not in env
    env = env_of(h.get("/cgi-bin/env.sh", method="POST", body=b"abc",
                       headers=[("Content-Type", "text/plain")]))
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "3")


def test_launcher_address_variables(handler, site):
    """The addresses a launcher names: tcpserver's TCPREMOTEIP and TCPLOCALIP
    (with PROTO=TCP), superd's REMOTE_ADDR (with SUPERD_SERVICE), which may
    name a PROXY-protocol client that getpeername cannot know."""
    h = handler(["--root", site], env={"PROTO": "TCP",
                                       "TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "4242",
                                       "TCPLOCALIP": "192.0.2.1", "TCPLOCALPORT": "80"})
    env = env_of(h.get("/cgi-bin/env.sh", host="www.example:80"))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "4242")
    assert (env["SERVER_ADDR"], env["SERVER_PORT"], env["SERVER_NAME"]) == ("192.0.2.1", "80", "www.example")
    h = handler(["--root", site], env={"SUPERD_SERVICE": "http", "PROTO": "TCP",
                                       "REMOTE_ADDR": "::ffff:198.51.100.2", "REMOTE_PORT": "1",
                                       "TCPREMOTEIP": "192.0.2.9", "TCPREMOTEPORT": "9"})
    env = env_of(h.get("/cgi-bin/env.sh"))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.2", "1")


@pytest.mark.parametrize("stray", [
    {"REMOTE_ADDR": "10.9.9.9", "REMOTE_PORT": "1234"},
    {"REMOTE_ADDR": "10.9.9.9", "REMOTE_PORT": "1234", "PROTO": "TCP"},
    {"TCPREMOTEIP": "10.9.9.9", "TCPREMOTEPORT": "1234", "TCPLOCALIP": "10.9.9.8",
     "TCPLOCALPORT": "80", "SUPERD_SERVICE": "http"},
], ids=["remote", "remote-with-proto", "tcp-without-proto"])
def test_stray_address_variables_are_ignored(handler, site, stray):
    """Variables that a launcher did not set (REMOTE_ADDR without
    SUPERD_SERVICE, TCPREMOTEIP without PROTO=TCP) name no one: the socket
    does (here a socketpair: unix:), in the environment and in the log."""
    h = handler(["--root", site], env=stray)
    env = env_of(h.get("/cgi-bin/env.sh"))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("unix:", "0")
    assert (env["SERVER_ADDR"], env["SERVER_PORT"]) == ("unix:", "0")
    assert h.log.wait_for(r'^(\S+) - - .*"GET /cgi-bin/env.sh ').group(1) == "unix:"


def test_http10_protocol_variable(serve):
    env = env_of(serve().get("/cgi-bin/env.sh", version="HTTP/1.0", host=None))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_working_directory_is_the_scripts_folder(serve, site):
    r = serve().get("/cgi-bin/pwd.sh")
    assert r.body.decode().strip() == str((site / "cgi-bin").resolve())


def test_program_inherits_nothing_but_three_fds(serve, site):
    """Only fds 0-2; its own session; no signal ignored (SIGPIPE included)
    or blocked, but glibc's own 32 and 33, which no one can reset."""
    h = serve()
    r = h.get("/cgi-bin/fds.py")
    m = re.search(r"fds=\[(.*)\] sid=(\d+) pid=(\d+)", r.body.decode())
    assert m, r.body
    assert m.group(1) == ""
    assert m.group(2) == m.group(3)
    sig = dict(line.split(":\t") for line in h.get("/cgi-bin/signals.sh").body.decode().splitlines())
    glibc_own = (1 << 31) | (1 << 32)
    assert int(sig["SigIgn"], 16) & ~glibc_own == 0
    assert int(sig["SigBlk"], 16) & ~glibc_own == 0


# -- request bodies --------------------------------------------------------------

def test_post_body_reaches_stdin(serve):
    r = serve().get("/cgi-bin/echo.sh", method="POST", body=b"hello\x00world")
    assert r.status == 200 and r.body == b"hello\x00world"


def test_large_post_body_streams(serve):
    body = bytes(range(256)) * 8192        # 2 MiB: more than any pipe holds
    r = serve().get("/cgi-bin/count.sh", method="POST", body=body)
    assert r.body == str(len(body)).encode()


def test_large_echo_both_ways(serve):
    """Input and output both bigger than a pipe: no deadlock."""
    body = b"0123456789abcdef" * 65536
    r = serve().get("/cgi-bin/echo.sh", method="POST", body=body)
    assert r.body == body


def test_chunked_body_is_dechunked(serve):
    h = serve()
    h.send(request("/cgi-bin/env.sh", method="POST", headers=[("Transfer-Encoding", "chunked")])
           + b"3\r\nabc\r\n4;ext=x\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n")
    env = env_of(h.response())
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_TRANSFER_ENCODING" not in env
    h.send(request("/cgi-bin/echo.sh", method="POST", headers=[("Transfer-Encoding", "chunked")])
           + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert h.response().body == b"abcdefg"


def test_expect_100_continue(serve):
    h = serve()
    h.send(request("/cgi-bin/echo.sh", method="POST",
                   headers=[("Content-Length", "5"), ("Expect", "100-continue")]))
    assert h.reader._until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    h.send(b"hello")
    r = h.response()
    assert r.status == 200 and r.body == b"hello"


def test_expect_100_continue_refused_early(serve):
    """Too large: the final 413 comes at once, no 100 first, and a close."""
    h = serve("--max-body", "10")
    h.send(request("/cgi-bin/echo.sh", method="POST",
                   headers=[("Content-Length", "50"), ("Expect", "100-continue")]))
    r = h.reader.response()
    assert r.status == 413
    assert b"100 Continue" not in r.raw_head


# -- the answer --------------------------------------------------------------------

def test_status_header(serve):
    r = serve().get("/cgi-bin/status.sh")
    assert (r.status, r.reason, r.body) == (404, "Nowhere here", b"gone\n")
    assert r.header("x-script") == "yes"              # other fields pass on
    assert r.header("connection") is None             # the server owns this one


def test_program_is_run_without_a_shell(serve):
    """A name full of shell syntax is just a name: the program runs as is."""
    r = serve().get("/cgi-bin/semi%3Bcolon%20%24HOME%20%60x%60.sh")
    assert (r.status, r.body) == (200, b"no shell\n")


def test_client_redirect(serve):
    r = serve().get("/cgi-bin/redirect.sh")
    assert r.status == 302 and r.header("location") == "http://example.com/elsewhere"


def test_local_redirect_is_served_internally(serve):
    r = serve().get("/cgi-bin/local.sh")
    assert r.status == 200 and r.body == ALPHA
    assert r.header("location") is None


def test_local_redirect_keeps_head(serve):
    """HEAD stays HEAD through a local redirect (RFC 9110 9.3.2): the fields
    of the file, no body; the next answer on the connection is intact."""
    h = serve()
    r = h.get("/cgi-bin/local.sh", method="HEAD")
    assert r.status == 200 and r.header("content-length") == "26"
    assert h.get("/sub/file.txt").body == b"in sub\n"
    assert h.get("/cgi-bin/local.sh").body == ALPHA


def test_local_redirect_loop_ends(serve):
    assert serve().get("/cgi-bin/loop.sh").status == 500


def test_content_length_from_the_program(serve):
    h = serve()
    r = h.get("/cgi-bin/length.sh")
    assert r.header("content-length") == "5" and r.body == b"hello"
    assert h.get("/cgi-bin/length.sh").body == b"hello"       # still alive


def test_program_shorter_than_its_length_closes(serve):
    h = serve()
    h.send(request("/cgi-bin/short.sh"))
    head = h.reader._until(b"\r\n\r\n")
    assert b"Content-Length: 50" in head
    assert h.reader.rest() == b"hello"       # then the connection ends


def test_complete_length_body_ends_the_answer_despite_a_lingering_grandchild(serve, site):
    """A program that gives a Content-Length and exits, leaving a child that
    holds its stdout: the answer ends with its body, and the pipelined
    request behind it is answered at once, not after --cgi-timeout."""
    script(site / "cgi-bin" / "linger.sh",
           'sleep 60 & echo "linger.sh grandchild=$!" >&2\n'
           'printf "Content-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello"\n')
    h = serve("--cgi-timeout", "60")
    h.send(request("/cgi-bin/linger.sh") + request("/alpha.txt"))
    grandchild = int(h.log.wait_for(r"linger\.sh grandchild=(\d+)").group(1))
    try:
        r = h.response()
        assert (r.status, r.body) == (200, b"hello")
        assert r.header("connection") is None
        assert h.response().body == ALPHA
    finally:
        os.kill(grandchild, signal.SIGKILL)
    assert pid_exits(grandchild)


def test_slow_program_is_streamed_chunked_and_keeps_alive(serve, site):
    """The program writes its head and a line, then waits on a FIFO: the line
    arrives chunked before the program ends; the connection stays usable."""
    h = serve()
    h.send(request("/cgi-bin/stream.sh"))
    head = h.reader._until(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert h.reader._until(b"\r\n") == b"4"
    assert h.reader._exact(6) == b"one\n\r\n"
    with open(site / "cgi-bin" / "stream.fifo", "w") as fifo:
        fifo.write("two\n")
    assert h.reader._until(b"0\r\n\r\n") == b"4\r\ntwo\n\r\n"
    assert h.get("/alpha.txt").body == ALPHA


def test_slow_program_on_http10_is_close_delimited(serve, site):
    h = serve()
    h.send(request("/cgi-bin/stream.sh", version="HTTP/1.0", host=None,
                   headers=[("Connection", "keep-alive")]))
    head = h.reader._until(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Content-Length" not in head
    assert h.reader._until(b"\n") == b"one"
    with open(site / "cgi-bin" / "stream.fifo", "w") as fifo:
        fifo.write("two\n")
    assert h.reader.rest() == b"two\n"


def test_quick_program_gets_a_content_length(serve):
    r = serve().get("/cgi-bin/status.sh")
    assert r.header("content-length") == "5" and r.header("transfer-encoding") is None


def test_head_request_gets_no_body(serve):
    h = serve()
    r = h.get("/cgi-bin/length.sh", method="HEAD")
    assert r.status == 200 and r.header("content-length") == "5"
    assert h.get("/alpha.txt").body == ALPHA


def test_nph_program_speaks_for_itself(serve):
    h = serve()
    h.send(request("/cgi-bin/nph-raw.sh"))
    assert h.reader.rest() == b"HTTP/1.1 299 Raw\r\nContent-Type: text/plain\r\n\r\nraw body"


def test_nothing_in_a_cgi_folder_is_served_as_a_file(serve):
    """/cgi-bin/* runs /cgi-bin/x; what lies deeper is neither run nor shown."""
    h = serve()
    for path, status in [("/cgi-bin/sub/inner.sh", 403), ("/cgi-bin/sub/", 403),
                         ("/cgi-bin/sub/missing", 404), ("/cgi-bin/noexec.sh", 403),
                         ("/cgi-bin/stream.fifo", 403)]:
        r = h.get(path)
        assert r.status == status, path
        assert b"printf" not in r.body and b"secret" not in r.body
    r = serve("--cgi", "/cgi-bin/**").get("/cgi-bin/sub/inner.sh")
    assert r.body == b"inner\n"


@pytest.mark.parametrize("mode, direct", [(0o755, 200), (0o644, 403), (None, 404)],
                         ids=["program", "not-executable", "no-index"])
def test_a_cgi_folder_is_neither_indexed_nor_listed(serve, site, mode, direct):
    """/cgi-bin/ is the CGI folder itself: its index.html (a program, a
    file that is not executable, or none) is never served as a file through
    it, nor is the folder listed; nor through a symbolic link to it."""
    if mode is not None:
        index = script(site / "cgi-bin" / "index.html",
                       'printf "Content-Type: text/plain\\r\\n\\r\\nran\\n"\n')
        index.chmod(mode)
    (site / "docs").symlink_to("cgi-bin")
    h = serve("--listing")
    r = h.get("/cgi-bin/index.html")
    assert r.status == direct, r
    assert (r.body == b"ran\n") if direct == 200 else (b"printf" not in r.body)
    for path in ("/cgi-bin/", "/cgi-bin/?x=1", "/cgi-bin/./", "/docs/"):
        r = h.get(path)
        assert r.status == 403, (path, r)
        assert b"printf" not in r.body and b"env.sh" not in r.body, path
    assert h.get("/sub/").body == b"sub index\n"          # other folders as they were
    assert b"a&amp;b.txt" in h.get("/nodir/").body                # and listed


def test_other_patterns(serve, site):
    script(site / "sub" / "hello.cgi", 'printf "Content-Type: text/plain\\r\\n\\r\\nhi\\n"\n')
    h = serve("--cgi", "**.cgi")
    assert h.get("/sub/hello.cgi").body == b"hi\n"
    assert h.get("/sub/nothere.cgi").status == 404
    # /cgi-bin/ is an ordinary folder now: its files are plain files
    assert h.get("/cgi-bin/env.sh").body.startswith(b"#!/bin/sh")
    assert serve("--no-cgi").get("/sub/hello.cgi").body.startswith(b"#!/bin/sh")


# -- failures -----------------------------------------------------------------------

@pytest.mark.parametrize("path, status", [
    ("/cgi-bin/fail.sh", 502),
    ("/cgi-bin/garbage.sh", 502),
    ("/cgi-bin/nohead.sh", 502),
    ("/cgi-bin/badinterp.sh", 500),
    ("/cgi-bin/noexec.sh", 403),
    ("/cgi-bin/missing.sh", 404),
])
def test_failures(serve, path, status):
    r = serve().get(path)
    assert r.status == status
    assert b"secret source" not in r.body and b"Traceback" not in r.body


def test_program_stderr_goes_to_the_log(serve):
    h = serve()
    assert h.get("/cgi-bin/fail.sh").status == 502
    h.log.wait_for(r"^fail\.sh says no$")
    h.log.wait_for(r"cgi /cgi-bin/fail\.sh: .*exited 3|cgi /cgi-bin/fail\.sh: no output")


def test_cgi_timeout_kills_the_process_group(serve):
    h = serve("--cgi-timeout", "0.5")
    h.send(request("/cgi-bin/slow.sh"))
    m = h.log.wait_for(r"slow\.sh pid=(\d+) child=(\d+)")
    r = h.response()
    assert r.status == 504 and r.header("connection") == "close"
    for pid in m.groups():
        assert pid_exits(int(pid)), pid


def test_cgi_timeout_after_the_head_cuts_the_answer(serve):
    h = serve("--cgi-timeout", "0.5")
    h.send(request("/cgi-bin/slowhead.sh"))
    m = h.log.wait_for(r"slowhead\.sh pid=(\d+) child=(\d+)")
    data = h.reader.rest()
    assert data.startswith(b"HTTP/1.1 200 OK") and b"started" in data
    assert not data.endswith(b"0\r\n\r\n")          # no last chunk: visibly incomplete
    for pid in m.groups():
        assert pid_exits(int(pid)), pid


@pytest.mark.parametrize("seconds", ["0", "3000000"])
def test_cgi_timeout_of_no_limit_or_beyond_24_days(serve, seconds):
    """--cgi-timeout 0 is no limit (it once killed every program at once,
    504); past 2**31 ms (about 24.8 days) it once overflowed poll(): 500."""
    h = serve("--cgi-timeout", seconds)
    assert env_of(h.get("/cgi-bin/env.sh"))["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert h.get("/cgi-bin/count.sh", method="POST", body=b"abcd").body == b"4"
    assert "Traceback" not in h.log.text()


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_client_leaving_kills_the_program(serve, how):
    h = serve()
    h.send(request("/cgi-bin/slow.sh"))
    m = h.log.wait_for(r"slow\.sh pid=(\d+) child=(\d+)")
    if how == "close":
        h.sock.close()
    else:
        h.sock.shutdown(socket.SHUT_WR)
    h.log.wait_for(r"client went away")
    for pid in m.groups():
        assert pid_exits(int(pid)), pid
    assert h.exit_status() == 0


def test_client_leaving_during_the_body_kills_the_program(serve):
    h = serve()
    h.send(request("/cgi-bin/count.sh", method="POST", headers=[("Content-Length", "1000000")])
           + b"x" * 1000)
    h.sock.close()
    assert h.exit_status() == 0
