"""inetd.conf lines to superd services, for `superd import`.

A line is `SERVICE SOCKET-TYPE PROTOCOL WAIT USER PROGRAM [ARGV...]` as
openbsd-inetd (Debian's), FreeBSD's and busybox inetd read it:

- SERVICE: a name from /etc/services or a port, with an optional `HOST:`;
  a line of `HOST:` alone sets the host of the lines after it.  `NAME/VERSION`
  with protocol rpc/... is an RPC service, which superd does not serve.
- PROTOCOL: tcp, udp, with 4, 6 or 46 after it for the family; unix (FreeBSD)
  with a path as SERVICE.
- WAIT: wait or nowait, then `.MAX` (openbsd: most starts a minute, after which
  inetd closes the port for ten minutes) or `/CHILDREN[/PER-IP-MINUTE[/PER-IP]]`
  (FreeBSD).
- USER: `user`, `user.group` or `user:group` (a FreeBSD `/class` is noted).
- PROGRAM: a path or `internal`; ARGV starts with argv[0].  tcpd(8) is taken
  out: superd runs the program tcpd would have run.

`#<off># ` before a line is how Debian's update-inetd turns a service off: it
is read as a service with `enabled: false`.  Any other line starting with '#'
is a comment.  A line that is not a service is an error with file and line.
"""

import os
import re
import socket

from superd import importer_map as to
from superd.importer_model import Entry

OFF = "#<off>#"
IPSEC = "#@"             # FreeBSD: the IPsec policy of the lines below
SOCKET_TYPES = {"stream": "tcp", "dgram": "udp"}
OTHER_SOCKET_TYPES = ("raw", "rdm", "seqpacket")
PROTOCOL = re.compile(r"(tcp|udp)(4|6|46)?|unix")
WAIT = re.compile(r"(wait|nowait)(?:\.(\d{1,6})|((?:/\d{0,6}){1,3}))?")
RATE_REMARK = ("inetd closes the port for ten minutes; superd stops accepting for "
               "that long and clients wait in the listen backlog")


def is_line(text):
    """Whether text is a service line (or one turned off by update-inetd)."""
    text = text[len(OFF):] if text.startswith(OFF) else text
    return bool(text.strip()) and not text.lstrip().startswith("#")


def convert(path, lines, report):
    """One Entry per service line of path."""
    entries = []
    host = ""
    for number, text in lines:
        off = text.startswith(OFF)
        if text.startswith(IPSEC):
            report.warn(path, number, None, f"not imported: {IPSEC} IPsec policy line "
                        "(superd sets no IPsec policy; the services below get none)")
            continue
        if not is_line(text):
            continue
        fields = text[len(OFF):].split() if off else text.split()
        if len(fields) == 1 and fields[0].endswith(":"):
            host = fields[0][:-1]              # `HOST:` alone: the host of the lines below
            continue
        entry = _line(path, number, fields, host, report)
        if entry is not None:
            if off:
                entry.set("enabled", False, "turned off by update-inetd (#<off>#)")
            entries.append(entry)
    return entries


def _line(path, number, fields, host, report):
    if len(fields) < 6:
        report.error(path, number, "expected SERVICE SOCKET-TYPE PROTOCOL WAIT USER PROGRAM "
                     f"[ARGS...], got {len(fields)} field(s)")
        return None
    service, socket_type, protocol, wait, user, program, argv = *fields[:6], fields[6:]
    proto = PROTOCOL.fullmatch(protocol) or re.fullmatch(r"rpc/(tcp|udp)", protocol)
    waits = WAIT.fullmatch(wait)
    if socket_type not in SOCKET_TYPES and socket_type not in OTHER_SOCKET_TYPES:
        report.error(path, number, f"{socket_type!r} is not a socket type (stream, dgram, ...)")
    elif not (proto or socket_type in OTHER_SOCKET_TYPES or _foreign_protocol(protocol)):
        report.error(path, number, f"{protocol!r} is not a protocol (tcp, udp, tcp6, unix, ...)")
    elif not waits:
        report.error(path, number, f"{wait!r} is not wait or nowait")
    else:
        if ":" in service and not service.startswith("/"):
            host, _, service = service.rpartition(":")
        name = os.path.basename(service) if service.startswith("/") else service.partition("/")[0]
        entry = Entry(to.service_name(name), path, number, " ".join(fields))
        _map(entry, (service, socket_type, protocol, waits, user, program, argv), host, report)
        return entry
    return None


def _map(entry, fields, host, report):
    service, socket_type, protocol, waits, user, program, argv = fields
    line = entry.line
    if protocol.startswith("rpc/"):
        return entry.skip(report, line, "an RPC service: superd serves none")
    if socket_type not in SOCKET_TYPES:
        return entry.skip(report, line, f"socket type {socket_type}: superd serves stream and dgram")
    if not PROTOCOL.fullmatch(protocol):
        return entry.skip(report, line, f"protocol {protocol}: superd serves tcp, udp and unix")
    if service.lower().startswith("tcpmux/"):
        return entry.skip(report, line, "a TCPMUX service (RFC 1078): superd serves none")
    kind = "udp" if socket_type == "dgram" else "tcp"
    if protocol != "unix" and protocol[:3] != kind:
        return entry.skip(report, line, f"{socket_type} with {protocol}: expected "
                          f"{'udp' if kind == 'udp' else 'tcp'}")
    port = _listen(entry, service, protocol, host, kind, report)
    if entry.skipped:
        return
    _wait(entry, waits, kind, report)
    if program == "internal":
        name = to.internal_name(service, port)
        if name is None:
            return entry.skip(report, line, f"inetd's internal {service!r} has no superd equivalent")
        entry.set("internal", name)
        entry.notes.append("user left out: superd runs its internal handlers as its own user "
                           "(inetd ran them inside itself)")
        return
    _program(entry, program, argv, report)
    _user(entry, user, report)


def _foreign_protocol(protocol):
    """Whether protocol names a real protocol superd does not serve: one of
    /etc/protocols (icmp for a raw socket) or a variant such as FreeBSD's tcp/ttcp."""
    name = protocol.partition("/")[0]
    if name != protocol and PROTOCOL.fullmatch(name):
        return True
    try:
        socket.getprotobyname(name)
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def _listen(entry, service, protocol, host, kind, report):
    """Sets listen (and protocol); returns the port, or None for unix sockets."""
    if protocol == "unix":
        entry.set("listen", f"unix:{service}")
        return None
    family = {"4": 4, "6": 6, "46": 46}.get(protocol[3:], 4)
    try:
        port = to.port_of(service, kind)
        # OpenBSD's inetd takes a comma-separated list of hosts: one listen address each
        hosts = [to.host_text(h) for h in host.split(",")] if host else [""]
        addresses = [to.listen_text(h, port, family) for h in hosts]
    except ValueError as err:
        return entry.skip(report, entry.line, str(err))
    entry.set("listen", addresses[0] if len(addresses) == 1 else addresses,
              "" if service.isdigit() else f"{service}/{kind} in /etc/services")
    if kind == "udp":
        entry.set("protocol", "udp")
    return port


def _wait(entry, waits, kind, report):
    mode, per_minute, freebsd = waits.group(1), waits.group(2), waits.group(3)
    if kind == "udp" and mode == "nowait":
        report.warn(entry.file, entry.line, entry.name, "a UDP service is 'wait' in superd: "
                    "one handler gets the socket and may answer many datagrams")
    elif kind == "tcp" and mode == "wait":
        entry.set("mode", "wait")
    if per_minute:
        entry.set("rate", {"limit": int(per_minute) or 1, "per": 60, "pause": 600}, RATE_REMARK)
    if freebsd:
        children, per_ip_minute, per_ip = (freebsd[1:].split("/") + ["", ""])[:3]
        if children.strip("0"):
            entry.set("instances", int(children))
        if per_ip_minute.strip("0"):
            entry.set("per_source_rate", {"limit": int(per_ip_minute), "per": 60})
        if per_ip.strip("0"):
            entry.set("per_source", int(per_ip))


def _program(entry, program, argv, report):
    if not program.startswith("/"):
        return entry.skip(report, entry.line, f"{program}: expected an absolute path or 'internal'")
    real, args, wrapped = to.unwrap_tcpd(program, argv)
    entry.set("server", real)
    if args:
        entry.set("args", args)
    if wrapped:
        entry.unmapped(report, entry.line, "tcpd", to.TCPD_WHY)
    elif argv and argv[0] != os.path.basename(program):
        entry.notes.append(f"argv[0] was {argv[0]}; superd passes the program's path")


def _user(entry, text, report):
    user, _, login_class = text.partition("/")
    name, _, group = _split_user(user)
    entry.set("user", name)
    if group:
        entry.set("group", group)
    if login_class:
        entry.unmapped(report, entry.line, f"login class {login_class}", "superd has no login classes")


def _split_user(text):
    """(user, separator, group) from user, user.group or user:group."""
    for sep in (":", "."):
        if sep in text:
            name, _, group = text.partition(sep)
            return name, sep, group
    return text, "", ""
