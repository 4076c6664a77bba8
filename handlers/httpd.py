#!/usr/bin/env python3
"""superd-httpd: a small, safe HTTP/1.1 server for one socket.

Copy this one file anywhere: it uses only the standard library.  It serves
static files and runs CGI programs (RFC 3875) over HTTP/1.0 and 1.1 (RFC 9110,
RFC 9112), and it starts under superd, inetd, xinetd, systemd socket
activation or tcpserver.  It finds its socket the way DESIGN.md says:

    LISTEN_FDS with a matching LISTEN_PID (fds 3, 4, ...), else fd 0 if it is
    a socket.  A listening socket (SO_ACCEPTCONN) means "accept for myself"
    (inetd wait, systemd Accept=no); a connected one means "serve this one
    client" (inetd nowait, systemd Accept=yes, tcpserver).

Per connection it serves any number of requests (keep-alive, pipelining in
order), then exits.  Accepting for itself, it runs --workers processes of one
event loop each (Worker), up to --max-connections clients a worker, lends a
CGI request to a thread of its own, stops gracefully on TERM, and exits after
--idle-exit seconds without clients.

Rules this file keeps (the tests check each one):

    Rule 1: the peer never sees a traceback.  Every failure becomes a status
            (HttpError carries it, as h11's error_status_hint does) or a
            silent close (ClientGone).
    Rule 2: every wait on the peer or on a CGI program has a deadline: the
            header timeout, the keep-alive timeout, the I/O timeout with a
            minimum body rate, the CGI timeout.  Nothing blocks forever,
            unless an option set to 0 asks for no limit; any duration an
            option accepts works (poll() is given at most MAX_WAIT at once).
    Rule 3: every file served comes from under --root, after percent-decoding
            once and normalising; dotfiles are never served; a symbolic link
            may only lead outside the root with --follow-symlinks, and never
            to a dotfile or into a CGI folder (a program's source).
    Rule 4: a message whose framing is ambiguous (Content-Length with
            Transfer-Encoding, lengths that disagree, obs-fold, a bad chunk)
            is answered 400 and the connection closed, never guessed at.
    Rule 5: start-up stays close to a bare interpreter: the module imports
            only built-in modules (_socket rather than socket, which pulls in
            enum and selectors); threading, mimetypes and traceback are
            imported where they are first needed.

The file is laid out in sections, top to bottom:

    1. settings      the option table and its converters
    2. protocol      errors, tables, and pure parsing functions (unit-tested)
    3. connection    reading heads and bodies with deadlines, writing
    4. static files  path resolution, conditionals, ranges, sendfile, listings
    5. CGI           environment, spawn, the output relay
    6. exchange      one request to one response; the keep-alive loop; the log
    7. events        the worker loop of the long-lived modes
    8. launch        finding the socket, per-connection and accept modes, main
"""

import _socket
import _thread
import errno
import os
import select
import sys
import time
from stat import S_ISDIR, S_ISLNK, S_ISREG, S_ISSOCK
from _struct import pack

VERSION = "0.1.0"
SERVER = "superd-httpd/" + VERSION

EX_USAGE, EX_OSERR, EX_CONFIG = 64, 71, 78      # sysexits.h


# =========================================================================
# 1. Settings: one table, one converter per kind of value
# =========================================================================

NO_LIMIT = float("inf")
MAX_WAIT = 86400.0          # seconds: the longest single poll(), far below its 2**31 ms
STOP_WAIT = 1e-6            # seconds an idle read waits once TERM came (stop_on_term)


def _seconds(text):
    value = float(text)
    if not 0 <= value < 1e9:
        raise ValueError(f"not a number of seconds: {text!r}")
    return value


def _limit(text):
    """Seconds, 0 meaning no limit: held as infinity, so that a deadline
    needs no special case (it is never reached)."""
    return _seconds(text) or NO_LIMIT


def _count(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"not a positive count: {text!r}")
    return value


def _size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"not a size: {text!r}")
    return int(digits) * scale


def _text(text):
    return text


# Every option: (flag, attribute, converter or None for a flag, default, help).
# "cgi" is the one option that may repeat.
OPTIONS = (
    ("--root", "root", _text, ".", "DIR: serve the files under DIR"),
    ("--cgi", "cgi", _text, None,
     "PATTERN: URL paths that name CGI programs (repeatable; default /cgi-bin/*)"),
    ("--no-cgi", "no_cgi", None, False, "run no CGI programs at all"),
    ("--cgi-timeout", "cgi_timeout", _limit, 60.0,
     "SECONDS: kill a CGI program (and its process group) after this long (0: no limit)"),
    ("--listing", "listing", None, False,
     "list a directory that has no index.html (otherwise 403)"),
    ("--follow-symlinks", "follow_symlinks", None, False,
     "follow symbolic links that lead outside the root"),
    ("--quiet", "quiet", None, False, "write no access log"),
    ("--log", "log", _text, None,
     "FILE: append the access log and diagnostics to FILE instead of stderr"),
    ("--idle-exit", "idle_exit", _limit, NO_LIMIT,
     "SECONDS: accepting for itself, exit after this long without a client (0: never)"),
    ("--workers", "workers", _count, None,
     "N: accepting for itself, in N processes, each one event loop "
     "(default: one per CPU)"),
    ("--max-connections", "max_connections", _count, 1024,
     "N: accepting for itself, serve at most N clients at once (per worker)"),
    ("--keepalive-timeout", "keepalive_timeout", _seconds, 5.0,
     "SECONDS: close an idle persistent connection after this long (0: no keep-alive)"),
    ("--header-timeout", "header_timeout", _limit, 10.0,
     "SECONDS: a request line and its headers must arrive within this long (408; 0: no limit)"),
    ("--timeout", "timeout", _limit, 30.0,
     "SECONDS: give up on a client that neither sends nor receives for this long (0: no limit)"),
    ("--max-body", "max_body", _size, 16 << 20,
     "SIZE: largest request body accepted (413); K, M, G suffixes"),
    ("--max-line", "max_line", _size, 8192,
     "SIZE: longest request line (414) or header line (431)"),
    ("--max-header-size", "max_header_size", _size, 32 << 10,
     "SIZE: largest header section (431)"),
    ("--max-headers", "max_headers", _count, 100, "N: most header lines (431)"),
    ("--listen", "listen", _text, None,
     "HOST:PORT: bind and accept for itself, without a launcher (port 0: any)"),
    ("--help", "help", None, False, "print this help and exit"),
    ("--version", "version", None, False, "print the version and exit"),
)

DEFAULT_CGI = ("/cgi-bin/*",)


class UsageError(Exception):
    """A bad command line; main() answers it with exit status 64."""


class Settings:
    """The parsed options, as attributes named in OPTIONS."""

    def __init__(self):
        for _flag, attr, _kind, default, _help in OPTIONS:
            setattr(self, attr, default)


def parse_options(argv):
    """Return Settings for argv (without argv[0]); raise UsageError."""
    settings = Settings()
    table = {flag: (attr, kind) for flag, attr, kind, _d, _h in OPTIONS}
    patterns = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        if flag not in table:
            raise UsageError(f"unknown option {arg!r}")
        attr, kind = table[flag]
        if kind is None:
            if eq:
                raise UsageError(f"{flag} takes no value")
            setattr(settings, attr, True)
            continue
        if not eq:
            if not args:
                raise UsageError(f"{flag} needs a value")
            value = args.pop(0)
        try:
            converted = kind(value)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        if attr == "cgi":
            patterns.append(converted)
        else:
            setattr(settings, attr, converted)
    settings.cgi = () if settings.no_cgi else tuple(patterns or DEFAULT_CGI)
    for pattern in settings.cgi:
        if not pattern.startswith("/") and not pattern.startswith("**"):
            raise UsageError(f"--cgi {pattern!r}: a pattern starts with / or **")
    return settings


def usage():
    lines = ["usage: superd-httpd [OPTIONS]", "",
             "Serve HTTP on the socket a launcher passed (fd 0 or LISTEN_FDS).", ""]
    for flag, _attr, kind, default, text in OPTIONS:
        meta, _, text = text.partition(": ") if kind is not None else ("", "", text)
        shown = f"{flag} {meta}" if meta else flag
        shown_default = kind not in (None, _text) and default and default != NO_LIMIT
        extra = f" (default {default})" if shown_default else ""
        lines.append(f"  {shown:<28} {text}{extra}")
    return "\n".join(lines) + "\n"


# =========================================================================
# 2. Protocol: errors, tables and pure parsing functions
# =========================================================================

class HttpError(Exception):
    """A request we answer with `status` (4xx: the peer's fault, 5xx: ours).

    close: the connection cannot carry another request afterwards (framing
    is unknown or the peer misbehaved).  headers: extra response fields.
    """

    def __init__(self, status, detail="", close=False, headers=()):
        super().__init__(detail or REASONS.get(status, ""))
        self.status = status
        self.close = close
        self.headers = headers


class Handoff(Exception):
    """Raised inside an event loop where answering would block it (a CGI
    program, a request body still on the wire) before a byte of the answer
    exists: the request moves to a thread of its own (see Worker), which
    calls resume(conn) to go on from here, or answers it from the start."""

    def __init__(self, why, resume=None):
        super().__init__(why)
        self.resume = resume


class AwaitBody(Handoff):
    """Raised inside an event loop where a short request body must be read
    but has not all arrived, before a byte of it is taken from the buffer:
    the loop waits for it, then answers the request again from the start."""


class ClientGone(Exception):
    """The peer closed, reset or stalled: stop without answering."""


class CgiError(Exception):
    """A CGI program's output is not a valid CGI response (we answer 502)."""


REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Content Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# Methods we recognise; anything else is 501.  Static files allow STATIC_ALLOW,
# CGI programs every method in CGI_METHODS; the rest are 405 with Allow.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                     "TRACE", "CONNECT"))
STATIC_ALLOW = "GET, HEAD, OPTIONS"
CGI_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
CGI_ALLOW = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"

VERSIONS = {b"HTTP/1.1": 11, b"HTTP/1.0": 10}

_ALPHANUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TCHAR = _ALPHANUM + b"!#$%&'*+-.^_`|~"                # RFC 9110 token
VCHAR_OBS = bytes(b for b in range(256) if b == 9 or 32 <= b != 127)  # field-value
TARGET_CHARS = bytes(range(0x21, 0x7F))               # printable ASCII, no space
HEXDIGITS = b"0123456789abcdefABCDEF"
HOST_CHARS = _ALPHANUM + b"-._~!$&'()*+,;=:[]%"
_HEXVAL = {c: int(chr(c), 16) for c in HEXDIGITS}    # byte -> its value as a hex digit

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# Types for common extensions; anything else asks the mimetypes module once.
MIME_TYPES = {
    "html": "text/html", "htm": "text/html", "css": "text/css",
    "js": "text/javascript", "mjs": "text/javascript", "txt": "text/plain",
    "md": "text/markdown", "csv": "text/csv", "xml": "text/xml",
    "json": "application/json", "map": "application/json",
    "webmanifest": "application/manifest+json", "wasm": "application/wasm",
    "pdf": "application/pdf", "zip": "application/zip",
    "gz": "application/gzip", "tar": "application/x-tar",
    "svg": "image/svg+xml", "png": "image/png", "jpg": "image/jpeg",
    "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
    "avif": "image/avif", "ico": "image/vnd.microsoft.icon",
    "woff": "font/woff", "woff2": "font/woff2", "ttf": "font/ttf", "otf": "font/otf",
    "mp3": "audio/mpeg", "ogg": "audio/ogg", "wav": "audio/wav",
    "mp4": "video/mp4", "webm": "video/webm",
}
TEXT_TYPES = ("text/", "application/json", "application/javascript",
              "application/manifest+json", "image/svg+xml", "application/xml")

# Response fields a CGI program may not set: the server owns the framing.
CGI_DROP = frozenset(("connection", "keep-alive", "transfer-encoding", "te",
                      "trailer", "upgrade", "proxy-connection", "content-length",
                      "status", "date", "server"))
# Answers after which the connection is closed whatever the request said:
# the peer misbehaved, or we failed.
CLOSING = frozenset((400, 408, 411, 413, 414, 417, 431, 500, 501, 502, 503, 504, 505))
MAX_RANGES = 16
MIN_BODY_RATE = 1024        # bytes/s a request body must average after --timeout s
LOCAL_REDIRECTS = 5         # most CGI local redirects for one request
CGI_HOLD = 0.02             # seconds a CGI answer waits for its end, to be sent whole


class Request:
    """One parsed request head.  `headers` maps lower-case names to values,
    repeated fields joined with ", " ("; " for Cookie)."""

    __slots__ = ("method", "target", "version", "headers", "line", "length",
                 "chunked", "keep_alive", "path", "query", "host")

    def __init__(self, method, target, version, headers, line):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.line = line
        self.length = 0
        self.chunked = False
        self.keep_alive = True
        self.path = self.query = self.host = ""


def find_head_end(buf, start=0):
    """(end of head, start of what follows) for the first blank line, or None.

    A line ends with CRLF or, as RFC 9112 section 2.2 allows, a bare LF.
    start: where to begin looking (what was already searched, less 2)."""
    i = buf.find(b"\n\r\n", start)
    j = buf.find(b"\n\n", start)
    if i < 0 and j < 0:
        return None
    if j < 0 or 0 <= i < j:
        return i, i + 3
    return j, j + 2


def parse_head(head, max_line=8192, max_headers=100):
    """Parse a request head (without its blank line) into a Request.

    Raises HttpError with the status RFC 9112 asks for; every error closes."""
    lines = head.split(b"\n")
    line = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    if len(line) > max_line:
        raise HttpError(414, "request line too long", close=True)
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line", close=True)
    method, target, version_text = parts
    if not method or method.translate(None, TCHAR):
        raise HttpError(400, "malformed method", close=True)
    version = parse_version(version_text)
    if not target or target.translate(None, TARGET_CHARS):
        raise HttpError(400, "malformed request target", close=True)
    method = method.decode("ascii")
    if method not in METHODS:
        raise HttpError(501, "unknown method", close=True)
    if len(lines) - 1 > max_headers:
        raise HttpError(431, "too many header fields", close=True)
    headers = {}
    hosts = 0
    for raw in lines[1:]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_line:
            raise HttpError(431, "header line too long", close=True)
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding", close=True)
        name, colon, value = raw.partition(b":")
        if not colon or not name or name.translate(None, TCHAR):
            raise HttpError(400, "malformed header field", close=True)
        value = value.strip(b" \t")
        if value.translate(None, VCHAR_OBS):
            raise HttpError(400, "control character in a header field", close=True)
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key == "host":
            hosts += 1
        if key in headers:
            headers[key] += ("; " if key == "cookie" else ", ") + text
        else:
            headers[key] = text
    request = Request(method, target.decode("ascii"), version, headers,
                      line.decode("latin-1"))
    check_host(request, hosts)
    request.length, request.chunked = body_framing(headers, version)
    request.keep_alive = wants_keep_alive(headers, version)
    return request


def parse_version(text):
    """11 or 10 for HTTP/1.1 or 1.0 (1.x above 1 counts as 1.1); else raise."""
    version = VERSIONS.get(text)
    if version is not None:
        return version
    if (len(text) == 8 and text.startswith(b"HTTP/") and text[6:7] == b"."
            and text[5:6].isdigit() and text[7:8].isdigit()):
        if text[5:6] == b"1":
            return 11
        raise HttpError(505, "unsupported HTTP version", close=True)
    raise HttpError(400, "malformed HTTP version", close=True)


def check_host(request, count):
    """RFC 9112 3.2: HTTP/1.1 needs exactly one valid Host field."""
    host = request.headers.get("host")
    if count > 1:
        raise HttpError(400, "more than one Host field", close=True)
    if host is None:
        if request.version == 11:
            raise HttpError(400, "no Host field", close=True)
        return
    if host.encode("latin-1").translate(None, HOST_CHARS):
        raise HttpError(400, "malformed Host field", close=True)
    request.host = host


def body_framing(headers, version):
    """(length, chunked) of the request body, per RFC 9112 section 6.3."""
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise HttpError(400, "Content-Length with Transfer-Encoding", close=True)
        if version == 10:
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0", close=True)
        codings = [c.strip(" \t").lower() for c in te.split(",")]
        if codings[-1] != "chunked":
            raise HttpError(400, "chunked is not the final transfer coding", close=True)
        if len(codings) > 1:
            raise HttpError(501, "unsupported transfer coding", close=True)
        return 0, True
    if cl is None:
        return 0, False
    values = {v.strip(" \t") for v in cl.split(",")}
    if len(values) != 1:
        raise HttpError(400, "conflicting Content-Length values", close=True)
    value = values.pop()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HttpError(400, "malformed Content-Length", close=True)
    return int(value), False


def has_token(value, token):
    """Whether a comma-separated field value lists token (case-insensitive)."""
    return any(part.strip(" \t").lower() == token for part in value.split(","))


def wants_keep_alive(headers, version):
    connection = headers.get("connection")
    if connection is None:
        return version == 11
    if has_token(connection, "close"):
        return False
    return version == 11 or has_token(connection, "keep-alive")


def split_target(request):
    """Set request.path (still percent-encoded), .query and .host from the
    target: origin-form "/p?q", absolute-form "http://host/p?q", or "*"."""
    target = request.target
    if "#" in target:
        raise HttpError(400, "fragment in request target")
    if target[0] != "/":
        if target == "*":
            request.path = "*"
            return
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise HttpError(400, "unsupported request target")
        cut = min((rest.find(c) for c in "/?" if c in rest), default=len(rest))
        authority, rest = rest[:cut], rest[cut:].lstrip("/")
        if not authority or authority.encode().translate(None, HOST_CHARS):
            raise HttpError(400, "malformed authority")
        request.host = authority
        target = "/" + rest
    path, _, query = target.partition("?")
    request.path = path
    request.query = query


def percent_decode(text):
    """Bytes of text with every %XX decoded exactly once; raise on a bad %."""
    data = text.encode("ascii") if isinstance(text, str) else text
    if b"%" not in data:
        return data
    parts = data.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEXVAL or part[1] not in _HEXVAL:
            raise HttpError(400, "malformed percent-encoding")
        out.append(bytes((_HEXVAL[part[0]] * 16 + _HEXVAL[part[1]],)))
        out.append(part[2:])
    return b"".join(out)


def decode_path(path):
    """(segments, trailing_slash) of a percent-encoded absolute path.

    Decodes once, refuses NUL and backslash, drops "." and empty segments and
    resolves ".." (400 if it would climb above the root).  Segments are str
    (file-system encoding, surrogateescape), ready to join under the root."""
    raw = percent_decode(path)
    if b"\0" in raw or b"\\" in raw:
        raise HttpError(400, "NUL or backslash in path")
    segments = []
    parts = os.fsdecode(raw).split("/")
    for part in parts:
        if part == "..":
            if not segments:
                raise HttpError(400, "path climbs above the root")
            segments.pop()
        elif part and part != ".":
            segments.append(part)
    trailing = parts[-1] in ("", ".", "..")
    return segments, trailing


def is_hidden(segments):
    """Dotfiles and dot-folders are never served; /.well-known/ is the exception."""
    for i, segment in enumerate(segments):
        if segment[0] == "." and not (i == 0 and segment == ".well-known"):
            return True
    return False


def in_cgi_folder(globs, segments):
    """Whether the path of segments, or a leading part of it, matches a CGI
    pattern: a CGI program or what lies in its folder (see find_script)."""
    prefix = ""
    for segment in segments:
        prefix += "/" + segment
        if any(glob_match(tokens, prefix) for tokens in globs):
            return True
    return False


def compile_glob(pattern):
    """Split a CGI pattern into tokens: "**" (anything), "*" (no "/"), "?", text."""
    tokens = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            tokens.append("**")
            i += 2
        elif pattern[i] in "*?":
            tokens.append(pattern[i])
            i += 1
        else:
            j = i
            while j < len(pattern) and pattern[j] not in "*?":
                j += 1
            tokens.append(pattern[i:j])
            i = j
    return tuple(tokens)


def glob_match(tokens, text, start=0):
    """Whether text[start:] matches the tokens of compile_glob.

    A star followed by nothing or by plain text (/cgi-bin/*, **.cgi) is
    decided without backtracking, so a long hostile path costs linear time."""
    for n, token in enumerate(tokens):
        if token == "?":
            if start >= len(text) or text[start] == "/":
                return False
            start += 1
        elif token in ("*", "**"):
            rest = tokens[n + 1:]
            end = len(text) if token == "**" else text.find("/", start)
            end = len(text) if end < 0 else end
            if not rest or (len(rest) == 1 and rest[0] not in ("*", "**", "?")):
                tail = rest[0] if rest else ""
                cut = len(text) - len(tail)
                return (cut >= start and text.endswith(tail)
                        and (token == "**" or "/" not in text[start:cut]))
            return any(glob_match(rest, text, k) for k in range(start, end + 1))
        elif text.startswith(token, start):
            start += len(token)
        else:
            return False
    return start == len(text)


def parse_range(value, size):
    """The byte ranges of a Range field for a representation of `size` bytes.

    None: ignore the field (not bytes, malformed, too many parts): send 200.
    []: nothing satisfiable: send 416.  Otherwise [(first, last), ...] with
    inclusive ends; overlapping ranges are sorted and merged (RFC 9110 14.3)."""
    unit, eq, specs = value.partition("=")
    if not eq or unit.strip(" \t").lower() != "bytes":
        return None
    items = [s.strip(" \t") for s in specs.split(",")]
    items = [s for s in items if s]
    if not items or len(items) > MAX_RANGES:
        return None
    ranges = []
    suffix_only = True
    for item in items:
        first, dash, last = item.partition("-")
        if not dash or not (first or last):
            return None
        for number in (first, last):
            if number and not (number.isascii() and number.isdigit() and len(number) < 19):
                return None
        if first:
            suffix_only = False
            lo = int(first)
            hi = int(last) if last else size - 1
            if last and hi < lo:
                return None
            if lo < size:
                ranges.append((lo, min(hi, size - 1)))
        elif int(last) > 0 and size > 0:
            ranges.append((max(0, size - int(last)), size - 1))
    if not ranges and size == 0 and suffix_only:
        return None
    ordered = sorted(ranges)
    if any(b[0] <= a[1] + 1 for a, b in zip(ordered, ordered[1:])):
        merged = [ordered[0]]
        for lo, hi in ordered[1:]:
            if lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        ranges = merged
    return ranges


def _days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def parse_http_date(text):
    """Seconds since the epoch of an HTTP-date in any of its three forms
    (IMF-fixdate, RFC 850, asctime; RFC 9110 5.6.7), or None."""
    parts = text.split()
    try:
        if len(parts) == 6 and parts[5] == "GMT" and parts[0].endswith(","):
            day, month, year, clock = parts[1], parts[2], parts[3], parts[4]
        elif len(parts) == 4 and parts[3] == "GMT" and parts[0].endswith(","):
            day, month, year = parts[1].split("-")
            clock = parts[2]
            if len(year) != 2:
                return None
            year = str(int(year) + (1900 if int(year) >= 70 else 2000))
        elif len(parts) == 5:
            month, day, clock, year = parts[1], parts[2], parts[3], parts[4]
        else:
            return None
        hour, minute, second = (int(x) for x in clock.split(":"))
        y, d, m = int(year), int(day), MONTHS.index(month) + 1
        if not (len(clock) == 8 and 1 <= d <= 31 and hour < 24 and minute < 60
                and second < 61 and 1000 <= y <= 9999):
            return None
    except ValueError:
        return None
    return _days_from_civil(y, m, d) * 86400 + hour * 3600 + minute * 60 + second


def format_http_date(seconds):
    t = time.gmtime(seconds)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        WEEKDAYS[t.tm_wday], t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)


def etag_matches(field, etag, weak):
    """Whether an If-Match / If-None-Match field matches etag.

    weak: the weak comparison of If-None-Match; else the strong one."""
    if field.strip(" \t") == "*":
        return True
    for candidate in field.split(","):
        candidate = candidate.strip(" \t")
        if candidate.startswith("W/"):
            if not weak:
                continue
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def check_conditions(request, etag, mtime):
    """RFC 9110 13.2.2: None to go on, or the status 304/412 to answer."""
    headers = request.headers
    field = headers.get("if-match")
    if field is not None:
        if not etag_matches(field, etag, weak=False):
            return 412
    else:
        field = headers.get("if-unmodified-since")
        date = parse_http_date(field) if field is not None else None
        if date is not None and mtime > date:
            return 412
    field = headers.get("if-none-match")
    if field is not None:
        if etag_matches(field, etag, weak=True):
            return 304 if request.method in ("GET", "HEAD") else 412
    elif request.method in ("GET", "HEAD"):
        field = headers.get("if-modified-since")
        date = parse_http_date(field) if field is not None else None
        if date is not None and mtime <= date:
            return 304
    return None


def if_range_holds(field, etag, mtime):
    """If-Range (RFC 9110 13.1.5): an entity-tag compared strongly, or a date
    equal to Last-Modified."""
    field = field.strip(" \t")
    if field.startswith('"') or field.startswith("W/"):
        return field == etag
    return parse_http_date(field) == mtime


def accepts_gzip(field):
    """Whether an Accept-Encoding field accepts gzip (q > 0, explicitly or by *)."""
    star = False
    for item in field.split(","):
        coding, *params = item.split(";")
        coding = coding.strip(" \t").lower()
        q = 1.0
        for param in params:            # q may follow other parameters (RFC 9110 12.4.2)
            name, eq, value = param.partition("=")
            if eq and name.strip(" \t").lower() == "q":
                try:
                    q = float(value.strip(" \t"))
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q > 0
    return star


def parse_chunk_size(line):
    """The size of a chunk-size line (CRLF removed); extensions are checked
    (RFC 9112 7.1.1) and ignored."""
    size, semi, ext = line.partition(b";")
    size = size.rstrip(b" \t")
    if not size or size.translate(None, HEXDIGITS) or len(size) > 15:
        raise HttpError(400, "malformed chunk size", close=True)
    if semi and not is_chunk_ext(ext):
        raise HttpError(400, "malformed chunk extension", close=True)
    return int(size, 16)


def is_chunk_ext(ext):
    """Whether ext, what follows a chunk size's first ";", completes a
    chunk-ext: BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ], then
    any number of BWS ";" and the same again.  Runs only for a chunk that
    has an extension."""
    i, n = 0, len(ext)
    while True:
        start = _span(ext, i, b" \t")
        i = _span(ext, start, TCHAR)
        if i == start:
            return False                          # no ext-name
        i = _span(ext, i, b" \t")
        if ext[i:i + 1] == b"=":
            i = _span(ext, i + 1, b" \t")
            j = _quoted_end(ext, i) if ext[i:i + 1] == b'"' else _span(ext, i, TCHAR)
            if j <= i:
                return False                      # no value, or a broken quoted-string
            i = _span(ext, j, b" \t")
        if i == n:
            return True
        if ext[i] != 59:                          # ";"
            return False
        i += 1


def _span(data, i, allowed):
    """The index of the first byte from data[i] on that is not in allowed."""
    while i < len(data) and data[i] in allowed:
        i += 1
    return i


def _quoted_end(data, i):
    """Where the quoted-string that starts at data[i] ends (after its
    closing quote), or -1 if it is broken (RFC 9110 5.6.4)."""
    i += 1
    while i < len(data):
        c = data[i]
        if c == 34:                               # the closing quote
            return i + 1
        if c == 92:                               # a quoted-pair
            if i + 1 == len(data) or data[i + 1] not in VCHAR_OBS:
                return -1
            i += 2
        elif c in VCHAR_OBS:                      # qdtext
            i += 1
        else:
            return -1
    return -1


def parse_cgi_head(head):
    """(status, reason, fields, location, length) of a CGI response head
    (RFC 3875 section 6).  fields: [(name, value)] to pass on (hop-by-hop
    fields and the ones the server owns are dropped); length: the program's
    Content-Length or None.  Raises CgiError if it is not a CGI response."""
    status = reason = location = length = None
    fields = []
    has_type = False
    for raw in head.split(b"\n"):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        name, colon, value = raw.partition(b":")
        value = value.strip(b" \t")
        if (not colon or not name or name.translate(None, TCHAR)
                or value.translate(None, VCHAR_OBS)):
            raise CgiError("malformed header line %r" % raw[:80])
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key == "status":
            code, _, reason = text.partition(" ")
            if not (len(code) == 3 and code.isascii() and code.isdigit()
                    and 200 <= int(code) <= 599):
                raise CgiError("malformed Status %r" % text[:40])
            status = int(code)
            reason = reason.strip(" \t") or REASONS.get(status, "Unknown")
        elif key == "location":
            location = text
        elif key == "content-length":
            if (not (text.isascii() and text.isdigit() and len(text) < 19)
                    or length not in (None, int(text))):
                raise CgiError("malformed Content-Length %r" % text[:40])
            length = int(text)
        elif key == "content-type":
            has_type = True
        if key not in CGI_DROP:
            fields.append((name.decode("ascii"), text))
    if status is None and location is None and not has_type:
        raise CgiError("no Content-Type, Location or Status")
    return status, reason, fields, location, length


def media_type(path, _cache={}):
    """Content-Type for a file name: the table, else mimetypes, with a
    charset for text types."""
    name = path.rpartition("/")[2]
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    ctype = _cache.get(ext)
    if ctype is None:
        ctype = MIME_TYPES.get(ext)
        if ctype is None and ext:
            import mimetypes
            ctype = mimetypes.guess_type("x." + ext, strict=False)[0]
        ctype = ctype or "application/octet-stream"
        if ctype.startswith(TEXT_TYPES):
            ctype += "; charset=utf-8"
        _cache[ext] = ctype
    return ctype


_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def url_quote(name):
    """Percent-encode a file name for a URL path segment (raw bytes kept)."""
    return "".join(chr(b) if b in _URL_SAFE else "%%%02X" % b for b in os.fsencode(name))


def html_escape(text):
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


def log_escape(text, limit=2048):
    """Escape peer-controlled text for one log line: quotes, backslashes and
    anything unprintable become \\xHH."""
    text = text[:limit]
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out = []
    for ch in text[:limit]:
        o = ord(ch)
        out.append("\\x%02x" % o if o < 32 or o > 126 or ch in '"\\' else ch)
    return "".join(out)


# =========================================================================
# 3. Connection: reading heads and bodies with deadlines, writing
# =========================================================================

SOL_SOCKET = _socket.SOL_SOCKET
_TIMEVAL = "@ll"


class Connection:
    """One client socket: a read buffer and deadline-bound reads and writes.

    Reads use SO_RCVTIMEO on a blocking socket, so a recv costs one system
    call and a stalled peer raises ClientGone or HttpError(408); writes use
    SO_SNDTIMEO set to --timeout once."""

    in_loop = False               # answering inside an event loop (LoopConnection)
    blocking = True               # made blocking at the start (a loop's is not)
    idle = False                  # waiting for a request's first byte (see stop_on_term)
    stopped = False               # TERM came: this answer is the last (stop_on_term)

    def __init__(self, sock, client, client_port, local, local_port, settings, log):
        self.sock = sock
        self.fd = sock.fileno()
        self.settings = settings
        self.log = log
        self.client, self.client_port = client, client_port
        self.local, self.local_port = local, local_port
        self.buf = b""
        self.rcvtimeo = None
        self.requests = 0
        self.opened = time.monotonic()
        self.keep = True          # may another request follow this one?
        self.begin()
        if sock.family != _socket.AF_UNIX:
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.blocking:
            self.make_blocking()

    def begin(self):
        """Forget the last exchange: a new request is awaited."""
        self.unread = 0           # request body bytes still on the wire
        self.status = 0           # of the current response, for the log
        self.sent = 0             # body bytes of the current response
        self.started = False      # the current response's head is out
        self.version = 11         # of the current request
        self.line = None          # the current request line, for the log
        self.request = None       # the current Request, once parsed

    def make_blocking(self):
        """Blocking reads bound by SO_RCVTIMEO, writes by SO_SNDTIMEO."""
        self.sock.setblocking(True)
        self.rcvtimeo = None
        self.sock.setsockopt(SOL_SOCKET, _socket.SO_SNDTIMEO, _timeval(self.settings.timeout))

    # -- reading ----------------------------------------------------------
    def recv(self, timeout, size=65536):
        """Up to size bytes (b"" at EOF); raise TimeoutError after timeout s."""
        if timeout != self.rcvtimeo:
            timeval = _timeval(timeout)
            if not (self.stopped and self.idle):      # else STOP_WAIT stands
                self.sock.setsockopt(SOL_SOCKET, _socket.SO_RCVTIMEO, timeval)
                self.rcvtimeo = timeout
        try:
            return self.sock.recv(size)
        except (BlockingIOError, _socket.timeout):
            raise TimeoutError from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return b""

    def read_head(self):
        """The next request head, or None if the client closed or idled out
        before sending a byte of it (empty lines count for nothing).  Raises
        HttpError (408, 414, 431).

        One deadline, --header-timeout from the connection's start (first
        request) or from the request's first byte, an empty line included,
        bounds the whole head; the wait for that first byte of a later
        request is --keepalive-timeout."""
        settings = self.settings
        first = self.requests == 0
        buf = self.buf.lstrip(b"\r\n")
        deadline = None
        blank = 0                 # empty lines before a request are ignored
        self.idle = not buf
        while not buf:
            if self.stopped:      # TERM came before this wait: wait no more
                self.stop_waiting()
                wait = STOP_WAIT
            elif deadline is not None:
                wait = deadline - time.monotonic()
            else:                 # the connection has just opened, or is idle
                wait = settings.header_timeout if first else settings.keepalive_timeout
            try:
                if wait <= 0:
                    raise TimeoutError
                data = self.recv(wait)
            except TimeoutError:
                return None
            if not data:
                return None
            buf = data.lstrip(b"\r\n")
            blank += len(data) - len(buf)
            if blank > settings.max_line:
                raise HttpError(400, "too many empty lines", close=True)
            if deadline is None and not buf:      # empty lines: the clock runs
                deadline = self.head_deadline(first)
        self.idle = False
        searched = 0
        while True:
            found = find_head_end(buf, searched)
            if found is not None and found[0] <= settings.max_header_size:
                self.buf = buf[found[1]:]
                return buf[:found[0]]
            if found is not None or len(buf) > settings.max_header_size:
                if buf.find(b"\n", 0, settings.max_line + 1) < 0:
                    raise HttpError(414, "request line too long", close=True)
                raise HttpError(431, "header section too large", close=True)
            if deadline is None:
                deadline = self.head_deadline(first)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                data = self.recv(left)
            except TimeoutError:
                self.buf = buf
                raise HttpError(408, "request head too slow", close=True) from None
            if not data:
                raise ClientGone("EOF inside a request head")
            searched = max(len(buf) - 2, 0)
            buf = buf + data

    def stop_waiting(self):
        """A stop finds us idle: from now on a read for the next request
        waits a microsecond, so that it returns what is already here (a
        request is then answered) or times out (the connection closes).
        recv() keeps that wait while the stop and the idleness last: a
        read for the rest of a head sets its own again (see stop_on_term)."""
        try:
            self.sock.setsockopt(SOL_SOCKET, _socket.SO_RCVTIMEO, _timeval(STOP_WAIT))
        except OSError:
            return                # not a socket we can still read: nothing waits
        self.rcvtimeo = STOP_WAIT

    def head_deadline(self, first):
        """When the head now arriving must be complete (--header-timeout)."""
        started = self.opened if first else time.monotonic()
        return started + self.settings.header_timeout

    def body_timeout(self):
        """Seconds the next body read may wait: --timeout of silence, and on
        average MIN_BODY_RATE bytes/s after the first --timeout seconds."""
        timeout = self.settings.timeout
        deadline = self.body_started + timeout + self.body_received / MIN_BODY_RATE
        left = min(timeout, deadline - time.monotonic())
        if left <= 0:
            raise HttpError(408, "request body too slow", close=True)
        return left

    def fill(self):
        """Append body bytes from the socket to buf; raise on EOF or timeout."""
        if self.in_loop:          # never reached: Worker.admit reads bodies first
            raise Handoff("a body read inside the loop")
        try:
            data = self.recv(self.body_timeout())
        except TimeoutError:
            raise HttpError(408, "request body too slow", close=True) from None
        if not data:
            raise ClientGone("EOF inside a request body")
        self.body_received += len(data)
        self.buf += data

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_into(self, n, sink):
        """Pass the next n body bytes to sink(bytes), piece by piece."""
        while n > 0:
            if not self.buf:
                self.fill()
            piece, self.buf = self.buf[:n], self.buf[n:]
            sink(piece)
            n -= len(piece)

    def read_crlf_line(self, limit):
        """One line ending in CRLF (returned without it); a bare LF is a 400."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                if i == 0 or self.buf[i - 1] != 13:
                    raise HttpError(400, "chunked framing needs CRLF", close=True)
                line, self.buf = self.buf[:i - 1], self.buf[i + 1:]
                return line
            if len(self.buf) > limit:
                raise HttpError(400, "chunk line too long", close=True)
            self.fill()

    def read_chunked(self, limit, sink):
        """De-chunk a request body of at most limit bytes (413 beyond) into
        sink(bytes); return its length.  Trailer fields are read and dropped."""
        total = 0
        while True:
            size = parse_chunk_size(self.read_crlf_line(4096))
            if size == 0:
                break
            total += size
            if total > limit:
                raise HttpError(413, "chunked body too large", close=True)
            self.read_into(size, sink)
            if self.read_exact(2) != b"\r\n":
                raise HttpError(400, "chunk data not followed by CRLF", close=True)
        trailer = 0
        while True:
            line = self.read_crlf_line(self.settings.max_line)
            if not line:
                break
            name, colon, value = line.partition(b":")
            if (not colon or not name or name.translate(None, TCHAR)
                    or value.translate(None, VCHAR_OBS)):
                raise HttpError(400, "malformed trailer field", close=True)
            trailer += len(line)
            if trailer > self.settings.max_header_size:
                raise HttpError(431, "trailer section too large", close=True)
        return total

    def read_body(self, request, limit, sink):
        """The whole request body into sink(bytes); returns its length.
        Bound by limit (413) and by body_timeout() on every read (408)."""
        self.body_started = time.monotonic()
        self.body_received = 0
        if request.chunked:
            length = self.read_chunked(limit, sink)
        else:
            if request.length > limit:
                raise HttpError(413, "request body too large", close=True)
            self.read_into(request.length, sink)
            length = request.length
        self.unread = 0
        return length

    def discard_body(self, request):
        """Read and drop a small request body so the connection stays usable;
        a large one (or one behind Expect) closes the connection instead."""
        if not (request.chunked or request.length):
            return
        if request.length > 64 << 10 or "expect" in request.headers:
            self.keep = False
            return
        self.read_body(request, 64 << 10, _drop)

    # -- writing ----------------------------------------------------------
    def head(self, status, fields, reason=None):
        """The status line and fields of an answer, as bytes; decides (and
        says) whether the connection stays open."""
        self.status = status
        if self.unread or self.stopped:
            self.keep = False       # the body is still on the wire, or we stop: close after
        lines = ["HTTP/1.1 %d %s" % (status, reason or REASONS.get(status, "Unknown")),
                 date_and_server()]
        lines.extend(fields)
        if not self.keep:
            lines.append("Connection: close")
        elif self.version == 10:
            lines.append("Connection: keep-alive")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def send(self, data, more=False):
        try:
            self.sock.sendall(data, _socket.MSG_MORE if more else 0)
        except (BlockingIOError, _socket.timeout):
            raise ClientGone("send timed out") from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise ClientGone("client closed while we were sending") from None

    def sendfile(self, fd, offset, count):
        """count bytes of fd from offset, by os.sendfile."""
        while count > 0:
            try:
                n = os.sendfile(self.fd, fd, offset, min(count, 1 << 30))
            except (BlockingIOError, _socket.timeout):
                raise ClientGone("send timed out") from None
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                raise ClientGone("client closed while we were sending") from None
            if n == 0:
                raise ClientGone("file shrank while being sent")
            offset += n
            count -= n
            self.sent += n

    def release(self, fd):
        """A file send_file opened is done with here (a loop may keep it)."""
        os.close(fd)

    def note_file(self, path, st, fields):
        """send_file is about to answer 200 with this whole file (a loop
        may remember the answer: see Worker.remember)."""

    def logged(self):
        """The exchange is over: write its access-log line."""
        self.log.access(self, self.line, self.request)

    def close(self):
        """Close; if unread bytes may follow, linger (RFC 9112 9.6) so the
        peer reads our answer before any reset."""
        try:
            if self.buf or self.unread:
                self.sock.shutdown(_socket.SHUT_WR)
                deadline = time.monotonic() + 2.0
                drained = 0
                while drained < 1 << 20:
                    left = deadline - time.monotonic()
                    data = self.recv(left) if left > 0 else b""
                    if not data:
                        break
                    drained += len(data)
            else:
                self.sock.shutdown(_socket.SHUT_RDWR)
        except (OSError, TimeoutError):
            pass
        self.sock.close()


def _drop(data):
    pass


def _timeval(seconds):
    """A struct timeval for SO_RCVTIMEO or SO_SNDTIMEO: NO_LIMIT is 0, which
    means "never"; so any other wait is at least 1 microsecond."""
    if seconds == NO_LIMIT:
        return pack(_TIMEVAL, 0, 0)
    sec = int(seconds)
    usec = max(int((seconds - sec) * 1e6), 0 if sec else 1)
    return pack(_TIMEVAL, sec, usec)


# =========================================================================
# 4. Static files: resolution, conditionals, ranges, sendfile, listings
# =========================================================================

def resolve(settings, segments, as_file=True):
    """(path, stat) of the file the segments name under the root.

    lstat()s each component, so a symbolic link anywhere is noticed; then
    where it leads is checked (check_real).  as_file: the file is to be
    served as such, not run as a CGI program."""
    path = settings.root_real
    st = None
    linked = False
    try:
        for segment in segments:
            path = path + "/" + segment
            st = os.lstat(path)
            if S_ISLNK(st.st_mode):
                linked = True
                st = os.stat(path)
        if st is None:
            st = os.stat(path)
    except FileNotFoundError:
        raise HttpError(404) from None
    except NotADirectoryError:
        raise HttpError(404) from None
    except PermissionError:
        raise HttpError(403) from None
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise HttpError(404) from None
        raise
    if linked:
        check_real(settings, os.path.realpath(path), as_file, S_ISDIR(st.st_mode))
    return path, st


def check_real(settings, real, as_file, is_dir=False):
    """Refuse what a path that went through a symbolic link really names: a
    place outside the root (403, unless --follow-symlinks); and for a file
    to be served (as_file), a dotfile (404) or anything in a CGI folder, or
    a directory that is one (403).  The URL passed these checks; the real
    path, relative to the real root, must pass them too (Rule 3)."""
    base = settings.root_real.rstrip("/") + "/"
    rel = real[len(base):] if real.startswith(base) else None
    if rel is None and real != settings.root_real and not settings.follow_symlinks:
        raise HttpError(403, "symbolic link leaves the root")
    if not (as_file and rel):
        return
    parts = rel.split("/")
    if is_hidden(parts):
        raise HttpError(404)
    if settings.cgi_globs and in_cgi_folder(settings.cgi_globs, parts):
        raise HttpError(403, "symbolic link to a CGI program")
    if is_dir and is_cgi_folder(settings, parts):
        raise HttpError(403, "symbolic link to a CGI folder")


_O_DIRECTORY_PATH = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


def real_directory(path):
    """os.path.realpath(path), for a directory, in three system calls where
    /proc names what an fd is open on (Linux).

    realpath runs a Python loop with an lstat per component, every
    connection (a link may move), and under preload each frame it runs
    copies pages of the warm interpreter: ~37 of a handler's ~400.
    """
    try:
        fd = os.open(path, _O_DIRECTORY_PATH)
    except OSError:
        return os.path.realpath(path)          # not a directory: main() says so
    try:
        real = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        real = ""
    finally:
        os.close(fd)
    return real if real.startswith("/") else os.path.realpath(path)


def try_resolve(settings, segments):
    try:
        return resolve(settings, segments)
    except HttpError:
        return None, None


def is_cgi_folder(settings, segments):
    """Whether a directory is, or lies in, a CGI folder: its index.html
    would be a CGI path, so neither it nor a listing is served (what
    find_script cannot see: /cgi-bin does not match /cgi-bin/*)."""
    return bool(settings.cgi_globs) and in_cgi_folder(settings.cgi_globs,
                                                      segments + ["index.html"])


def etag_of(st):
    return '"%x-%x"' % (st.st_mtime_ns, st.st_size)


# How send_file answers a file it cannot open: gone since resolve() (404),
# forbidden (403); anything else (EMFILE, ENFILE, ENOMEM, EIO) is ours: 503.
OPEN_ERRORS = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.ELOOP: 404,
               errno.ENAMETOOLONG: 404, errno.EACCES: 403, errno.EPERM: 403}
VARY = "Vary: Accept-Encoding"      # on every file answer, errors from send_file too


def serve_static(conn, request, segments, trailing):
    """Answer GET, HEAD or OPTIONS for a file or directory under the root."""
    settings = conn.settings
    path, st = resolve(settings, segments)
    if S_ISDIR(st.st_mode):
        if not trailing:
            location = "/" + "".join(url_quote(s) + "/" for s in segments)
            if request.query:
                location += "?" + request.query
            raise HttpError(301, headers=("Location: " + location,))
        if is_cgi_folder(settings, segments):
            raise HttpError(403, "a CGI folder is neither indexed nor listed")
        index, index_st = try_resolve(settings, segments + ["index.html"])
        if index is None or not S_ISREG(index_st.st_mode):
            if settings.listing:
                return send_listing(conn, request, path, segments)
            raise HttpError(403, "no index.html and no --listing")
        path, st = index, index_st
    elif trailing:
        raise HttpError(404)
    if not S_ISREG(st.st_mode):
        raise HttpError(403, "not a regular file")
    if request.method == "OPTIONS":
        return send_simple(conn, 204, ("Allow: " + STATIC_ALLOW,), None)
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, headers=("Allow: " + STATIC_ALLOW,))
    conn.discard_body(request)
    ctype = media_type(path)
    fields = [VARY]
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        gz, gz_st = try_resolve(settings, segments_of(path, settings))
        if gz is not None and S_ISREG(gz_st.st_mode):
            path = gz
            fields.append("Content-Encoding: gzip")
    send_file(conn, request, path, ctype, fields)


def segments_of(path, settings):
    """Segments of path + ".gz", relative to the root."""
    rel = path[len(settings.root_real):].lstrip("/") + ".gz"
    return rel.split("/")


def send_file(conn, request, path, ctype, fields):
    """A 200, 206, 304, 412 or 416 for one regular file, the body by sendfile.

    Validators, conditions and size all come from the fstat of the open
    file, so that the ETag names exactly the bytes sent (RFC 9110 8.8.1)
    even if the file was replaced since resolve() looked at it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        status = OPEN_ERRORS.get(exc.errno, 503)
        if status == 503:
            conn.log.diag("open %s: %s" % (path, exc.strerror))
        raise HttpError(status, headers=(VARY,)) from None
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise HttpError(403, headers=(VARY,))
        etag = etag_of(st)
        mtime = int(st.st_mtime)
        fields += ["ETag: " + etag, "Last-Modified: " + format_http_date(mtime)]
        status = check_conditions(request, etag, mtime)
        if status == 304:
            return send_simple(conn, 304, fields, None)
        if status == 412:
            raise HttpError(412, headers=(VARY,))
        size = st.st_size
        ranges = None
        field = request.headers.get("range")
        if field is not None and request.method == "GET":
            if_range = request.headers.get("if-range")
            if if_range is None or if_range_holds(if_range, etag, mtime):
                ranges = parse_range(field, size)
        fields.append("Accept-Ranges: bytes")
        if ranges is None:
            fields += ["Content-Type: " + ctype, "Content-Length: %d" % size]
            conn.note_file(path, st, fields)
            head = conn.head(200, fields)
            send_body(conn, request, head, fd, ((0, size - 1),) if size else ())
        elif not ranges:
            raise HttpError(416, headers=(VARY, "Content-Range: bytes */%d" % size))
        elif len(ranges) == 1:
            lo, hi = ranges[0]
            head = conn.head(206, fields + [
                "Content-Type: " + ctype, "Content-Length: %d" % (hi - lo + 1),
                "Content-Range: bytes %d-%d/%d" % (lo, hi, size)])
            send_body(conn, request, head, fd, ranges)
        else:
            send_multipart(conn, request, fields, fd, ctype, size, ranges)
    finally:
        conn.release(fd)


def send_body(conn, request, head, fd, ranges):
    if request.method == "HEAD" or not ranges:
        conn.send(head)
        return
    conn.send(head, more=True)
    for lo, hi in ranges:
        conn.sendfile(fd, lo, hi - lo + 1)


def send_multipart(conn, request, fields, fd, ctype, size, ranges):
    """A 206 multipart/byteranges answer (RFC 9110 14.6)."""
    boundary = os.urandom(12).hex()
    parts = [("--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
              % (boundary, ctype, lo, hi, size)).encode() for lo, hi in ranges]
    tail = ("--%s--\r\n" % boundary).encode()
    length = sum(len(p) + hi - lo + 1 + 2 for p, (lo, hi) in zip(parts, ranges)) + len(tail)
    head = conn.head(206, fields + [
        "Content-Type: multipart/byteranges; boundary=" + boundary,
        "Content-Length: %d" % length])
    if request.method == "HEAD":
        conn.send(head)
        return
    conn.send(head, more=True)
    for part, (lo, hi) in zip(parts, ranges):
        conn.send(part, more=True)
        conn.sent += len(part)
        conn.sendfile(fd, lo, hi - lo + 1)
        conn.send(b"\r\n", more=True)
        conn.sent += 2
    conn.send(tail)
    conn.sent += len(tail)


def send_listing(conn, request, path, segments):
    """An HTML index of a directory (only with --listing); names escaped
    (bytes that are not UTF-8 shown as U+FFFD), dotfiles hidden."""
    if request.method == "OPTIONS":
        return send_simple(conn, 204, ("Allow: " + STATIC_ALLOW,), None)
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, headers=("Allow: " + STATIC_ALLOW,))
    conn.discard_body(request)
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except PermissionError:
        raise HttpError(403) from None
    title = os.fsencode("/" + "".join(s + "/" for s in segments))
    title = html_escape(title.decode("utf-8", "replace"))
    rows = ['<li><a href="../">../</a></li>'] if segments else []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        slash = "/" if entry.is_dir() else ""
        shown = os.fsencode(entry.name).decode("utf-8", "replace")
        rows.append('<li><a href="%s%s">%s%s</a></li>'
                    % (url_quote(entry.name), slash, html_escape(shown), slash))
    page = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of %s'
            '</title></head>\n<body><h1>Index of %s</h1>\n<ul>\n%s\n</ul></body></html>\n'
            % (title, title, "\n".join(rows)))
    send_simple(conn, 200, ("Content-Type: text/html; charset=utf-8",),
                page.encode("utf-8"), head_only=request.method == "HEAD")


def send_simple(conn, status, fields, body, head_only=False):
    """A complete answer from memory; body None means no body at all (304)."""
    fields = list(fields)
    if body is not None:
        fields.append("Content-Length: %d" % len(body))
    head = conn.head(status, fields)
    if body and not head_only:
        conn.send(head + body)
        conn.sent += len(body)
    else:
        conn.send(head)


def error_page(status):
    title = "%d %s" % (status, REASONS.get(status, ""))
    return ("<!DOCTYPE html>\n<html><head><title>%s</title></head>"
            "<body><h1>%s</h1></body></html>\n" % (title, title)).encode()


# =========================================================================
# 5. CGI (RFC 3875): environment, spawn, the output relay
# =========================================================================

# Signal numbers from the C module: the `signal` module would import enum.
# A CGI program starts with every signal at its default (Python ignores
# SIGPIPE and SIGXFSZ, a launcher may have ignored others, and an ignored
# signal survives exec), except glibc's own 32 and 33, which it cannot touch.
from _signal import SIGKILL, SIGSTOP, valid_signals  # noqa: E402
SIGNALS_TO_RESET = tuple(sorted(set(valid_signals()) - {SIGKILL, SIGSTOP}))

# posix_spawn has no chdir, so we lend it ours under a lock; every path this
# program uses after start-up is absolute, so its own folder does not matter.
CHDIR_LOCK = _thread.allocate_lock()
PASS_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
CGI_PIDS = set()            # CGI programs started and not reaped: a hasty exit kills them
POLLIN = select.POLLIN


class Script:
    """A CGI program a URL named: its file and how the URL splits around it."""

    __slots__ = ("path", "name", "path_info", "nph")

    def __init__(self, path, name, path_info):
        self.path = path
        self.name = name
        self.path_info = path_info
        self.nph = os.path.basename(path).startswith("nph-")


def find_script(settings, segments):
    """The Script a path names: the first prefix of it that matches a --cgi
    pattern and is a file.  None if no prefix matches (a static file).  A
    path inside a matching folder that names no program is refused (404 or
    403), so nothing under /cgi-bin/ is ever served as a plain file."""
    matched = False
    prefix = ""
    for i in range(1, len(segments) + 1):
        prefix += "/" + segments[i - 1]
        if not any(glob_match(tokens, prefix) for tokens in settings.cgi_globs):
            continue
        matched = True
        path, st = resolve(settings, segments[:i], as_file=False)
        if S_ISDIR(st.st_mode):
            continue
        if not S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
            raise HttpError(403, "CGI program not executable")
        info = "".join("/" + s for s in segments[i:])
        return Script(path, prefix, info)
    if matched:
        resolve(settings, segments, as_file=False)
        raise HttpError(403, "no CGI program here")
    return None


def cgi_environ(conn, request, script, length):
    """The meta-variables of RFC 3875 4.1, HTTP_* for the request fields (never
    Proxy: httpoxy), and the few extra variables scripts commonly expect."""
    settings = conn.settings
    host = request.host
    if host.startswith("["):
        server_name = host.partition("]")[0] + "]"
    else:
        server_name = host.partition(":")[0]
    env = {name: os.environ[name] for name in PASS_ENV if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": SERVER,
        "SERVER_PROTOCOL": "HTTP/1.1" if request.version == 11 else "HTTP/1.0",
        "SERVER_NAME": server_name or conn.local,
        "SERVER_PORT": str(conn.local_port),
        "SERVER_ADDR": conn.local,
        "REQUEST_METHOD": request.method,
        "REQUEST_URI": request.target,
        "SCRIPT_NAME": script.name,
        "SCRIPT_FILENAME": script.path,
        "DOCUMENT_ROOT": settings.root_real,
        "QUERY_STRING": request.query,
        "REMOTE_ADDR": conn.client,
        "REMOTE_HOST": conn.client,
        "REMOTE_PORT": str(conn.client_port),
        "REDIRECT_STATUS": "200",
    })
    if script.path_info:
        env["PATH_INFO"] = script.path_info
        env["PATH_TRANSLATED"] = settings.root_real + script.path_info
    headers = request.headers
    if length is not None:     # RFC 3875 4.1.3: a type only for a body
        env["CONTENT_LENGTH"] = str(length)
        if "content-type" in headers:
            env["CONTENT_TYPE"] = env_text(headers["content-type"])
    if "authorization" in headers:
        env["AUTH_TYPE"] = env_text(headers["authorization"].partition(" ")[0])
    for name, value in headers.items():
        if name in ("proxy", "content-type", "content-length", "transfer-encoding"):
            continue
        if "_" in name:        # "Foo_Bar" would pose as "Foo-Bar": drop it
            continue
        env["HTTP_" + name.upper().replace("-", "_")] = env_text(value)
    return env


def env_text(value):
    """A field value (one character per byte, as parse_head decoded it) as
    the str that posix_spawn encodes back to the same bytes: it encodes with
    the file-system encoding and surrogateescape, so decode with them."""
    return value if value.isascii() else os.fsdecode(value.encode("latin-1"))


def spawn_script(script, env, stdin_fd, stderr_fd):
    """Start a CGI program: stdin_fd on fd 0, a pipe on fd 1, stderr_fd on 2,
    in its own session and folder, every signal at its default and none
    blocked, no other fd (ours are close-on-exec).  Returns (pid, stdout)."""
    out_r, out_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
               (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
    try:
        with CHDIR_LOCK:
            os.chdir(os.path.dirname(script.path))
            pid = os.posix_spawn(script.path, [script.path], env,
                                 file_actions=actions, setsid=True,
                                 setsigdef=SIGNALS_TO_RESET, setsigmask=())
            CGI_PIDS.add(pid)      # under the lock: see Worker.hurry
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
        if LEAVING:
            leave_at_once()
    os.set_blocking(out_r, False)
    return pid, out_r


def body_file(conn, request):
    """The request body in an anonymous memory file, read to its end before
    the program starts (as nginx does): the program never waits on a slow
    client, and a client that sends its whole body before it reads cannot
    deadlock with a program that answers as it reads.  (fd, length)."""
    if "expect" in request.headers and request.version == 11:
        if request.length > conn.settings.max_body:
            raise HttpError(413, "request body too large", close=True)
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    fd = os.memfd_create("superd-httpd-body")
    try:
        length = conn.read_body(request, conn.settings.max_body,
                                lambda data: write_all(fd, data))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, length


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


class CgiRun:
    """One CGI program at work: relay its answer to the client.

    One poll loop watches the program's stdout and the client socket, to
    notice the client going away (a close, a reset, or a half-close, as
    nginx counts it); the run is bound by --cgi-timeout.  On timeout or
    departure the program's process group is killed.  Once the program's
    head is complete, its output is held for up to CGI_HOLD seconds (and
    64 KiB) in the hope of its end: a quick program's whole answer then goes
    out at once with a Content-Length; a slower one is streamed, chunked on
    HTTP/1.1 and close-delimited on HTTP/1.0."""

    def __init__(self, conn, request, script):
        self.conn = conn
        self.request = request
        self.script = script
        self.deadline = time.monotonic() + conn.settings.cgi_timeout
        self.out = b""                 # output not yet relayed
        self.eof = False               # stdout reached end of file
        self.head = None               # parse_cgi_head() result, once complete
        self.local = None              # a local redirect's Location
        self.framing = None            # "length", "chunked", "close" or "none"
        self.left = 0                  # with "length": bytes still to pass on
        self.watch_client = True
        self.hold_until = None         # relay nothing before this, hoping for EOF
        self.pid = self.stdout = None

    def run(self, env, stdin_fd):
        """Relay the whole answer; return a local redirect's Location or None."""
        conn = self.conn
        self.pid, self.stdout = spawn_script(self.script, env, stdin_fd, conn.log.child_fd())
        try:
            poller = select.poll()
            poller.register(self.stdout, POLLIN)
            while not self.eof and not self.body_sent():
                self.step(poller)
            if self.head is None:
                self.parse_head()
                if self.head is None:
                    raise CgiError("output ended inside its header section")
            return self.finish()
        except CgiError as exc:
            self.kill()
            conn.log.diag("cgi %s: %s" % (self.script.name, exc))
            if conn.started:
                raise ClientGone("CGI output broken") from None
            raise HttpError(502, str(exc)) from None
        except BaseException:
            self.kill()
            raise
        finally:
            os.close(self.stdout)
            self.reap()

    def body_sent(self):
        """Whether a body framed by the program's Content-Length has all
        been passed on: the answer is complete without waiting for EOF,
        which a grandchild holding stdout could put off until the timeout;
        reap() then waits for the program itself."""
        return self.framing == "length" and not self.left and self.local is None

    def step(self, poller):
        """One poll: wait for the program or the client, deal with each event."""
        conn = self.conn
        poller.register(conn.fd, POLLIN if self.watch_client else 0)
        now = time.monotonic()
        left = self.deadline - now
        if left <= 0:
            self.timed_out()
        if self.hold_until is not None:
            left = min(left, self.hold_until - now)
        events = poller.poll(poll_ms(left))
        for fd, event in events:
            if fd == self.stdout:
                self.read_output()
            else:
                self.from_client(event)
        if not events and self.hold_until is not None:
            self.hold_until = None
            self.relay()

    def timed_out(self):
        self.kill()
        self.conn.log.diag("cgi %s: killed after %gs (--cgi-timeout)"
                           % (self.script.name, self.conn.settings.cgi_timeout))
        if self.conn.started:
            raise ClientGone("CGI program timed out after its head")
        raise HttpError(504, "CGI program timed out", close=True)

    def from_client(self, event):
        """The client spoke while the program ran: a pipelined request (leave
        it be), or its departure (kill the program)."""
        data = b""
        if event & POLLIN:
            try:
                data = self.conn.sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                pass
        if data:
            self.watch_client = False
            return
        self.conn.keep = False
        self.conn.log.diag("cgi %s: client went away; killing pid %d"
                           % (self.script.name, self.pid))
        raise ClientGone("client went away while the CGI program ran")

    def read_output(self):
        while len(self.out) < 1 << 20:
            try:
                data = os.read(self.stdout, 65536)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self.out += data
        if self.head is None:
            self.parse_head()
        if self.head is None or self.eof:
            return
        length = self.head[4]
        whole = length is not None and len(self.out) >= length
        if not self.conn.started and len(self.out) < 65536 and not whole:
            if self.hold_until is None:
                self.hold_until = time.monotonic() + CGI_HOLD
            if time.monotonic() < self.hold_until:
                return
        self.hold_until = None
        self.relay()

    def parse_head(self):
        if self.script.nph:
            self.head = (200, None, [], None, None)
            self.framing = "close"
            return
        out = self.out
        if out.startswith(b"\n") or out.startswith(b"\r\n"):
            raise CgiError("empty header section")
        found = find_head_end(out)
        if found is None:
            if len(out) > self.conn.settings.max_header_size:
                raise CgiError("header section too large")
            if self.eof:
                raise CgiError("no blank line after the header section" if out else "no output")
            return
        self.head = parse_cgi_head(out[:found[0]])
        self.out = out[found[1]:]
        status, _reason, _fields, location, _length = self.head
        if status is None and location and location[:1] == "/" and location[1:2] != "/":
            self.local = location

    # -- relaying ---------------------------------------------------------
    def start_answer(self):
        """Send the response head, choosing the framing of the body."""
        conn, request = self.conn, self.request
        conn.started = True
        if self.script.nph:
            conn.keep = False
            conn.status = 200
            return
        status, reason, fields, location, length = self.head
        if status is None:
            status = 302 if location else 200
        lines = ["%s: %s" % field for field in fields]
        if request.method == "HEAD" or status in (204, 304):
            self.framing = "none"
            if length is not None and status not in (204, 304):
                lines.append("Content-Length: %d" % length)
        elif length is not None or self.eof:
            self.framing = "length"
            self.left = length if length is not None else len(self.out)
            lines.append("Content-Length: %d" % self.left)
        elif request.version == 11:
            self.framing = "chunked"
            lines.append("Transfer-Encoding: chunked")
        else:
            self.framing = "close"
            conn.keep = False
        more = bool(self.out) and self.framing != "none"
        conn.send(conn.head(status, lines, reason), more=more)

    def relay(self):
        """Pass on the output gathered so far, in the chosen framing."""
        conn = self.conn
        if self.local is not None:
            self.out = b""
            return
        if not conn.started:
            self.start_answer()
        data, self.out = self.out, b""
        if not data or self.framing == "none":
            return
        if self.framing == "length":
            if len(data) > self.left:
                data = data[:self.left]
                conn.keep = False
            self.left -= len(data)
            conn.send(data)
        elif self.framing == "chunked":
            conn.send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            conn.send(data)
        conn.sent += len(data)

    def finish(self):
        """Output ended: a local redirect, or the end of the answer."""
        if self.local is not None:
            return self.local
        self.relay()
        if self.framing == "chunked":
            self.conn.send(b"0\r\n\r\n")
        elif self.framing == "length" and self.left:
            self.conn.keep = False
            raise ClientGone("CGI output shorter than its Content-Length")
        return None

    # -- the process ------------------------------------------------------
    def kill(self):
        if self.pid is not None:
            try:
                os.killpg(self.pid, SIGKILL)
            except OSError:
                pass

    def reap(self):
        """Wait for the program, whose stdout is closed; past the deadline,
        kill its process group.  Logs an exit that was not clean."""
        if self.pid is None:
            return
        pid = self.pid
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            if not wait_for_exit(pid, self.deadline):
                self.conn.log.diag("cgi %s: pid %d still running; killed"
                                   % (self.script.name, pid))
                self.kill()
            done, status = os.waitpid(pid, 0)
        CGI_PIDS.discard(pid)
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code > 0:
            self.conn.log.diag("cgi %s: pid %d exited %d" % (self.script.name, pid, code))
        elif code < 0 and code != -SIGKILL:
            self.conn.log.diag("cgi %s: pid %d killed by signal %d"
                               % (self.script.name, pid, -code))


def wait_for_exit(pid, deadline):
    """Whether pid exits before the monotonic deadline (a pidfd; without
    one, we wait)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, POLLIN)
        while True:
            left = deadline - time.monotonic()
            if poller.poll(poll_ms(max(left, 0))):     # poll: a pidfd may be past 1023
                return True
            if left <= MAX_WAIT:
                return False
    finally:
        os.close(pidfd)


def poll_ms(seconds):
    """poll()'s timeout in milliseconds for a wait of seconds, rounded up;
    at most MAX_WAIT (a longer wait is cut short: the caller re-checks its
    deadline and waits again)."""
    return max(int(min(seconds, MAX_WAIT) * 1000) + 1, 0)


def run_cgi(conn, request, script, depth):
    """Run a CGI program for the request; follow its local redirects."""
    if request.method not in CGI_METHODS:
        raise HttpError(405, headers=("Allow: " + CGI_ALLOW,))
    if conn.in_loop:
        raise Handoff("a CGI program", lambda conn: run_cgi(conn, request, script, depth))
    stdin_fd, length = conn.log.devnull_fd(), None
    if request.chunked or request.length:
        stdin_fd, length = body_file(conn, request)
    try:
        env = cgi_environ(conn, request, script, length)
        location = CgiRun(conn, request, script).run(env, stdin_fd)
    except OSError as exc:
        if conn.started or isinstance(exc, ConnectionError):
            raise
        conn.log.diag("cgi %s: cannot start: %s" % (script.name, exc.strerror))
        raise HttpError(500, "cannot start the CGI program") from None
    finally:
        if length is not None:
            os.close(stdin_fd)
    if location is None:
        return
    if depth >= LOCAL_REDIRECTS:
        raise HttpError(500, "too many CGI local redirects")
    if location.encode("latin-1").translate(None, TARGET_CHARS):
        raise HttpError(502, "malformed local redirect")
    headers = {k: v for k, v in request.headers.items()
               if k not in ("content-length", "transfer-encoding", "content-type", "expect")}
    method = "HEAD" if request.method == "HEAD" else "GET"     # RFC 9110 9.3.2
    internal = Request(method, location, request.version, headers, request.line)
    internal.host = request.host
    dispatch(conn, internal, depth + 1)


# =========================================================================
# 6. Exchange: one request to one answer; the keep-alive loop; the log
# =========================================================================

_DATE = (0, "")


def date_and_server():
    """The Date and Server fields, formatted once a second."""
    global _DATE
    now = int(time.time())
    if _DATE[0] != now:
        _DATE = (now, "Date: %s\r\nServer: %s" % (format_http_date(now), SERVER))
    return _DATE[1]


def dispatch(conn, request, depth=0):
    """Route one request: OPTIONS *, CGI program, or static file."""
    headers = request.headers
    expect = headers.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        raise HttpError(417)
    if request.method in ("TRACE", "CONNECT"):
        raise HttpError(405, headers=("Allow: " + STATIC_ALLOW,))
    split_target(request)
    if request.path == "*":
        if request.method != "OPTIONS":
            raise HttpError(400, "* is only for OPTIONS")
        return send_simple(conn, 204, ("Allow: " + CGI_ALLOW,), None)
    segments, trailing = decode_path(request.path)
    if segments and is_hidden(segments):
        raise HttpError(404)
    settings = conn.settings
    script = find_script(settings, segments) if settings.cgi_globs else None
    if script is not None:
        return run_cgi(conn, request, script, depth)
    return serve_static(conn, request, segments, trailing)


def answer_error(conn, request, exc):
    """Answer an HttpError, unless the answer had already begun."""
    if conn.started:
        conn.keep = False
        raise ClientGone("error after the head was sent: %s" % exc)
    if exc.close or exc.status in CLOSING or conn.unread:
        conn.keep = False
    fields = ["Content-Type: text/html; charset=utf-8"]
    fields.extend(exc.headers)
    head_only = request is not None and request.method == "HEAD"
    body = None if exc.status == 304 else error_page(exc.status)
    send_simple(conn, exc.status, fields, body, head_only)


def start_request(conn, head):
    """Parse a request head and set the connection's state by it."""
    settings = conn.settings
    conn.requests += 1
    conn.line = head.partition(b"\n")[0].rstrip(b"\r").decode("latin-1")
    request = parse_head(head, settings.max_line, settings.max_headers)
    conn.request = request
    conn.version = request.version
    conn.unread = -1 if request.chunked else request.length
    if not request.keep_alive or not settings.keepalive_timeout:
        conn.keep = False
    return request


def exchange(conn, work, *args):
    """Do work(conn, *args), the reading and answering of one request, and
    keep Rule 1 for it: an HttpError is answered, a ClientGone closes in
    silence, anything else is a 500 and a logged traceback.  Logs the
    exchange, and returns False if there is none to log (the client left
    or idled out before a request, work returned False) or the client went
    away.  A Handoff passes through, nothing answered."""
    log = conn.log
    try:
        if work(conn, *args) is False:
            return False
    except HttpError as exc:
        answer_error(conn, conn.request, exc)
        conn.line = "-" if conn.line is None else conn.line
    except ClientGone:
        conn.keep = False
        conn.buf, conn.unread = b"", 0      # the peer is gone: no lingering
        if conn.line is not None or conn.status:
            log.access(conn, conn.line, conn.request, status=conn.status or 499)
        return False
    except Handoff:
        raise
    except Exception:
        import traceback
        log.diag("internal error: " + traceback.format_exc().replace("\n", " | "))
        conn.keep = False
        if not conn.started:
            send_simple(conn, 500, ("Content-Type: text/html; charset=utf-8",),
                        error_page(500))
    conn.logged()
    return True


def read_and_answer(conn):
    """Blocking: read the next request's head, then answer it; False if
    the client closed or idled out first."""
    head = conn.read_head()
    if head is None:
        return False
    dispatch(conn, start_request(conn, head))


def serve_connection(conn):
    """The keep-alive loop: read a request, answer it, log it; until the
    client leaves, a timeout passes, a request asks for (or forces) close,
    or TERM stops it (stop_on_term, for the while it serves)."""
    previous = stop_on_term(conn)
    try:
        while conn.keep:
            conn.begin()
            if not exchange(conn, read_and_answer):
                break
    except ClientGone:
        conn.buf, conn.unread = b"", 0          # the peer is gone: no lingering
    finally:
        conn.close()
        if previous is not None:
            import _signal
            _signal.signal(_signal.SIGTERM, previous)


def stop_on_term(conn):
    """TERM while serving one connection stops it as a worker stops (see
    Worker, Rule 4): the first lets the answer in flight finish, a head or
    body under way included (answered with Connection: close), and closes
    the connection after it, or at once if it is idle between requests; a
    second leaves at once (leave_at_once).

    The handler runs in our one thread, between two steps of whatever was
    interrupted, which then goes on (PEP 475): it only sets conn.stopped
    (the next answer's head says Connection: close and the connection
    closes after it) and, if conn is idle, makes the wait for a next
    request end at once (Connection.stop_waiting).  A short wait rather
    than a shutdown of the reading side: the handler may run just after a
    read brought the start of a request, before conn knows it is no longer
    idle, and that request must still be read to its end and answered.
    Returns the TERM handler it replaced, or None where it cannot set one
    (a thread other than the main one)."""
    import _signal
    terms = []

    def on_term(signum, frame):
        terms.append(signum)
        if len(terms) > 1:
            return leave_at_once()
        conn.log.diag("TERM: closing once the answer in flight, if any, is out")
        conn.stopped = True
        if conn.idle:
            conn.stop_waiting()

    try:
        return _signal.signal(_signal.SIGTERM, on_term)
    except ValueError:
        return None


LEAVING = []                # a second TERM came while a CGI program was starting


def leave_at_once():
    """Kill every CGI program with its process group and exit, status 0;
    while a program is being started (CHDIR_LOCK is ours: one thread),
    once its pid is in CGI_PIDS (spawn_script calls again)."""
    if CHDIR_LOCK.locked():
        LEAVING.append(True)
        return
    for pid in CGI_PIDS:
        try:
            os.killpg(pid, SIGKILL)
        except OSError:
            pass
    os._exit(0)


def _clf_time(cache=[0, ""]):
    now = int(time.time())
    if cache[0] != now:
        cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        cache[0] = now
    return cache[1]


class Log:
    """Where the access log (Combined Log Format) and diagnostics go: --log
    FILE, else stderr, but never the client: under inetd and xinetd fd 2 may
    be the connection itself, and then nothing is written (fd None)."""

    def __init__(self, fd, quiet):
        self.fd = fd
        self.quiet = quiet
        self.devnull = None

    @classmethod
    def open(cls, settings, stderr):
        """The log for settings; stderr is the Log of fd 2 (see main)."""
        fd = stderr.fd
        if settings.log:
            fd = os.open(settings.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return cls(fd, settings.quiet)

    def write(self, text):
        if self.fd is not None:
            try:
                os.write(self.fd, text.encode("utf-8", "backslashreplace"))
            except OSError:
                pass

    def diag(self, message):
        self.write("superd-httpd[%d]: %s\n" % (os.getpid(), log_escape(message, 4096)))

    def access(self, conn, line, request, status=None):
        if self.quiet or self.fd is None or line is None:
            return
        headers = request.headers if request is not None else {}
        self.write('%s - - [%s] "%s" %d %s "%s" "%s"\n' % (
            conn.client or "-", _clf_time(), log_escape(line),
            status or conn.status, conn.sent or "-",
            log_escape(headers.get("referer", "-")),
            log_escape(headers.get("user-agent", "-"))))

    def child_fd(self):
        """The fd a CGI program's stderr goes to: our log, else /dev/null."""
        return self.fd if self.fd is not None else self.devnull_fd()

    def devnull_fd(self):
        if self.devnull is None:
            self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self.devnull


# =========================================================================
# 7. Events: the worker loop of the long-lived modes
# =========================================================================

# The loop's states for a client (LoopConnection.state):
READING = "reading"         # awaiting (more of) a request head; may be idle
BODY = "body"               # a short request body is arriving into buf
WRITING = "writing"         # an answer is queued in out; the socket is full
THREAD = "thread"           # a thread owns the connection (CGI, a long body)
LINGER = "linger"           # half-closed; reading and dropping until EOF

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)
LOOP_BODY = 64 << 10        # most request body bytes the loop gathers in memory
SMALL_FILE = 16 << 10       # a file answer this short goes out in one send with its head
ACCEPT_BATCH = 1            # accepts per wake-up: one, as nginx's default, so that
                            # clients that come at once spread over the workers
ACCEPT_PAUSE = 1.0          # seconds without accepting after EMFILE, ENFILE, ENOMEM,
                            # unless a client leaves first
FD_SPARE = 4                # fds kept free after EMFILE, for the files of answers
LINGER_TIME = 2.0           # seconds a closing connection drains what the peer still sends
LINGER_BYTES = 1 << 20
THREAD_FOLLOW = 0.05        # seconds a thread waits for its connection's next head
_BLANK = b"\r\n"


class LoopConnection(Connection):
    """A client of a Worker: a non-blocking socket the loop never waits on.

    Inside the loop (in_loop) nothing here blocks: send() and sendfile()
    only queue what is to go out, in order, in `out` (bytes, or (fd,
    offset, count) for sendfile), and the Worker writes it as the socket
    takes it; the files queued are closed once sent.  A request body is
    never read here: Worker.admit() waits until a short one is in buf, and
    hands anything else to a thread.  In that thread (in_loop False) this
    is a plain blocking Connection again, with every timeout of the
    per-connection mode, until the Worker takes the connection back."""

    in_loop = True
    blocking = False

    def __init__(self, sock, client, client_port, local, local_port, settings, log):
        Connection.__init__(self, sock, client, client_port, local, local_port, settings, log)
        self.out = []             # what is still to be written, in order
        self.files = []           # fds to close once out is empty
        self.state = READING
        self.events = 0           # what the epoll registration watches
        self.deadline = NO_LIMIT  # when the current wait ends (see Worker.expire)
        self.timer_at = NO_LIMIT  # when this connection's earliest timer entry fires
        self.head_by = NO_LIMIT   # when the head now arriving must be complete
        self.blank = 0            # empty lines before the current request
        self.pending = False      # an access-log line waits for out to drain
        self.batch = []           # (line, request, sent) of answers queued before it
        self.closed = False
        self.noted = None         # (path, stat, fields, body) of a small file answer
        self.body_started = self.body_received = 0

    def send(self, data, more=False):
        if not self.in_loop:
            return Connection.send(self, data, more)
        self.out.append(data)

    def note_file(self, path, st, fields):
        if self.in_loop and st.st_size <= SMALL_FILE:
            self.noted = [path, st, fields, b""]

    def sendfile(self, fd, offset, count):
        if not self.in_loop:
            return Connection.sendfile(self, fd, offset, count)
        if count <= SMALL_FILE:
            data = os.pread(fd, count, offset)      # with its head, in one send
            if len(data) < count:
                raise ClientGone("file shrank while being sent")
            self.out.append(data)
            if self.noted is not None:
                self.noted[3] = data
        else:
            self.out.append((fd, offset, count))
            if fd not in self.files:
                self.files.append(fd)
        self.sent += count

    def release(self, fd):
        if fd not in self.files:
            os.close(fd)

    def read_body(self, request, limit, sink):
        """In the loop, only a body already in buf: otherwise raise before
        taking any of it, AwaitBody for a short one, Handoff for the rest."""
        if self.in_loop and (request.chunked or len(self.buf) < request.length):
            if request.chunked or request.length > LOOP_BODY:
                raise Handoff("a long request body")
            raise AwaitBody("a short request body")
        return Connection.read_body(self, request, limit, sink)

    def logged(self):
        if self.in_loop and self.out:
            self.pending = True   # Worker.written() logs it, with what was sent
        else:
            self.log.access(self, self.line, self.request)

    def take_head(self):
        """The next request head from buf, or None until it is complete;
        raises HttpError (400, 414, 431) as read_head does."""
        settings = self.settings
        buf = self.buf
        if buf[:1] in (b"\r", b"\n"):
            stripped = buf.lstrip(_BLANK)
            self.blank += len(buf) - len(stripped)
            self.buf = buf = stripped
            if self.blank > settings.max_line:
                raise HttpError(400, "too many empty lines", close=True)
        if not buf:
            return None
        found = find_head_end(buf)
        if found is not None and found[0] <= settings.max_header_size:
            self.buf = buf[found[1]:]
            return buf[:found[0]]
        if found is not None or len(buf) > settings.max_header_size:
            if buf.find(b"\n", 0, settings.max_line + 1) < 0:
                raise HttpError(414, "request line too long", close=True)
            raise HttpError(431, "header section too large", close=True)
        return None

    def unsent(self):
        """Body bytes counted in sent that are still queued."""
        return sum(item[2] for item in self.out if type(item) is tuple)

    def drop_files(self):
        for fd in self.files:
            os.close(fd)
        self.files = []
        self.out = []


# Request fields that make an answer depend on more than the file itself.
UNCACHED_FIELDS = frozenset(("range", "if-range", "if-match", "if-none-match",
                             "if-modified-since", "if-unmodified-since", "expect"))
ANSWERS = 256               # most answers a Worker remembers
ANSWER_TTL = 1.0            # seconds before a remembered answer is resolved afresh
PIPELINE_BYTES = 64 << 10   # remembered answers to pipelined requests queued at once


class Answer:
    """A small file's 200 answer to one exact request head, as a Worker
    remembers it: parse_head is a pure function of the head's bytes, and the
    answer is the file's, so a head seen before needs neither parsing nor
    resolving again, only an os.stat() that shows the path still names the
    same unchanged file (inode, size, mtime and ctime).  Every ANSWER_TTL
    seconds the request goes the whole way again, so that a file that
    appears beside it (page.txt.gz) or a moved link is noticed (Rule 3
    holds: the bytes kept are those a full resolve chose).

    A head that ends in CRLF also has a `wire` key: the exact bytes of the
    whole request (head and blank line), so that a recv that brings just
    those bytes is answered without being searched or split
    (Worker.quick_answer)."""

    __slots__ = ("line", "request", "path", "key", "fields", "body", "made",
                 "wire", "keep", "checked", "date", "answers")

    def __init__(self, line, request, path, st, fields, body, made, head, keep):
        self.line = line
        self.request = request
        self.path = path
        self.key = file_key(st)
        self.fields = fields
        self.body = body
        self.made = made
        self.wire = head + b"\n\r\n" if head.endswith(b"\r") else None
        self.keep = keep          # whether the connection stays open after it
        self.checked = -1         # the Worker.tick of the last stat that held
        self.date = None          # the Date line `answers` were made with
        self.answers = {}         # keep -> the whole answer, head and body, as bytes

    def encoded(self, conn):
        """The answer's bytes for conn (its version and keep) at this
        second's Date: made once a second, by the code of any answer."""
        date = date_and_server()
        if date is not self.date:
            self.date = date
            self.answers = {}
        data = self.answers.get(conn.keep)
        if data is None:
            data = self.answers[conn.keep] = conn.head(200, self.fields) + self.body
        return data


def file_key(st):
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def answer_current(conn):
    dispatch(conn, conn.request)


def refuse(conn, exc):
    raise exc


def raise_open_files():
    """Raise our soft limit on open files to the hard limit, as systemd
    advises a program that needs many: a worker holds a descriptor per
    client, and epoll has no FD_SETSIZE, so the usual soft 1024 would
    refuse clients long before --max-connections.  CGI programs inherit
    the raised limit (posix_spawn cannot lower it for them)."""
    import resource               # here: the per-connection mode does not need it
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass                  # as it was: accept() pauses at the limit


def _ignore_signal(signum, frame):
    """The byte signal.set_wakeup_fd writes is the event; see Worker.woken."""


class Worker:
    """One worker process: one epoll loop over non-blocking sockets.

    It owns the listening sockets' watch (not the sockets), every client it
    accepts (a LoopConnection, `conns`), one timer heap, and a wake-up pipe
    that signals and threads write to.  What it promises:

    Rule 1: nothing in the loop blocks.  Heads are parsed as bytes arrive,
            answers are queued and written as the socket takes them, files
            go by os.sendfile; a CGI program, a chunked or a long request
            body runs in a thread of its own (Handoff), the connection out
            of the loop until the thread gives it back.
    Rule 2: every connection has a deadline while it waits, as in the
            per-connection mode: --header-timeout for a head, the
            keep-alive timeout when idle, --timeout (and MIN_BODY_RATE) for
            a body, --timeout of no progress for an answer.
    Rule 3: at most --max-connections clients; beyond that the listeners
            are not watched and new clients wait in the kernel's backlog.
    Rule 4: TERM (or "s" or end of file on `control`, from the first
            process) stops it: no more accepting, idle connections closed
            at once, answers in flight finished, then each closed; a second
            TERM (or "h") kills the CGI programs and leaves at once.
    Rule 5: answers leave in request order: a pipelined request is read
            from buf only once the answer before it is written, except
            remembered answers (Answer), which are queued together, up to
            PIPELINE_BYTES, and written by one send.
    """

    def __init__(self, listeners, settings, log, control=None, children=(),
                 clock=time.monotonic):
        self.settings = settings
        self.log = log
        self.clock = clock
        self.poller = select.epoll()
        self.listeners = {}       # fd -> (socket, its (host, port) or None if a wildcard)
        for sock in listeners:
            local = endpoint(sock.getsockname())
            self.listeners[sock.fileno()] = (sock, None if local[0] in ("0.0.0.0", "::")
                                             else local)
        self.watching = False     # whether the listeners are in the poller
        self.resume_at = NO_LIMIT  # accepting paused by EMFILE and the like until then
        self.pause_logged = -NO_LIMIT  # when such a pause was last logged
        self.most = settings.max_connections   # clients at once; less after EMFILE
        self.conns = {}           # fd -> LoopConnection, threads' included
        import _heapq             # here: the per-connection mode needs no timers
        self.push, self.pop = _heapq.heappush, _heapq.heappop
        self.timers = []          # heap of (when, seq, conn); see set_deadline
        self.seq = 0
        self.returned = []        # connections threads have finished with
        self.answers = {}         # request head -> Answer (oldest first)
        self.quick = {}           # Answer.wire -> Answer, for those that have one
        self.tick = 0             # counts the loop's wake-ups (see holds)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.control = control    # pipe from the first process, or None
        self.children = {}        # pidfd -> pid of the other workers (first process)
        for pid, _w in children:
            self.children[os.pidfd_open(pid)] = pid
        self.child_pipes = [w for _pid, w in children]
        self.stopping = False     # no more accepting; leave when the clients are gone
        self.terms = 0
        self.last = clock()       # when the last client left

    # -- the loop -------------------------------------------------------------
    def run(self):
        import _signal
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(_signal.SIGTERM, _ignore_signal)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGTERM,))  # see serve_listeners
        poller = self.poller
        poller.register(self.wake_r, EPOLLIN)
        if self.control is not None:
            poller.register(self.control, EPOLLIN)
        for pidfd in self.children:
            poller.register(pidfd, EPOLLIN)
        self.watch_listeners(True)
        conns, listeners = self.conns, self.listeners
        while not (self.stopping and not conns and not self.children):
            timeout = self.next_wait()
            if timeout is None:
                self.stop(idle=True)
                continue
            self.tick += 1
            for fd, event in poller.poll(timeout):
                conn = conns.get(fd)
                if conn is not None:
                    if conn.state is WRITING:
                        self.write(conn)
                    elif conn.state is LINGER:
                        self.drain(conn)
                    else:
                        self.readable(conn)
                elif fd in listeners:
                    self.accept(*listeners[fd])
                elif fd == self.wake_r:
                    self.woken()
                elif fd == self.control:
                    self.told()
                elif fd in self.children:
                    self.reap(fd)
            self.expire()

    def next_wait(self):
        """The poll timeout in seconds (-1: none), or None to leave, idle."""
        now = self.clock()
        when = min(self.timers[0][0] if self.timers else NO_LIMIT, self.resume_at)
        if not self.conns and not self.stopping:
            idle_until = self.last + self.settings.idle_exit
            if idle_until <= now:
                return None
            when = min(when, idle_until)
        if when == NO_LIMIT:
            return -1
        return min(max(when - now, 0) + 0.0005, MAX_WAIT)

    def set_deadline(self, conn, when):
        """conn's wait ends at when.  Each connection has at most one live
        heap entry (at timer_at), plus stale ones that expire() skips; a
        later deadline is noticed when its entry fires, so a keep-alive
        request costs no heap push unless its deadline comes sooner."""
        conn.deadline = when
        if when < conn.timer_at:
            conn.timer_at = when
            self.seq += 1
            self.push(self.timers, (when, self.seq, conn))

    def expire(self):
        """Act on every deadline that has passed: the connections' (Rule 2)
        and the end of a pause in accepting."""
        now = self.clock()
        if self.resume_at <= now:
            self.resume_at = NO_LIMIT
            self.most = self.settings.max_connections     # try the limit again
            self.watch_listeners(True)
        timers = self.timers
        while timers and timers[0][0] <= now:
            when, _seq, conn = self.pop(timers)
            if conn.closed or when != conn.timer_at:
                continue
            conn.timer_at = NO_LIMIT
            if conn.deadline <= now:
                self.timed_out(conn)
            elif conn.deadline != NO_LIMIT:
                self.set_deadline(conn, conn.deadline)

    def watch(self, conn, events):
        if conn.events != events:
            if conn.events:
                self.poller.modify(conn.fd, events)
            else:
                self.poller.register(conn.fd, events)
            conn.events = events

    def unwatch(self, conn):
        if conn.events:
            self.poller.unregister(conn.fd)
            conn.events = 0

    # -- accepting ----------------------------------------------------------
    def watch_listeners(self, on):
        on = on and not self.stopping and len(self.conns) < self.most \
            and self.resume_at == NO_LIMIT
        if on == self.watching:
            return
        for fd in self.listeners:
            if on:
                self.poller.register(fd, EPOLLIN | EPOLLEXCLUSIVE)
            else:
                self.poller.unregister(fd)
        self.watching = on

    def accept(self, listener, local):
        settings = self.settings
        for _ in range(ACCEPT_BATCH):
            if len(self.conns) >= self.most:
                self.watch_listeners(False)
                return
            try:
                fd, address = listener._accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return                   # another worker took it, or it left
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                return self.pause_accepting(exc)
            sock = _socket.socket(listener.family, listener.type, 0, fd)
            sock.setblocking(False)
            host, port = endpoint(address)
            conn = LoopConnection(sock, host, port, *(local or socket_end(sock.getsockname)),
                                  settings, self.log)
            self.conns[fd] = conn
            conn.head_by = conn.opened + settings.header_timeout
            self.watch(conn, EPOLLIN)
            self.set_deadline(conn, conn.head_by)

    def pause_accepting(self, exc):
        """Out of fds or memory: stop watching the listeners (new clients
        wait in the backlog) until a client leaves or ACCEPT_PAUSE passes,
        so that a level-triggered listener cannot spin the loop; logged at
        most once an ACCEPT_PAUSE, however often clients come and go.  Out
        of fds, FD_SPARE fewer clients than now are taken until the pause
        ends, so that each has an fd for the file it asks for."""
        now = self.clock()
        if exc.errno == errno.EMFILE:       # clients that leave make room for new ones,
            self.most = max(len(self.conns) - FD_SPARE, 1)   # with fds to answer them
        if now >= self.pause_logged + ACCEPT_PAUSE:
            self.pause_logged = now
            self.log.diag("accept: %s; pausing for %gs or until a client leaves"
                          % (exc.strerror, ACCEPT_PAUSE))
        self.resume_at = now + ACCEPT_PAUSE
        self.watch_listeners(False)

    # -- reading --------------------------------------------------------------
    def readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.peer_closed(conn)
        if conn.buf:
            conn.buf += data
        else:
            answer = self.quick.get(data)
            if answer is not None and conn.state is READING and self.quick_answer(conn, answer):
                return
            conn.buf = data
        if conn.state is BODY:
            conn.body_received += len(data)
            self.body_wait(conn)
        else:
            self.advance(conn)

    def peer_closed(self, conn):
        """End of file (or a reset) from the client while we read."""
        if conn.state is BODY:        # as ClientGone inside a body: logged 499
            conn.log.access(conn, conn.line, conn.request, status=499)
        conn.buf, conn.unread = b"", 0
        self.close(conn)

    def advance(self, conn):
        """Answer what buf holds, request after request (Rule 5), until it
        holds no whole head, an answer waits for the socket, or the
        connection is handed off or closed."""
        settings = self.settings
        while conn.state is READING and not conn.closed:
            try:
                head = conn.take_head()
            except HttpError as exc:
                conn.begin()
                return self.answer(conn, refuse, exc)
            if head is None:          # the clock of a head starts at its first byte
                if (conn.buf or conn.blank) and conn.head_by == NO_LIMIT:
                    conn.head_by = self.clock() + settings.header_timeout
                if conn.head_by != NO_LIMIT:
                    self.set_deadline(conn, conn.head_by)
                if self.stopping and not conn.buf:
                    self.close(conn)
                return
            conn.begin()
            conn.head_by = NO_LIMIT
            conn.blank = 0
            answer = self.answers.get(head)
            if answer is not None and self.replay(conn, head, answer):
                queued = len(conn.out[-1])
                while queued < PIPELINE_BYTES and self.replay_next(conn):
                    queued += len(conn.out[-1])
                conn.state = WRITING
                self.write(conn)
            else:
                self.answer(conn, self.admit, head)

    def admit(self, conn, head):
        """exchange() work: parse the head and answer it (in the loop, or by
        AwaitBody and Handoff, later or elsewhere)."""
        request = start_request(conn, head)
        if self.stopping:
            conn.keep = False
        conn.noted = None
        dispatch(conn, request)
        if conn.noted is not None:
            self.remember(conn, head)

    def remember(self, conn, head):
        """Keep the small file answer just queued for this head (Answer)."""
        path, st, fields, body = conn.noted
        conn.noted = None
        request = conn.request
        if (request.method not in ("GET", "HEAD") or conn.status != 200
                or request.length or request.chunked     # a replay would not read the body
                or not UNCACHED_FIELDS.isdisjoint(request.headers)):
            return
        answers = self.answers
        if len(answers) >= ANSWERS:
            self.forget_answer(next(iter(answers)))   # the oldest
        keep = request.keep_alive and bool(self.settings.keepalive_timeout)
        answer = answers[head] = Answer(conn.line, request, path, st, fields,
                                        body if request.method == "GET" else b"",
                                        self.clock(), head, keep)
        if answer.wire is not None:
            self.quick[answer.wire] = answer

    def forget_answer(self, head):
        answer = self.answers.pop(head)
        self.quick.pop(answer.wire, None)

    def holds(self, answer):
        """Whether a remembered answer still stands: made less than
        ANSWER_TTL ago, and its path names the same unchanged file.  One
        stat a wake-up of the loop answers every request for it that the
        wake-up brought."""
        if answer.checked == self.tick:
            return True
        if self.clock() - answer.made > ANSWER_TTL:
            return False
        try:
            key = file_key(os.stat(answer.path))
        except OSError:
            return False
        if key != answer.key:
            return False
        answer.checked = self.tick
        return True

    def replay(self, conn, head, answer):
        """Answer from a remembered Answer, if it still holds; else False."""
        if not self.holds(answer):
            self.forget_answer(head)
            return False
        request = answer.request
        conn.requests += 1
        conn.line, conn.request, conn.version = answer.line, request, request.version
        if not answer.keep or self.stopping:
            conn.keep = False
        conn.out.append(answer.encoded(conn))
        conn.status = 200
        conn.sent = len(answer.body)
        conn.pending = True
        return True

    def replay_next(self, conn):
        """After a replay: if the next request in buf is a remembered answer
        that holds, queue it behind (Rule 5), so that pipelined requests
        are answered by one send; else False, having taken nothing."""
        buf = conn.buf
        if not buf or not conn.keep or self.stopping or buf[:1] in (b"\r", b"\n"):
            return False
        found = find_head_end(buf)
        if found is None or found[0] > self.settings.max_header_size:
            return False
        head = buf[:found[0]]
        answer = self.answers.get(head)
        if answer is None or not self.holds(answer):
            return False
        conn.batch.append((conn.line, conn.request, conn.sent))
        conn.buf = buf[found[1]:]
        conn.begin()
        return self.replay(conn, head, answer)

    def quick_answer(self, conn, answer):
        """The short way for a connection idle between requests whose recv
        brought exactly the bytes of a request answered before (Answer.wire):
        nothing queued, nothing before it, so the answer goes out at once in
        one send, and the connection reads on (or closes) as after any
        answer.  False, having done nothing, if the answer no longer holds
        or the worker is stopping: the request then goes the whole way."""
        if self.stopping or not self.holds(answer):
            return False
        request = answer.request
        conn.requests += 1
        conn.head_by = NO_LIMIT
        conn.blank = 0                # empty lines before it are forgiven, as in advance()
        conn.version = request.version
        conn.unread = 0
        if not answer.keep:
            conn.keep = False
        data = answer.encoded(conn)
        try:
            n = conn.sock.send(data)
        except OSError:
            n = 0                     # write() meets the error again, and says so
        conn.line, conn.request = answer.line, request
        conn.status, conn.sent = 200, len(answer.body)
        if n < len(data):             # the socket is full: the general way
            conn.out.append(data[n:])
            conn.pending = True
            conn.state = WRITING
            return self.write(conn) or True
        if not conn.log.quiet:
            conn.log.access(conn, conn.line, request)
        if not conn.keep:
            self.close(conn)
            return True
        when = self.clock() + self.settings.keepalive_timeout
        conn.deadline = when
        if when < conn.timer_at:
            self.set_deadline(conn, when)
        return True

    def body_wait(self, conn):
        """A short body is arriving: answer once it is all in buf; else
        wait, by the per-connection mode's rule (Connection.body_timeout)."""
        if len(conn.buf) >= conn.request.length:
            conn.state = READING
            return self.answer(conn, answer_current)
        timeout = self.settings.timeout
        now = self.clock()
        self.set_deadline(conn, min(now + timeout, conn.body_started + timeout
                                    + conn.body_received / MIN_BODY_RATE))

    def answer(self, conn, work, *args):
        """Run one exchange in the loop, then write what it queued."""
        try:
            answered = exchange(conn, work, *args)
        except AwaitBody:
            conn.state = BODY
            conn.body_started = self.clock()
            conn.body_received = len(conn.buf)
            return self.body_wait(conn)
        except Handoff as exc:
            return self.hand_off(conn, exc.resume or answer_current)
        if not answered and conn.out:   # ClientGone inside the loop: drop the answer
            return self.close(conn, linger=False)
        if conn.out:
            conn.state = WRITING
            self.write(conn)
        else:                       # nothing to send: gone, or idled out
            self.close(conn)

    def timed_out(self, conn):
        """conn's deadline passed (Rule 2)."""
        state = conn.state
        if state is READING:
            if conn.buf.strip(_BLANK):
                conn.begin()
                self.answer(conn, refuse, HttpError(408, "request head too slow", close=True))
            else:
                self.close(conn)    # idle, or only empty lines: silently
        elif state is BODY:
            conn.state = READING
            self.answer(conn, refuse, HttpError(408, "request body too slow", close=True))
        elif state is WRITING:
            self.gone(conn, "send timed out")
        elif state is LINGER:
            self.close(conn, linger=False)

    # -- writing --------------------------------------------------------------
    def write(self, conn):
        """Write out as much as the socket takes; then the next request."""
        out = conn.out
        fd = conn.fd
        try:
            while out:
                item = out[0]
                if type(item) is tuple:
                    src, offset, count = item
                    n = os.sendfile(fd, src, offset, count)
                    if n == 0:
                        raise ClientGone("file shrank while being sent")
                    if n < count:
                        out[0] = (src, offset + n, count - n)
                        break
                    del out[0]
                    continue
                if len(out) > 1 and type(out[1]) is not tuple:
                    k = 2                 # bytes after bytes: one send
                    while k < len(out) and type(out[k]) is not tuple:
                        k += 1
                    out[:k] = [b"".join(out[:k])]
                    item = out[0]
                n = conn.sock.send(item, _socket.MSG_MORE if len(out) > 1 else 0)
                if n < len(item):
                    out[0] = item[n:]
                    break
                del out[0]
        except (BlockingIOError, InterruptedError):
            pass
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError) as exc:
            return self.gone(conn, "client closed while we were sending: %s" % exc)
        except ClientGone as exc:
            return self.gone(conn, str(exc))
        if out:
            self.watch(conn, EPOLLOUT)
            self.set_deadline(conn, self.clock() + self.settings.timeout)
            return
        self.written(conn)

    def written(self, conn):
        """The answer is all out: log it, then close or read on."""
        for src in conn.files:
            os.close(src)
        conn.files = []
        if conn.pending:
            conn.pending = False
            self.log_batch(conn)
            conn.log.access(conn, conn.line, conn.request)
        if not conn.keep or self.stopping:
            return self.close(conn)
        conn.state = READING
        self.watch(conn, EPOLLIN)
        self.set_deadline(conn, self.clock() + self.settings.keepalive_timeout)
        if conn.buf:
            self.advance(conn)

    def log_batch(self, conn):
        """The log lines of remembered answers queued before the last."""
        if conn.batch:
            current = conn.line, conn.request, conn.sent
            for conn.line, conn.request, conn.sent in conn.batch:
                conn.log.access(conn, conn.line, conn.request, status=200)
            conn.batch = []
            conn.line, conn.request, conn.sent = current

    def gone(self, conn, why):
        """The client left, or stalled, while its answer was written."""
        if conn.pending:
            conn.pending = False
            self.log_batch(conn)
            conn.sent -= conn.unsent()
            conn.log.access(conn, conn.line, conn.request, status=conn.status or 499)
        conn.buf, conn.unread = b"", 0
        self.close(conn, linger=False)

    # -- threads --------------------------------------------------------------
    def hand_off(self, conn, work):
        """The connection leaves the loop for a thread (Rule 1)."""
        self.unwatch(conn)
        conn.state = THREAD
        conn.deadline = NO_LIMIT
        conn.in_loop = False
        _thread.stack_size(512 << 10)
        _thread.start_new_thread(self.in_thread, (conn, work))

    def in_thread(self, conn, work):
        """A thread's whole life: do work (the rest of conn's current
        request) by the blocking code, and the requests whose heads follow
        at once (follows()); then give the connection back.  Never closes
        it: the loop does, so that its fd number cannot be reused by a
        client the loop accepts before it has heard of the close; a
        connection that is done is shut down here, so that its client
        sees the end at once."""
        try:
            conn.make_blocking()
            while exchange(conn, work):
                if not conn.keep or self.stopping:
                    break
                conn.begin()
                work = self.follows(conn)
                if work is None:
                    break
            else:
                conn.keep = False
        except ClientGone:
            conn.keep = False
            conn.buf, conn.unread = b"", 0
        except BaseException as exc:    # never a traceback out of a thread
            conn.keep = False
            conn.log.diag("connection failed: %r" % exc)
        finally:
            if not (conn.keep or conn.buf or conn.unread):
                try:
                    conn.sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass
            self.returned.append(conn)
            try:
                os.write(self.wake_w, b"\0")
            except OSError:
                pass            # the pipe is full: the loop is awake anyway

    def follows(self, conn):
        """In a thread: the work of answering the next request if its whole
        head is in buf, or arrives within THREAD_FOLLOW seconds (a CGI
        client on a kept-alive connection asks again at once); else None,
        and the loop reads the rest, so that a slow client holds no thread
        for long."""
        deadline = time.monotonic() + THREAD_FOLLOW
        poller = None
        while True:
            try:
                head = conn.take_head()
            except HttpError:
                return None              # the loop answers it, from the same bytes
            if head is not None:
                conn.blank = 0
                return lambda conn: dispatch(conn, start_request(conn, head))
            left = deadline - time.monotonic()
            if poller is None:
                poller = select.poll()
                poller.register(conn.fd, POLLIN)
            if left <= 0 or not poller.poll(poll_ms(left)):
                return None
            try:
                data = conn.sock.recv(65536, _socket.MSG_DONTWAIT)
            except OSError:
                return None
            if not data:
                return None              # end of file: the loop sees it too
            conn.buf += data

    def woken(self):
        """Bytes on the wake-up pipe: signals, and threads that are done."""
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            data = b""
        import _signal
        for _ in range(data.count(_signal.SIGTERM)):
            self.terminated()
        returned, self.returned = self.returned, []
        for conn in returned:
            conn.in_loop = True
            conn.sock.setblocking(False)
            conn.state = READING
            if not conn.keep or self.stopping:
                self.close(conn)
                continue
            self.watch(conn, EPOLLIN)
            self.set_deadline(conn, self.clock() + self.settings.keepalive_timeout)
            if conn.buf:
                self.advance(conn)

    # -- closing --------------------------------------------------------------
    def close(self, conn, linger=True):
        """Close a client; if unread bytes may follow, linger (RFC 9112 9.6)."""
        if conn.closed:
            return
        conn.drop_files()
        if linger and (conn.buf or conn.unread) and conn.state is not LINGER:
            try:
                conn.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            else:
                conn.state = LINGER
                conn.buf = b""
                conn.body_received = 0
                self.watch(conn, EPOLLIN)
                self.set_deadline(conn, self.clock() + LINGER_TIME)
                return
        self.unwatch(conn)
        conn.closed = True
        conn.sock.close()
        self.forget(conn)

    def drain(self, conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.body_received += len(data)
        if not data or conn.body_received >= LINGER_BYTES:
            self.close(conn, linger=False)

    def forget(self, conn):
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            if not self.conns:
                self.last = self.clock()
        if len(self.conns) < self.most:
            self.resume_at = NO_LIMIT     # a pause for want of fds ends: one is free
        self.watch_listeners(True)

    # -- stopping -------------------------------------------------------------
    def terminated(self):
        """A TERM: the first stops (Rule 4), the second hurries."""
        self.terms += 1
        if self.terms == 1:
            self.stop()
        else:
            self.hurry()

    def told(self):
        """The first process wrote on our pipe, or died (end of file)."""
        try:
            data = os.read(self.control, 64)
        except BlockingIOError:
            return
        if b"h" in data:
            self.hurry()
        elif data == b"" or b"s" in data:
            if not data:
                self.poller.unregister(self.control)
                os.close(self.control)
                self.control = None
            self.stop()

    def stop(self, idle=False):
        """Accept no more; close idle clients now, the others once answered.
        Idle (after --idle-exit), the first process leaves its workers be."""
        if not idle:
            self.tell(b"s")
        if self.stopping:
            return
        self.stopping = True
        self.watch_listeners(False)
        for conn in list(self.conns.values()):
            conn.keep = False
            if conn.state is READING and not conn.buf.strip(_BLANK):
                self.readable(conn)     # bytes the loop has yet to see: not idle
                if conn.state is READING and not conn.buf.strip(_BLANK):
                    self.close(conn)

    def hurry(self):
        """Leave at once: CGI programs killed with their groups, the other
        workers told to do the same; each client is simply closed."""
        self.tell(b"h")
        CHDIR_LOCK.acquire()       # a program being started is in CGI_PIDS once we have it
        for pid in CGI_PIDS:
            try:
                os.killpg(pid, SIGKILL)
            except OSError:
                pass
        for pid in self.children.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if self.control is None:          # the first process: give the socket back
            for sock, _local in self.listeners.values():
                try:
                    sock.setblocking(True)
                except OSError:
                    pass
        os._exit(0)

    def tell(self, what):
        for w in self.child_pipes:
            try:
                os.write(w, what)
            except OSError:
                pass

    def reap(self, pidfd):
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


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


def serve_one(sock, settings, log):
    """Per connection: the launcher accepted; serve this client, then return.
    The two ends are the kit's ends_of(): the socket's names, except where a
    launcher that may know better named them (superd's REMOTE_ADDR for the
    original client of a PROXY protocol connection, tcpserver's TCP*)."""
    client, local = ends_of(sock)
    serve_connection(Connection(sock, *client, *local, settings, log))


def serve_listeners(listeners, settings, log):
    """Accept for ourselves in --workers processes, each one Worker loop.

    The extra workers are forked first, each with a pipe from this process
    (its `control`); each leaves when idle, when told to stop or hurry,
    or when this process dies (the pipe reaches end of file).  This process
    leaves last, after its workers, so a launcher that watches it never
    sees the socket in use by an orphan.  The listeners are non-blocking
    while we own them, blocking again when we leave.  TERM is blocked from
    here until each Worker is ready for it: one that comes in between waits
    (and is a graceful stop), rather than killing a half-started worker."""
    import _signal
    _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGTERM,))
    raise_open_files()
    for sock in listeners:
        sock.setblocking(False)
    workers = []                      # (pid, the write end of its pipe)
    try:
        for _ in range(settings.workers - 1):
            control, tell = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                os.close(tell)
                for _pid, w in workers:
                    os.close(w)
                status = 0
                try:
                    Worker(listeners, settings, log, control=control).run()
                except KeyboardInterrupt:
                    pass
                except BaseException:
                    import traceback
                    log.diag("worker failed: " + traceback.format_exc().replace("\n", " | "))
                    status = EX_OSERR
                finally:
                    os._exit(status)
            os.close(control)
            workers.append((pid, tell))
        Worker(listeners, settings, log, children=workers).run()
    finally:
        for sock in listeners:
            try:
                sock.setblocking(True)
            except OSError:
                pass
    return 0


def bind(address):
    """A listening socket for --listen HOST:PORT, [V6]:PORT or PORT."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]") if sep else "0.0.0.0"
    if not (port.isascii() and port.isdigit()):
        raise UsageError("--listen %r: not HOST:PORT" % address)
    if len(port.lstrip("0")) > 5 or int(port) > 65535:
        raise UsageError("--listen %r: port not in 0-65535" % address)
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setsockopt(SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


def prepare(argv):
    """Settings for argv, with what argv alone decides done (the CGI patterns
    compiled); raises UsageError."""
    settings = parse_options(argv)
    settings.cgi_globs = tuple(compile_glob(p) for p in settings.cgi)
    return settings


def main(argv=None):
    """Run superd-httpd; returns the exit status (sysexits)."""
    args = tuple(sys.argv[1:] if argv is None else argv)
    launched = launch()
    stderr = Log(2 if launched.stderr_free else None, True)     # never the client
    try:
        settings = PREPARED.get(args) or prepare(args)
    except UsageError as exc:
        stderr.write("superd-httpd: %s (try --help)\n" % exc)
        return EX_USAGE
    if settings.help:
        sys.stdout.write(usage())
        return 0
    if settings.version:
        sys.stdout.write(SERVER + "\n")
        return 0
    settings.root_real = real_directory(settings.root)   # every time: a link may move
    if not os.path.isdir(settings.root_real):
        stderr.write("superd-httpd: --root %s: not a directory\n" % settings.root)
        return EX_CONFIG
    if settings.workers is None:
        settings.workers = len(os.sched_getaffinity(0))
    try:
        log = Log.open(settings, stderr)
    except OSError as exc:
        stderr.write("superd-httpd: --log %s: %s\n" % (settings.log, exc.strerror))
        return EX_OSERR
    try:
        if settings.listen:
            sockets = [bind(settings.listen)]
            host, port = endpoint(sockets[0].getsockname())
            log.diag("listening on %s:%d" % (host if ":" not in host else "[%s]" % host, port))
        else:
            sockets = [_socket.socket(fileno=fd) for fd in launched.fds]
    except UsageError as exc:
        log.write("superd-httpd: %s\n" % exc)
        return EX_USAGE
    except OSError as exc:
        log.write("superd-httpd: %s\n" % exc)
        return EX_OSERR
    if not sockets:
        log.write("superd-httpd: no socket on fd 0 and no LISTEN_FDS; start me from "
                  "superd, inetd, xinetd, systemd or tcpserver, or use --listen\n")
        return EX_USAGE
    try:
        if sockets[0].getsockopt(SOL_SOCKET, _socket.SO_ACCEPTCONN):
            return serve_listeners(sockets, settings, log)
        serve_one(sockets[0], settings, log)
    except KeyboardInterrupt:          # ^C under --listen: no traceback
        return 130
    return 0


# A preloading super-server (superd's `preload: true`) runs everything above
# the final `if __name__ == "__main__":` once, in its warm interpreter, and
# only that block in each handler it forks: the options are parsed here, once
# for every connection (~0.15 ms each, most of it pages a child would copy).
# Run any other way, they are parsed here once too, just before main().
PREPARED = {}
if __name__ == "__main__":
    try:
        PREPARED[tuple(sys.argv[1:])] = prepare(sys.argv[1:])
    except UsageError:
        pass                      # main() meets it again, and says so

if __name__ == "__main__":
    sys.exit(main())
