"""superd-httpd serving files, over a socketpair (the handler as a filter).

Content types, validators and conditional requests, ranges (single, suffix,
open-ended, multipart, If-Range, 416), precompressed .gz, directories and
listings, and every way a path could try to leave the root.
"""

import contextlib
import gzip
import os
import re
import resource
import subprocess
import sys

import pytest

from test_httpd_support import (ALPHA, HANDLER, TIMEOUT, handler, load_httpd,  # noqa: F401
                                make_site, request, serve, serve_in_process, site)


def get(serve_or_handler, path, *args, **kw):
    h = serve_or_handler(*args) if callable(serve_or_handler) else serve_or_handler
    return h.get(path, **kw)


# -- plain files -----------------------------------------------------------

def test_index_page(serve, site):
    r = get(serve, "/")
    assert r.status == 200
    assert r.body == (site / "index.html").read_bytes()
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert r.header("content-length") == str(len(r.body))
    assert r.header("server").startswith("superd-httpd/")
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", r.header("date"))


@pytest.mark.parametrize("path, ctype", [
    ("/alpha.txt", "text/plain; charset=utf-8"),
    ("/style.css", "text/css; charset=utf-8"),
    ("/image.png", "image/png"),
    ("/data.unknownext", "application/octet-stream"),
    ("/page.txt.gz", "application/gzip"),
])
def test_content_types(serve, path, ctype):
    assert get(serve, path).header("content-type") == ctype


def test_validators(serve, site):
    r = get(serve, "/alpha.txt")
    st = os.stat(site / "alpha.txt")
    assert r.body == ALPHA
    assert re.fullmatch(r'"[0-9a-f]+-1a"', r.header("etag"))
    from email.utils import parsedate_to_datetime
    assert parsedate_to_datetime(r.header("last-modified")).timestamp() == int(st.st_mtime)
    assert r.header("accept-ranges") == "bytes"


def test_big_file_arrives_whole(serve, site):
    """Bigger than any socket buffer: sendfile in several rounds."""
    r = get(serve, "/big.bin")
    assert r.body == (site / "big.bin").read_bytes()


def test_empty_file(serve):
    r = get(serve, "/empty.txt")
    assert (r.status, r.body, r.header("content-length")) == (200, b"", "0")


def test_head_has_headers_but_no_body(serve):
    h = serve()
    r = h.get("/alpha.txt", method="HEAD")
    assert r.status == 200 and r.header("content-length") == "26"
    assert h.get("/alpha.txt").body == ALPHA    # nothing stray was sent after the HEAD answer


def test_options(serve):
    h = serve()
    r = h.get("/alpha.txt", method="OPTIONS")
    assert r.status == 204 and r.header("allow") == "GET, HEAD, OPTIONS"
    r = h.get("*", method="OPTIONS")
    assert r.status == 204 and "POST" in r.header("allow")


def test_options_answer_has_no_content_length(serve):
    """RFC 9110 8.6: no Content-Length in a 204, for a file as for *."""
    h = serve()
    for path in ("/alpha.txt", "/sub/", "*"):
        r = h.get(path, method="OPTIONS")
        assert r.status == 204, path
        assert r.header("content-length") is None, path
    assert h.get("/alpha.txt").body == ALPHA          # nothing stray after the 204s


def test_options_on_a_listed_directory(serve):
    """A directory listed with --listing answers OPTIONS as a file does."""
    h = serve("--listing")
    r = h.get("/nodir/", method="OPTIONS")
    assert (r.status, r.header("allow")) == (204, "GET, HEAD, OPTIONS")
    assert r.header("content-length") is None
    assert h.get("/nodir/", method="POST").status == 405


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT"])
def test_other_methods_on_files_are_405(serve, method):
    path = "example.com:443" if method == "CONNECT" else "/alpha.txt"
    r = get(serve, path, method=method)
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD, OPTIONS"


def test_post_body_to_a_file_closes_after_405(serve):
    h = serve()
    r = h.get("/alpha.txt", method="POST", body=b"x" * 100)
    assert r.status == 405 and r.header("connection") == "close"
    assert h.at_eof()


def test_small_body_on_get_is_read_and_dropped(serve):
    h = serve()
    h.send(request("/alpha.txt", body=b"ignored") + request("/alpha.txt"))
    assert h.response().body == ALPHA
    assert h.response().body == ALPHA


# -- conditional requests ----------------------------------------------------

def test_if_none_match_and_if_modified_since(serve):
    h = serve()
    first = h.get("/alpha.txt")
    etag, lm = first.header("etag"), first.header("last-modified")
    r = h.get("/alpha.txt", headers=[("If-None-Match", etag)])
    assert r.status == 304 and r.body == b"" and r.header("etag") == etag
    assert r.header("content-length") is None
    assert h.get("/alpha.txt", headers=[("If-None-Match", '"nope", W/' + etag)]).status == 304
    assert h.get("/alpha.txt", headers=[("If-Modified-Since", lm)]).status == 304
    r = h.get("/alpha.txt", headers=[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")])
    assert r.status == 200 and r.body == ALPHA
    r = h.get("/alpha.txt", headers=[("If-None-Match", '"nope"'), ("If-Modified-Since", lm)])
    assert r.status == 200
    assert h.get("/alpha.txt", method="HEAD", headers=[("If-None-Match", "*")]).status == 304


def test_if_match_and_if_unmodified_since(serve):
    h = serve()
    etag = h.get("/alpha.txt").header("etag")
    assert h.get("/alpha.txt", headers=[("If-Match", etag)]).status == 200
    assert h.get("/alpha.txt", headers=[("If-Match", '"other"')]).status == 412
    r = h.get("/alpha.txt", headers=[("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")])
    assert r.status == 412


NEW_VERSION = b"the new version, longer than the old one"


def replaced_after_resolve(monkeypatch, httpd, site, how):
    """Make resolve() of /alpha.txt return, then replace (or remove) the
    file: the race between resolve() and send_file()'s open, won every time."""
    real_resolve = httpd.resolve

    def resolve(settings, segments, as_file=True):
        found = real_resolve(settings, segments, as_file)
        if segments == ["alpha.txt"]:
            if how == "replaced":
                new = site / "new.txt"
                new.write_bytes(NEW_VERSION)
                os.utime(new, (1_000_000_000, 1_000_000_000))
                os.replace(new, site / "alpha.txt")
            else:
                os.unlink(site / "alpha.txt")
        return found
    monkeypatch.setattr(httpd, "resolve", resolve)


@pytest.mark.parametrize("fields", [[], [("If-None-Match", "OLD")], [("If-Match", "OLD")]])
def test_validators_name_the_bytes_sent(monkeypatch, site, fields):
    """ETag, Last-Modified, the conditions and the length all come from the
    file opened, not from a stat taken before it was replaced (RFC 9110
    8.8.1: a strong ETag names exactly the bytes)."""
    httpd = load_httpd()
    old = os.stat(site / "alpha.txt")
    old_etag = '"%x-%x"' % (old.st_mtime_ns, old.st_size)
    fields = [(k, old_etag if v == "OLD" else v) for k, v in fields]
    replaced_after_resolve(monkeypatch, httpd, site, "replaced")
    reader, _log = serve_in_process(httpd, site, request("/alpha.txt", headers=fields))
    r = reader.response()
    new = os.stat(site / "alpha.txt")
    if fields and fields[0][0] == "If-Match":
        assert r.status == 412, r                 # the old version is gone
        return
    assert (r.status, r.body) == (200, NEW_VERSION), r
    assert r.header("etag") == '"%x-%x"' % (new.st_mtime_ns, new.st_size)
    assert r.header("last-modified") == "Sun, 09 Sep 2001 01:46:40 GMT"
    assert r.header("content-length") == str(len(NEW_VERSION))


def test_file_gone_after_resolve_is_404(monkeypatch, site):
    httpd = load_httpd()
    replaced_after_resolve(monkeypatch, httpd, site, "removed")
    reader, log = serve_in_process(httpd, site, request("/alpha.txt"))
    r = reader.response()
    assert r.status == 404 and r.header("vary") == "Accept-Encoding"
    assert "Traceback" not in log


@contextlib.contextmanager
def no_free_descriptor():
    """The next open() in this process fails with EMFILE: the soft limit on
    descriptors is lowered to the lowest free one, then restored."""
    lowest = os.dup(0)
    os.close(lowest)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_file_that_cannot_be_opened_for_want_of_descriptors_is_503(site):
    """EMFILE is the server's trouble, not a missing file: 503 (not 404),
    logged, and the connection closed."""
    httpd = load_httpd()
    reader, log = serve_in_process(httpd, site, request("/alpha.txt") + request("/alpha.txt"),
                                   around=no_free_descriptor)
    r = reader.response()
    assert r.status == 503, r
    assert r.header("connection") == "close" and r.header("vary") == "Accept-Encoding"
    assert re.search(r"superd-httpd\[\d+\]: open \S*/alpha\.txt: Too many open files", log), log
    assert "Traceback" not in log
    assert reader.buf == b""                      # the second request was not answered


# -- ranges --------------------------------------------------------------------

@pytest.mark.parametrize("field, content_range, body", [
    ("bytes=0-4", "bytes 0-4/26", b"abcde"),
    ("bytes=23-", "bytes 23-25/26", b"xyz"),
    ("bytes=-2", "bytes 24-25/26", b"yz"),
    ("bytes=20-1000", "bytes 20-25/26", b"uvwxyz"),
    ("bytes=0-3,2-5", "bytes 0-5/26", b"abcdef"),
])
def test_single_range(serve, field, content_range, body):
    r = get(serve, "/alpha.txt", headers=[("Range", field)])
    assert r.status == 206
    assert r.header("content-range") == content_range
    assert r.body == body and r.header("content-length") == str(len(body))


def test_multipart_ranges(serve):
    r = get(serve, "/alpha.txt", headers=[("Range", "bytes=0-1, 24-")])
    assert r.status == 206
    ctype = r.header("content-type")
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("=", 1)[1].encode()
    parts = r.body.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    found = []
    for part in parts[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        assert b"Content-Type: text/plain; charset=utf-8" in head
        found.append((re.search(rb"Content-Range: (bytes \S+)", head).group(1), data))
    assert found == [(b"bytes 0-1/26", b"ab\r\n"), (b"bytes 24-25/26", b"yz\r\n")]


@pytest.mark.parametrize("field", ["bytes=26-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_range(serve, field):
    r = get(serve, "/alpha.txt", headers=[("Range", field)])
    assert r.status == 416
    assert r.header("content-range") == "bytes */26"


@pytest.mark.parametrize("field", ["bytes=5-1", "lines=1-2", "bytes=x-",
                                   "bytes=" + ",".join(["0-0"] * 17)])
def test_ignored_range_sends_everything(serve, field):
    r = get(serve, "/alpha.txt", headers=[("Range", field)])
    assert (r.status, r.body) == (200, ALPHA)


def test_if_range(serve):
    h = serve()
    first = h.get("/alpha.txt")
    etag, lm = first.header("etag"), first.header("last-modified")
    assert h.get("/alpha.txt", headers=[("Range", "bytes=0-0"), ("If-Range", etag)]).status == 206
    assert h.get("/alpha.txt", headers=[("Range", "bytes=0-0"), ("If-Range", lm)]).status == 206
    r = h.get("/alpha.txt", headers=[("Range", "bytes=0-0"), ("If-Range", '"stale"')])
    assert (r.status, r.body) == (200, ALPHA)
    r = h.get("/alpha.txt", headers=[("Range", "bytes=0-0"), ("If-Range", "W/" + etag)])
    assert r.status == 200


def test_range_on_head_is_ignored(serve):
    r = get(serve, "/alpha.txt", method="HEAD", headers=[("Range", "bytes=0-0")])
    assert r.status == 200 and r.header("content-length") == "26"


def test_range_of_big_file(serve, site):
    data = (site / "big.bin").read_bytes()
    r = get(serve, "/big.bin", headers=[("Range", "bytes=1000000-2999999")])
    assert r.status == 206 and r.body == data[1000000:3000000]


# -- precompressed files -------------------------------------------------------

def test_gzip_variant(serve, site):
    h = serve()
    plain = (site / "page.txt").read_bytes()
    r = h.get("/page.txt", headers=[("Accept-Encoding", "gzip, deflate")])
    assert r.header("content-encoding") == "gzip"
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("vary") == "Accept-Encoding"
    assert gzip.decompress(r.body) == plain
    gz_etag = r.header("etag")
    r = h.get("/page.txt", headers=[("Accept-Encoding", "gzip;q=0")])
    assert r.header("content-encoding") is None and r.body == plain
    assert r.header("etag") != gz_etag
    r = h.get("/page.txt")
    assert r.header("content-encoding") is None and r.body == plain
    assert r.header("vary") == "Accept-Encoding"
    r = h.get("/alpha.txt", headers=[("Accept-Encoding", "gzip")])    # no .gz beside it
    assert r.header("content-encoding") is None and r.body == ALPHA


@pytest.mark.parametrize("field", [("Range", "bytes=5000-"), ("If-Match", '"x"'),
                                   ("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")])
@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_vary_on_failed_conditions_and_ranges(serve, site, field, encoding):
    """412 and 416 depend on the variant Accept-Encoding chose (the 416 names
    its size): they carry Vary too, and no Content-Encoding."""
    r = get(serve, "/page.txt", headers=[("Accept-Encoding", encoding), field])
    assert r.status in (412, 416), r
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("content-encoding") is None
    if r.status == 416:
        name = "page.txt.gz" if encoding == "gzip" else "page.txt"
        assert r.header("content-range") == "bytes */%d" % os.path.getsize(site / name)


# -- directories ------------------------------------------------------------------

def test_directory_without_slash_redirects(serve):
    h = serve()
    r = h.get("/sub")
    assert r.status == 301 and r.header("location") == "/sub/"
    r = h.get("/sub?a=1")
    assert r.status == 301 and r.header("location") == "/sub/?a=1"
    assert h.get("/sub/").body == b"sub index\n"


def test_redirect_never_points_off_site(serve):
    """//evil.com must not come back as a protocol-relative //evil.com/."""
    h = serve()
    for path in ("//evil.com", "///evil.com", "/./evil.com", "/%2Fevil.com"):
        r = h.get(path)
        assert r.status == 301 and r.header("location") == "/evil.com/", path


def test_directory_without_index(serve, site):
    assert get(serve, "/nodir/").status == 403
    r = get(serve, "/nodir/", "--listing")
    assert r.status == 200 and r.header("content-type") == "text/html; charset=utf-8"
    page = r.body.decode()
    assert "&lt;script&gt;.txt" in page and "<script>" not in page
    assert 'href="%3Cscript%3E.txt"' in page
    assert "a&amp;b.txt" in page and 'href="a%26b.txt"' in page
    assert 'href="space%20name.txt"' in page
    assert ".hidden" not in page
    assert 'href="../"' in page


def test_listing_of_a_directory_with_a_name_that_is_not_utf8(serve, site):
    """A title made of undecodable bytes is shown with U+FFFD, as entry names are."""
    os.mkdir(os.fsencode(site / "nodir") + b"/\xff")
    (site / "nodir" / os.fsdecode(b"\xff") / "in.txt").write_text("x")
    h = serve("--listing")
    r = h.get("/nodir/%FF/")
    assert r.status == 200, r
    page = r.body.decode("utf-8")
    assert "<title>Index of /nodir/\ufffd/</title>" in page
    assert 'href="in.txt"' in page
    assert 'href="%FF/"' in h.get("/nodir/").body.decode("utf-8")
    assert "UnicodeEncodeError" not in h.log.text()


def test_file_with_trailing_slash_is_404(serve):
    assert get(serve, "/alpha.txt/").status == 404


@pytest.mark.parametrize("path, status", [
    ("/nothing-here", 404), ("/alpha.txt/more", 404), ("/fifo", 403),
    ("/" + "x" * 5000, 404),
])
def test_missing_and_odd_files(serve, path, status):
    assert get(serve, path).status == status


# -- safety: nothing leaves the root -------------------------------------------------

TRAVERSALS = [
    ("/../etc/passwd", 400), ("/%2e%2e/etc/passwd", 400), ("/%2E%2E/%2E%2E/etc/passwd", 400),
    ("/sub/../../etc/passwd", 400), ("/..%2f..%2fetc/passwd", 400), ("/sub/%2e%2e/%2e%2e/x", 400),
    ("/%00", 400), ("/alpha.txt%00.html", 400), ("/sub%5c..%5c..%5cetc", 400),
    ("/%252e%252e/x.txt", 200),      # decoded once: a folder literally named %2e%2e
    ("//etc/passwd", 404), ("/etc/passwd", 404),
    ("http://test/../../etc/passwd", 400),
    ("/.hidden", 404), ("/.git/config", 404), ("/%2egit/config", 404), ("/sub/.htpasswd", 404),
    ("/.well-known/thing.txt", 200),
    ("/link-in.txt", 200), ("/link-out.txt", 403), ("/link-dir-out/secret.txt", 403),
]


@pytest.mark.parametrize("path, status", TRAVERSALS)
def test_traversal(serve, path, status):
    r = get(serve, path)
    assert r.status == status
    assert b"outside the root" not in r.body and b"root:" not in r.body


def test_utf8_file_name(serve):
    assert get(serve, "/caf%C3%A9.txt").body == b"accented\n"


def test_deep_hostile_path_is_refused_quickly(serve):
    """Thousands of segments: answered (404), not worked on for long."""
    h = serve("--cgi", "**.cgi")
    assert h.get("/a" * 4000).status == 404
    assert h.get("/a" * 4000 + ".cgi").status == 404


@pytest.mark.parametrize("follow", [False, True])
def test_links_inside_the_root_lead_to_nothing_hidden(serve, site, follow):
    """What is hidden, and a CGI program's source, is judged by where a
    symbolic link leads, not by the URL: a link to a dotfile is 404, one
    into a CGI folder is 403, with or without --follow-symlinks."""
    (site / ".private").mkdir()
    (site / ".private" / "s.txt").write_text("dot secret\n")
    (site / "alias").symlink_to("cgi-bin")
    (site / "pub").symlink_to(".private/s.txt")
    (site / "pubdir").symlink_to(".private")
    (site / "git").symlink_to(".git")
    (site / "envlink.txt").symlink_to("cgi-bin/env.sh")
    (site / "well").symlink_to(".well-known")
    h = serve(*(["--follow-symlinks"] if follow else []))
    for path, status in [("/pub", 404), ("/pubdir/s.txt", 404), ("/git/config", 404),
                         ("/alias/env.sh", 403), ("/alias/noexec.sh", 403),
                         ("/alias/sub/inner.sh", 403), ("/envlink.txt", 403),
                         ("/alias/env.sh/x", 404)]:
        r = h.get(path)
        assert r.status == status, path
        assert b"secret" not in r.body and b"printf" not in r.body, path
    assert h.get("/well/thing.txt").body == b"well known\n"
    assert h.get("/link-in.txt").body == ALPHA
    assert b"GATEWAY_INTERFACE=CGI/1.1" in h.get("/cgi-bin/env.sh").body     # still runs
    assert h.get("/alias/env.sh", method="HEAD").status == 403


def test_follow_symlinks(serve):
    h = serve("--follow-symlinks")
    assert h.get("/link-out.txt").body == b"outside the root\n"
    assert h.get("/link-dir-out/secret.txt").status == 200


def test_root_through_symbolic_links_is_resolved_for_the_escape_check(handler, site, tmp_path):
    """--root may itself be a link (to a link): files are served from where it
    leads, and a link inside that leaves it is still refused."""
    (tmp_path / "inner").symlink_to(site)
    (tmp_path / "outer").symlink_to(tmp_path / "inner")
    h = handler(["--root", tmp_path / "outer" / "." / ""])
    assert h.get("/alpha.txt").body == ALPHA
    assert h.get("/link-in.txt").body == ALPHA, "a link that stays inside the real root"
    assert h.get("/link-out.txt").status == 403
    assert h.get("/link-dir-out/secret.txt").status == 403


@pytest.mark.parametrize("name", ["outer", "outer/./", "inner/..", "file", "missing", "."])
def test_real_directory_agrees_with_realpath(tmp_path, name):
    from superd_handlers.httpd import real_directory
    (tmp_path / "real").mkdir()
    (tmp_path / "inner").symlink_to(tmp_path / "real")
    (tmp_path / "outer").symlink_to(tmp_path / "inner")
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / name)
    assert real_directory(path) == os.path.realpath(path)


def test_root_option_relative_and_default(handler, site):
    """--root defaults to the working directory; a relative one is resolved once."""
    a, b = __import__("socket").socketpair()
    a.settimeout(TIMEOUT)
    proc = subprocess.Popen([sys.executable, str(HANDLER), "--quiet"], cwd=site,
                            stdin=b, stdout=b, start_new_session=True)
    b.close()
    try:
        a.sendall(request("/alpha.txt", headers=[("Connection", "close")]))
        data = b""
        while True:
            chunk = a.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.endswith(b"\r\n\r\n" + ALPHA)
        assert proc.wait(TIMEOUT) == 0
    finally:
        a.close()
        proc.kill()
        proc.wait()


def test_missing_root_is_a_config_error(tmp_path):
    result = subprocess.run([sys.executable, str(HANDLER), "--root", tmp_path / "nope"],
                            capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 78
    assert b"not a directory" in result.stderr


def test_usage_errors(tmp_path):
    result = subprocess.run([sys.executable, str(HANDLER), "--bogus"],
                            capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 64
    result = subprocess.run([sys.executable, str(HANDLER), "--root", tmp_path],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 64 and b"no socket" in result.stderr
    result = subprocess.run([sys.executable, str(HANDLER), "--help"],
                            capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 0 and b"--cgi-timeout" in result.stdout


@pytest.mark.parametrize("address", ["127.0.0.1:65536", "[::1]:99999999999999999999",
                                     "127.0.0.1:\u0661", "127.0.0.1:" + "9" * 5000])
def test_listen_port_out_of_range_is_a_usage_error(tmp_path, address):
    result = subprocess.run([sys.executable, str(HANDLER), "--listen", address,
                             "--root", tmp_path],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 64, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("superd-httpd: --listen "), lines


def test_fresh_site_builder(tmp_path):
    """make_site is deterministic enough to be rebuilt under another name."""
    assert (make_site(tmp_path / "again") / "alpha.txt").read_bytes() == ALPHA
