"""The control socket under generated requests (issue 18, item 4), against a
real superd: every command of superdctl's table (superd/ctl.py COMMANDS,
superd/commands.py's table) with fields of the wrong type, missing or extra,
huge and negative numbers, unicode, NaN, nested objects; raw bytes; a line
without its newline; several lines in one write; a request sent in pieces
and then the socket closed.

Properties, after every example: the client got one well-formed JSON answer
line, or a clean close (it sent no whole line), within the deadline; the
daemon logged no traceback and no `internal-error`; it still answers a
plain `status` and still serves its service.  `upgrade` is left out of the
generated commands: a well-formed one would replace the daemon under test
(its fields are not read, so no mutation of it reaches other code).
"""

import json
import math
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import TIMEOUT, connect
from superd import control, ctl

DEADLINE = 1.0          # the daemon's control_deadline here: a mute client costs this long
# A real daemon: a fifth of the profile's examples, 40 in CI (seconds),
# 10,000 (minutes) under HYPOTHESIS_PROFILE=long (bench/fuzz.sh).
EXAMPLES = max(10, min(settings.default.max_examples // 5, 10_000))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

CONFIG = """
services:
  echo: {listen: "127.0.0.1:0", internal: echo}
  other: {listen: "127.0.0.1:0", internal: discard}
"""

COMMANDS = sorted(set(ctl.COMMANDS) - {"upgrade"})
FIELDS = ["service", "ids", "connections", "history", "command", "args", "json", "id", "x"]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 2**63, -2**63, 10**30, 1, 2, 3]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["echo", "other", "", "ECHO", "echo\x00", "é",
                                           "\ud800", "x" * 3000, "status", "*"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10)


@st.composite
def mutated_requests(draw):
    """A command of the table with its fields mutated, as a JSON object."""
    request = {"command": draw(st.sampled_from(COMMANDS) | VALUES)}
    if draw(st.booleans()):
        request.update(draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4)))
    if draw(st.integers(0, 5)) == 0:
        del request["command"]
    if request.get("command") == "upgrade":        # see the module docstring
        request["command"] = "status"
    return request


def encoded(request):
    """The request as a line, sometimes with lone surrogates and NaN as JSON
    text writes them (Python's json reads NaN; RFC 8259 does not)."""
    return json.dumps(request, allow_nan=True, ensure_ascii=True).encode() + b"\n"


@st.composite
def deep(draw):
    """Nesting past any recursion limit, within the request size limit."""
    n = draw(st.sampled_from([100, 1000, 5000, 30000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return b'{"command": "list", "service": ' + opener * n + b"1" + closer * n + b"}\n"


@st.composite
def huge_numbers(draw):
    """Integers past Python's int-from-text digit limit, and long floats."""
    digits = draw(st.sampled_from([20, 4300, 4301, 20000]))
    field = draw(st.sampled_from([b'"ids": [%s]', b'"service": %s', b'"ids": %s']))
    number = draw(st.sampled_from([b"1", b"-1", b"0.", b"1e"])) + b"9" * digits
    return (b'{"command": "%s", ' % draw(st.sampled_from(COMMANDS)).encode()
            + field % number + b"}\n")


LINES = st.one_of(mutated_requests().map(encoded), deep(), huge_numbers(),
                  st.binary(max_size=200),
                  st.binary(max_size=100).map(lambda b: b + b"\n"),
                  st.sampled_from([b"\n", b"{}\n", b"[]\n", b"null\n", b"NaN\n", b'"status"\n',
                                   b'{"command": "status"}', b'{"command": "status"}\r\n',
                                   b'\xef\xbb\xbf{"command": "status"}\n',
                                   b'{"command": "status", "command": 7}\n',
                                   '{"command": "st\u00e4tus"}\n'.encode("utf-16"),
                                   b'{"command": "status"}\x00\n']))


@st.composite
def sessions(draw):
    """(pieces to write, then 'half-close' | 'close' | 'wait')."""
    data = b"".join(draw(st.lists(LINES, min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    ending = draw(st.sampled_from(["half-close", "half-close", "close", "wait"]))
    return [p for p in pieces if p], ending


def control_path(d):
    return json.loads(Path(d.ready_path).read_text())["control"]


def well_formed(answer):
    """Whether bytes are one line of JSON holding a superd answer."""
    if not answer.endswith(b"\n") or answer.count(b"\n") != 1:
        return False
    value = json.loads(answer)
    return (isinstance(value, dict) and isinstance(value.get("ok"), bool)
            and (value["ok"] or isinstance(value.get("error"), str)))


def talk(path, pieces, ending):
    """Write the pieces, end as told, and return what came back (None when
    the client closed and read nothing), whether it ended in a reset, and
    how long it took."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE + TIMEOUT)
    started = time.monotonic()
    with sock:
        sock.connect(path)
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass                    # answered (or dropped) before the last piece: fine
        if ending == "close":
            return None, False, 0.0
        if ending == "half-close":
            sock.shutdown(socket.SHUT_WR)
        got, was_reset = [], False
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # after what was sent before it, which is kept
                was_reset = True
                break
            if not data:
                break
            got.append(data)
        return b"".join(got), was_reset, time.monotonic() - started


def still_serving(d, path):
    """The daemon answers status, takes back an operator's pause, and echoes."""
    answer = ctl.ask(path, {"command": "status"}, timeout=TIMEOUT)
    assert answer["ok"] is True, answer
    for service in answer["services"]:
        if service.get("paused"):
            ctl.ask(path, {"command": "resume", "service": service["name"]}, timeout=TIMEOUT)
    with connect(d.address("echo")) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"


def clean_log(d):
    text = d.log.text()
    assert "Traceback" not in text and "internal-error" not in text, text[-3000:]


@pytest.fixture
def daemon(superd):
    """(Daemon, its control socket), with one live connection for `list` and
    `kill` to find (ids are small numbers: the generated ones hit it)."""
    d = superd(CONFIG, env={"SUPERD_THRESHOLDS": f"control_deadline={DEADLINE}"})
    with connect(d.address("other")):
        d.wait_running("other", 1)
        yield d, control_path(d)


@FUZZ
@given(sessions())
def test_any_request_gets_one_answer_line_or_a_clean_close(daemon, session):
    d, path = daemon
    pieces, ending = session
    got, was_reset, took = talk(path, pieces, ending)
    sent = b"".join(pieces)
    if got is not None:
        # a UNIX socket closed with bytes unread resets its peer (after the
        # answer, which arrives whole): only a client that sent more than
        # its one request may see that
        beyond = sent.partition(b"\n")[2] or len(sent) > control.MAX_REQUEST
        assert not was_reset or beyond, (sent, ending, got)
        assert took < DEADLINE + 2, (sent, took)
        if got or (b"\n" in sent and ending != "close"):
            assert well_formed(got), (sent, got)
    clean_log(d)
    still_serving(d, path)


# -- regressions: each a request that once went wrong ------------------------

REGRESSIONS = [
    # (request line, what the error says)
    (b'{"command": "list", "service": ["echo"]}\n', "no service"),
    (b'{"command": "list", "service": {"a": 1}}\n', "no service"),
    (b'{"command": "pause", "service": ["echo"]}\n', "no service"),
    (b'{"command": "list", "service": ' + b"[" * 30000 + b"]" * 30000 + b"}\n",
     "not one line of JSON"),
    (b'{"command": "kill", "ids": [' + b"9" * 5000 + b"]}\n", "not one line of JSON"),
    (b'{"command": "kill", "ids": [true]}\n', "connection ids"),
    (b'{"command": "kill", "ids": [NaN]}\n', "connection ids"),
]


@pytest.mark.parametrize("line, says", REGRESSIONS, ids=[r[0][:40].decode("latin-1")
                                                         for r in REGRESSIONS])
def test_malformed_requests_are_refused_with_a_reason(daemon, line, says):
    d, path = daemon
    got, _, _ = talk(path, [line], "half-close")
    assert well_formed(got), got
    answer = json.loads(got)
    assert answer["ok"] is False and says in answer["error"], answer
    clean_log(d)
    still_serving(d, path)


def test_nan_and_infinity_fields_are_refused(daemon):
    d, path = daemon
    for value in (math.nan, math.inf, -math.inf):
        got, _, _ = talk(path, [encoded({"command": "pause", "service": value})], "half-close")
        assert json.loads(got)["ok"] is False
    clean_log(d)


# -- superdctl's side: a command line becomes a request or a usage error ------

@pytest.mark.parametrize("argv, says", [
    (["kill", "\u00b2"], "connection ids"),            # a digit to isdigit(), not to int()
    (["kill", "\u0663"], "connection ids"),
    (["kill", "9" * 5000], "connection ids"),          # past int()'s digit limit
    (["kill", "-1"], "connection ids"),
    (["kill"], "connection ids"),
    (["pause"], "one SERVICE"),
    (["list", "a", "b"], "at most one"),
    (["status", "x"], "no arguments"),
])
def test_superdctl_command_lines_that_are_usage_errors(argv, says):
    with pytest.raises(ValueError, match=says):
        ctl.request_of(ctl.parse(argv))


def test_superdctl_kill_takes_ascii_ids():
    assert ctl.request_of(ctl.parse(["kill", "7", "0012"])) == {"command": "kill", "ids": [7, 12]}
