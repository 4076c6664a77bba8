"""A scrape while 2,000 connections run (issue 14, "Tests and bench").

One real superd serves three services: `hold`, whose handler is /bin/cat
(a few hundred kB each, and it lives exactly until its client closes: it
reads to end of file), `echo`, and `internal: status`.  The test opens
2,000 clients to `hold`, waits (polling the control socket, with a
deadline) until all 2,000 handlers run, and then asks every reader of the
records at once:

- `/metrics`, parsed by prometheus_client's reference parser: 2,000
  running, 2,000 accepted;
- `/status.json`: every one of the 2,000 connections, with its client (our
  socket's own address), a pid and the state running;
- `/`: the page's table holds the first 500 of them by id (its documented
  cap, handlers/status.py MAX_ROWS) and says how many more there are;
- `superdctl list` (the real console script): a row for each of the 2,000;

each answered within SCRAPE_BOUND seconds (a hang bound, not a speed
claim), while `echo` keeps serving.  Then every client closes, and every
handler is reaped: no child of superd left, the running counts at 0, 2,000
exits counted as ok, and superd holds as many fds as before the load.

Both processes need about N + a few hundred fds: the test raises its own
soft RLIMIT_NOFILE within the hard limit (superd inherits it) and checks
superd's own limit; a hard limit too low fails the test, saying so.
"""

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TIMEOUT, connect
from superd import ctl

N = 2000
PAGE_ROWS = 500               # handlers/status.py MAX_ROWS: the page's documented cap
FDS_NEEDED = N + 512          # each side: N sockets, and room for everything else
SCRAPE_BOUND = 10.0           # seconds: an answer that takes longer has hung, not slowed
RUNNING_DEADLINE = 40.0       # seconds for 2,000 starts on a loaded 2-core machine
SUPERDCTL = str(Path(sys.executable).with_name("superdctl"))

CONFIG = f"""
services:
  hold: {{listen: "127.0.0.1:0", server: /bin/cat, instances: {N + 100}}}
  echo: {{listen: "127.0.0.1:0", internal: echo}}
  status: {{listen: "127.0.0.1:0", internal: status}}
"""


@pytest.fixture
def enough_fds():
    """Raise this process's soft fd limit to FDS_NEEDED (superd inherits it); restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {FDS_NEEDED}: {N} connections "
                    "cannot be held here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FDS_NEEDED), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def ask(d, command, **fields):
    """One request on the control socket; the answer object."""
    answer = ctl.ask(d.ready["control"], {"command": command, **fields}, timeout=TIMEOUT)
    assert answer["ok"], answer
    return answer


def wait_until(d, done, deadline, what):
    """Ask for status until done(answer); each answer is the loop's state at that moment."""
    end = time.monotonic() + deadline
    while True:
        answer = ask(d, "status")
        if done(answer):
            return answer
        if time.monotonic() > end:
            services = {s["name"]: s["running"] for s in answer["services"]}
            raise AssertionError(f"never {what} within {deadline} s; running: {services}")


def running(answer, name):
    return next(s["running"] for s in answer["services"] if s["name"] == name)


def client_text(sock):
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def timed(fetch):
    """(fetch()'s result, the seconds it took)."""
    t0 = time.monotonic()
    result = fetch()
    return result, time.monotonic() - t0


def get(http, path):
    """GET path on the keep-alive connection: (status, body text)."""
    http.request("GET", path)
    reply = http.getresponse()
    return reply.status, reply.read().decode()


def metric_samples(text):
    """{(name, sorted labels): value} by the reference parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class ConnectionRows(HTMLParser):
    """The page's live-connection table: one [id, service, client, ...] per row."""

    def __init__(self):
        super().__init__()
        self.inside = False       # within <div id="connections">
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "div" and ("id", "connections") in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None
        elif tag == "table":
            self.inside = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def page_rows(page):
    parser = ConnectionRows()
    parser.feed(page)
    return [row for row in parser.rows if row]     # the head row has <th>s only


def echo_serves(d):
    with connect(d.address("echo")) as sock:
        sock.sendall(b"still here\n")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while (data := sock.recv(4096)):
            got += data
    assert got == b"still here\n"


def hold_connections(stack, d):
    """N clients of `hold`; {client text: socket}."""
    address = d.address("hold")
    clients = {}
    for _ in range(N):
        sock = stack.enter_context(connect(address))
        clients[client_text(sock)] = sock
    return clients


def superd_fds(d):
    return sorted(os.readlink(f"/proc/{d.pid}/fd/{f}") for f in os.listdir(f"/proc/{d.pid}/fd"))


def test_a_scrape_while_2000_connections_run(superd, enough_fds):
    d = superd(CONFIG)
    soft, _ = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= FDS_NEEDED, f"superd's fd limit is {soft}"
    ask(d, "status")          # past READY=1: its notify socket is closed by now
    fds_before = superd_fds(d)
    with ExitStack() as stack:
        clients = hold_connections(stack, d)
        wait_until(d, lambda a: running(a, "hold") == N, RUNNING_DEADLINE, f"{N} running")
        scrape_everything(d, clients)
        echo_serves(d)
    # every client has closed: each cat reads its end of file and exits 0
    done = wait_until(d, lambda a: running(a, "hold") == 0 and not a["connections"],
                      RUNNING_DEADLINE, "every handler reaped")
    hold = next(s for s in done["services"] if s["name"] == "hold")
    assert hold["accepted"] == N and hold["exits"]["ok"] == N, hold
    assert psutil.Process(d.pid).children() == [], "a handler left unreaped"
    assert superd_fds(d) == fds_before, "superd holds more fds than before the load"
    metrics = scrape(d, "/metrics")
    assert metrics[("superd_handlers_running", (("service", "hold"),))] == 0


def scrape_everything(d, clients):
    """Every reader of the records, while the N handlers run."""
    ours = set(clients)
    with ExitStack() as stack:
        web = http.client.HTTPConnection(*d.address("status"), timeout=SCRAPE_BOUND)
        stack.callback(web.close)
        (status, text), took = timed(lambda: get(web, "/metrics"))
        assert status == 200 and took < SCRAPE_BOUND, (status, took)
        check_metrics(metric_samples(text))
        (status, text), took = timed(lambda: get(web, "/status.json"))
        assert status == 200 and took < SCRAPE_BOUND, (status, took)
        live = check_document(json.loads(text), ours)
        (status, page), took = timed(lambda: get(web, "/"))
        assert status == 200 and took < SCRAPE_BOUND, (status, took)
        check_page(page, live)
    listed, took = timed(lambda: superdctl_list(d))
    assert took < SCRAPE_BOUND, took
    assert {row[2] for row in listed if row[1] == "hold"} == ours
    assert all(row[4].isdigit() and row[5] == "running" for row in listed if row[1] == "hold")


def check_metrics(samples):
    assert samples[("superd_handlers_running", (("service", "hold"),))] == N
    assert samples[("superd_connections_accepted_total", (("service", "hold"),))] == N
    assert samples[("superd_handlers_running", (("service", "status"),))] == 1, "this scrape"
    assert samples[("process_open_fds", ())] > 0


def check_document(doc, ours):
    """Every hold connection, with our clients; returns the live connections sorted by id."""
    conns = sorted(doc["connections"], key=lambda c: c["id"])
    held = [c for c in conns if c["service"] == "hold"]
    assert len(held) == N and {c["client"] for c in held} == ours
    assert all(c["state"] == "running" and isinstance(c["pid"], int) for c in held)
    assert len({c["pid"] for c in held}) == N
    hold = next(s for s in doc["services"] if s["name"] == "hold")
    assert hold["running"] == N and hold["accepted"] == N
    return conns


def check_page(page, live):
    """The page lists the first PAGE_ROWS connections by id, and counts the rest.

    `live` was read one request earlier on this same connection: nothing
    came or went between the two (the hold clients wait; this is the only
    status connection), so the page shows the same set."""
    rows = page_rows(page)
    assert len(rows) == PAGE_ROWS
    assert [(int(r[0]), r[1], r[2]) for r in rows] == \
        [(c["id"], c["service"], c["client"]) for c in live[:PAGE_ROWS]]
    assert f"and {len(live) - PAGE_ROWS} more" in page
    assert f'Live connections <span class="sub">({len(live)})' in page


def superdctl_list(d):
    """`superdctl list`'s table rows, each split into its columns."""
    run = subprocess.run([SUPERDCTL, "--ready-file", str(d.ready_path), "list"],
                         capture_output=True, text=True, timeout=SCRAPE_BOUND * 3)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["ID", "SERVICE", "CLIENT", "LOCAL", "PID", "STATE", "AGE"]
    return [line.split() for line in lines[1:]]


def scrape(d, path):
    """One /metrics request on a connection of its own: the samples."""
    conn = http.client.HTTPConnection(*d.address("status"), timeout=SCRAPE_BOUND)
    try:
        status, text = get(conn, path)
    finally:
        conn.close()
    assert status == 200
    return metric_samples(text)
