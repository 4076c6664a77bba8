"""superd-status (handlers/status.py), tested as a program: a real process
on one end of a socketpair (or accepting for itself with --listen), and a
fake control socket: a thread in this process that serves a fixture
document on a UNIX socket in tmp_path, or answers nothing, or garbage.

- /metrics is read with prometheus_client's parser, the reference, and
  every family DESIGN.md names is checked against the fixture's values.
- /status.json must be the fixture's bytes.
- The page is loaded in headless Chromium (chromedriver over its WebDriver
  API, as test_httpd_browser does): the DOM holds the services, the live
  connections and a chart whose polylines carry the history's rates, and a
  screenshot at phone and desk widths is not blank.
- Hostile clients and a daemon that is missing, silent or talks garbage get
  a status answer, never a traceback; hypothesis mangles the fixture at any
  depth and throws bytes at the head parser.
- Last, `internal: status` under a real superd: nowait (exec'd and
  preloaded) and wait.

Every socket has a timeout; nothing sleeps to synchronise.
"""

import base64
import http.client
import importlib.util
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from conftest import connect, read_all
from test_httpd_browser import CHROMEDRIVER, CHROMIUM, WebDriver, chromium_flags, procs
from test_httpd_support import Lines, Reader, kill_group, request

ROOT = Path(__file__).resolve().parent.parent
STATUS = ROOT / "handlers" / "status.py"
TIMEOUT = 10.0
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">"\\\nname'   # a service's name
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]

assert procs           # a fixture of test_httpd_browser's, used here too
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])


def fixture_document():
    """The daemon's answer as the protocol gives it: two services (one
    paused, with a hostile name), two live connections, 60 history samples."""
    history = [{"t": 1796000000.0 + 10 * i, "accepted": {"web": 3 * i, HOSTILE: i},
                "refused": {"web": i // 2}} for i in range(60)]
    return {
        "ok": True,
        "daemon": {"pid": 123, "version": "0.1.0", "started": 1796000000.0,
                   "now": 1796000600.0, "reloads": {"ok": 2, "failed": 1},
                   "process": {"resident_memory_bytes": 18874368, "open_fds": 17,
                               "max_fds": 1024, "cpu_seconds": 0.5,
                               "start_time": 1796000000.0}},
        "buckets": list(BUCKETS),
        "services": [
            {"name": "web", "addresses": ["127.0.0.1:8080", "[::1]:8080"], "mode": "nowait",
             "state": "serving", "paused": [], "running": 1, "instances": 40,
             "accepted": 10, "refused": {"per_source": 2, "only_from": 1},
             "exits": {"ok": 8, "failed": 1, "signaled": 0, "timeout": 0},
             "health_checks": 3,
             "duration": {"counts": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9],
                          "sum": 1.5, "count": 9},
             "spawn": {"counts": [4, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
                       "sum": 0.01, "count": 10}},
            {"name": HOSTILE, "addresses": ["unix:/run/x.sock"], "mode": "wait",
             "state": "paused", "paused": ["rate", "instances"], "running": 0,
             "instances": None, "accepted": 5, "refused": {},
             "exits": {"ok": 5, "failed": 0, "signaled": 0, "timeout": 0}, "health_checks": 0,
             "duration": {"counts": [0] * 14, "sum": 0.0, "count": 0},
             "spawn": {"counts": [0] * 14, "sum": 0.0, "count": 0}}],
        "connections": [
            {"id": 17, "service": "web", "client": "10.0.0.1:5555", "local": "127.0.0.1:8080",
             "pid": 4242, "state": "running", "age": 1.25},
            {"id": 18, "service": HOSTILE, "client": "<b>10.0.0.2:1</b>", "local": "unix:",
             "pid": None, "state": "proxy-wait", "age": 0.5}],
        "history": history}


DOCUMENT = json.dumps(fixture_document(), indent=1).encode()


# -------------------------------------------------------------------------
# the fake control socket and the handler process
# -------------------------------------------------------------------------

class ControlServer:
    """A fake superd control socket in a thread: each client's request line
    is recorded, then answered with `answer` (bytes) and closed; with
    answer None, nothing is said and the connection is held until close()."""

    def __init__(self, path, answer):
        self.path, self.answer = str(path), answer
        self.requests, self.held = [], []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.stop_r, self.stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self.stop_r, selectors.EVENT_READ)
            while all(key.fileobj is self.listener for key, _ in selector.select()):
                conn, _ = self.listener.accept()
                conn.settimeout(TIMEOUT)
                self.requests.append(read_line(conn))
                if self.answer is None:
                    self.held.append(conn)
                    continue
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass              # the handler stopped reading (a size bound)
                conn.close()

    def close(self):
        self.stop_w.send(b"x")
        self.thread.join(TIMEOUT)
        for sock in (self.listener, self.stop_r, self.stop_w, *self.held):
            sock.close()


def read_line(conn):
    data = b""
    while not data.endswith(b"\n") and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def control(tmp_path):
    """Factory: control(answer=DOCUMENT) -> a ControlServer; all closed at teardown."""
    servers = []

    def start(answer=DOCUMENT, name="control"):
        server = ControlServer(tmp_path / name, answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Status:
    """handlers/status.py on one end of a socketpair, its stderr collected."""

    def __init__(self, args=(), control_path=None, env=None):
        ours, theirs = socket.socketpair()
        child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if control_path is not None:
            child_env["SUPERD_CONTROL"] = str(control_path)
        child_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, str(STATUS), *map(str, args)],
                                     stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                                     env=child_env, start_new_session=True)
        theirs.close()
        ours.settimeout(TIMEOUT)
        self.sock, self.reader = ours, Reader(ours)
        self.log = Lines(self.proc.stderr)

    def get(self, path, method="GET", **kw):
        self.sock.sendall(request(path, method, **kw))
        return self.reader.response(method)

    def finish(self):
        """Close our end; the exit status, and the whole of stderr."""
        self.sock.close()
        status = self.proc.wait(TIMEOUT)
        assert self.log.wait_closed()
        return status, self.log.text()

    def close(self):
        self.sock.close()
        kill_group(self.proc)


@pytest.fixture
def status(control):
    """Factory: status(*args, answer=DOCUMENT) -> a Status whose control
    socket answers `answer`; every one killed at teardown."""
    started = []

    def start(*args, answer=DOCUMENT, control_path=None, env=None):
        if control_path is None:
            control_path = control(answer, name="control%d" % len(started)).path
        handler = Status(args, control_path, env)
        started.append(handler)
        return handler

    yield start
    for handler in started:
        handler.close()


def families(text):
    """{family name: prometheus_client Metric} of an exposition."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family):
    """{(sample name, sorted label items): value} of a family."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


# -------------------------------------------------------------------------
# /metrics, /status.json and the protocol with the daemon
# -------------------------------------------------------------------------

def test_metrics_parse_and_carry_every_family(status):
    handler = status()
    response = handler.get("/metrics")
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    text = response.body.decode("utf-8")
    assert text.count("# HELP ") == text.count("# TYPE ") == 15
    found = families(text)
    web, odd = (("service", "web"),), (("service", HOSTILE),)     # the parser unescapes
    expected = {
        ("superd_info", "gauge"): {("superd_info", (("version", "0.1.0"),)): 1},
        ("superd_connections_accepted", "counter"): {
            ("superd_connections_accepted_total", web): 10,
            ("superd_connections_accepted_total", odd): 5},
        ("superd_connections_refused", "counter"): {
            ("superd_connections_refused_total", (("reason", "only_from"),) + web): 1,
            ("superd_connections_refused_total", (("reason", "per_source"),) + web): 2},
        ("superd_handlers_running", "gauge"): {
            ("superd_handlers_running", web): 1, ("superd_handlers_running", odd): 0},
        ("superd_handler_exits", "counter"): {
            ("superd_handler_exits_total", (("outcome", o),) + svc): n
            for svc, counts in ((web, (8, 1, 0, 0)), (odd, (5, 0, 0, 0)))
            for o, n in zip(("ok", "failed", "signaled", "timeout"), counts)},
        ("superd_service_paused", "gauge"): {
            ("superd_service_paused", (("reason", "instances"),) + odd): 1,
            ("superd_service_paused", (("reason", "rate"),) + odd): 1},
        ("superd_reloads", "counter"): {
            ("superd_reloads_total", (("result", "ok"),)): 2,
            ("superd_reloads_total", (("result", "failed"),)): 1},
        ("superd_health_checks", "counter"): {
            ("superd_health_checks_total", web): 3, ("superd_health_checks_total", odd): 0},
        ("process_resident_memory_bytes", "gauge"): {
            ("process_resident_memory_bytes", ()): 18874368},
        ("process_open_fds", "gauge"): {("process_open_fds", ()): 17},
        ("process_max_fds", "gauge"): {("process_max_fds", ()): 1024},
        ("process_cpu_seconds", "counter"): {("process_cpu_seconds_total", ()): 0.5},
        ("process_start_time_seconds", "gauge"): {
            ("process_start_time_seconds", ()): 1796000000.0},
    }
    for (name, kind), samples in expected.items():
        assert found[name].type == kind, name
        assert values(found[name]) == samples, name
    assert_histogram(found["superd_handler_duration_seconds"], "web",
                     [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9], 1.5, 9)
    assert_histogram(found["superd_spawn_seconds"], "web", [4] + [10] * 13, 0.01, 10)
    assert_histogram(found["superd_spawn_seconds"], HOSTILE, [0] * 14, 0.0, 0)
    assert set(found) == {name for name, _ in expected} | {
        "superd_handler_duration_seconds", "superd_spawn_seconds"}


def assert_histogram(family, service, cumulative, total, count):
    """family's samples for service: one bucket per bound (le as a float),
    +Inf equal to the count, then the sum and count."""
    assert family.type == "histogram"
    mine = [s for s in family.samples if s.labels["service"] == service]
    buckets = [(s.labels["le"], s.value) for s in mine if s.name.endswith("_bucket")]
    assert [float(le) for le, _ in buckets] == [float(b) for b in BUCKETS] + [float("inf")]
    assert [v for _, v in buckets] == cumulative + [count]
    assert {s.name[len(family.name):]: s.value for s in mine
            if not s.name.endswith("_bucket")} == {"_sum": total, "_count": count}


def test_status_json_is_the_daemons_answer_and_the_request_is_one_line(status, control):
    server = control()
    handler = status(control_path=server.path)
    response = handler.get("/status.json")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.body == DOCUMENT
    assert json.loads(response.body) == fixture_document()
    assert server.requests == [b'{"command": "status"}\n']


def test_every_request_asks_the_daemon_afresh_on_one_connection(status, control):
    server = control()
    handler = status(control_path=server.path)
    for path in ("/", "/metrics", "/status.json"):
        assert handler.get(path).status == 200
    assert len(server.requests) == 3


def test_head_has_the_get_fields_and_no_body(status):
    handler = status()
    get = handler.get("/metrics")
    head = handler.get("/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(get.body))
    assert handler.get("/status.json").body == DOCUMENT      # nothing was left on the wire


def test_the_page_is_served_with_a_policy_that_loads_nothing(status):
    response = status().get("/")
    assert response.status == 200
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    policy = response.header("Content-Security-Policy")
    assert policy.startswith("default-src 'none';")
    nonce = policy.partition("script-src 'nonce-")[2].partition("'")[0]
    assert len(nonce) >= 16 and ('<script nonce="%s">' % nonce).encode() in response.body
    assert b'http-equiv="refresh"' not in response.body


@pytest.mark.parametrize("query, seconds", [("refresh=10", 10), ("a=b&refresh=1", 5),
                                            ("refresh=99999", 3600), ("refresh=0", None),
                                            ("xrefresh=10", None), ("refresh=ten", None)])
def test_the_page_reloads_itself_when_asked(status, query, seconds):
    body = status().get("/?" + query).body
    meta = (b'<meta http-equiv="refresh" content="%d">' % seconds if seconds
            else b'http-equiv="refresh"')
    assert (meta in body) == bool(seconds)


class Cells(HTMLParser):
    """The text of every table cell and element id of a page, parsed without a browser."""

    def __init__(self):
        super().__init__()
        self.cells, self.ids, self.tags, self.depth = [], set(), [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.update(v for k, v in attrs if k == "id")
        if tag == "td":
            self.cells.append("")
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.cells[-1] += data


def test_the_page_has_its_tables_without_javascript(status):
    """The tables are in the HTML as served; every string from the document
    is escaped (the hostile name and client are text, not elements)."""
    page = Cells()
    page.feed(status().get("/").body.decode("utf-8"))
    assert {"services", "refusals", "connections", "history"} <= page.ids
    assert "img" not in page.tags
    assert {"web", HOSTILE, "127.0.0.1:8080[::1]:8080", "1 / 40", "0 / \u221e",
            "paused rate, instances", "<b>10.0.0.2:1</b>", "proxy-wait", "4\u202f242",
            "only_from", "per_source", "1.2 s", "500 ms"} <= set(page.cells)


def test_wrong_shapes_in_the_document_are_shown_as_missing(status):
    """A daemon of another version: values of the wrong type are left out,
    and the answers are still complete (and parse)."""
    odd = {"ok": True, "daemon": [], "buckets": "many", "history": [1, {"t": "x"}, None],
           "services": [5, {"name": "s", "running": "two", "refused": [], "paused": [3, "rate"],
                            "duration": {"counts": [1], "count": True}, "accepted": 1e400},
                        {"name": 7}],
           "connections": [None, {"id": "<x>", "age": -1}]}
    handler = status(answer=json.dumps(odd).replace("1e400", "Infinity").encode())
    found = families(handler.get("/metrics").body.decode())
    assert values(found["superd_connections_accepted"]) == {
        ("superd_connections_accepted_total", (("service", "s"),)): float("inf")}
    assert values(found["superd_service_paused"]) == {
        ("superd_service_paused", (("reason", "rate"), ("service", "s"))): 1}
    assert values(found["superd_info"]) == {("superd_info", (("version", ""),)): 1}
    assert found["superd_handler_duration_seconds"].samples == []
    page = handler.get("/")
    assert page.status == 200 and b"&lt;x&gt;" in page.body
    status_code, log = handler.finish()
    assert status_code == 0 and "Traceback" not in log


# -------------------------------------------------------------------------
# any document: every value of the fixture replaced by any JSON value
# -------------------------------------------------------------------------

OUT_OF_RANGE = [("buckets", 3), ("services", 0, "duration", "sum"),
                ("services", 0, "duration", "count"), ("services", 0, "accepted"),
                ("daemon", "process", "resident_memory_bytes"),
                ("daemon", "process", "cpu_seconds"), ("daemon", "now"),
                ("connections", 0, "age"), ("history", 5, "accepted", "web"),
                ("history", 5, "t")]


@pytest.mark.parametrize("value", [10 ** 400, float("nan"), float("inf"), -1e308])
@pytest.mark.parametrize("path", OUT_OF_RANGE, ids=lambda path: "-".join(map(str, path)))
def test_numbers_past_a_floats_range_render(path, value):
    """An integer too large for a float (JSON allows it), NaN and the
    infinities, wherever the document has a number."""
    status = load_status()
    doc = fixture_document()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    list(text_string_to_metric_families(status.render_metrics(doc)))
    page = status.render_page(doc, "nonce")
    embedded = page.partition('id="history">')[2].partition("</script>")[0]
    json.loads(embedded)


def load_status():
    """handlers/status.py as a module, loaded by path once."""
    module = sys.modules.get("status_under_test")
    if module is None:
        spec = importlib.util.spec_from_file_location("status_under_test", STATUS)
        module = importlib.util.module_from_spec(spec)
        sys.modules["status_under_test"] = module
        spec.loader.exec_module(module)
    return module


def containers(inner):
    """JSON arrays and objects of inner values."""
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from([10 ** 400, -10 ** 400]),            # past a float's range
    containers, max_leaves=12)


@st.composite
def mangled_documents(draw):
    """The fixture with a few of its values, at any depth, replaced."""
    doc = fixture_document()
    for _ in range(draw(st.integers(1, 4))):
        parent, key = None, None
        node = doc
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            keys = sorted(node) if isinstance(node, dict) else range(len(node))
            parent, key = node, draw(st.sampled_from(list(keys)))
            node = node[key]
        if parent is not None:
            parent[key] = draw(JSON_VALUES)
    return doc


@FUZZ
@given(mangled_documents())
def test_any_document_renders_and_parses(doc):
    """Rule 1 for documents: whatever a daemon sends that is an object with
    ok true, the metrics parse and the page renders (its embedded history
    is JSON).  The fixture's shape keeps the mangling deep."""
    status = load_status()
    doc["ok"] = True
    list(text_string_to_metric_families(status.render_metrics(doc)))
    page = status.render_page(doc, "nonce")
    embedded = page.partition('<script type="application/json" id="history">')[2]
    json.loads(embedded.partition("</script>")[0])
    page.encode("utf-8", "replace")


FINITE_JSON = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    containers, max_leaves=12)


@FUZZ
@given(JSON_VALUES.map(json.dumps) | st.text(alphabet=' \t\n{}[]",:0123456789.eE+-truefalsn\\',
                                             max_size=30))
def test_json_value_agrees_with_json_loads(text):
    """The handler parses JSON with _json's scanner, not the json module."""
    status = load_status()
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            status.json_value(text)
    else:
        assert repr(status.json_value(text)) == repr(expected)     # repr: NaN is NaN


@FUZZ
@given(FINITE_JSON)
def test_json_text_is_json(value):
    text = load_status().json_text(value)
    assert text.isascii() and json.loads(text) == value


@FUZZ
@given(st.binary(max_size=300))
def test_any_head_parses_or_is_an_http_error(head):
    status = load_status()
    try:
        request = status.parse_head(head)
    except status.HttpError as exc:
        assert exc.status in (400, 431, 505)
    else:
        assert request.path.startswith("/") and request.method


# -------------------------------------------------------------------------
# HTTP: methods, paths, keep-alive, hostile clients
# -------------------------------------------------------------------------

def test_unknown_paths_and_methods_keep_the_connection(status):
    handler = status()
    missing = handler.get("/nowhere")
    assert missing.status == 404 and missing.header("Connection") is None
    post = handler.get("/metrics", method="DELETE")
    assert post.status == 405 and post.header("Allow") == "GET, HEAD"
    assert handler.get("/metrics?x=1").status == 200          # the query is not the path
    assert handler.get("http://elsewhere/status.json").body == DOCUMENT   # absolute form


def test_http_1_x_is_answered_as_1_1(status):
    handler = status()
    handler.sock.sendall(b"GET /status.json HTTP/1.7\r\nHost: x\r\n\r\n")
    response = handler.reader.response()
    assert response.status == 200 and response.body == DOCUMENT


def test_a_request_with_a_body_is_answered_then_closed(status):
    handler = status()
    response = handler.get("/metrics", method="POST", body=b"x" * 1000)
    assert response.status == 405 and response.header("Connection") == "close"
    assert handler.reader.at_eof()


@pytest.mark.parametrize("version, keep", [("HTTP/1.1", True), ("HTTP/1.0", False)])
def test_connection_close_and_http_1_0(status, version, keep):
    handler = status()
    handler.sock.sendall(request("/metrics", version=version) +
                         request("/metrics", headers=[("Connection", "close")]))
    first = handler.reader.response()
    assert first.status == 200
    if keep:
        assert handler.reader.response().header("Connection") == "close"
    assert handler.reader.at_eof()
    assert handler.finish()[0] == 0


@pytest.mark.parametrize("data, code", [
    (b"\x00\x01\x02 garbage \xff\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                          # no Host
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.10\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET nothing HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (20 << 10) + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
], ids=["garbage", "http-0.9", "no-host", "version", "bad-version", "no-colon", "folded", "length",
        "target", "huge-header", "many-fields"])
def test_bad_requests_get_a_status_and_a_close(status, data, code):
    handler = status()
    handler.sock.sendall(data)
    response = handler.reader.response()
    assert response.status == code
    assert response.header("Connection") == "close"
    assert handler.reader.at_eof()
    exit_status, log = handler.finish()
    assert exit_status == 0 and "Traceback" not in log


def test_a_silent_client_is_dropped_at_the_header_timeout(status):
    handler = status("--header-timeout", "0.3")
    assert handler.sock.recv(100) == b""          # closed by the handler, within TIMEOUT
    assert handler.proc.wait(TIMEOUT) == 0


def test_a_head_sent_too_slowly_is_408(status):
    handler = status("--header-timeout", "0.3")
    handler.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    response = handler.reader.response()
    assert response.status == 408 and handler.reader.at_eof()


def test_an_idle_keep_alive_connection_is_closed(status):
    handler = status("--keepalive-timeout", "0.3")
    assert handler.get("/metrics").status == 200
    assert handler.reader.at_eof()
    assert handler.proc.wait(TIMEOUT) == 0


# -------------------------------------------------------------------------
# the daemon missing, silent, or talking garbage: 503, never a traceback
# -------------------------------------------------------------------------

DEEP = b"[" * 100000 + b"]" * 100000


@pytest.mark.parametrize("answer, args, says", [
    (b"", (), "not JSON"),
    (b"<html>nope</html>", (), "not JSON"),
    (b"\xff\xfe\x00garbage", (), "not JSON"),
    (DEEP, (), "not JSON"),
    (b"[1, 2]", (), "not a JSON object"),
    (b'{"ok": false, "error": "no such command\\n\\u0000"}', (), "superd refused: no such command"),
    (b'{"services": []}', (), "superd refused: no reason given"),
    (DOCUMENT, ("--max-document", "1K"), "larger than 1024 bytes"),
    (None, ("--control-timeout", "0.3"), "did not answer within 0.3 s"),
], ids=["empty", "html", "binary", "deep", "array", "refused", "not-ok", "too-large", "silent"])
def test_a_daemon_that_does_not_answer_properly_is_503(status, answer, args, says):
    handler = status(*args, answer=answer)
    for path in ("/", "/metrics", "/status.json"):
        response = handler.get(path)
        assert response.status == 503, response
        assert response.header("Content-Type") == "text/plain; charset=utf-8"
        assert says in response.body.decode(), response.body
        assert response.header("Connection") is None        # the client may try again
    exit_status, log = handler.finish()
    assert exit_status == 0 and "Traceback" not in log
    assert log.count("superd-status[") == 3 and says in log


@pytest.mark.parametrize("where", ["missing", "unset", "not-a-socket", "too-long"])
def test_no_control_socket_is_503(status, tmp_path, where):
    paths = {"missing": tmp_path / "nothing-here", "unset": "",
             "not-a-socket": tmp_path, "too-long": "/" + "x" * 200}
    handler = status(control_path=paths[where])
    response = handler.get("/metrics")
    assert response.status == 503
    assert response.body.startswith(b"superd-status: cannot read superd's state: ")
    head = handler.get("/", method="HEAD")
    assert head.status == 503 and head.body == b""
    exit_status, log = handler.finish()
    assert exit_status == 0 and "Traceback" not in log


def test_diagnostics_never_reach_a_client_on_fd_2(tmp_path):
    """Under inetd and xinetd fd 2 is the client's socket too: the 503's
    reason goes in the answer, and no log line follows it onto the wire."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen([sys.executable, str(STATUS)], stdin=theirs, stdout=theirs,
                                stderr=theirs, start_new_session=True,
                                env={"SUPERD_CONTROL": str(tmp_path / "none")})
        theirs.close()
        try:
            ours.settimeout(TIMEOUT)
            ours.sendall(request("/metrics", headers=[("Connection", "close")]))
            answer = read_all(ours)
            assert proc.wait(TIMEOUT) == 0
        finally:
            kill_group(proc)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"superd-status[" not in answer


def test_the_process_is_named_after_its_service(status):
    """launch() (the kit's block) names the process after SUPERD_SERVICE,
    cut to 15 bytes, as ps -o comm and top show it."""
    handler = status(env={"SUPERD_SERVICE": "metrics-for-prometheus"})
    assert handler.get("/status.json").status == 200       # main() is past launch()
    with open("/proc/%d/comm" % handler.proc.pid) as comm:
        assert comm.read().strip() == "metrics-for-pro"


def test_the_page_lists_at_most_500_connections():
    doc = fixture_document()
    doc["connections"] = [dict(doc["connections"][0], id=n) for n in range(600)]
    page = load_status().render_page(doc, "nonce")
    assert page.count('<td class="n" data-label="Id">') == 500
    assert "and 100 more" in page and "Live connections <span class=\"sub\">(600)" in page


def test_the_control_option_beats_the_environment(status, control):
    server = control(name="named")
    handler = status("--control", server.path, control_path="/nonexistent")
    assert handler.get("/status.json").body == DOCUMENT


# -------------------------------------------------------------------------
# the command line and accepting for itself
# -------------------------------------------------------------------------

def run(*args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, str(STATUS), *args], stdin=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_command_line():
    assert run("--version").stdout == "superd-status/0.1.0\n"
    shown = run("--help")
    assert shown.returncode == 0 and "--control PATH" in shown.stdout
    bad = run("--bogus")
    assert bad.returncode == 64 and "unknown option '--bogus'" in bad.stderr
    assert run("--control-timeout", "0").returncode == 64
    assert run("--listen", "127.0.0.1:70000").returncode == 64
    nothing = run()
    assert nothing.returncode == 64 and "no socket on fd 0" in nothing.stderr


@pytest.fixture
def listening(procs, control):
    """Factory: listening(*args) -> (host, port) of status.py --listen on
    port 0, its control socket the fixture's, and its stderr Lines."""
    def start(*args):
        server = control(name="listen-control")
        proc = procs([sys.executable, STATUS, "--listen", "127.0.0.1:0", *args],
                     env={"PATH": os.environ.get("PATH", ""), "SUPERD_CONTROL": server.path},
                     stderr=subprocess.PIPE)
        log = Lines(proc.stderr)
        port = int(log.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        return ("127.0.0.1", port), proc, log
    return start


def test_accepting_for_itself_serves_clients_side_by_side(listening):
    address, _proc, _log = listening()
    silent = connect(address)                  # holds its thread, not the others
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    for path in ("/metrics", "/status.json", "/"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.close()
    silent.close()


def test_accepting_for_itself_leaves_when_idle(listening):
    address, proc, _log = listening("--idle-exit", "0.3")
    with connect(address) as sock:
        sock.sendall(request("/status.json", headers=[("Connection", "close")]))
        assert read_all(sock).endswith(DOCUMENT)
    assert proc.wait(TIMEOUT) == 0


# -------------------------------------------------------------------------
# the page in headless Chromium
# -------------------------------------------------------------------------

class Browser(WebDriver):
    """test_httpd_browser's WebDriver, and the few calls more that a page check needs."""

    def start(self, args, phone=False):
        options = {"binary": CHROMIUM, "args": args}
        if phone:                     # a phone's viewport: the page's viewport meta is honoured
            options["mobileEmulation"] = {"deviceMetrics": {"width": 390, "height": 844,
                                                            "pixelRatio": 2}}
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = "/session/" + value["sessionId"]
        self.call("POST", self.session + "/timeouts", {"implicit": 20000, "pageLoad": 30000})

    def execute(self, script):
        return self.call("POST", self.session + "/execute/sync", {"script": script, "args": []})

    def window(self, width, height):
        self.call("POST", self.session + "/window/rect", {"width": width, "height": height})

    def screenshot(self):
        return base64.b64decode(self.call("GET", self.session + "/screenshot"))


@pytest.fixture
def browser(procs, tmp_path):
    """Factory: browser(phone=False) -> a Browser with a session; quit at teardown."""
    assert Path(CHROMIUM).exists(), "chromium is not installed (.ci/run installs it)"
    assert Path(CHROMEDRIVER).exists(), "chromium-driver is not installed (.ci/run installs it)"
    sessions = []

    def start(phone=False):
        proc = procs([CHROMEDRIVER, "--port=0"], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL)
        port = int(Lines(proc.stdout).wait_for(r"started successfully on port (\d+)").group(1))
        driver = Browser(port)
        sessions.append(driver)
        driver.start(chromium_flags(tmp_path / ("profile%d" % len(sessions))), phone=phone)
        return driver

    yield start
    for driver in sessions:
        driver.quit()


# What the page shows, read from its DOM.
READ_PAGE = """
var rows = function (id) {
  return Array.prototype.map.call(document.querySelectorAll("#" + id + " tbody tr"),
                                  function (tr) { return tr.cells[0].textContent; });
};
var charts = {};
document.querySelectorAll("figure[data-series]").forEach(function (figure) {
  charts[figure.getAttribute("data-series")] = {
    top: figure.getBoundingClientRect().top,
    lines: Array.prototype.map.call(figure.querySelectorAll("svg polyline"), function (line) {
      var points = [];
      for (var i = 0; i < line.points.numberOfItems; i++) {
        points.push([line.points.getItem(i).x, line.points.getItem(i).y]);
      }
      return {name: line.getAttribute("data-name"), points: points};
    }),
    legend: Array.prototype.map.call(figure.querySelectorAll(".legend li"),
                                     function (li) { return li.textContent.trim(); })};
});
return {title: document.title, services: rows("services"), connections: rows("connections"),
        refusals: rows("refusals"), charts: charts, scripts: document.scripts.length,
        width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth};
"""


def read_page(driver, url):
    driver.go(url)
    return driver.execute(READ_PAGE)


def check_page(page):
    """The page's DOM against the fixture: tables, and charts drawn from the history."""
    assert page["title"] == "superd on " + os.uname().nodename        # no script of the name's ran
    assert page["services"] == ["web", HOSTILE] and page["connections"] == ["17", "18"]
    assert page["refusals"] == ["only_from", "per_source"] and page["scripts"] == 2
    accepted, refused = page["charts"]["accepted"], page["charts"]["refused"]
    assert [line["name"] for line in accepted["lines"]] == [HOSTILE, "web", "all"]
    assert accepted["legend"] == [HOSTILE, "web", "all"]
    lines = {line["name"]: line["points"] for line in accepted["lines"]}
    assert all(len(points) == 59 for points in lines.values())       # a rate per pair of samples
    xs = [x for x, _ in lines["web"]]
    assert xs == sorted(xs) and len(set(xs)) == 59
    assert len({y for _, y in lines["web"]}) == 1                      # 0.3/s throughout
    assert lines["web"][0][1] < lines[HOSTILE][0][1]                  # above 0.1/s
    assert [line["name"] for line in refused["lines"]] == ["web"]
    assert len(refused["lines"][0]["points"]) == 59
    assert page["scrollWidth"] <= page["width"], "the page scrolls sideways"


def png_colours(data, enough=64):
    """How many colours an 8-bit RGB or RGBA PNG has (counting stops at enough)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    previous, colours = bytearray(stride), set()
    for y in range(height):
        start = y * (stride + 1)
        line = unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), previous, bpp)
        colours.update(bytes(line[x:x + bpp]) for x in range(0, stride, bpp * 7))
        if len(colours) >= enough:
            break
        previous = line
    return len(colours)


def unfilter(kind, line, previous, bpp):
    """One scanline of a PNG with its filter (RFC 2083 section 6) undone."""
    if kind == 2:
        return bytearray((a + b) & 255 for a, b in zip(line, previous))
    for i in range(len(line)) if kind else ():
        left = line[i - bpp] if i >= bpp else 0
        up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 255
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + best) & 255
    return line


def test_the_page_in_chromium_on_a_wide_screen(listening, browser, tmp_path):
    address, _proc, log = listening()
    driver = browser()
    driver.window(1400, 1000)
    page = read_page(driver, "http://%s:%d/" % address)
    check_page(page)
    charts = page["charts"]
    assert charts["accepted"]["top"] == charts["refused"]["top"]      # side by side
    shot = driver.screenshot()
    (tmp_path / "wide.png").write_bytes(shot)
    assert png_colours(shot) >= 16
    assert "Traceback" not in log.text()


def test_the_page_in_chromium_on_a_phone(listening, browser, tmp_path):
    address, _proc, _log = listening()
    driver = browser(phone=True)
    page = read_page(driver, "http://%s:%d/" % address)
    assert page["width"] == 390                       # the viewport meta is honoured
    check_page(page)
    charts = page["charts"]
    assert charts["accepted"]["top"] < charts["refused"]["top"]       # one above the other
    shot = driver.screenshot()
    (tmp_path / "phone.png").write_bytes(shot)
    assert png_colours(shot) >= 16


# -------------------------------------------------------------------------
# internal: status under a real superd
# -------------------------------------------------------------------------

@pytest.mark.parametrize("mode, preload", [("nowait", "false"), ("nowait", "true"),
                                           ("wait", "false")])
def test_internal_status_under_superd(superd, control, mode, preload):
    """superd starts the bundled handler for `internal: status` (nowait: one
    per connection, exec'd or forked from a warm interpreter; wait: one that
    accepts for itself).  --control names the fixture's socket, so the
    answer is the fixture's whatever superd's own control socket says."""
    server = control()
    daemon = superd("""
services:
  status:
    listen: 127.0.0.1:0
    mode: %s
    preload: %s
    internal: status
    args: [--control, "%s"]
    stderr: log
""" % (mode, preload, server.path))
    address = daemon.address("status")
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    found = families(response.read().decode())
    assert values(found["superd_connections_accepted"])[
        ("superd_connections_accepted_total", (("service", "web"),))] == 10
    conn.request("GET", "/status.json")
    assert conn.getresponse().read() == DOCUMENT
    conn.close()
    assert "Traceback" not in daemon.log.text()
