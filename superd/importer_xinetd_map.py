"""xinetd blocks to superd services, for `superd import`.

`convert(blocks, report)` returns (defaults, entries): an Entry of superd
`defaults` keys and one Entry per xinetd service.  xinetd's defaults are
split the way superd can express them: limits and access lists become
superd `defaults`; `bind`/`interface` join each service's listen address;
`enabled`/`disabled` (lists of ids) become each service's `enabled`; the
rest are notes.  `+=` and `-=` in a service start from the defaults' value,
and the service gets the whole resulting list.

Every attribute is a row of SIMPLE (a converter), of UNMAPPED (why superd
has no equivalent) or one of the attributes `_core` reads together (the
socket, address, program and credentials); anything else is an unknown
attribute, reported as such.
"""

from dataclasses import replace

from superd import importer_map as to
from superd.importer_model import Entry
from superd.schema import DEFAULT_INSTANCES

LOGGING = "superd logs each connection's start and end itself: superd(8), LOGS"
BANNER = "superd never writes to a client; the handler can print it"
RPC = "superd serves no RPC services"

UNMAPPED = {
    "log_type": LOGGING, "log_on_success": LOGGING, "log_on_failure": LOGGING,
    "banner": BANNER, "banner_success": BANNER, "banner_fail": BANNER,
    "redirect": "superd does not forward connections; run a proxy as the server",
    "access_times": "superd has no time-of-day access rules",
    "deny_time": "superd refuses an over-limit connection and bans no one",
    "nice": "superd does not change a handler's priority; start the server with nice(1)",
    "umask": "handlers inherit superd's umask; set another in a wrapper script",
    "rpc_version": RPC, "rpc_number": RPC,
    "mdns": "superd announces nothing",
    "libwrap": to.TCPD_WHY,
    "v6only": "superd binds [::]:PORT as IPv6 only and a bare PORT as both",
    "rlimit_rss": "Linux ignores RLIMIT_RSS",
    "include": "not an attribute", "includedir": "not an attribute",
}
CORE = {"id", "type", "socket_type", "protocol", "wait", "port", "bind", "interface",
        "flags", "server", "server_args", "user", "group"}
FLAGS_DONE = {"IPV4", "IPV6", "NAMEINARGS", "REUSE", "NOLIBWRAP"}   # read by _core, or superd's way
TO_SERVICES = ("bind", "interface")     # defaults superd cannot hold: given to each service
CPS_REMARK = ("xinetd closes the port for the pause and refuses clients; superd stops "
              "accepting and clients wait in the listen backlog")


def convert(blocks, report):
    defaults = {}
    head = Entry("defaults", "", 0, "defaults")
    for block in (b for b in blocks if b.kind == "defaults"):
        if head.file:
            report.warn(block.file, block.line, None, f"a second defaults section "
                        f"(the first is {head.file}:{head.line}): its attributes are added")
        else:
            head.file, head.line = block.file, block.line
        defaults.update(_settle(block.attributes, defaults))
    switches = _switches(defaults)
    for name, attribute in defaults.items():
        if name not in ("enabled", "disabled") + TO_SERVICES:
            _attribute(head, attribute, report)
    entries = [_service(b, defaults, switches, report) for b in blocks if b.kind == "service"]
    return head, entries


def _settle(attributes, inherited):
    """name -> Attribute, with += and -= applied (from inherited when not given here)."""
    out = {}
    for a in attributes:
        if a.op != "=":
            base = out.get(a.name) or inherited.get(a.name)
            values = list(base.values) if base else []
            values = values + a.values if a.op == "+=" else [v for v in values if v not in a.values]
            a = replace(a, op="=", values=values)
        out[a.name] = a
    return out


def _switches(defaults):
    """(ids to enable or None for all, ids to disable) from defaults."""
    enabled = defaults.get("enabled")
    disabled = defaults.get("disabled")
    return (set(enabled.values) if enabled else None), set(disabled.values if disabled else ())


def _service(block, defaults, switches, report):
    attributes = _settle(block.attributes, defaults)
    if not any(name in attributes for name in TO_SERVICES):    # the service's own address wins
        for name in TO_SERVICES:
            if name in defaults:
                attributes[name] = defaults[name]
    ident = _first(attributes, "id") or block.name
    title = f"service {block.name}" + (f" (id {ident})" if ident != block.name else "")
    entry = Entry(to.service_name(ident), block.file, block.line, title)
    _core(entry, block, attributes, report)
    if entry.skipped:
        return entry
    only, off = switches
    if ident in off or block.name in off or (only is not None and not {ident, block.name} & only):
        entry.set("enabled", False, "defaults: " + ("disabled" if ident in off or block.name in off
                                                    else "not in enabled"))
    for name, attribute in attributes.items():
        if name not in CORE and name in {a.name for a in block.attributes}:
            _attribute(entry, attribute, report)
    _unlimited_over_defaults(entry, attributes, defaults)
    return entry


def _unlimited_over_defaults(entry, attributes, defaults):
    """`instances = UNLIMITED` (or per_source) in a service lifts the defaults'
    limit; left out, superd's defaults would impose it, so write a number:
    superd's default for instances, and the service's instances for per_source
    (a per-client limit as large as the service's is none)."""
    for key in ("instances", "per_source"):
        mine, theirs = attributes.get(key), defaults.get(key)
        if not (mine and theirs and _unlimited(mine) and not _unlimited(theirs)):
            continue
        value = _effective_instances(entry, defaults) if key == "per_source" else DEFAULT_INSTANCES
        entry.set(key, value, f"UNLIMITED here over defaults' {theirs.values[0]}: superd always "
                  "has a limit", line=mine.line)


def _unlimited(attribute):
    return bool(attribute.values) and attribute.values[0].upper() == "UNLIMITED"


def _effective_instances(entry, defaults):
    if "instances" in entry.settings:
        return entry.settings["instances"]
    inherited = defaults.get("instances")
    if inherited and inherited.values and not _unlimited(inherited):
        try:
            return to.whole_number(inherited.values[0], "instances")
        except ValueError:
            pass                  # the defaults' own line says what is wrong with it
    return DEFAULT_INSTANCES


def _first(attributes, name):
    attribute = attributes.get(name)
    return attribute.values[0] if attribute and attribute.values else ""


def _core(entry, block, attributes, report):
    """Socket, address, program and credentials: the attributes read together."""
    line = lambda name: attributes[name].line if name in attributes else block.line  # noqa: E731
    types = {t.upper() for t in attributes["type"].values} if "type" in attributes else set()
    flags = {f.upper() for f in attributes["flags"].values} if "flags" in attributes else set()
    if types & {"RPC", "TCPMUX", "TCPMUXPLUS"}:
        return entry.skip(report, line("type"), f"type = {' '.join(sorted(types))}: {RPC} or TCPMUX")
    port = _socket(entry, block, attributes, flags, line, report)
    if entry.skipped:
        return None
    if "INTERNAL" in types:
        _internal(entry, block, port, attributes, report)
    else:
        _program(entry, attributes, flags, line, report)
    for flag in sorted(flags - FLAGS_DONE):
        entry.unmapped(report, line("flags"), f"flags {flag}", "superd has no such option")
    return None


def _socket(entry, block, attributes, flags, line, report):
    """listen, protocol and mode from socket_type, protocol, port, bind, flags
    and wait; returns the port (the entry is skipped if they do not fit)."""
    get = lambda name: _first(attributes, name)                 # noqa: E731
    socket_type, protocol = get("socket_type"), get("protocol")
    protocol = protocol or {"stream": "tcp", "dgram": "udp"}.get(socket_type, "")
    if (socket_type, protocol) not in (("stream", "tcp"), ("dgram", "udp")):
        return entry.skip(report, line("socket_type"), f"socket_type = {socket_type or '(none)'} with "
                          f"protocol = {protocol or '(none)'}: superd serves stream/tcp and dgram/udp")
    try:
        port = to.port_of(get("port") or block.name, protocol)
        host = to.host_text(get("bind") or get("interface"))
    except ValueError as err:
        return entry.skip(report, line("port"), str(err))
    family = 46 if "IPV6" in flags else 4
    entry.set("listen", to.listen_text(host, port, family),
              "" if get("port") else f"{block.name}/{protocol} in /etc/services")
    if protocol == "udp":
        entry.set("protocol", "udp")
    wait = get("wait")
    if wait not in ("yes", "no"):
        return entry.skip(report, line("wait"), f"wait = {wait or '(none)'}: expected yes or no")
    if protocol == "udp" and wait == "no":
        report.warn(entry.file, line("wait"), entry.name, "a UDP service is 'wait' in superd: "
                    "one handler gets the socket and may answer many datagrams")
    elif wait == "yes" and protocol == "tcp":
        entry.set("mode", "wait")
    return port


def _internal(entry, block, port, attributes, report):
    name = to.internal_name(block.name, port)
    if name is None:
        return entry.skip(report, block.line, f"xinetd's internal {block.name!r} has no superd equivalent")
    entry.set("internal", name)
    if "user" in attributes or "group" in attributes:
        entry.notes.append("user left out: superd runs its internal handlers as its own user "
                           "(xinetd ran them inside itself)")


def _program(entry, attributes, flags, line, report):
    server = _first(attributes, "server")
    if not server and "redirect" in attributes:
        return entry.skip(report, attributes["redirect"].line, f"redirect: {UNMAPPED['redirect']}")
    if not server.startswith("/"):
        return entry.skip(report, line("server"), f"server = {server or '(none)'}: expected an absolute path")
    args = attributes["server_args"].values if "server_args" in attributes else []
    argv = args if "NAMEINARGS" in flags else [server.rpartition("/")[2]] + args
    program, args, wrapped = to.unwrap_tcpd(server, argv)
    entry.set("server", program)
    if args:
        entry.set("args", args)
    if wrapped:
        entry.unmapped(report, line("server"), "tcpd", to.TCPD_WHY)
    for key in ("user", "group"):
        if _first(attributes, key):
            entry.set(key, _first(attributes, key))


def _attribute(entry, a, report):
    """One attribute outside the core: a SIMPLE converter, or a note."""
    source = a.text
    if a.name in UNMAPPED:
        return entry.unmapped(report, a.line, source, UNMAPPED[a.name])
    convert = SIMPLE.get(a.name) or (_rlimit if a.name in to.RLIMITS else None)
    if convert is None:
        return entry.unmapped(report, a.line, source, "not an xinetd attribute superd knows")
    try:
        convert(entry, a, report)
    except (ValueError, IndexError) as err:
        entry.unmapped(report, a.line, source, str(err) or "no value")


def _limit(key):
    def convert(entry, a, report):
        if _unlimited(a):
            if key == "instances":
                entry.notes.append("instances = UNLIMITED: superd always has a limit (200 by default)")
            return
        entry.set(key, to.whole_number(a.values[0], a.name), line=a.line)
    return convert


def _cps(entry, a, report):
    limit, pause = a.values[0], a.values[1]
    entry.set("rate", {"limit": to.whole_number(limit, "cps"), "per": 1,
                       "pause": to.seconds(pause, "cps")}, CPS_REMARK, line=a.line)


def _max_load(entry, a, report):
    entry.set("max_load", float(to.seconds(a.values[0], "max_load")), line=a.line)


def _access(entry, a, report):
    found, names = to.networks(a.values)
    for name in names:
        entry.unmapped(report, a.line, f"{a.name} {name}", "a name; superd matches numeric addresses")
    if a.name == "only_from" and not found:
        # xinetd: nobody may connect; an empty only_from is everyone in superd
        entry.set("enabled", False, "only_from lets no client in" + (" superd can match" if names else ""),
                  line=a.line)
        return
    entry.set(a.name, found, line=a.line)


def _env(entry, a, report):
    pairs, bad = to.env_pairs(a.values)
    for token in bad:
        entry.unmapped(report, a.line, f"env {token}", "not NAME=value")
    if pairs:
        entry.set("env", pairs, line=a.line)


def _passenv(entry, a, report):
    if a.values:
        entry.set("passenv", list(a.values), line=a.line)


def _disable(entry, a, report):
    if a.values[0] == "yes":
        entry.set("enabled", False, line=a.line)


def _groups(entry, a, report):
    if a.values[0] == "no":
        entry.notes.append("groups = no: superd gives a handler with a user that user's groups")


def _rlimit(entry, a, report):
    name, value = to.rlimit(a.name, a.values[0])
    entry.settings.setdefault("rlimits", {})[name] = value


SIMPLE = {
    "instances": _limit("instances"), "per_source": _limit("per_source"), "cps": _cps,
    "max_load": _max_load, "only_from": _access, "no_access": _access, "env": _env,
    "passenv": _passenv, "disable": _disable, "groups": _groups,
}
