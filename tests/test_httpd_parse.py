"""Table-driven unit tests of superd-httpd's pure parts: request heads,
framing, targets and paths, ranges, dates, validators, CGI heads, options.

The module under test is the file handlers/httpd.py itself, loaded by path.
"""

import pytest

from test_httpd_support import load_httpd

httpd = load_httpd()

HttpError = httpd.HttpError


def status_of(fn, *args, **kw):
    """The HttpError status fn raises, or None if it returns."""
    try:
        fn(*args, **kw)
    except HttpError as exc:
        return exc.status
    return None


# -- find_head_end -------------------------------------------------------

@pytest.mark.parametrize("buf, expected", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", (24, 27)),
    (b"GET / HTTP/1.1\nHost: a\n\nrest", (22, 24)),
    (b"GET / HTTP/1.1\r\nHost: a\n\r\n", (23, 26)),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
    (b"GET / HTTP/1.1\nA: b\n\nGET /x HTTP/1.1\r\n\r\n", (19, 21)),   # the first blank line wins
])
def test_find_head_end(buf, expected):
    assert httpd.find_head_end(buf) == expected


# -- parse_head: the good ---------------------------------------------------

def test_parse_head_fields():
    req = httpd.parse_head(b"GET /a?b=c HTTP/1.1\r\nHost: example.org\r\nX-A: 1\r\n"
                           b"x-a:2\r\nCookie: a=1\r\nCookie: b=2\r\nEmpty:\r")
    assert (req.method, req.target, req.version) == ("GET", "/a?b=c", 11)
    assert req.headers["host"] == "example.org"
    assert req.headers["x-a"] == "1, 2"
    assert req.headers["cookie"] == "a=1; b=2"
    assert req.headers["empty"] == ""
    assert (req.length, req.chunked, req.keep_alive) == (0, False, True)


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: a", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE", False),
    (b"GET / HTTP/1.0", False),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive", True),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive, close", False),
])
def test_keep_alive(head, keep_alive):
    assert httpd.parse_head(head).keep_alive is keep_alive


@pytest.mark.parametrize("version, expected", [
    (b"HTTP/1.1", 11), (b"HTTP/1.0", 10), (b"HTTP/1.9", 11),
])
def test_versions_accepted(version, expected):
    assert httpd.parse_head(b"GET / " + version + b"\r\nHost: a").version == expected


# -- parse_head: the bad (status, and every one closes) -------------------

BAD_HEADS = [
    # request line
    (b"GET /", 400),                                  # HTTP/0.9 style
    (b"GET  / HTTP/1.1\r\nHost: a", 400),            # two spaces
    (b"GET / HTTP/1.1 \r\nHost: a", 400),            # trailing space
    (b"GET\t/ HTTP/1.1\r\nHost: a", 400),
    (b"G(T / HTTP/1.1\r\nHost: a", 400),             # not a token
    (b"get / HTTP/1.1\r\nHost: a", 501),             # methods are case-sensitive
    (b"BREW / HTTP/1.1\r\nHost: a", 501),
    (b"GET / HTTP/2.0\r\nHost: a", 505),
    (b"GET / HTTP/0.9\r\nHost: a", 505),
    (b"GET / HTTP/1\r\nHost: a", 400),
    (b"GET / http/1.1\r\nHost: a", 400),
    (b"GET / HTTP/1.1x\r\nHost: a", 400),
    (b"GET /\x00 HTTP/1.1\r\nHost: a", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: a", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a", 400),     # raw non-ASCII in the target
    (b"GET /a\rb HTTP/1.1\r\nHost: a", 400),         # bare CR
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a", 414),
    # fields
    (b"GET / HTTP/1.1", 400),                         # no Host in 1.1
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a", 400),
    (b"GET / HTTP/1.1\r\nHost: a b", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b", 400),
    (b"GET / HTTP/1.1\r\nHost : a", 400),            # space before the colon
    (b"GET / HTTP/1.1\r\nHost: a\r\n X-Folded: yes", 400),   # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: empty name", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\x80: 1", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000, 431),
    (b"GET / HTTP/1.1\r\nHost: a" + b"\r\nX: 1" * 101, 431),
    # framing (request smuggling)
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xb2", 400),    # a Latin-1 digit
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked", 400),
]


@pytest.mark.parametrize("head, status", BAD_HEADS)
def test_bad_heads(head, status):
    with pytest.raises(HttpError) as info:
        httpd.parse_head(head)
    assert info.value.status == status
    assert info.value.close


@pytest.mark.parametrize("head, length, chunked", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5", 5, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5", 5, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5", 5, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007", 7, False),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", 0, True),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked", 0, True),
    (b"POST / HTTP/1.0\r\nContent-Length: 3", 3, False),
])
def test_good_framing(head, length, chunked):
    req = httpd.parse_head(head)
    assert (req.length, req.chunked) == (length, chunked)


# -- targets and paths ----------------------------------------------------

@pytest.mark.parametrize("target, path, query, host", [
    ("/", "/", "", "h"),
    ("/a/b?x=1&y=%20", "/a/b", "x=1&y=%20", "h"),
    ("/a??b", "/a", "?b", "h"),
    ("http://example.com/p?q", "/p", "q", "example.com"),
    ("HTTP://example.com:8080", "/", "", "example.com:8080"),
    ("*", "*", "", "h"),
])
def test_split_target(target, path, query, host):
    req = httpd.Request("GET", target, 11, {"host": "h"}, "")
    req.host = "h"
    httpd.split_target(req)
    assert (req.path, req.query, req.host) == (path, query, host)


@pytest.mark.parametrize("target", ["/a#frag", "ftp://x/y", "example.com:443", "http:///x",
                                    "http://a b/"])
def test_split_target_refuses(target):
    req = httpd.Request("GET", target, 11, {}, "")
    assert status_of(httpd.split_target, req) == 400


@pytest.mark.parametrize("path, segments, trailing", [
    ("/", [], True),
    ("/a/b", ["a", "b"], False),
    ("/a/b/", ["a", "b"], True),
    ("//a///b", ["a", "b"], False),
    ("/a/./b/.", ["a", "b"], True),
    ("/a/../b", ["b"], False),
    ("/a/b/..", ["a"], True),
    ("/%61%2Fb", ["a", "b"], False),               # %2F decodes to a separator
    ("/%252e%252e/x", ["%2e%2e", "x"], False),      # decoded once only
    ("/caf%C3%A9", ["caf\u00e9"], False),
    ("/%ff", ["\udcff"], False),                   # undecodable bytes survive
    ("/a%20b", ["a b"], False),
])
def test_decode_path(path, segments, trailing):
    assert httpd.decode_path(path) == (segments, trailing)


@pytest.mark.parametrize("path", [
    "/..", "/../etc/passwd", "/%2e%2e/etc/passwd", "/%2E%2E/x", "/a/../../etc",
    "/..%2fetc/passwd", "/a%2f..%2f..%2fetc", "/%00", "/a%00.txt", "/a%5c..%5cb", "/a\\b",
    "/%", "/%4", "/%zz", "/%%41",
])
def test_decode_path_refuses(path):
    assert status_of(httpd.decode_path, path) == 400


@pytest.mark.parametrize("segments, hidden", [
    (["a", "b"], False), ([".git", "config"], True), (["a", ".htpasswd"], True),
    ([".well-known", "x"], False), (["a", ".well-known"], True), ([".."], True),
])
def test_is_hidden(segments, hidden):
    assert httpd.is_hidden(segments) is hidden


@pytest.mark.parametrize("pattern, path, match", [
    ("/cgi-bin/*", "/cgi-bin/a.sh", True),
    ("/cgi-bin/*", "/cgi-bin/sub/a.sh", False),
    ("/cgi-bin/*", "/cgi-bin", False),
    ("/cgi-bin/*", "/cgi-binx/a", False),
    ("/cgi-bin/**", "/cgi-bin/sub/a.sh", True),
    ("**.cgi", "/a/b/c.cgi", True),
    ("**.cgi", "/a/b/c.cgi.txt", False),
    ("/*.cgi", "/x.cgi", True),
    ("/*.cgi", "/a/x.cgi", False),
    ("/a?c", "/abc", True),
    ("/a?c", "/a/c", False),
    ("/x/*/y", "/x/anything/y", True),
])
def test_glob(pattern, path, match):
    assert httpd.glob_match(httpd.compile_glob(pattern), path) is match


# -- ranges ---------------------------------------------------------------

@pytest.mark.parametrize("field, size, expected", [
    ("bytes=0-4", 26, [(0, 4)]),
    ("bytes=5-", 26, [(5, 25)]),
    ("bytes=-5", 26, [(21, 25)]),
    ("bytes=-100", 26, [(0, 25)]),
    ("bytes=20-100", 26, [(20, 25)]),
    ("bytes=0-0,-1", 26, [(0, 0), (25, 25)]),
    ("bytes=10-12, 0-1", 26, [(10, 12), (0, 1)]),      # requested order kept
    ("bytes=0-5,3-8", 26, [(0, 8)]),                    # overlaps merged
    ("bytes=0-5,6-8", 26, [(0, 8)]),                    # adjacent merged
    ("Bytes = 1-2", 26, [(1, 2)]),
    ("bytes=1-2,,", 26, [(1, 2)]),
    ("bytes=26-", 26, []),
    ("bytes=30-40", 26, []),
    ("bytes=-0", 26, []),
    ("bytes=0-", 0, []),
    ("bytes=-5", 0, None),            # a suffix of nothing: send the (empty) whole
    ("bytes=5-1", 26, None),
    ("bytes=a-b", 26, None),
    ("bytes=-", 26, None),
    ("bytes=1", 26, None),
    ("bytes=+1-2", 26, None),
    ("bytes=", 26, None),
    ("items=0-1", 26, None),
    ("bytes 0-1", 26, None),
    ("bytes=" + ",".join("%d-%d" % (i, i) for i in range(0, 34, 2)), 100, None),   # 17 parts
])
def test_parse_range(field, size, expected):
    assert httpd.parse_range(field, size) == expected


# -- dates and validators --------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),
    ("Sun Nov  6 08:49:37 1994", 784111777),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
    ("Tue, 29 Feb 2000 12:00:00 GMT", 951825600),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 8:49:37 GMT", None),
    ("Sun, 32 Nov 1994 08:49:37 GMT", None),
    ("yesterday", None),
    ("", None),
])
def test_parse_http_date(text, seconds):
    assert httpd.parse_http_date(text) == seconds


def test_format_http_date_round_trips():
    for t in (0, 784111777, 951825600, 4102444799):
        assert httpd.parse_http_date(httpd.format_http_date(t)) == t
    assert httpd.format_http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize("field, weak, match", [
    ('"x"', False, True), ('"y", "x"', False, True), ("*", False, True),
    ('W/"x"', False, False), ('W/"x"', True, True), ('"y"', True, False), ('x', True, False),
])
def test_etag_matches(field, weak, match):
    assert httpd.etag_matches(field, '"x"', weak) is match


MTIME = 784111777
LM = "Sun, 06 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize("method, headers, result", [
    ("GET", {}, None),
    ("GET", {"if-none-match": '"e"'}, 304),
    ("GET", {"if-none-match": 'W/"e"'}, 304),
    ("HEAD", {"if-none-match": '"a", "e"'}, 304),
    ("GET", {"if-none-match": "*"}, 304),
    ("GET", {"if-none-match": '"other"'}, None),
    ("GET", {"if-modified-since": LM}, 304),
    ("GET", {"if-modified-since": LATER}, 304),
    ("GET", {"if-modified-since": EARLIER}, None),
    ("GET", {"if-modified-since": "garbage"}, None),
    ("GET", {"if-none-match": '"other"', "if-modified-since": LATER}, None),  # INM wins
    ("GET", {"if-match": '"e"'}, None),
    ("GET", {"if-match": '"other"'}, 412),
    ("GET", {"if-match": 'W/"e"'}, 412),           # strong comparison
    ("GET", {"if-unmodified-since": EARLIER}, 412),
    ("GET", {"if-unmodified-since": LM}, None),
    ("GET", {"if-match": '"e"', "if-unmodified-since": EARLIER}, None),   # If-Match wins
])
def test_check_conditions(method, headers, result):
    req = httpd.Request(method, "/", 11, headers, "")
    assert httpd.check_conditions(req, '"e"', MTIME) == result


@pytest.mark.parametrize("field, holds", [
    ('"e"', True), ('"other"', False), ('W/"e"', False), (LM, True), (LATER, False),
])
def test_if_range(field, holds):
    assert httpd.if_range_holds(field, '"e"', MTIME) is holds


@pytest.mark.parametrize("field, accepted", [
    ("gzip", True), ("gzip, deflate, br", True), ("GZIP;q=0.5", True), ("x-gzip", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*", True), ("*;q=0", False),
    ("*, gzip;q=0", False), ("deflate", False), ("", False), ("gzip;q=abc", False),
    # q wherever it is among the parameters (RFC 9110 12.4.2)
    ("gzip;foo=1;q=0", False), ("gzip; level=9 ; Q=0.5", True), ("*;x=y;q=0", False),
    ("gzip;foo=1", True),
])
def test_accepts_gzip(field, accepted):
    assert httpd.accepts_gzip(field) is accepted


# -- chunks and CGI heads --------------------------------------------------

@pytest.mark.parametrize("line, size", [
    (b"0", 0), (b"1a", 26), (b"1A", 26), (b"ff;name=value", 255), (b"10 ;ext", 16),
    (b"00000000005", 5),
    # chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )
    (b"5;a", 5), (b"5 ; a = b", 5), (b"5;a;b=c", 5), (b'5;a=""', 5),
    (b'5;a="q;=\\" x"', 5), (b'5\t;\ta\t=\t"caf\xe9"', 5), (b"5;a=b ;c", 5),
])
def test_chunk_size(line, size):
    assert httpd.parse_chunk_size(line) == size


@pytest.mark.parametrize("line", [
    b"", b" 5", b"0x5", b"-1", b"+5", b"5 5", b"g", b"1_0", b"f" * 16, b"5;\x00",
    b"5;", b"5;;", b'5;;;="', b"5;=x", b"5;a=", b"5;a=b;", b'5;a="open', b"5;a b",
    b"5;a=b c", b'5;a="x"y', b'5;a="\x01"', b'5;a="\\\x00"', b"5;a=\xe9", b"5;a/b",
])
def test_chunk_size_refused(line):
    assert status_of(httpd.parse_chunk_size, line) == 400


@pytest.mark.parametrize("head, expected", [
    (b"Content-Type: text/plain", (None, None, [("Content-Type", "text/plain")], None, None)),
    (b"Status: 404 Gone away\r\nContent-Type: text/html",
     (404, "Gone away", [("Content-Type", "text/html")], None, None)),
    (b"Status: 201\nContent-Type: a/b", (201, "Created", [("Content-Type", "a/b")], None, None)),
    (b"Location: http://x/", (None, None, [("Location", "http://x/")], "http://x/", None)),
    (b"Content-Type: a/b\r\nContent-Length: 5\r\nConnection: close\r\nX-A: 1",
     (None, None, [("Content-Type", "a/b"), ("X-A", "1")], None, 5)),
    (b"Status: 204", (204, "No Content", [], None, None)),
])
def test_cgi_head(head, expected):
    assert httpd.parse_cgi_head(head) == expected


@pytest.mark.parametrize("head", [
    b"hello world", b"X-Only: 1", b"Status: 99 Low\r\nContent-Type: a/b",
    b"Status: abc", b"Status: 1000", b"Content-Type: a/b\r\nContent-Length: x",
    b"Content-Type: a/b\r\nContent-Length: 1\r\nContent-Length: 2",
    b"Content-Type: a/b\r\nBad Name: 1", b"Content-Type: a\x00b",
])
def test_cgi_head_refused(head):
    with pytest.raises(httpd.CgiError):
        httpd.parse_cgi_head(head)


# -- small helpers ---------------------------------------------------------

@pytest.mark.parametrize("name, ctype", [
    ("/r/index.html", "text/html; charset=utf-8"),
    ("/r/a.CSS", "text/css; charset=utf-8"),
    ("/r/a.json", "application/json; charset=utf-8"),
    ("/r/a.png", "image/png"),
    ("/r/a.tar.gz", "application/gzip"),
    ("/r/README", "application/octet-stream"),
    ("/r.d/README", "application/octet-stream"),
    ("/r/a.nosuchextension", "application/octet-stream"),
])
def test_media_type(name, ctype):
    assert httpd.media_type(name) == ctype


@pytest.mark.parametrize("text, escaped", [
    ('GET / HTTP/1.1', 'GET / HTTP/1.1'),
    ('a"b\\c', 'a\\x22b\\x5cc'),
    ('a\nb\x1b[31m', 'a\\x0ab\\x1b[31m'),
    ('caf\u00e9', 'caf\\xe9'),
])
def test_log_escape(text, escaped):
    assert httpd.log_escape(text) == escaped


@pytest.mark.parametrize("name, quoted", [
    ("a b", "a%20b"), ("<x>&", "%3Cx%3E%26"), ("caf\u00e9", "caf%C3%A9"), ("a-b_c.d~", "a-b_c.d~"),
])
def test_url_quote(name, quoted):
    assert httpd.url_quote(name) == quoted


def test_html_escape():
    assert httpd.html_escape("<a href='x'>&\"") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"


# -- options ---------------------------------------------------------------

def test_options_defaults():
    s = httpd.parse_options([])
    assert s.root == "." and s.cgi == ("/cgi-bin/*",) and s.listing is False
    assert s.keepalive_timeout == 5.0 and s.max_body == 16 << 20
    assert s.idle_exit == httpd.NO_LIMIT


@pytest.mark.parametrize("option, attr", [
    ("--timeout", "timeout"), ("--header-timeout", "header_timeout"),
    ("--cgi-timeout", "cgi_timeout"), ("--idle-exit", "idle_exit"),
])
def test_zero_duration_is_no_limit(option, attr):
    """0 means no limit for every duration but --keepalive-timeout, where it
    means no keep-alive (0 once meant a microsecond for --timeout)."""
    assert getattr(httpd.parse_options([option, "0"]), attr) == httpd.NO_LIMIT
    assert getattr(httpd.parse_options([option, "0.25"]), attr) == 0.25
    assert httpd.parse_options(["--keepalive-timeout", "0"]).keepalive_timeout == 0.0


@pytest.mark.parametrize("seconds, ms", [
    (0.0, 1), (0.0004, 1), (0.5, 501), (-3.0, 0), (2.0 ** 31 / 1000, 86400001),
    (3e6, 86400001), (float("inf"), 86400001),
])
def test_poll_waits_stay_below_the_limit_of_poll(seconds, ms):
    """poll() refuses more than 2**31-1 ms: a longer wait is cut at MAX_WAIT."""
    assert httpd.poll_ms(seconds) == ms


def test_timeval_of_no_limit_is_zero():
    assert httpd._timeval(httpd.NO_LIMIT) == httpd.pack("@ll", 0, 0)
    assert httpd._timeval(0.0) == httpd.pack("@ll", 0, 1)
    assert httpd._timeval(3e6) == httpd.pack("@ll", 3000000, 0)


def test_options_values():
    s = httpd.parse_options(["--root", "/srv", "--cgi", "**.cgi", "--cgi=/x/*", "--listing",
                             "--max-body", "2K", "--idle-exit=1.5", "--max-connections", "3"])
    assert s.root == "/srv" and s.cgi == ("**.cgi", "/x/*") and s.listing is True
    assert s.max_body == 2048 and s.idle_exit == 1.5 and s.max_connections == 3
    assert httpd.parse_options(["--no-cgi", "--cgi", "/x/*"]).cgi == ()


@pytest.mark.parametrize("argv", [
    ["--nope"], ["--root"], ["--listing=yes"], ["--max-body", "lots"], ["--idle-exit", "-1"],
    ["--max-connections", "0"], ["--cgi", "cgi-bin/*"], ["positional"], ["--timeout", "nan"],
])
def test_options_refused(argv):
    with pytest.raises(httpd.UsageError):
        httpd.parse_options(argv)


def test_usage_lists_every_option():
    text = httpd.usage()
    for flag, *_ in httpd.OPTIONS:
        assert flag in text
