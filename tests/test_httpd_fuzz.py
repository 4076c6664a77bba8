"""superd-httpd under generated requests (issue 18, item 3): valid grammar
mutated (methods, targets, versions, header names and values with every byte
class, chunked framing, Content-Length variants, pipelining), served over a
socketpair.  Every input ends in well-formed responses and a clean close,
never a traceback, and never a 500: the site has no CGI, so no request can
cause one."""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from test_httpd_support import Reader, load_httpd, serve_in_process

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])

_SITE = tempfile.TemporaryDirectory(prefix="superd-httpd-fuzz-")
ROOT = Path(_SITE.name)
(ROOT / "index.html").write_text("<p>home</p>\n")
(ROOT / "a.txt").write_text("alpha\n" * 50)
(ROOT / "dir").mkdir()
(ROOT / "dir" / "b.css").write_text("b{}\n")

BYTE = st.integers(0, 255).map(lambda b: bytes([b]))
NOISE = st.lists(BYTE, max_size=6).map(b"".join)


def mutated(choices):
    """A usual token, sometimes with a random byte run spliced in."""
    return st.one_of(st.sampled_from(choices),
                     st.tuples(st.sampled_from(choices), NOISE).map(lambda t: t[0] + t[1]),
                     st.binary(max_size=12))


METHODS = mutated([b"GET", b"POST", b"PUT", b"OPTIONS", b"TRACE", b"DELETE", b"get", b"PRI"])
TARGETS = mutated([b"/", b"/a.txt", b"/dir/", b"/dir/b.css", b"/%2e%2e/%2e%2e/etc/passwd",
                   b"/../a.txt", b"*", b"http://test/a.txt", b"/a.txt?x=1#f", b"//a.txt",
                   b"/%00", b"/%zz", b"/dir", b"/" + b"x" * 300])
VERSIONS = mutated([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1"])
NAMES = mutated([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Range",
                 b"If-None-Match", b"If-Modified-Since", b"Accept-Encoding", b"Expect", b"X"])
VALUES = mutated([b"test", b"0", b"5", b"-1", b"99999999999999999999", b"1, 2", b"chunked",
                  b"gzip, chunked", b"close", b"keep-alive", b"bytes=0-3", b"bytes=9-1,0-",
                  b"100-continue", b"\"x\"", b"Sun, 06 Nov 1994 08:49:37 GMT", b" "])
EOLS = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def bodies(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=20))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=9), max_size=3))
    sizes = [draw(st.sampled_from([b"%x" % len(c), b"%X;ext=1" % len(c), b"zz", b"-1"]))
             for c in chunks]
    return b"".join(s + b"\r\n" + c + b"\r\n" for s, c in zip(sizes, chunks)) + \
        draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nT: x\r\n\r\n", b"", b"0\r\n"]))


@st.composite
def requests(draw):
    eol = draw(EOLS) if draw(st.integers(0, 9)) == 0 else b"\r\n"
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)
    headers = [b"Host: test"] if draw(st.booleans()) else []
    headers += [n + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + v
                for n, v in draw(st.lists(st.tuples(NAMES, VALUES), max_size=5))]
    return eol.join([line, *headers]) + eol + eol + draw(bodies())


def _responses(reader):
    """Every response in reader's buffer, each well-formed; ends at EOF."""
    found = []
    while reader.buf:
        found.append(reader.response())
    return found


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=4))
def test_any_request_sequence_ends_in_responses_and_a_clean_close(pipelined):
    httpd = load_httpd()
    reader, log = serve_in_process(httpd, ROOT, b"".join(pipelined), "--timeout", "5")
    answers = _responses(reader)
    assert "Traceback" not in log, log
    assert len(answers) <= len(pipelined) + 1
    for answer in answers:
        assert 200 <= answer.status <= 505 and answer.status != 500, (pipelined, answer)


@FUZZ
@given(st.binary(max_size=400))
def test_raw_bytes_are_answered_or_closed(data):
    httpd = load_httpd()
    reader, log = serve_in_process(httpd, ROOT, data, "--timeout", "5")
    assert "Traceback" not in log, log
    for answer in _responses(reader):
        assert answer.status != 500, (data, answer)
