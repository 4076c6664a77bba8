#!/usr/bin/env python3
"""superd-status: a running superd's state over HTTP, for people and Prometheus.

    superd-status [--control PATH] [OPTIONS]
    superd-status --agent SERVICE[,SERVICE...] [OPTIONS]

superd's `internal: status`.  Standard library only, like the other bundled
handlers: it speaks HTTP/1.1 on the socket a launcher passed, and asks the
daemon for its state on the control socket (a UNIX stream socket named by
SUPERD_CONTROL, which superd sets for this handler, or --control) at every
request.  The daemon itself never reads a client's bytes; this handler does.

    GET /metrics       the Prometheus text format (version 0.0.4)
    GET /status.json   the daemon's document, byte for byte as it answered
    GET /              an HTML page: services, live connections, refusals by
                       reason, and charts of recent rates drawn as SVG by an
                       inline script from the history in the page; the
                       tables need no JavaScript, nothing is fetched from
                       elsewhere (its Content-Security-Policy says so too)

With --agent it speaks HAProxy's agent-check protocol instead of HTTP: one
line about the services named (`up ready 75%`, `up drain #why`, `down
#why`), then it closes.

The control protocol: connect, send one line `{"command": "status"}`, read
one JSON object until end of file.  The document's shape is given in
superd-status(8); any value of the wrong type is shown as missing.

Rules this file keeps:

    Rule 1: the peer never sees a traceback.  A request we cannot serve is an
            HttpError with its status; the daemon not answering (no socket,
            silence, garbage, too much) is a ControlError, answered 503.
    Rule 2: every wait has a deadline: the request head (--header-timeout,
            from the connection's start or the request's first byte), the
            idle wait between requests (--keepalive-timeout), sending an
            answer (--timeout), the whole exchange with the daemon
            (--control-timeout, --max-document bytes).
    Rule 3: every string from the document is escaped for where it goes:
            HTML text and attributes, Prometheus label values, the JSON
            embedded in the page (which cannot close its <script>).
    Rule 4: start-up stays close to a bare interpreter: built-in modules at
            the top (_socket, not socket; _json's parts, not json; the kit's
            launch block, os and stat); threading and select where first
            needed.

Sections, top to bottom:

    1. settings         the option table and its converters
    2. control socket   one exchange with the daemon
    3. the document     tolerant readers of its values
    4. /metrics         the family table and the text format
    5. /                the HTML page, its style and its chart script
    6. HTTP             parsing a head, the connection, the keep-alive loop
    7. --agent          HAProxy's agent check: the verdict table, the line
    8. launch           the kit's launch block (handlers/kit.py's, pasted
                        verbatim: the socket, fd 2, the process named after
                        its service), one client or accepting, main
"""

import _socket
import errno
import os
import sys
import time

VERSION = "0.1.0"
SERVER = "superd-status/" + VERSION

EX_USAGE, EX_OSERR = 64, 71      # sysexits.h


# =========================================================================
# 1. Settings
# =========================================================================

NO_LIMIT = float("inf")


def _seconds(text):
    value = float(text)
    if not 0 <= value < 1e9:
        raise ValueError("not a number of seconds: %r" % text)
    return value


def _limit(text):
    """Seconds, 0 meaning no limit (held as infinity: a deadline never reached)."""
    return _seconds(text) or NO_LIMIT


def _positive(text):
    value = _seconds(text)
    if value == 0:
        raise ValueError("must be more than 0: %r" % text)
    return value


def _count(text):
    value = int(text)
    if value < 1:
        raise ValueError("not a positive count: %r" % text)
    return value


def _size(text):
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not (digits.isascii() and digits.isdigit()) or int(digits) == 0:
        raise ValueError("not a size: %r" % text)
    return int(digits) * scale


def _text(text):
    return text


def _names(text):
    """A comma-separated list of service names, without repeats."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ValueError("not a comma-separated list of service names: %r" % text)
    return tuple(dict.fromkeys(names))


# Every option: (flag, attribute, converter or None for a flag, default, help).
OPTIONS = (
    ("--control", "control", _text, None,
     "PATH: the daemon's control socket (default: $SUPERD_CONTROL)"),
    ("--control-timeout", "control_timeout", _positive, 2.0,
     "SECONDS: the daemon must answer within this long (503)"),
    ("--max-document", "max_document", _size, 16 << 20,
     "SIZE: largest answer taken from the daemon (503); K, M, G suffixes"),
    ("--header-timeout", "header_timeout", _limit, 10.0,
     "SECONDS: a request line and its headers must arrive within this long (0: no limit)"),
    ("--keepalive-timeout", "keepalive_timeout", _seconds, 5.0,
     "SECONDS: close an idle persistent connection after this long (0: no keep-alive)"),
    ("--timeout", "timeout", _limit, 30.0,
     "SECONDS: give up on a client that has not taken a whole answer in this long (0: no limit)"),
    ("--max-connections", "max_connections", _count, 32,
     "N: accepting for itself, serve at most N clients at once"),
    ("--idle-exit", "idle_exit", _limit, NO_LIMIT,
     "SECONDS: accepting for itself, exit after this long without a client (0: never)"),
    ("--listen", "listen", _text, None,
     "HOST:PORT: bind and accept for itself, without a launcher (port 0: any)"),
    ("--agent", "agent", _names, None,
     "SERVICE[,SERVICE...]: answer HAProxy's agent-check about these services, not HTTP"),
    ("--help", "help", None, False, "print this help and exit"),
    ("--version", "version", None, False, "print the version and exit"),
)


class UsageError(Exception):
    """A bad command line; main() answers it with exit status 64."""


class Settings:
    """The parsed options, as attributes named in OPTIONS."""

    def __init__(self):
        for _flag, attr, _kind, default, _help in OPTIONS:
            setattr(self, attr, default)


def parse_options(argv):
    """Settings for argv (without the program name); raises UsageError."""
    settings = Settings()
    table = {flag: (attr, kind) for flag, attr, kind, _default, _help in OPTIONS}
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        if flag not in table:
            raise UsageError("unknown option %r" % arg)
        attr, kind = table[flag]
        if kind is None:
            if eq:
                raise UsageError("%s takes no value" % flag)
            setattr(settings, attr, True)
            continue
        if not eq:
            if not args:
                raise UsageError("%s needs a value" % flag)
            value = args.pop(0)
        try:
            setattr(settings, attr, kind(value))
        except ValueError as exc:
            raise UsageError("%s: %s" % (flag, exc)) from None
    return settings


def usage():
    lines = ["usage: superd-status [OPTIONS]", "",
             "Serve superd's state over HTTP on the socket a launcher passed "
             "(fd 0 or LISTEN_FDS):",
             "/metrics (Prometheus), /status.json and / (a page);",
             "with --agent, one line for HAProxy's agent-check instead.", ""]
    for flag, _attr, kind, default, text in OPTIONS:
        meta, _, text = text.partition(": ") if kind is not None else ("", "", text)
        shown = "%s %s" % (flag, meta) if meta else flag
        extra = ""
        if kind is _size:
            extra = " (default %dM)" % (default >> 20)
        elif kind not in (None, _text, _names) and default != NO_LIMIT:
            extra = " (default %g)" % default
        lines.append("  %-28s %s%s" % (shown, text, extra))
    return "\n".join(lines) + "\n"


# =========================================================================
# 2. The control socket: one exchange with the daemon
# =========================================================================

STATUS_REQUEST = b'{"command": "status"}\n'
# /metrics and the agent need neither the connections nor the history, which
# are most of the document (and of superd's work) with thousands of clients
LEAN_REQUEST = b'{"command": "status", "connections": false, "history": false}\n'
RETRY_EVERY = 0.05           # seconds between connects to a missing socket, when patient


class ControlError(Exception):
    """The daemon's state could not be had; answered 503 with this text."""


def fetch_status(path, timeout, limit, patient=False, lean=False):
    """(the answer's bytes, its document) from the control socket at path.

    One deadline, timeout seconds, bounds the connect, the request and the
    whole answer; an answer past limit bytes is not read further.  Raises
    ControlError, whatever went wrong.  patient: a socket that is missing or
    refuses is tried again until the deadline (see connect_control).  lean:
    without the connections and the history."""
    if not path:
        raise ControlError("no control socket: SUPERD_CONTROL is not set")
    deadline = time.monotonic() + timeout
    sock = None
    chunks, size = [], 0
    try:
        sock = connect_control(path, deadline, patient)
        sock.sendall(LEAN_REQUEST if lean else STATUS_REQUEST)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _socket.timeout
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            size += len(data)
            if size > limit:
                raise ControlError("superd's answer is larger than %d bytes" % limit)
            chunks.append(data)
    except _socket.timeout:
        raise ControlError("superd did not answer within %g s" % timeout) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ControlError("control socket %s: %s" % (path, reason)) from None
    finally:
        if sock is not None:
            sock.close()
    raw = b"".join(chunks)
    return raw, parse_document(raw)


def connect_control(path, deadline, patient):
    """A socket connected to the control socket at path, its timeout set.

    While superd upgrades itself there is a moment with nobody on the
    socket (the old superd has let it go, its successor has not bound it
    yet): a patient caller tries again every RETRY_EVERY seconds until
    deadline, rather than report a daemon that is only changing hands."""
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)   # EMFILE: a ControlError too
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if not patient or time.monotonic() + RETRY_EVERY >= deadline:
                raise
        except BaseException:
            sock.close()
            raise
        time.sleep(RETRY_EVERY)


def parse_document(raw):
    """The JSON object in raw, which says ok; raises ControlError."""
    try:
        doc = json_value(raw.decode("utf-8"))
    except (ValueError, RecursionError):      # RecursionError: [[[[... nested
        raise ControlError("superd's answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ControlError("superd's answer is not a JSON object")
    if doc.get("ok") is not True:
        reason = doc.get("error")
        reason = printable(reason, 200) if isinstance(reason, str) else "no reason given"
        raise ControlError("superd refused: " + reason)
    return doc


# JSON by the C parts of the json module: importing json itself (for its
# regular expressions) costs some 9 ms of every connection's ~25 ms.

class _Plain:
    """What _json's scanner reads from a decoder: JSON as json.loads takes
    it (NaN and Infinity become floats), objects as dicts."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float


def json_value(text):
    """The one JSON value text holds (whitespace around it allowed); ValueError if none."""
    try:
        from _json import make_scanner
    except ImportError:                       # an interpreter without it
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = make_scanner(_Plain)(text, start)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("more after the JSON value")
    return value


def json_text(value):
    """value (dicts with string keys, lists, strings, finite numbers, None)
    as JSON, every string in ASCII."""
    if value is None:
        return "null"
    if isinstance(value, str):
        try:
            from _json import encode_basestring_ascii as quote
        except ImportError:
            from json import dumps as quote
        return quote(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{%s}" % ",".join("%s:%s" % (json_text(k), json_text(v))
                                 for k, v in value.items())
    return "[%s]" % ",".join(json_text(v) for v in value)


def printable(text, limit):
    """text with control characters replaced, at most limit characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


# =========================================================================
# 3. The document: readers that never raise
# =========================================================================
# The daemon is another program, of another version perhaps: every value is
# read through one of these, and a value of the wrong type counts as absent.

def number(value):
    """An int or a float, else None (true and false are not numbers)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def finite(value):
    """A number that JSON, a float and arithmetic can carry, else None (NaN,
    the infinities, and integers past a float's range: 1e400 is one)."""
    value = number(value)
    try:
        as_float = float(value) if value is not None else NO_LIMIT
    except OverflowError:
        return None
    return value if abs(as_float) != NO_LIMIT and as_float == as_float else None


def mapping(value):
    return value if isinstance(value, dict) else {}


def items(value):
    return value if isinstance(value, list) else []


def text(value):
    """A string for display: a string as it is, a number as written, else ""."""
    if isinstance(value, str):
        return value
    return str(value) if number(value) is not None else ""


def daemon(doc):
    return mapping(doc.get("daemon"))


def services(doc):
    """The service records that have a name."""
    return [s for s in items(doc.get("services")) if isinstance(s, dict) and text(s.get("name"))]


def counts(value):
    """{name: count} of a {name: count} mapping, sorted, numbers only."""
    return [(key, number(v)) for key, v in sorted(mapping(value).items())
            if number(v) is not None]


# =========================================================================
# 4. /metrics: the Prometheus text format, version 0.0.4
# =========================================================================

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def per_service(key):
    """Samples of one number per service: svc[key]."""
    def samples(doc):
        for svc in services(doc):
            yield "", (("service", text(svc["name"])),), number(svc.get(key))
    return samples


def per_service_by(key, label):
    """Samples of a {label value: count} mapping per service: svc[key]."""
    def samples(doc):
        for svc in services(doc):
            for value, count in counts(svc.get(key)):
                yield "", (("service", text(svc["name"])), (label, value)), count
    return samples


def histogram(key):
    """A histogram per service from svc[key] = {counts (cumulative, one per
    bound of doc["buckets"]), sum, count}; the +Inf bucket is count.  The
    finite buckets are left out when the counts do not match the bounds."""
    def samples(doc):
        bounds = [finite(b) for b in items(doc.get("buckets"))]
        for svc in services(doc):
            record = mapping(svc.get(key))
            labels = (("service", text(svc["name"])),)
            total = number(record.get("count"))
            if total is None:
                continue
            cumulative = [number(c) for c in items(record.get("counts"))]
            if len(cumulative) == len(bounds) and None not in bounds:
                for bound, count in zip(bounds, cumulative):
                    yield "_bucket", labels + (("le", repr(float(bound))),), count
            yield "_bucket", labels + (("le", "+Inf"),), total
            yield "_sum", labels, number(record.get("sum"))
            yield "_count", labels, total
    return samples


def paused(doc):
    """1 for each reason a service is paused for."""
    for svc in services(doc):
        for reason in items(svc.get("paused")):
            if isinstance(reason, str):
                yield "", (("service", text(svc["name"])), ("reason", reason)), 1


def info(doc):
    yield "", (("version", text(daemon(doc).get("version"))),), 1


def reloads(doc):
    for result, count in counts(daemon(doc).get("reloads")):
        yield "", (("result", result),), count


def process(key):
    def samples(doc):
        yield "", (), number(mapping(daemon(doc).get("process")).get(key))
    return samples


# Every family: (name, type, help, samples(doc) -> (suffix, labels, value)...).
FAMILIES = (
    ("superd_info", "gauge", "superd's version, as a label; always 1.", info),
    ("superd_connections_accepted_total", "counter",
     "Connections accepted since the daemon started (wait mode: activations).",
     per_service("accepted")),
    ("superd_connections_refused_total", "counter",
     "Connections closed unserved, by reason as superd logs it.",
     per_service_by("refused", "reason")),
    ("superd_handlers_running", "gauge", "Handlers alive now.", per_service("running")),
    ("superd_handler_exits_total", "counter",
     "Handlers that ended, by outcome: ok, failed, signaled, timeout.",
     per_service_by("exits", "outcome")),
    ("superd_handler_duration_seconds", "histogram",
     "How long handlers ran, from start to exit.", histogram("duration")),
    ("superd_spawn_seconds", "histogram",
     "From accept to handler started.", histogram("spawn")),
    ("superd_service_paused", "gauge",
     "1 for each reason a service is not accepting now.", paused),
    ("superd_reloads_total", "counter", "Reloads, by result: ok, failed.", reloads),
    ("superd_health_checks_total", "counter",
     "PROXY v2 LOCAL connections (a load balancer's health check), served by no handler.",
     per_service("health_checks")),
    ("process_resident_memory_bytes", "gauge", "The daemon's resident memory in bytes.",
     process("resident_memory_bytes")),
    ("process_open_fds", "gauge", "The daemon's open file descriptors.", process("open_fds")),
    ("process_max_fds", "gauge", "The daemon's limit of open file descriptors.",
     process("max_fds")),
    ("process_cpu_seconds_total", "counter", "The daemon's user and system CPU time in seconds.",
     process("cpu_seconds")),
    ("process_start_time_seconds", "gauge",
     "When the daemon started, in seconds since the Unix epoch.", process("start_time")),
)


def render_metrics(doc):
    """The exposition of every family in FAMILIES, as text."""
    out = []
    for name, kind, help_text, samples in FAMILIES:
        out.append("# HELP %s %s\n# TYPE %s %s\n" % (name, help_text, name, kind))
        for suffix, labels, value in samples(doc):
            if value is not None:
                out.append("%s%s%s %s\n" % (name, suffix, label_set(labels), sample_value(value)))
    return "".join(out)


def label_set(labels):
    """{name="value",...}: backslash, double quote and newline escaped."""
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, value.replace("\\", "\\\\")
                                          .replace('"', '\\"').replace("\n", "\\n"))
                             for name, value in labels)


def sample_value(value):
    """A number as Go's ParseFloat reads it: +Inf, -Inf and NaN by name."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (NO_LIMIT, -NO_LIMIT):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# =========================================================================
# 5. /: the HTML page
# =========================================================================
# Server-side tables (they need no script), then the charts, which the
# inline script draws from the history embedded as JSON.  The page loads
# nothing else: its Content-Security-Policy allows only its own nonce'd
# style and script, and data: images.

MAX_ROWS = 500               # live connections listed on the page; the rest in /status.json
OUTCOMES = ("ok", "failed", "signaled", "timeout")


def esc(value):
    """text(value) escaped for HTML text and double- or single-quoted attributes."""
    return (text(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def shown(value):
    """A number for a table cell: integers with thin-space thousands, "–" if absent."""
    value = number(value)
    if value is None:
        return "\u2013"
    if isinstance(value, int) or (finite(value) is not None and value == int(value)):
        return "{:,}".format(int(value)).replace(",", "\u202f")
    return "%.3g" % value


def span(seconds):
    """A duration for people: 250 ms, 4.2 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    seconds = finite(seconds)
    if seconds is None or seconds < 0:
        return "\u2013"
    if seconds < 1:
        return "%d ms" % round(seconds * 1000)
    if seconds < 60:
        return "%.1f s" % seconds
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if seconds < 3600:
        return "%d min %d s" % (minutes, seconds % 60)
    if seconds < 86400:
        return "%d h %d min" % (hours, minutes % 60)
    return "%d d %d h" % (days, hours % 24)


def mebibytes(value):
    value = finite(value)
    return "\u2013" if value is None else "%.1f MiB" % (value / 1048576)


def table(columns, rows, empty):
    """A table: columns are (title, numeric?); rows are lists of cell HTML.
    Each cell carries its column's title, which a narrow screen shows beside
    it (the rows become cards there)."""
    if not rows:
        return '<p class="empty">%s</p>\n' % empty
    head = "".join('<th%s scope="col">%s</th>' % (' class="n"' if num else "", title)
                   for title, num in columns)
    body = []
    for row in rows:
        cells = "".join('<td%s data-label="%s"><span>%s</span></td>'
                        % (' class="n"' if num else "", title, cell)
                        for (title, num), cell in zip(columns, row))
        body.append("<tr>%s</tr>" % cells)
    return ('<div class="table"><table><thead><tr>%s</tr></thead><tbody>\n%s\n</tbody></table>'
            '</div>\n' % (head, "\n".join(body)))


def breakdown(pairs):
    """ "reason 2, other 1" for [(reason, count)]: one line each, escaped."""
    return "<br>".join('<span class="pair"><span class="sub">%s</span> %s</span>'
                       % (esc(k), shown(v)) for k, v in pairs)


def state_badge(svc):
    reasons = [r for r in items(svc.get("paused")) if isinstance(r, str)]
    state = text(svc.get("state")) or ("paused" if reasons else "serving")
    kind = "paused" if state != "serving" or reasons else "serving"
    badge = '<span class="badge %s">%s</span>' % (kind, esc(state))
    if reasons:
        badge += ' <span class="sub">%s</span>' % esc(", ".join(reasons))
    return badge


SERVICE_COLUMNS = (("Service", False), ("Listening on", False), ("Mode", False),
                   ("State", False), ("Running", True), ("Accepted", True),
                   ("Refused", True), ("Exits", True), ("Health checks", True),
                   ("Mean run", True))


def outcome_order(pair):
    """ok, failed, signaled, timeout, then any other outcome by name."""
    return (OUTCOMES.index(pair[0]) if pair[0] in OUTCOMES else len(OUTCOMES), pair[0])


def service_row(svc):
    refused = counts(svc.get("refused"))
    exits = sorted(counts(svc.get("exits")), key=outcome_order)
    duration = mapping(svc.get("duration"))
    runs, total = finite(duration.get("count")), finite(duration.get("sum"))
    limit = svc.get("instances")
    running = "%s / %s" % (shown(svc.get("running")),
                           "\u221e" if limit is None else shown(limit))
    refused_cell = shown(sum(v for _, v in refused))
    if refused:
        refused_cell += "<br>" + breakdown(refused)
    return ["<b>%s</b>" % esc(svc["name"]),
            "<br>".join("<code>%s</code>" % esc(a) for a in items(svc.get("addresses"))),
            esc(svc.get("mode")), state_badge(svc), running, shown(svc.get("accepted")),
            refused_cell,
            breakdown(exits) or "0", shown(svc.get("health_checks")),
            span(total / runs) if runs and total is not None else "\u2013"]


def refusals_table(doc):
    """One row per reason: the total, and how many each service refused."""
    by_reason = {}
    for svc in services(doc):
        for reason, count in counts(svc.get("refused")):
            by_reason.setdefault(reason, []).append((text(svc["name"]), count))
    rows = [[esc(reason), shown(sum(c for _, c in pairs)), breakdown(pairs)]
            for reason, pairs in sorted(by_reason.items())]
    return table((("Reason", False), ("Refused", True), ("By service", False)), rows,
                 "No connection has been refused.")


CONNECTION_COLUMNS = (("Id", True), ("Service", False), ("Client", False), ("Local", False),
                      ("Pid", True), ("State", False), ("Age", True))


def connections_table(doc):
    conns = [c for c in items(doc.get("connections")) if isinstance(c, dict)]
    rows = [[esc(c.get("id")), esc(c.get("service")), "<code>%s</code>" % esc(c.get("client")),
             "<code>%s</code>" % esc(c.get("local")), shown(c.get("pid")), esc(c.get("state")),
             span(c.get("age"))] for c in conns[:MAX_ROWS]]
    more = ""
    if len(conns) > MAX_ROWS:
        more = ('<p class="sub">and %d more: see <a href="status.json">status.json</a>.</p>\n'
                % (len(conns) - MAX_ROWS))
    return table(CONNECTION_COLUMNS, rows, "No connection is open.") + more


def history_json(doc):
    """The history as the chart script reads it, safe inside <script>:
    {"t": [time...], "accepted"/"refused": {service: [cumulative count or null...]}}."""
    samples = [s for s in items(doc.get("history"))
               if isinstance(s, dict) and finite(s.get("t")) is not None]
    data = {"t": [finite(s["t"]) for s in samples]}
    for kind in ("accepted", "refused"):
        names = sorted({k for s in samples for k in mapping(s.get(kind)) if isinstance(k, str)})
        data[kind] = {n: [finite(mapping(s.get(kind)).get(n)) for s in samples] for n in names}
    text = json_text(data)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def summary(doc):
    """The cards at the top: services, running, accepted, refused, failed exits."""
    svcs = services(doc)

    def total(pick):
        return sum(pick(s) for s in svcs)
    paused_count = sum(1 for s in svcs if items(s.get("paused")) or
                       text(s.get("state")) not in ("", "serving"))
    cards = (("Services", "%s%s" % (shown(len(svcs)), ' <span class="sub">%d paused</span>'
                                    % paused_count if paused_count else "")),
             ("Running", shown(total(lambda s: finite(s.get("running")) or 0))),
             ("Accepted", shown(total(lambda s: finite(s.get("accepted")) or 0))),
             ("Refused", shown(total(lambda s: sum(v for _, v in counts(s.get("refused")))))),
             ("Failed exits", shown(total(lambda s: sum(
                 v for k, v in counts(s.get("exits")) if k != "ok")))))
    return "".join('<div class="card"><span>%s</span><b>%s</b></div>' % card for card in cards)


def daemon_line(doc):
    d = daemon(doc)
    proc = mapping(d.get("process"))
    now, started = finite(d.get("now")), finite(d.get("started"))
    ok, failed = (mapping(d.get("reloads")).get(k) for k in ("ok", "failed"))
    parts = ("version %s" % esc(d.get("version")), "pid %s" % esc(d.get("pid")),
             "up %s" % span(now - started if now is not None and started is not None else None),
             "reloads %s ok, %s failed" % (shown(ok), shown(failed)),
             "memory %s" % mebibytes(proc.get("resident_memory_bytes")),
             "fds %s of %s" % (shown(proc.get("open_fds")), shown(proc.get("max_fds"))),
             "CPU %s" % span(proc.get("cpu_seconds")))
    return "".join("<span>%s</span>" % p for p in parts)


def render_page(doc, nonce, refresh=None):
    """The whole page, as text."""
    now = finite(daemon(doc).get("now"))
    if now is None or not 0 <= now < 1e11:        # gmtime() takes no year past 5138
        now = time.time()
    host = os.uname().nodename
    meta = '<meta http-equiv="refresh" content="%d">' % refresh if refresh else ""
    rows = [service_row(s) for s in services(doc)]
    return PAGE % {
        "nonce": nonce, "style": STYLE, "script": SCRIPT, "refresh": meta,
        "host": esc(host), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
        "daemon": daemon_line(doc), "cards": summary(doc),
        "services": table(SERVICE_COLUMNS, rows, "No services."),
        "refusals": refusals_table(doc), "connections": connections_table(doc),
        "count": len(items(doc.get("connections"))), "history": history_json(doc)}


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
%(refresh)s<title>superd on %(host)s</title>
<link rel="icon" href="data:,">
<style nonce="%(nonce)s">%(style)s</style>
</head>
<body>
<header>
<h1>superd on %(host)s</h1>
<p class="meta">%(daemon)s<span>as of %(when)s</span></p>
</header>
<main>
<section class="cards" aria-label="Totals">%(cards)s</section>
<h2>Recent rates</h2>
<div class="charts">
<figure id="chart-accepted" data-series="accepted">
<figcaption>Connections accepted per second</figcaption>
<div class="plot"><noscript>The charts are drawn by the page's script;
the tables below need none.</noscript></div><ul class="legend"></ul></figure>
<figure id="chart-refused" data-series="refused">
<figcaption>Connections refused per second</figcaption>
<div class="plot"></div><ul class="legend"></ul></figure>
</div>
<h2>Services</h2>
<div id="services">%(services)s</div>
<h2>Refusals by reason</h2>
<div id="refusals">%(refusals)s</div>
<h2>Live connections <span class="sub">(%(count)d)</span></h2>
<div id="connections">%(connections)s</div>
</main>
<footer><a href="metrics">metrics</a> &middot; <a href="status.json">status.json</a>
&middot; superd-status """ + VERSION + """</footer>
<script type="application/json" id="history">%(history)s</script>
<script nonce="%(nonce)s">%(script)s</script>
</body>
</html>
"""

STYLE = """
:root { color-scheme: light dark; --fg: #1c2230; --bg: #f4f5f8; --card: #fff;
  --line: #d8dce3; --muted: #5d6878; --ok: #2b8a3e; --warn: #c92a2a; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e4e8ef; --bg: #12151a; --card: #1c2028; --line: #353b46; --muted: #9aa4b3; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header, main, footer { max-width: 1500px; margin: 0 auto; padding: 10px 16px; }
h1 { font-size: 1.35rem; margin: 6px 0 2px; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 22px 0 8px; }
a { color: inherit; }
.meta { display: flex; flex-wrap: wrap; gap: 2px 18px; margin: 0; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; }
.card, figure, table { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.card { padding: 8px 12px; color: var(--muted); }
.card b { display: block; font-size: 1.45rem; color: var(--fg); }
.card b .sub { font-size: .95rem; font-weight: 400; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 440px), 1fr));
  gap: 12px; }
figure { margin: 0; padding: 10px 12px; min-width: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.plot { min-height: 120px; color: var(--muted); }
.plot svg { display: block; width: 100%; height: auto; }
.plot .grid { stroke: var(--line); }
.plot .axis { fill: var(--muted); font-size: 11px; }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 2px 14px; margin: 6px 0 0;
  padding: 0; font-size: .85rem; }
.table { overflow-x: auto; }
table { border-collapse: separate; border-spacing: 0; width: 100%; }
th, td { padding: 6px 10px; text-align: left; vertical-align: top;
  border-bottom: 1px solid var(--line); }
tbody tr:last-child td { border-bottom: 0; }
th { font-size: .78rem; text-transform: uppercase; letter-spacing: .03em; color: var(--muted);
  white-space: nowrap; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: .92em; }
td code, .pair { white-space: nowrap; }
.badge { display: inline-block; padding: 0 8px; border-radius: 9px; font-size: .8rem;
  font-weight: 600; color: #fff; background: var(--ok); }
.badge.paused { background: var(--warn); }
.sub, .empty { color: var(--muted); }
footer { color: var(--muted); font-size: .85rem; padding-bottom: 24px; }
@media (max-width: 720px) {
  table, tbody, tr, td { display: block; }
  thead { display: none; }
  tr { padding: 6px 0; border-bottom: 1px solid var(--line); }
  tbody tr:last-child { border-bottom: 0; }
  td, tbody tr:last-child td { display: flex; justify-content: space-between; gap: 12px;
    padding: 2px 12px; border: 0; text-align: right; }
  td code, .pair { white-space: normal; overflow-wrap: anywhere; }
  td::before { content: attr(data-label); color: var(--muted); font-size: .78rem;
    text-transform: uppercase; text-align: left; white-space: nowrap; }
}
"""

# The chart script.  Rates are differences of consecutive cumulative
# samples over their time apart; a missing value or a counter that went
# down (a daemon started afresh) breaks the line rather than plunging it.
SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2f6fde", "#e8590c", "#2b8a3e", "#ae3ec9", "#d9a400", "#0c8599",
                "#c2255c", "#5c7cfa"];
  var data = JSON.parse(document.getElementById("history").textContent);

  function node(name, attrs, parent) {
    var el = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(el);
    return el;
  }
  function rates(values) {
    var out = [];
    for (var i = 1; i < data.t.length; i++) {
      var a = values[i - 1], b = values[i], dt = data.t[i] - data.t[i - 1];
      var rate = a === null || b === null || !(dt > 0) || b < a ? null : (b - a) / dt;
      out.push(isFinite(rate) ? rate : null);
    }
    return out;
  }
  function tickStep(max) {           // 1, 2 or 5 times a power of ten: about 4 ticks
    if (!(max > 0)) return 0.25;
    var raw = max / 4, p = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    return (raw <= p ? 1 : raw <= 2 * p ? 2 : raw <= 5 * p ? 5 : 10) * p;
  }
  function label(v) { return v >= 10 ? v.toFixed(0) : String(parseFloat(v.toPrecision(3))); }
  function clock(t) {
    var d = new Date(t * 1000);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }
  function seriesOf(kind) {
    var byName = data[kind] || {}, names = Object.keys(byName).sort();
    var list = names.map(function (n) { return {name: n, rates: rates(byName[n])}; });
    if (list.length > 1) {
      list.push({name: "all", total: true, rates: list[0].rates.map(function (_, i) {
        var sum = 0;
        for (var j = 0; j < list.length; j++) {
          if (list[j].rates[i] === null) return null;
          sum += list[j].rates[i];
        }
        return sum;
      })});
    }
    return list;
  }
  function draw(figure) {
    var plot = figure.querySelector(".plot"), legend = figure.querySelector(".legend");
    var times = data.t.slice(1), series = seriesOf(figure.getAttribute("data-series"));
    plot.textContent = "";
    legend.textContent = "";
    if (times.length < 1 || series.length < 1) {
      plot.textContent = "Not enough samples yet: superd samples its counters every 10 s.";
      return;
    }
    var w = Math.max(plot.clientWidth, 260), h = w < 500 ? 180 : 220;
    var left = 40, right = 8, top = 8, bottom = 22;
    var t1 = times[times.length - 1], t0 = Math.min(times[0], t1 - 60), max = 0;
    series.forEach(function (s) { s.rates.forEach(function (v) { if (v > max) max = v; }); });
    var step = tickStep(max), ticks = Math.max(1, Math.ceil(max / step - 1e-9));
    max = ticks * step;
    function x(t) { return left + (t - t0) / (t1 - t0) * (w - left - right); }
    function y(v) { return top + (1 - v / max) * (h - top - bottom); }
    var svg = node("svg", {viewBox: "0 0 " + w + " " + h, width: w, height: h, role: "img",
                           "aria-label": figure.querySelector("figcaption").textContent}, plot);
    for (var i = 0; i <= ticks; i++) {
      var v = step * i;
      node("line", {"class": "grid", x1: left, x2: w - right, y1: y(v), y2: y(v)}, svg);
      node("text", {"class": "axis", x: left - 5, y: y(v) + 4, "text-anchor": "end"},
           svg).textContent = label(v);
    }
    var every = [60, 300, 600, 900, 1800, 3600].filter(function (s) {
      return (t1 - t0) / s <= Math.max(2, Math.floor(w / 110)); })[0] || 3600;
    for (var t = Math.ceil(t0 / every) * every; t <= t1; t += every) {
      node("text", {"class": "axis", x: x(t), y: h - 6, "text-anchor": "middle"},
           svg).textContent = clock(t);
    }
    series.forEach(function (s, n) {
      var color = s.total ? "currentColor" : COLORS[n % COLORS.length], run = [];
      function flush() {
        if (run.length === 1) {          // a point between gaps: a dot, not a line
          var xy = run[0].split(",");
          node("circle", {cx: xy[0], cy: xy[1], r: 2.5, fill: color, "data-name": s.name}, svg);
        } else if (run.length) {
          var line = node("polyline", {points: run.join(" "), fill: "none", stroke: color,
                                       "stroke-width": s.total ? 1.5 : 2,
                                       "stroke-dasharray": s.total ? "4 3" : "none",
                                       "stroke-linejoin": "round", "data-name": s.name}, svg);
          node("title", {}, line).textContent = s.name;
        }
        run = [];
      }
      s.rates.forEach(function (v, i) {
        if (v === null) flush(); else run.push(x(times[i]).toFixed(1) + "," + y(v).toFixed(1));
      });
      flush();
      var item = document.createElement("li"), swatch = node("svg", {width: 12, height: 12}, item);
      node("rect", {width: 12, height: 12, rx: 2, fill: color}, swatch);
      item.appendChild(document.createTextNode(" " + s.name));
      legend.appendChild(item);
    });
  }
  function drawAll() {
    Array.prototype.forEach.call(document.querySelectorAll("figure[data-series]"), draw);
  }
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(drawAll, 150);
  });
  drawAll();
})();
"""


# =========================================================================
# 6. HTTP: parsing a head, the connection, the keep-alive loop
# =========================================================================

MAX_HEAD = 16 << 10          # bytes of a request head (431 beyond)
MAX_FIELDS = 100             # header lines of a request (431 beyond)
LINGER = 1.0                 # seconds to read and drop what a closed client still sends
ALLOW = "GET, HEAD"

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                  b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
FIELD_CHAR = frozenset([9] + list(range(32, 127)) + list(range(128, 256)))
TARGET_CHAR = frozenset(range(33, 127))


class HttpError(Exception):
    """A request answered with status (4xx: the client's fault; 5xx: ours).
    close: no other request may follow on the connection."""

    def __init__(self, status, detail="", close=False, headers=()):
        super().__init__(detail or REASONS[status])
        self.status, self.close, self.headers = status, close, headers


class ClientGone(Exception):
    """The client closed, reset or stopped taking our answer: stop silently."""


class Request:
    """A parsed request head: method, path (without the query), query,
    version (10 or 11), fields (lower-case name -> value), keep_alive, body."""

    def __init__(self, method, path, query, version, fields):
        self.method, self.path, self.query = method, path, query
        self.version, self.fields = version, fields
        connection = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        self.keep_alive = ("close" not in connection if version == 11
                           else "keep-alive" in connection)
        self.body = "transfer-encoding" in fields or fields.get("content-length", "0") != "0"


def parse_head(head):
    """The Request in a head (its blank line excluded); raises HttpError."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= TCHAR:
        raise HttpError(400, "malformed request line", close=True)
    method, target, version = parts
    if not (len(version) == 8 and version[:5] == b"HTTP/" and version[6:7] == b"."
            and version[5:6].isdigit() and version[7:8].isdigit()):
        raise HttpError(400, "malformed HTTP version", close=True)
    if version[5:6] != b"1":
        raise HttpError(505, close=True)
    version = b"HTTP/1.0" if version == b"HTTP/1.0" else b"HTTP/1.1"   # 1.x: as 1.1
    if not target or not set(target) <= TARGET_CHAR:
        raise HttpError(400, "malformed request target", close=True)
    if len(lines) - 1 > MAX_FIELDS:
        raise HttpError(431, close=True)
    fields = parse_fields(lines[1:])
    if version == b"HTTP/1.1" and "host" not in fields:
        raise HttpError(400, "HTTP/1.1 needs a Host field", close=True)
    length = fields.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        raise HttpError(400, "malformed Content-Length", close=True)
    path, _, query = origin_form(target.decode("ascii")).partition("?")
    return Request(method.decode("ascii"), path, query, 11 if version == b"HTTP/1.1" else 10,
                   fields)


def parse_fields(lines):
    """{lower-case name: value} of header lines, repeats joined by ", "."""
    fields = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= TCHAR:
            raise HttpError(400, "malformed header field", close=True)
        value = value.strip(b" \t")
        if not set(value) <= FIELD_CHAR:
            raise HttpError(400, "control character in a header field", close=True)
        key, value = name.decode("ascii").lower(), value.decode("latin-1")
        fields[key] = fields[key] + ", " + value if key in fields else value
    return fields


def origin_form(target):
    """/path?query of a target in origin or absolute form (http://host/path)."""
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    raise HttpError(400, "malformed request target", close=True)


def find_head_end(buf):
    """(end of the head, start of what follows) at the first empty line, or None.
    A line may end with CRLF or a bare LF (RFC 9112 section 2.2)."""
    ends = [(i, i + 3) for i in (buf.find(b"\n\r\n"),) if i >= 0]
    ends += [(i, i + 2) for i in (buf.find(b"\n\n"),) if i >= 0]
    return min(ends) if ends else None


class Client:
    """One client on a connected socket: the bytes read ahead, reads under
    deadlines, and answers sent within --timeout."""

    def __init__(self, sock, settings, log):
        self.sock, self.settings, self.log = sock, settings, log
        self.buf = b""
        self.opened = time.monotonic()
        self.served = 0           # requests answered
        self.keep = True          # may another request follow?
        self.unread = False       # the client may still be sending what we never read

    def recv(self, deadline):
        """Some bytes (b"" at end of file) before deadline; raises TimeoutError."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(None if left == NO_LIMIT else left)
        try:
            return self.sock.recv(65536)
        except _socket.timeout:
            raise TimeoutError from None
        except OSError:           # reset, or gone
            return b""

    def read_head(self):
        """The next request head, or None if the client closed or stayed
        silent before sending any of it.  The whole head must arrive within
        --header-timeout of the connection's start (the first request) or
        of its first byte (later ones, which may wait --keepalive-timeout
        for that byte).  Raises HttpError (408, 431) or ClientGone."""
        s = self.settings
        if self.served == 0:
            deadline = idle = self.opened + s.header_timeout
        else:
            deadline, idle = None, time.monotonic() + s.keepalive_timeout
        while True:
            self.buf = self.buf.lstrip(b"\r\n")      # empty lines before a request
            if self.buf and deadline is None:
                deadline = time.monotonic() + s.header_timeout
            found = find_head_end(self.buf)
            if found is not None and found[0] <= MAX_HEAD:
                head, self.buf = self.buf[:found[0]], self.buf[found[1]:]
                return head
            if found is not None or len(self.buf) > MAX_HEAD:
                self.unread = True
                raise HttpError(431, close=True)
            try:
                data = self.recv(deadline if self.buf else idle)
            except TimeoutError:
                if not self.buf:
                    return None
                self.unread = True
                raise HttpError(408, "request head too slow", close=True) from None
            if not data:
                if self.buf:
                    raise ClientGone
                return None
            self.buf += data

    def answer(self, status, ctype, body, head_only=False, fields=()):
        """Send one answer: status line, fields, and body unless head_only."""
        lines = ["HTTP/1.1 %d %s" % (status, REASONS[status]),
                 "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                 "Server: " + SERVER, "Content-Type: " + ctype,
                 "Content-Length: %d" % len(body), "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff"]
        lines.extend(fields)
        if not self.keep:
            lines.append("Connection: close")
        elif self.version == 10:
            lines.append("Connection: keep-alive")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        timeout = self.settings.timeout
        self.sock.settimeout(None if timeout == NO_LIMIT else timeout)
        try:
            self.sock.sendall(data)
        except OSError:           # a timeout, a reset, a closed client
            raise ClientGone from None

    def close(self):
        """Close.  When the client may still be sending (a request body we
        never read, a head cut short), shut our side first and read for a
        moment, so that the client sees the answer rather than a reset."""
        try:
            if self.unread or self.buf:
                self.sock.shutdown(_socket.SHUT_WR)
                deadline, drained = time.monotonic() + LINGER, 0
                while drained < 1 << 20:
                    data = self.recv(deadline)
                    if not data:
                        break
                    drained += len(data)
            else:
                self.sock.shutdown(_socket.SHUT_RDWR)   # fd 1 holds the socket open too
        except (OSError, TimeoutError):
            pass
        self.sock.close()


def page_answer(raw, doc, request):
    """(content type, body, extra fields) of /: the page, with a fresh nonce
    for its style and script; ?refresh=N (5 to 3600) reloads it every N s."""
    nonce = os.urandom(12).hex()
    asked = [v for k, _, v in (p.partition("=") for p in request.query.split("&"))
             if k == "refresh" and v.isascii() and v.isdigit()]
    refresh = min(max(int(asked[0]), 5), 3600) if asked and int(asked[0]) else None
    policy = ("default-src 'none'; style-src 'nonce-%s'; script-src 'nonce-%s'; img-src data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'" % (nonce, nonce))
    body = render_page(doc, nonce, refresh).encode("utf-8", "replace")
    return "text/html; charset=utf-8", body, ("Content-Security-Policy: " + policy,)


def metrics_answer(raw, doc, request):
    return METRICS_TYPE, render_metrics(doc).encode("utf-8", "replace"), ()


def json_answer(raw, doc, request):
    return "application/json", raw, ()


# path: how to answer GET and HEAD there, from the daemon's answer
ROUTES = {
    "/": page_answer,
    "/metrics": metrics_answer,
    "/status.json": json_answer,
}
LEAN_ROUTES = ("/metrics",)     # asked for without connections and history


def respond(client, request):
    """Answer one request: a route's answer, from the daemon's state now."""
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, headers=("Allow: " + ALLOW,))
    route = ROUTES.get(request.path)
    if route is None:
        raise HttpError(404)
    s = client.settings
    try:
        raw, doc = fetch_status(s.control, s.control_timeout, s.max_document,
                                lean=request.path in LEAN_ROUTES)
    except ControlError as exc:
        client.log.diag(str(exc))
        raise HttpError(503, "superd-status: cannot read superd's state: %s" % exc,
                        headers=("Retry-After: 1",))
    ctype, body, fields = route(raw, doc, request)
    client.answer(200, ctype, body, request.method == "HEAD", fields)


def answer_error(client, request, exc):
    """An HttpError as a short text/plain answer that repeats nothing the client sent."""
    if exc.close:
        client.keep = False
    body = ("%d %s\n" % (exc.status, exc) if exc.status != 503 else "%s\n" % exc).encode(
        "utf-8", "replace")
    head_only = request is not None and request.method == "HEAD"
    client.answer(exc.status, "text/plain; charset=utf-8", body, head_only, exc.headers)


def serve_connection(sock, settings, log):
    """The keep-alive loop: read a request, answer it; until the client
    leaves, a timeout passes, or a request asks for (or forces) a close."""
    client = Client(sock, settings, log)
    try:
        while client.keep:
            request = None
            client.version = 11
            try:
                head = client.read_head()
                if head is None:
                    break
                request = parse_head(head)
                client.version = request.version
                client.keep = request.keep_alive and settings.keepalive_timeout > 0
                if request.body:          # never read: answer, then close
                    client.keep, client.unread = False, True
                respond(client, request)
            except HttpError as exc:
                answer_error(client, request, exc)
            except ClientGone:
                raise
            except Exception:             # Rule 1: a 500, and the reason in our log
                import traceback
                log.diag("internal error: " + traceback.format_exc().replace("\n", " | "))
                client.keep = False
                answer_error(client, request, HttpError(500, close=True))
            client.served += 1
    except ClientGone:
        client.buf, client.unread = b"", False
    finally:
        client.close()


# =========================================================================
# 7. --agent: HAProxy's agent check, one line from the daemon's state
# =========================================================================
# HAProxy (`agent-check agent-port N`) connects every agent-inter, sends its
# agent-send string if it has one, reads one line and closes (often with a
# reset).  Of the words it takes (HAProxy 2.6, tested) we say: "up" or
# "down"; "ready" or "drain", an administrative state that HAProxy keeps
# until told another, which is why every "up" says "ready" too; "N%", the
# server's weight as a share of the weight in its configuration; and, as a
# word of its own, "#" and a reason to the end of the line, which HAProxy
# shows on its stats page ("down#why", glued, is refused as a bad word).

UP, DRAIN, DOWN = 0, 1, 2     # verdicts, the worst highest: several services report the worst

# What a reason for not accepting (the document's "paused") means to HAProxy.
PAUSE_VERDICTS = {
    "operator": DRAIN,        # superdctl pause: no new clients, those in hand finish
    "rate": DRAIN,            # past its rate limit: a pause of seconds
    "load": DRAIN,            # the machine's load is past max_load, until it falls
    "looping": DOWN,          # its handlers fail as soon as they start
    "error": DOWN,            # accept failed (out of descriptors, say): resting
    "backoff": DOWN,          # wait mode: its handler ends at once, again and again
    "predecessor": UP,        # after an upgrade: the old superd's handler still serves it
    "instances": UP,          # full: new clients wait in the backlog; the weight says so
}
UNKNOWN_PAUSE = DRAIN         # a newer superd's reason: no new clients, but not condemned
MIN_WEIGHT = 1                # percent: a full service still takes clients (into its backlog)
MAX_REASON = 200              # characters of the reason HAProxy is given


def agent_weight(svc):
    """The share of the service's instances that is free, in percent
    (rounded down, at least MIN_WEIGHT); 100 when superd cannot tell: no
    limit, or wait mode (one handler accepts for itself)."""
    running, instances = finite(svc.get("running")), finite(svc.get("instances"))
    if text(svc.get("mode")) == "wait" or running is None or instances is None or instances <= 0:
        return 100
    free = max(0, instances - running)
    return max(MIN_WEIGHT, int(100 * free // instances))


def service_verdict(svc):
    """(verdict, weight, reason) for one service's record."""
    if not items(svc.get("addresses")):       # listeners closed: stopping, or handed over
        return DRAIN, None, "superd is stopping"
    why = {}
    for reason in items(svc.get("paused")):
        if isinstance(reason, str):
            why.setdefault(PAUSE_VERDICTS.get(reason, UNKNOWN_PAUSE), []).append(reason)
    for verdict in (DOWN, DRAIN):
        if verdict in why:
            return verdict, None, "paused (%s)" % " ".join(why[verdict])
    return UP, agent_weight(svc), ""


def agent_verdicts(doc, names):
    """[(verdict, weight, reason)] for each service in names."""
    state = daemon(doc).get("state")
    if isinstance(state, str) and state != "serving":    # a superd that says so itself
        return [(DRAIN, None, "superd is %s" % state)]
    found = {text(svc["name"]): svc for svc in services(doc)}
    verdicts = []
    for name in names:
        svc = found.get(name)
        if svc is None:
            verdicts.append((DOWN, None, "%s: no such service (disabled or not configured)" % name))
            continue
        verdict, weight, reason = service_verdict(svc)
        verdicts.append((verdict, weight, "%s: %s" % (name, reason) if reason else ""))
    return verdicts


def agent_line(verdicts):
    """The line HAProxy reads: the worst verdict, with the reasons of all
    that share it, or the lowest weight when every one is up."""
    worst = max(verdict for verdict, _weight, _reason in verdicts)
    if worst == UP:
        return "up ready %d%%\n" % min(weight for _verdict, weight, _reason in verdicts)
    why = "; ".join(reason for verdict, _weight, reason in verdicts if verdict == worst)
    return ("up drain #%s\n" if worst == DRAIN else "down #%s\n") % agent_text(why)


def agent_text(reason):
    """reason as HAProxy can take it: printable ASCII on one line, no commas
    (its CSV stats quote them, but not every reader of that CSV unquotes)."""
    kept = "".join(c if " " <= c <= "~" and c != "," else "?" for c in reason)
    return kept[:MAX_REASON]


def agent_reply(settings):
    """The line for HAProxy now: from the daemon's state, or down when the
    daemon does not answer (patiently: an upgrade is not an outage).  An
    answer from a superd that has just handed over to its successor is
    asked again: the same socket is the successor's now."""
    deadline = time.monotonic() + settings.control_timeout
    timeout = settings.control_timeout
    while True:
        try:
            _raw, doc = fetch_status(settings.control, timeout, settings.max_document,
                                     patient=True, lean=True)
        except ControlError as exc:
            return agent_line([(DOWN, None, "superd not answering: %s" % exc)]), str(exc)
        timeout = deadline - time.monotonic() - RETRY_EVERY
        if daemon(doc).get("state") != "handed-over" or timeout <= 0:
            return agent_line(agent_verdicts(doc, settings.agent)), None
        time.sleep(RETRY_EVERY)


def serve_agent(sock, settings, log):
    """One agent check: the line, then close.  What HAProxy sends (its
    agent-send string) is read only to be dropped, after the line: the
    services are those of --agent, whatever it says."""
    client = Client(sock, settings, log)
    client.unread = True          # agent-send: drained at close, so the line is not reset away
    try:
        line, problem = agent_reply(settings)
        if problem:
            log.diag(problem)
        timeout = settings.timeout
        sock.settimeout(None if timeout == NO_LIMIT else timeout)
        sock.sendall(line.encode("ascii", "replace"))
    except OSError:
        pass                      # HAProxy gave up waiting (its check timeout), or reset
    except Exception:             # Rule 1: nothing said (HAProxy changes nothing), logged
        import traceback
        log.diag("internal error: " + traceback.format_exc().replace("\n", " | "))
    finally:
        client.close()


# =========================================================================
# 8. Launch: find the socket, serve one client or accept for ourselves
# =========================================================================

# --- kit: launch (copied from handlers/kit.py; tests/test_kit.py keeps the copies identical) ---
# Finding the socket and the client under every launcher; see kit.py's docstring.
import os  # noqa: E402  (the block stands alone wherever it is pasted)
from stat import S_ISSOCK  # noqa: E402

COMM_MAX = 15             # bytes of a process name (TASK_COMM_LEN less its NUL)
LAUNCH = []               # the Launch that launch() found, for log()


class Launch:
    """What the launcher passed; see kit.py's docstring for each field."""

    def __init__(self, fds, names, stderr_free, service, conn):
        self.fds = fds
        self.names = names
        self.stderr_free = stderr_free
        self.service = service
        self.conn = conn


def launch():
    """Name the process, take the launcher's sockets, decide about fd 2."""
    env = os.environ
    name_process(env.get("SUPERD_SERVICE", ""))
    fds, names = listen_fds()
    if not fds and is_socket(0):
        fds, names = [0], [env.get("SUPERD_SERVICE") or "unknown"]
    found = Launch(fds, names, stderr_is_free(fds), env.get("SUPERD_SERVICE", ""),
                   env.get("SUPERD_CONN", ""))
    LAUNCH[:] = [found]
    return found


def listen_fds():
    """(fds, names) systemd's protocol passes us, ([], []) if it is not for
    us (LISTEN_PID another's).  The variables are removed either way, as
    sd_listen_fds(1) does, and the fds made close-on-exec: no child of ours
    may take them for its own."""
    env = os.environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    if not (pid.isascii() and pid.isdigit() and int(pid) == os.getpid()):
        return [], []
    if not (count.isascii() and count.isdigit() and int(count) > 0):
        return [], []
    fds = list(range(3, 3 + int(count)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass                  # not open after all: the caller meets it
    names = (names + ["unknown"] * len(fds))[:len(fds)]
    return fds, [name or "unknown" for name in names]


def is_socket(fd):
    try:
        return S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def stderr_is_free(fds):
    """Whether fd 2 is open and is not a client's socket: not one of fds nor
    fd 0 (same device and inode).  Any fd 2 that is no socket (a terminal
    fd 0 shares, a file, a pipe) is free."""
    try:
        err = os.fstat(2)
    except OSError:
        return False
    if not S_ISSOCK(err.st_mode):
        return True
    for fd in {0, *fds}:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (err.st_dev, err.st_ino):
            return False
    return True


def name_process(service):
    """The process's name (/proc/self/comm) becomes the service's, cut to
    COMM_MAX bytes; nothing when there is none or Linux will not."""
    if not service:
        return
    name = service.encode("utf-8", "replace")[:COMM_MAX].decode("utf-8", "ignore")
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, name.encode("utf-8"))
    except OSError:
        pass
    finally:
        os.close(fd)


def ends_of(sock):
    """((client host, port), (local host, port)) of a connection the launcher
    accepted.  Variables count only beside the launcher's own mark (superd:
    SUPERD_SERVICE; tcpserver: PROTO=TCP): ones merely left in the
    environment by a launcher that sets none of them name no one."""
    env = os.environ
    client = local = None
    if "SUPERD_SERVICE" in env:
        client = named_end(env, "REMOTE_ADDR", "REMOTE_PORT")
    if env.get("PROTO") == "TCP":
        client = client or named_end(env, "TCPREMOTEIP", "TCPREMOTEPORT")
        local = named_end(env, "TCPLOCALIP", "TCPLOCALPORT")
    client = client or socket_end(sock.getpeername)
    if client == ("-", 0) and env.get("REMOTE_HOST"):     # xinetd's, for a client gone already
        client = (unmap(env["REMOTE_HOST"]), 0)
    return client, local or socket_end(sock.getsockname)


def named_end(env, host, port):
    """(host, port) from two environment variables, or None."""
    host, port = env.get(host), env.get(port, "")
    if host and port.isascii() and port.isdigit():
        return unmap(host), int(port)
    return None


def socket_end(name):
    """(host, port) by getpeername or getsockname; ("-", 0) if it fails."""
    try:
        return endpoint(name())
    except OSError:
        return "-", 0


def endpoint(address):
    """(host, port) of a socket address; UNIX sockets are ("unix:", 0)."""
    if isinstance(address, tuple):
        return unmap(address[0]), address[1]
    return "unix:", 0


def unmap(host):
    return host[7:] if host.startswith("::ffff:") and "." in host else host
# --- end kit: launch ---


class Log:
    """Diagnostics, one line each, on fd 2, unless launch() found fd 2 is a
    client's socket (under inetd, xinetd and systemd StandardError=socket it
    is): then none."""

    def __init__(self, fd):
        self.fd = fd

    def write(self, line):
        if self.fd is not None:
            try:
                os.write(self.fd, line.encode("utf-8", "backslashreplace"))
            except OSError:
                pass

    def diag(self, message):
        self.write("superd-status[%d]: %s\n" % (os.getpid(), printable(message, 4096)))


def bind(address):
    """A listening socket for --listen HOST:PORT, [V6]:PORT or PORT."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]") if sep else "0.0.0.0"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise UsageError("--listen %r: not HOST:PORT with a port in 0-65535" % address)
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    return sock


class Acceptor:
    """Accepting for ourselves (superd or inetd wait, systemd Accept=no,
    --listen): one thread per client, at most --max-connections at once
    (the others wait in the kernel's backlog), until --idle-exit seconds
    pass without a client.  The listeners are non-blocking while we own
    them, blocking again when we leave."""

    def __init__(self, listeners, settings, log):
        import threading
        self.threading = threading
        self.listeners = {sock.fileno(): sock for sock in listeners}
        self.settings, self.log = settings, log
        self.state = threading.Condition()
        self.active = 0
        self.last = time.monotonic()     # when the last client left

    def run(self):
        import select
        poller = select.poll()
        for fd, sock in self.listeners.items():
            sock.setblocking(False)
            poller.register(fd, select.POLLIN)
        try:
            while True:
                wait = self.wait_for_room()
                if wait is None:
                    return 0
                for fd, _events in poller.poll(wait):
                    if not self.accept(self.listeners[fd]):
                        poller.unregister(fd)
                        del self.listeners[fd]
                if not self.listeners:            # none listens any more: finish and leave
                    with self.state:
                        self.state.wait_for(lambda: self.active == 0)
                    return 0
        finally:
            for sock in self.listeners.values():
                sock.setblocking(True)

    def wait_for_room(self):
        """Block while at --max-connections; then poll's timeout in ms (-1:
        none), or None once idle for --idle-exit seconds."""
        s = self.settings
        with self.state:
            self.state.wait_for(lambda: self.active < s.max_connections)
            if s.idle_exit == NO_LIMIT:
                return -1
            left = s.idle_exit
            if self.active == 0:
                left = self.last + s.idle_exit - time.monotonic()
                if left <= 0:
                    return None
            return int(min(left, 86400) * 1000) + 1

    def accept(self, listener):
        """Accept one client and start its thread.  False when the socket
        no longer listens (shut down by its owner); other failures wait."""
        try:
            fd, _address = listener._accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True                   # taken by another process, or gone
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSOCK, errno.EOPNOTSUPP):
                return False
            self.log.diag("accept: %s; waiting for a client to leave" % exc.strerror)
            with self.state:
                self.state.wait(1.0)      # or until a client ends and gives an fd back
            return True
        sock = _socket.socket(listener.family, listener.type, 0, fd)
        with self.state:
            self.active += 1
        try:
            self.threading.Thread(target=self.client, args=(sock,), daemon=True).start()
        except RuntimeError:              # no thread to be had: this client goes
            sock.close()
            self.ended()
        return True

    def client(self, sock):
        try:
            serve_client(sock, self.settings, self.log)
        except Exception as exc:          # a thread's failure never ends the others
            self.log.diag("connection failed: %r" % exc)
        finally:
            self.ended()

    def ended(self):
        with self.state:
            self.active -= 1
            self.last = time.monotonic()
            self.state.notify_all()


def serve_client(sock, settings, log):
    """One connected client: HTTP, or with --agent one agent check."""
    (serve_agent if settings.agent else serve_connection)(sock, settings, log)


def serve(sockets, settings, log):
    """Serve what the launcher passed: a listening socket accepts for
    itself, a connected one is one client.  Returns the exit status."""
    first = sockets[0]
    if first.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
        return Acceptor(sockets, settings, log).run()
    serve_client(first, settings, log)
    return 0


def main(argv=None):
    """Run superd-status; returns the exit status (sysexits)."""
    args = sys.argv[1:] if argv is None else list(argv)
    launched = launch()
    log = Log(2 if launched.stderr_free else None)     # never the client
    try:
        settings = parse_options(args)
    except UsageError as exc:
        log.write("superd-status: %s (try --help)\n" % exc)
        return EX_USAGE
    if settings.help or settings.version:
        os.write(1, (usage() if settings.help else SERVER + "\n").encode())
        return 0
    settings.control = settings.control or os.environ.get("SUPERD_CONTROL", "")
    try:
        if settings.listen:
            sockets = [bind(settings.listen)]
            host, port = endpoint(sockets[0].getsockname())
            log.diag("listening on %s:%d" % (host if ":" not in host else "[%s]" % host, port))
        else:
            sockets = [_socket.socket(fileno=fd) for fd in launched.fds]
    except UsageError as exc:
        log.write("superd-status: %s\n" % exc)
        return EX_USAGE
    except OSError as exc:
        where = "--listen %s" % settings.listen if settings.listen else "the launcher's socket"
        log.write("superd-status: %s: %s\n" % (where, exc.strerror or exc))
        return EX_OSERR
    if not sockets:
        log.write("superd-status: no socket on fd 0 and no LISTEN_FDS; start me from superd "
                  "(internal: status), inetd, xinetd, systemd or tcpserver, or use --listen\n")
        return EX_USAGE
    try:
        return serve(sockets, settings, log)
    except KeyboardInterrupt:             # ^C under --listen: no traceback
        return 130


if __name__ == "__main__":
    sys.exit(main())
