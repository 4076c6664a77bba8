"""superd-httpd's HTTP/1.1 connection handling, over a socketpair.

Persistent connections and pipelining; HTTP/1.0; the limits (414, 431, 413);
the timeouts (a slow head, a dribbled head, an idle connection, a slow body,
a client that stops reading); request smuggling and malformed input, each
answered with its status and a closed connection; the access log.
"""

import re
import socket
import threading

import pytest

from test_httpd_support import ALPHA, TIMEOUT, handler, request, serve, site  # noqa: F401


# -- persistence and pipelining ----------------------------------------------

def test_keep_alive_serves_many_requests(serve):
    h = serve()
    for _ in range(5):
        r = h.get("/alpha.txt")
        assert r.status == 200 and r.body == ALPHA
        assert r.header("connection") is None


def test_pipelined_requests_are_answered_in_order(serve):
    h = serve()
    h.send(request("/alpha.txt") + request("/sub/file.txt") + request("/nothing")
           + request("/alpha.txt", method="HEAD") + request("/sub/"))
    assert h.response().body == ALPHA
    assert h.response().body == b"in sub\n"
    assert h.response().status == 404
    assert h.response("HEAD").header("content-length") == "26"
    assert h.response().body == b"sub index\n"


def test_connection_close(serve):
    h = serve()
    h.send(request("/alpha.txt", headers=[("Connection", "close")]) + request("/alpha.txt"))
    r = h.response()
    assert r.body == ALPHA and r.header("connection") == "close"
    assert h.at_eof()                    # the pipelined second request is not answered
    h.sock.shutdown(socket.SHUT_WR)
    assert h.exit_status() == 0


def test_http10_closes_unless_asked(serve):
    h = serve()
    r = h.get("/alpha.txt", version="HTTP/1.0", host=None)
    assert r.body == ALPHA and r.header("connection") == "close"
    assert h.at_eof()
    h = serve()
    for _ in range(2):
        r = h.get("/alpha.txt", version="HTTP/1.0", host=None,
                  headers=[("Connection", "keep-alive")])
        assert r.body == ALPHA and r.header("connection") == "keep-alive"


def test_blank_lines_before_a_request_are_ignored(serve):
    h = serve()
    h.send(b"\r\n\r\n" + request("/alpha.txt"))
    assert h.response().body == ALPHA


def test_bare_lf_line_ends(serve):
    h = serve()
    h.send(b"GET /alpha.txt HTTP/1.1\nHost: t\n\n")
    assert h.response().body == ALPHA


def test_absolute_form_target(serve):
    assert serve().get("http://other.example/alpha.txt").body == ALPHA


def test_http_1_9_is_answered_as_1_1(serve):
    r = serve().get("/alpha.txt", version="HTTP/1.9")
    assert r.status == 200


# -- timeouts ------------------------------------------------------------------

def test_idle_keep_alive_connection_is_closed(serve):
    h = serve("--keepalive-timeout", "0.3")
    assert h.get("/alpha.txt").body == ALPHA
    assert h.at_eof()
    assert h.exit_status() == 0


def test_no_keep_alive_with_zero_timeout(serve):
    h = serve("--keepalive-timeout", "0")
    r = h.get("/alpha.txt")
    assert r.header("connection") == "close" and h.at_eof()


def test_silent_client_is_dropped_without_answer(serve):
    h = serve("--header-timeout", "0.3")
    assert h.at_eof()
    assert h.exit_status() == 0


def test_slow_head_gets_408(serve):
    h = serve("--header-timeout", "0.5")
    h.send(b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\n")
    r = h.response()
    assert r.status == 408 and r.header("connection") == "close"
    assert h.at_eof()


def test_dribbled_head_gets_408(serve):
    """One byte at a time, each well within the timeout: the header deadline
    counts from the start of the request, not from the last byte."""
    h = serve("--header-timeout", "0.8")
    stop = threading.Event()

    def dribble():
        for byte in b"GET /alpha.txt HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.05):
                return
            try:
                h.sock.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=dribble, daemon=True)
    sender.start()
    try:
        r = h.response()
    finally:
        stop.set()
        sender.join(TIMEOUT)
    assert r.status == 408


def dribble_blank_lines(h, stop, then=b""):
    """From a thread: an empty line every 0.2 s for 8 s, then `then`; stops
    early when told to or when the connection is gone."""
    def run():
        for _ in range(40):
            if stop.wait(0.2):
                return
            try:
                h.sock.sendall(b"\r\n")
            except OSError:
                return
        try:
            h.sock.sendall(then)
        except OSError:
            pass
    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


@pytest.mark.parametrize("first", [True, False])
def test_blank_lines_do_not_stretch_the_header_timeout(serve, first):
    """Empty lines before a request are ignored, but within --header-timeout
    (1 s) from the start of the connection, or of the request on a
    keep-alive connection: a request sent after 8 s of them is never
    answered, and the connection is closed without an answer."""
    h = serve("--header-timeout", "1", "--keepalive-timeout", "30")
    if not first:
        assert h.get("/alpha.txt").body == ALPHA
    stop = threading.Event()
    sender = dribble_blank_lines(h, stop, then=request("/alpha.txt"))
    try:
        assert h.at_eof()
    finally:
        stop.set()
        sender.join(TIMEOUT)
    assert h.exit_status() == 0


def test_slow_body_gets_408(serve):
    h = serve("--timeout", "0.5")
    h.send(request("/alpha.txt", headers=[("Content-Length", "100")]) + b"only some")
    r = h.response()
    assert r.status == 408 and r.header("connection") == "close"


def test_client_that_never_reads_is_dropped(serve):
    """A client that stops reading a big file does not hold the process."""
    h = serve("--timeout", "0.5")
    h.send(request("/big.bin") * 4)
    assert h.exit_status() == 0


def test_zero_timeout_means_no_limit_on_a_body(serve):
    """--timeout 0 is no limit (it once meant one microsecond: any pause in a
    body was a 408).  Expect: 100-continue makes the pause certain: the
    server waits for the body only after its 100 Continue has arrived."""
    h = serve("--timeout", "0")
    body = b"x" * 300000
    h.send(request("/cgi-bin/count.sh", method="POST",
                   headers=[("Content-Length", str(len(body))), ("Expect", "100-continue")]))
    assert h.reader._until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    h.send(body)
    r = h.response()
    assert (r.status, r.body) == (200, b"300000")


def test_zero_header_timeout_means_no_limit(serve):
    """--header-timeout 0 is no limit (it once closed every connection at once)."""
    h = serve("--header-timeout", "0")
    assert h.get("/alpha.txt").body == ALPHA


@pytest.mark.parametrize("option", ["--timeout", "--header-timeout", "--keepalive-timeout"])
def test_timeouts_beyond_24_days(serve, option):
    """Durations past 2**31 ms (about 24.8 days) work: no wait overflows."""
    h = serve(option, "3000000")
    assert h.get("/alpha.txt").body == ALPHA
    assert h.get("/cgi-bin/count.sh", method="POST", body=b"abc").body == b"3"


# -- limits ----------------------------------------------------------------------

def test_long_request_line_is_414(serve):
    h = serve()
    h.send(b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    r = h.response()
    assert r.status == 414 and r.header("connection") == "close"


def test_long_request_line_without_end_is_414(serve):
    h = serve()
    h.send(b"GET /" + b"a" * 40000)
    assert h.response().status == 414


def test_long_header_line_is_431(serve):
    r = serve().get("/", headers=[("X-Big", "b" * 9000)])
    assert r.status == 431


def test_too_many_headers_is_431(serve):
    r = serve().get("/", headers=[("X-%d" % i, "v") for i in range(101)])
    assert r.status == 431


def test_header_section_too_large_is_431(serve):
    r = serve("--max-header-size", "4K").get("/", headers=[("X-%d" % i, "v" * 100) for i in range(60)])
    assert r.status == 431


def test_options_change_the_limits(serve):
    h = serve("--max-line", "100", "--max-headers", "2")
    assert h.get("/" + "a" * 200).status == 414
    h = serve("--max-headers", "2")
    assert h.get("/", headers=[("A", "1"), ("B", "2")]).status == 431


# -- smuggling and malformed input: answer, close, answer nothing more ----------

HOSTILE = [
    (b"POST /alpha.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    (b"POST /alpha.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400),
    (b"POST /alpha.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\nX: folded\r\n continuation\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/1.1\rHost: t\r\n\r\n", 400),
    (b"GET /alpha.txt HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    (b"GET /alpha.txt\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),        # TLS hello
    (b"GET /alpha.txt HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417),
    (b"GET /%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET *  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
]


@pytest.mark.parametrize("raw, status", HOSTILE)
def test_hostile_request_is_answered_and_closed(serve, raw, status):
    """A smuggled second request behind the bad one is never answered."""
    h = serve()
    h.send(raw + request("/smuggled"))
    r = h.response()
    assert r.status == status
    assert r.header("connection") == "close"
    assert b"Traceback" not in r.body
    assert h.at_eof()


BAD_CHUNKS = [
    b"5\r\nabcde\r\n0x1\r\na\r\n0\r\n\r\n",        # 0x prefix
    b"-1\r\n",                                     # negative
    b"5\r\nabcdeXY0\r\n\r\n",                      # no CRLF after the data
    b"5\nabcde\n0\n\n",                            # bare LF
    b"fffffffffffffffff\r\n",                      # absurd size
    b" 5\r\nabcde\r\n0\r\n\r\n",                   # leading space
    b"5;a\x00b\r\nabcde\r\n0\r\n\r\n",             # NUL in an extension
    b'5;;;="\r\nabcde\r\n0\r\n\r\n',                  # not a chunk-ext (RFC 9112 7.1.1)
    b'5;a="open\r\nabcde\r\n0\r\n\r\n',              # an unterminated quoted-string
    b"5\r\nabcde\r\n0\r\nno colon here\r\n\r\n",      # a trailer line that is no field
]


@pytest.mark.parametrize("chunks", BAD_CHUNKS)
def test_bad_chunks_are_400(serve, chunks):
    h = serve()
    h.send(request("/cgi-bin/count.sh", method="POST",
                   headers=[("Transfer-Encoding", "chunked")]) + chunks + request("/smuggled"))
    r = h.response()
    assert r.status == 400 and r.header("connection") == "close"
    assert h.at_eof()


def test_chunked_body_on_a_file_is_read_and_dropped(serve):
    h = serve()
    h.send(request("/alpha.txt", headers=[("Transfer-Encoding", "chunked")])
           + b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n" + request("/sub/file.txt"))
    assert h.response().body == ALPHA
    assert h.response().body == b"in sub\n"


def test_body_too_large_is_413(serve):
    h = serve("--max-body", "1K")
    h.send(request("/cgi-bin/count.sh", method="POST", headers=[("Content-Length", "5000")]))
    r = h.response()
    assert r.status == 413 and r.header("connection") == "close"


def test_chunked_body_too_large_is_413(serve):
    h = serve("--max-body", "1K")
    h.send(request("/cgi-bin/count.sh", method="POST", headers=[("Transfer-Encoding", "chunked")])
           + b"400\r\n" + b"a" * 1024 + b"\r\n1\r\nb\r\n0\r\n\r\n")
    assert h.response().status == 413


def test_error_answer_survives_an_unread_body(serve):
    """Lingering close: a 405 is read in full even though the client's big
    body was never read (no reset destroys the answer)."""
    h = serve()
    h.send(request("/alpha.txt", method="PUT", headers=[("Content-Length", "2000000")]))
    try:
        h.sock.sendall(b"x" * 200000)
    except OSError:
        pass
    r = h.response()
    assert r.status == 405


def test_no_traceback_on_garbage(serve):
    h = serve()
    h.send(bytes(range(256)) * 4 + b"\r\n\r\n")
    data = h.reader.rest()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"Traceback" not in data and b"File " not in data


# -- the access log ---------------------------------------------------------------

CLF = re.compile(r'^(\S+) - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                 r'"(.*)" (\d{3}) (\d+|-) "(.*)" "(.*)"$')


def test_access_log_in_combined_format(serve):
    h = serve()
    h.get("/alpha.txt", headers=[("Referer", "http://r/"), ("User-Agent", 'agent "007" caf\xe9')])
    h.get("/nothing")
    h.send(b"BAD\r\n\r\n")
    h.response()
    lines = []
    for pattern in (r'"GET /alpha.txt', r'"GET /nothing', r'"BAD"'):
        lines.append(CLF.match(h.log.wait_for(pattern).string))
    assert lines[0].groups() == ("unix:", "GET /alpha.txt HTTP/1.1", "200", "26",
                                 "http://r/", "agent \\x22007\\x22 caf\\xe9")
    assert lines[1].group(3) == "404"
    assert lines[2].group(3) == "400"


def test_quiet_writes_no_access_log(serve):
    h = serve("--quiet")
    assert h.get("/alpha.txt").status == 200
    h.sock.shutdown(socket.SHUT_WR)
    assert h.exit_status() == 0
    assert h.log.wait_closed() and h.log.text() == ""


def test_log_option_writes_a_file(handler, site, tmp_path):
    logfile = tmp_path / "access.log"
    h = handler(["--root", site, "--log", logfile])
    assert h.get("/alpha.txt").status == 200
    h.sock.shutdown(socket.SHUT_WR)
    assert h.exit_status() == 0
    assert CLF.match(logfile.read_text().splitlines()[0])


# -- start-up cost: what one connection imports (a behaviour, not a timing) --

HEAVY = {"socket", "selectors", "enum", "threading", "argparse", "subprocess", "re",
         "random", "struct", "signal", "email", "mimetypes", "traceback", "urllib", "html",
         "tempfile", "shutil"}


@pytest.mark.parametrize("path", ["/alpha.txt", "/cgi-bin/env.sh", "/nothing"])
def test_one_connection_imports_nothing_heavy(site, tmp_path, path):
    """-X importtime of a handler that answers one request: only built-in
    modules beyond what the interpreter itself loads."""
    import subprocess
    import sys
    from test_httpd_support import HANDLER
    ours, theirs = socket.socketpair()
    ours.settimeout(TIMEOUT)
    log = tmp_path / "importtime"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-S", "-X", "importtime", HANDLER,
                                 "--root", site, "--quiet"],
                                stdin=theirs, stdout=theirs, stderr=err, start_new_session=True)
    theirs.close()
    try:
        ours.sendall(request(path, headers=[("Connection", "close")]))
        while ours.recv(65536):
            pass
        assert proc.wait(TIMEOUT) == 0
    finally:
        ours.close()
        proc.kill()
        proc.wait()
    modules = {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
               if line.startswith("import time:") and "|" in line}
    assert "_socket" in modules
    assert not {m.split(".")[0] for m in modules} & HEAVY, modules & HEAVY
