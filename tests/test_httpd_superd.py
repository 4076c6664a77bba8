"""superd-httpd under the real superd: nowait (one handler per connection,
plain and preloaded), wait (one handler accepts for itself, then leaves
when idle), and the shipped etc/services.yaml with the example site.

Uses conftest's `superd` fixture: a daemon on port 0, ready on its
NOTIFY_SOCKET, killed by process group at teardown.
"""

import http.client
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

from test_httpd_support import (ALPHA, TIMEOUT, Reader, get, make_site, pid_exits, request,
                                serves_side_by_side)

ROOT = Path(__file__).resolve().parent.parent

NOWAIT = """
services:
  http:
    listen: 127.0.0.1:0
    server: {python}
    args: [{handlers}/httpd.py, --root, "{tmp}/www"]
    stderr: log
"""

INTERNAL = """
services:
  http:
    listen: 127.0.0.1:0
    internal: httpd
    args: [--root, "{tmp}/www"]
    stderr: log
    preload: %s
"""

WAIT = """
services:
  http:
    listen: 127.0.0.1:0
    mode: wait
    server: {python}
    args: [{handlers}/httpd.py, --root, "{tmp}/www", --idle-exit, "0.5", --workers, "1"]
    stderr: log
"""


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "www")


def env_of(body):
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


def check(address):
    """Keep-alive, the client's address, a POST to a CGI program, a range."""
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    response, body = get(address, "/alpha.txt", conn)
    assert (response.status, body) == (200, ALPHA)
    response, body = get(address, "/cgi-bin/env.sh", conn)
    env = env_of(body)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(conn.sock.getsockname()[1])
    assert env["SERVER_PORT"] == str(address[1])
    response, body = get(address, "/cgi-bin/count.sh", conn, method="POST", body=b"x" * 100000)
    assert body == b"100000"
    response, body = get(address, "/alpha.txt", conn, headers={"Range": "bytes=-3"})
    assert (response.status, body) == (206, b"xyz")
    conn.close()


PROXIED = NOWAIT + """    proxy_protocol: v1
    proxy_from: [127.0.0.0/8]
"""


def test_proxy_protocol_client_is_the_client(superd, site):
    """Behind a load balancer (PROXY protocol) the client is the one the
    header names, which superd passes in REMOTE_ADDR (with SUPERD_SERVICE)
    and TCPLOCALIP, and which getpeername cannot know."""
    daemon = superd(PROXIED)
    sock = socket.create_connection(daemon.address("http"), timeout=TIMEOUT)
    sock.sendall(b"PROXY TCP4 192.0.2.5 198.51.100.1 5555 8443\r\n"
                 + request("/cgi-bin/env.sh", headers=[("Connection", "close")]))
    env = env_of(Reader(sock).response().body)
    sock.close()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.5", "5555")
    assert (env["SERVER_ADDR"], env["SERVER_PORT"]) == ("198.51.100.1", "8443")
    daemon.log.wait_for(r'stderr service=http .*192\.0\.2\.5 - - .*GET /cgi-bin/env\.sh ')
    assert daemon.stop() == 0


def handler_pid(address):
    response, body = get(address, "/cgi-bin/ppid.sh")
    assert response.status == 200
    return int(body)


def test_nowait(superd, site):
    daemon = superd(NOWAIT)
    address = daemon.address("http")
    check(address)
    assert handler_pid(address) != handler_pid(address)     # one handler per connection
    daemon.log.wait_for(r'stderr service=http .*GET /alpha\.txt HTTP/1\.1\\?" 200 26')
    assert daemon.stop() == 0


@pytest.mark.parametrize("preload", ["false", "true"])
def test_internal(superd, site, preload):
    daemon = superd(INTERNAL % preload)
    check(daemon.address("http"))
    daemon.log.wait_for(r'stderr service=http .*POST /cgi-bin/count\.sh HTTP/1\.1\\?" 200 6')
    assert daemon.stop() == 0


PRELOADED = """
services:
  http:
    listen: 127.0.0.1:0
    internal: httpd
    args: [--root, "{tmp}/current", %s]
    stderr: log
    preload: true
"""


def test_a_preloaded_handler_resolves_the_root_per_connection(
        superd, tmp_path):
    """The warm interpreter parses the options (and compiles --cgi) once, and
    each handler still resolves --root: a deploy by moving a link is seen by
    the next connection, with the --cgi patterns parsed in the warm one."""
    for release in ("one", "two"):
        (tmp_path / release / "scripts").mkdir(parents=True)
        (tmp_path / release / "which.txt").write_text(release)
        script = tmp_path / release / "scripts" / "hello"
        script.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n%s'\n" % release)
        script.chmod(0o755)
    (tmp_path / "current").symlink_to(tmp_path / "one")
    daemon = superd(PRELOADED % '--cgi, "/scripts/*"', args=["--log-level", "debug"])
    address = daemon.address("http")
    daemon.log.wait_for(r"^preload-ready service=http ")
    assert get(address, "/which.txt")[1] == b"one"
    assert get(address, "/scripts/hello")[1] == b"one"
    (tmp_path / "next").symlink_to(tmp_path / "two")
    (tmp_path / "next").replace(tmp_path / "current")    # an atomic switch of releases
    assert get(address, "/which.txt")[1] == b"two"
    assert get(address, "/scripts/hello")[1] == b"two"
    assert daemon.log.count(r"^start level=debug service=http .* preload=1$") == 4
    assert daemon.stop() == 0


def test_a_preloaded_handler_with_a_bad_option_says_so_each_time(superd, tmp_path):
    (tmp_path / "current").mkdir()
    daemon = superd(PRELOADED % "--no-such-option")
    address = daemon.address("http")
    daemon.log.wait_for(r"^preload-ready service=http ")
    for _ in range(2):
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            get(address, "/")
    daemon.log.wait_count(r"^stderr service=http .*superd-httpd: .*--no-such-option"
                          r".*\(try --help\)", 2)
    daemon.log.wait_count(r"^exit service=http .* status=64 ", 2)
    assert daemon.stop() == 0


def test_wait(superd, site):
    daemon = superd(WAIT)
    address = daemon.address("http")
    check(address)
    first = handler_pid(address)
    assert handler_pid(address) == first        # the same handler accepts again
    serves_side_by_side(address, site)          # and serves clients side by side
    assert pid_exits(first)                     # --idle-exit: it leaves when idle
    second = handler_pid(address)               # and superd starts another
    assert second != first
    assert daemon.stop() == 0


def test_shipped_configuration(superd, tmp_path):
    """etc/services.yaml's http service, on port 0, serves the example site
    (its CGI form answered by this interpreter, not the python3 on PATH)."""
    text = (ROOT / "etc" / "services.yaml").read_text()
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:0", text)
    shutil.copytree(ROOT / "etc" / "www", tmp_path / "www")
    form = tmp_path / "www" / "cgi-bin" / "form.py"
    form.write_text(form.read_text().replace("#!/usr/bin/env python3", "#!" + sys.executable, 1))
    daemon = superd(text)
    address = daemon.address("http")
    response, body = get(address, "/")
    assert response.status == 200 and b'action="/cgi-bin/form.py"' in body
    response, body = get(address, "/cgi-bin/form.py", method="POST",
                         body=b"name=Ada+%3CL%3E&message=a+%26+b",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200
    assert b"Hello, Ada &lt;L&gt;" in body and b"a &amp; b" in body
    assert daemon.stop() == 0
